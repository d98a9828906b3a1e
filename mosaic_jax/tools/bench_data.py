r"""Data pipeline throughput: prepare (MB/s of text) and loader (tokens/s delivered) against what training eats.

    python -m mosaic_jax.tools.bench_data --input=../shared/data/tinystories --tokenizer=sp:8192 \
        --seq_len=512 --global_batch=512 --loader_workers=0,2

Prepares into a temporary folder (or uses --prepared=DIR as is), then times the grain iterator for each
worker count and packing mode, and compares the slowest with what a training host consumes (--consumers,
tokens/s, split over --process_count processes).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.data import ingest, loader, pipeline, store
from mosaic_jax.data.errors import DataError

FLAGS = flags.FlagValues()
flags.DEFINE_list("input", ["../shared/data/tinystories"], "Inputs to prepare (files, folders, globs, hf: specs).",
                  flag_values=FLAGS)
flags.DEFINE_string("tokenizer", "sp:8192", "Tokenizer spec for prepare (see prepare_data).", flag_values=FLAGS)
flags.DEFINE_string("prepared", None, "Skip the prepare benchmark and load this prepared folder.", flag_values=FLAGS)
flags.DEFINE_list("prepare_workers", ["0"], "Tokenizer process counts to time (0 = auto).", flag_values=FLAGS)
flags.DEFINE_integer("seq_len", 512, "Tokens per row (the reference uses 512).", flag_values=FLAGS)
flags.DEFINE_integer("global_batch", 512, "Rows per step over all processes (the reference uses 512).",
                     flag_values=FLAGS)
flags.DEFINE_integer("process_count", 1, "Processes sharing the global batch; one process's slice is timed.",
                     flag_values=FLAGS)
flags.DEFINE_list("loader_workers", ["0", "2"], "grain mp_prefetch worker counts to time (0 = in-process).",
                  flag_values=FLAGS)
flags.DEFINE_integer("steps", 100, "Timed steps per loader configuration (after warm-up).", flag_values=FLAGS)
flags.DEFINE_list(
    "consumers",
    ["cpu-2core-reference=3267", "2xGV100-reference=43116", "8xH100-estimate=4000000"],
    "name=tokens/s a training host consumes. Defaults: the torch reference on 2 CPU cores (measured, "
    "spec/performance_notes.md); the reference README's 2×GV100 at 190 ms per 2×8×512-token step; an "
    "8×H100 host on the 12L/768 model at ~40% MFU (an estimate, 6·N FLOPs/token).", flag_values=FLAGS)


def bench_prepare(inputs: Sequence[str], tokenizer: str, workers: int, folder: str) -> pipeline.PrepareResult:
    result = pipeline.prepare(inputs, folder, tokenizer, num_workers=workers or None, progress=False)
    stats = result.manifest["stats"]
    mb = result.text_bytes / 1e6
    print(f"prepare  tokenizer={tokenizer:<14} workers={stats['workers']:<2} {mb:7.2f} MB text: "
          f"total {result.seconds:6.2f} s = {result.mb_per_s:6.2f} MB/s; "
          f"tokenize+write {stats['tokenize_seconds']:6.2f} s = {mb / max(stats['tokenize_seconds'], 1e-9):6.2f} MB/s")
    return result


def bench_loader(src: loader.BatchSource, workers: int, steps: int, process_count: int) -> float:
    """tokens/s of one process's batches delivered by the grain iterator."""
    warmup = 3 + 2 * workers
    it = loader.make_iterator(src, 0, 0, process_count, num_workers=workers, num_steps=warmup + steps)
    try:
        for _ in range(warmup):  # includes starting the worker processes
            next(it)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(it)
        seconds = time.perf_counter() - start
    finally:
        if hasattr(it, "close"):
            it.close()
    rows = batch["inputs"].shape[0]
    delivered = steps * rows * src.seq_len / seconds
    print(f"loader   packing={str(src.packing):<5} workers={workers:<2} rows/process={rows:<4} T={src.seq_len}: "
          f"{delivered:13,.0f} tokens/s ({seconds / steps * 1e3:7.2f} ms/batch)")
    return delivered


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status."""
    return cli_util.run("bench_data", FLAGS, _bench, argv, doc=__doc__, errors=(DataError,))


cli = cli_util.exit_with(main)


def _bench(rest: list[str]) -> int:
    if FLAGS.prepared:
        store.read_manifest(FLAGS.prepared)   # a missing folder fails now, in one line
    else:
        ingest.expand_sources(FLAGS.input)   # missing inputs fail now, in one line (hf: specs are opened later)
    print(f"cpu cores: {os.cpu_count()}")
    tmp = None
    try:
        if FLAGS.prepared:
            folder = FLAGS.prepared
        else:
            tmp = tempfile.mkdtemp(prefix="bench_data_")
            for i, workers in enumerate(map(int, FLAGS.prepare_workers)):
                folder = os.path.join(tmp, f"prepared{i}")
                bench_prepare(FLAGS.input, FLAGS.tokenizer, workers, folder)
        ds = store.open_prepared(folder)
        print(f"data     {ds.num_tokens:,} train tokens, {ds.num_docs:,} documents, vocab {ds.vocab_size}")
        slowest = float("inf")
        for packing in (False, True):
            src = loader.BatchSource(ds, FLAGS.seq_len, FLAGS.global_batch, seed=0, packing=packing)
            for workers in map(int, FLAGS.loader_workers):
                slowest = min(slowest, bench_loader(src, workers, FLAGS.steps, FLAGS.process_count))
        for consumer in FLAGS.consumers:
            name, rate = consumer.split("=")
            per_process = float(rate) / FLAGS.process_count
            print(f"training {name:<24} eats {per_process:12,.0f} tokens/s per process → slowest loader "
                  f"configuration has {slowest / per_process:8.1f}× headroom")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    cli()
