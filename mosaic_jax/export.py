r"""Export a trained run for other tools.

    python -m mosaic_jax.export --workdir=runs/tiny_cpu --format=hf --out=hf/tiny_cpu [--push_to_hub=ORG/NAME]

--format=hf writes a Hugging Face folder (mosaic_jax.hf.export.export_hf): GPT-2 runs as the native
GPT2LMHeadModel, memory mosaics (v1, v2) with their PyTorch modeling file (load with trust_remote_code=True),
the tokenizer as tokenizer.json, generation_config.json and a model card. --out must not exist (or be empty).
--workdir and --out may be gs://bucket/prefix (a gs:// --out is written locally, then uploaded).
Errors: `export: error: <one line>`, exit 2 for usage errors, 1 for runtime failures. See docs/inference.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

from absl import flags, logging

from mosaic_jax import cli_util

FORMATS = ("hf",)
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training run folder (checkpoints/ or export/), local or gs://.",
                    flag_values=FLAGS)
flags.DEFINE_enum("format", "hf", FORMATS, "Output format: hf (a Hugging Face model folder).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder, local or gs:// (must not exist, or be empty).", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).", flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "Tokenizer spec, if the run's data folder moved.", flag_values=FLAGS)
flags.DEFINE_string("push_to_hub", None, "Also upload the folder to this hub repository (ORG/NAME).",
                    flag_values=FLAGS)


def _export(rest: list[str]) -> int:
    for name in ("workdir", "out"):
        if not FLAGS[name].value:
            raise cli_util.UsageError(f"--{name} is required")
    if FLAGS.push_to_hub and FLAGS.push_to_hub.count("/") != 1:
        raise cli_util.UsageError(f"--push_to_hub={FLAGS.push_to_hub}: expected ORG/NAME")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # Orbax logs every restore at INFO
    try:
        from mosaic_jax.hf.export import ExportError, export_hf
    except ImportError as e:   # optional dependencies (transformers, ...)
        raise cli_util.CommandError(f"--format=hf needs the optional packages of mosaic_jax[hf] ({e})") from None
    try:
        out = export_hf(FLAGS.workdir, FLAGS.out, step=FLAGS.step, tokenizer=FLAGS.tokenizer,
                        push_to_hub=FLAGS.push_to_hub)
    except ImportError as e:
        raise cli_util.CommandError(f"--format=hf needs the optional packages of mosaic_jax[hf] ({e})") from None
    except (ExportError, ValueError) as e:
        raise cli_util.CommandError(str(e)) from None
    print(f"exported {FLAGS.workdir} to {out}" + (f" and pushed it to {FLAGS.push_to_hub}" if FLAGS.push_to_hub
                                                   else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status."""
    return cli_util.run("export", FLAGS, _export, argv, doc=__doc__)


cli = cli_util.exit_with(main)
run = cli   # the name the first version of this module gave its entry point


if __name__ == "__main__":
    cli()
