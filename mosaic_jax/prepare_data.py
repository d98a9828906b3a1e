r"""Prepare text corpora into a token store for training.

    python -m mosaic_jax.prepare_data --input=../shared/data/tinystories --output=/tmp/tinystories_sp8k \
        --tokenizer=sp:8192

Inputs are files, folders (walked for --include patterns) or globs, comma-separated; plain text, JSONL or
gzip of either. --tokenizer: sp:N (train sentencepiece BPE), sp-unigram:N, byte, gpt2 (tiktoken), hf:PATH (tokenizer.json), or a
sentencepiece .model file. Re-running with the same inputs and flags is a no-op; an output folder that
holds a different preparation is refused. Bad input exits with status 1 and a one-line error.
See docs/data.md.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags

from mosaic_jax.data import ingest, pipeline, store
from mosaic_jax.data.errors import DataError

_D = pipeline.PrepareOptions()
flags.DEFINE_list("input", None, "Input files, folders or globs (comma-separated).")
flags.DEFINE_list("validation_input", [], "Optional inputs that form the whole validation split (then --val_fraction is unused).")
flags.DEFINE_string("output", None, "Output folder (created; must not hold a different preparation).")
flags.DEFINE_string("tokenizer", "sp:8192", "sp:N | sp-unigram:N | byte | gpt2 | gpt2:DIR | hf:PATH | path/to.model | prepared folder.")
flags.DEFINE_enum("format", _D.format, list(ingest.FORMATS), "Input format; auto sniffs JSON lines, else text.")
flags.DEFINE_string("separator", _D.separator, "Text documents: auto | blank | line | file | a marker such as <|endoftext|>.")
flags.DEFINE_string("text_field", _D.text_field, "JSONL objects: the field holding the text (a.b for nested).")
flags.DEFINE_float("val_fraction", _D.val_fraction, "Share of documents put in the validation split (seeded).")
flags.DEFINE_integer("seed", _D.seed, "Seed of the train/validation split and of the tokenizer sample.")
flags.DEFINE_integer("shard_tokens", _D.shard_tokens, "Tokens per shard file (shards end on document ends).")
flags.DEFINE_enum("dtype", _D.dtype, ["auto", "uint8", "uint16", "uint32"], "Token dtype; auto = uint16 if the vocabulary fits.")
flags.DEFINE_bool("add_bos", _D.add_bos, "Put BOS before every document (EOS always follows every document).")
flags.DEFINE_float("tokenizer_sample_mb", _D.tokenizer_sample_mb, "MB of text sampled to train a sentencepiece model.")
flags.DEFINE_list("include", list(_D.include), "File patterns taken from input folders.")
flags.DEFINE_integer("num_workers", 0, "Tokenizer processes; 0 = auto (one per core, one per 16 MB of input at most).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("verify", False, "Only verify the sha256 of every file of an existing --output, then exit.")
FLAGS = flags.FLAGS


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if FLAGS.verify:
            store.verify(FLAGS.output)
            print(f"{FLAGS.output}: every file matches its manifest sha256")
            return 0
        if not FLAGS.input:
            raise app.UsageError("--input is required")
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
        result = pipeline.prepare(
            FLAGS.input,
            FLAGS.output,
            FLAGS.tokenizer,
            options,
            validation_inputs=FLAGS.validation_input,
            num_workers=FLAGS.num_workers or None,
            progress=FLAGS.progress,
            log=_log,
        )
    except (DataError, OSError) as e:  # bad input, or an unwritable/unreadable path: one line, non-zero exit
        print(f"prepare_data: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    m = result.manifest
    if not result.skipped:
        counts = ", ".join(f"{k}: {v['num_tokens']:,} tokens in {v['num_docs']:,} docs" for k, v in m["splits"].items())
        print(f"{result.path}: {counts}; tokenizer {m['tokenizer']['kind']} vocab {m['tokenizer']['vocab_size']} "
              f"hash {m['tokenizer']['hash'][:12]}; {result.text_bytes / 1e6:.2f} MB of text in {result.seconds:.1f} s "
              f"= {result.mb_per_s:.2f} MB/s")
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("output")
    app.run(main)
