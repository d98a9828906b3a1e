r"""Export a trained run for other tools.

    python -m mosaic_jax.export --workdir=runs/tiny_cpu --format=hf --out=hf/tiny_cpu [--push_to_hub=ORG/NAME]

--format=hf writes a Hugging Face folder (mosaic_jax.hf.export.export_hf): GPT-2 runs as the native
GPT2LMHeadModel, memory mosaics (v1, v2) with their PyTorch modeling file (load with trust_remote_code=True),
the tokenizer as tokenizer.json, generation_config.json and a model card. --out must not exist (or be empty).
Errors: `export: error: <one line>`, exit 2 for usage errors, 1 for runtime failures. See docs/inference.md.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

FORMATS = ("hf",)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run folder (checkpoints/ or export/).")
_FORMAT = flags.DEFINE_enum("format", "hf", FORMATS, "Output format: hf (a Hugging Face model folder).")
_OUT = flags.DEFINE_string("out", None, "Output folder (must not exist, or be empty).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer spec, if the run's data folder moved.")
_PUSH = flags.DEFINE_string("push_to_hub", None, "Also upload the folder to this hub repository (ORG/NAME).")

USAGE, RUNTIME = 2, 1


def _fail(message: str, code: int) -> None:
    print(f"export: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser with `--help` exiting 0 and a bad flag as a one-line usage error (exit 2)."""
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(__doc__.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e), USAGE)
    return []


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", USAGE)
    for name, flag in (("--workdir", _WORKDIR), ("--out", _OUT)):
        if not flag.value:
            _fail(f"{name} is required", USAGE)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # Orbax logs every restore at INFO
    if _PUSH.value and _PUSH.value.count("/") != 1:
        _fail(f"--push_to_hub={_PUSH.value}: expected ORG/NAME", USAGE)
    from mosaic_jax.hf.export import ExportError, export_hf
    try:
        out = export_hf(_WORKDIR.value, _OUT.value, step=_STEP.value, tokenizer=_TOKENIZER.value,
                        push_to_hub=_PUSH.value)
    except ImportError as e:
        _fail(f"--format=hf needs the optional packages of mosaic_jax[hf] ({e})", RUNTIME)
    except (ExportError, ValueError, OSError) as e:
        _fail(str(e), RUNTIME)
    print(f"exported {_WORKDIR.value} to {out}" + (f" and pushed it to {_PUSH.value}" if _PUSH.value else ""))


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
