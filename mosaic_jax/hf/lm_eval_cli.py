"""lm-evaluation-harness's command line with the `mosaic_jax` model type registered.

    python -m mosaic_jax.hf.lm_eval_cli --model mosaic_jax --model_args workdir=RUN --tasks lambada_openai

lm_eval finds models only in its registry and loads no plug-ins, so `lm_eval --model mosaic_jax` alone cannot
see this library: this wrapper imports the adapter (mosaic_jax.hf.lm_eval_adapter, whose @register_model adds
`mosaic_jax`) and then runs lm_eval's own CLI with the same arguments. See docs/evaluation.md.
"""
from __future__ import annotations

import mosaic_jax.hf.lm_eval_adapter  # noqa: F401  (registers the model type)
from lm_eval.__main__ import cli_evaluate


def main() -> None:
    cli_evaluate()


if __name__ == "__main__":
    main()
