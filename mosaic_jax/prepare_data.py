r"""Prepare text corpora into a token store for training.

    python -m mosaic_jax.prepare_data --input=../shared/data/tinystories --out=/tmp/tinystories_sp8k \
        --tokenizer=sp:8192

Inputs are files, folders (walked for --include patterns) or globs, comma-separated, local or
gs://bucket/prefix[/file] (objects are streamed, not staged locally); plain text, JSONL or gzip of either;
or Hugging Face datasets, streamed: hf:ORG/NAME[:CONFIG][:SPLIT][@TEXT_FIELD], where ORG/NAME
may also be a local folder of data files or a save_to_disk folder. --tokenizer: sp:N (train sentencepiece BPE), sp-unigram:N, byte, gpt2 (tiktoken), hf:PATH (tokenizer.json), or a
sentencepiece .model file. Re-running with the same inputs and flags is a no-op; an output folder that
holds a different preparation is refused. A bad flag exits with status 2, bad input with 1, each with a
one-line error. (mosaic-prepare is the same command.)
See docs/data.md.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.io import data_cache, storage   # storage first: STORAGE_EMULATOR_HOST for gcsfs
from mosaic_jax.data import hf_source, ingest, pipeline, store, tokenizers
from mosaic_jax.data.errors import DataError

_D = pipeline.PrepareOptions()
FLAGS = flags.FlagValues()
flags.DEFINE_list("input", None, "Input files, folders or globs (local or gs://bucket/prefix), or "
                  "hf:ORG/NAME[:CONFIG][:SPLIT][@TEXT_FIELD] (a hub id, local dataset folder or save_to_disk "
                  "folder), comma-separated.", flag_values=FLAGS)
flags.DEFINE_list("validation_input", [], "Optional inputs that form the whole validation split (then "
                  "--val_fraction is unused).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder, local or gs://bucket/prefix (created; must not hold a different "
                    "preparation; files inside it are never read as input).", flag_values=FLAGS)
flags.DEFINE_alias("output", "out", flag_values=FLAGS)   # the old name, kept for existing commands
flags.DEFINE_string("tokenizer", "sp:8192", "sp:N | sp-unigram:N | byte | gpt2 | gpt2:DIR | hf:PATH | path/to.model | "
                    "prepared folder.", flag_values=FLAGS)
flags.DEFINE_enum("format", _D.format, list(ingest.FORMATS), "Input format; auto sniffs JSON lines, else text.",
                  flag_values=FLAGS)
flags.DEFINE_string("separator", _D.separator, "Text documents: auto | blank | line | file | a marker such as "
                    "<|endoftext|>.", flag_values=FLAGS)
flags.DEFINE_string("text_field", _D.text_field, "JSONL objects: the field holding the text (a.b for nested).",
                    flag_values=FLAGS)
flags.DEFINE_float("val_fraction", _D.val_fraction, "Share of documents put in the validation split (seeded).",
                   lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_integer("seed", _D.seed, "Seed of the train/validation split and of the tokenizer sample.",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("shard_tokens", _D.shard_tokens, "Tokens per shard file (shards end on document ends).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("dtype", _D.dtype, ["auto", "uint8", "uint16", "uint32"], "Token dtype; auto = uint16 if the "
                  "vocabulary fits.", flag_values=FLAGS)
flags.DEFINE_bool("add_bos", _D.add_bos, "Put BOS before every document (EOS always follows every document).",
                  flag_values=FLAGS)
flags.DEFINE_float("tokenizer_sample_mb", _D.tokenizer_sample_mb, "MB of text sampled to train a sentencepiece "
                   "model (> 0).", flag_values=FLAGS)
flags.DEFINE_list("include", list(_D.include), "File patterns taken from input folders.", flag_values=FLAGS)
flags.DEFINE_integer("num_workers", 0, "Tokenizer processes; 0 = auto (one per core, one per 16 MB of input at "
                     "most).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_bool("progress", True, "Show progress bars.", flag_values=FLAGS)
flags.DEFINE_bool("verify", False, "Only verify the sha256 of every file of an existing --out, then exit.",
                  flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Check the inputs and the tokenizer spec, print what would be prepared, "
                  "write nothing.", flag_values=FLAGS)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare(rest: list[str]) -> int:
    if not FLAGS.out:
        raise cli_util.UsageError("--out is required")
    if FLAGS.verify:
        store.verify(FLAGS.out)
        print(f"{FLAGS.out}: every file matches its manifest sha256")
        return 0
    if not FLAGS.input:
        raise cli_util.UsageError("--input is required")
    if not FLAGS.tokenizer_sample_mb > 0:
        raise cli_util.UsageError(f"--tokenizer_sample_mb={FLAGS.tokenizer_sample_mb}: must be > 0")
    if not FLAGS.val_fraction < 1:
        raise cli_util.UsageError(f"--val_fraction={FLAGS.val_fraction}: must be in [0, 1)")
    if FLAGS.dry_run:
        files = ingest.expand_sources(FLAGS.input, FLAGS.include)
        for spec in filter(hf_source.is_spec, files):
            hf_source.HFReader(spec, FLAGS.text_field)   # opens it: config, split, field and first row checked
        if tokenizers.parse_train_spec(FLAGS.tokenizer) is None:
            tokenizers.load_tokenizer(FLAGS.tokenizer)
        print(f"would prepare {len(files)} input(s) into {FLAGS.out} with tokenizer {FLAGS.tokenizer}")
        return 0
    options = pipeline.PrepareOptions(
        format=FLAGS.format,
        separator=FLAGS.separator,
        text_field=FLAGS.text_field,
        val_fraction=FLAGS.val_fraction,
        seed=FLAGS.seed,
        shard_tokens=FLAGS.shard_tokens,
        dtype=FLAGS.dtype,
        add_bos=FLAGS.add_bos,
        tokenizer_sample_mb=FLAGS.tokenizer_sample_mb,
        include=tuple(FLAGS.include),
    )
    remote = FLAGS.out if storage.is_remote(FLAGS.out) else None   # gs://: prepare locally, then upload
    stage = tempfile.TemporaryDirectory(prefix="mosaic_jax-prepare-") if remote else None
    result = pipeline.prepare(
        FLAGS.input,
        os.path.join(stage.name, remote.rstrip("/").rsplit("/", 1)[-1]) if remote else FLAGS.out,
        FLAGS.tokenizer,
        options,
        validation_inputs=FLAGS.validation_input,
        num_workers=FLAGS.num_workers or None,
        progress=FLAGS.progress,
        log=_log,
    )
    m = result.manifest
    if remote:
        with stage:
            uploaded = data_cache.publish(result.path, remote)
        print(f"{remote}: {'uploaded' if uploaded else 'already holds this preparation; nothing uploaded'}")
    if not result.skipped:
        counts = ", ".join(f"{k}: {v['num_tokens']:,} tokens in {v['num_docs']:,} docs" for k, v in m["splits"].items())
        print(f"{remote or result.path}: {counts}; tokenizer {m['tokenizer']['kind']} vocab {m['tokenizer']['vocab_size']} "
              f"hash {m['tokenizer']['hash'][:12]}; {result.text_bytes / 1e6:.2f} MB of text in {result.seconds:.1f} s "
              f"= {result.mb_per_s:.2f} MB/s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status (2: bad flags, 1: bad input or an unwritable/unreadable path)."""
    return cli_util.run("prepare_data", FLAGS, _prepare, argv, doc=__doc__, errors=(DataError,))


cli = cli_util.exit_with(main)


if __name__ == "__main__":
    cli()
