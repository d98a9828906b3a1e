r"""A transformers GPT-2 checkpoint folder → this library's GPT-2 params (mosaic_jax/models/gpt2/layers.py), logits equal.

    cfg, params = load_hf_gpt2("path/to/gpt2")                  # config.json + model.safetensors (or .bin)
    python -m mosaic_jax.hf.import_gpt2 --hf=path/to/gpt2 --workdir=runs/gpt2_hf

The CLI writes `workdir/export/` (params + model_config.json, as training's export) and, when the folder has a
tokenizer.json, `workdir/tokenizer/` (an `hf:` tokenizer), so `mosaic_jax.generate`, `mosaic_jax.evaluate`,
the lm-eval adapter and `mosaic_jax.export` read the imported model like a trained run.
Errors: `import_gpt2: error: <one line>`, exit 2 for usage errors, 1 for runtime failures.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
from absl import flags
from safetensors.numpy import load_file

from mosaic_jax import cli_util
from mosaic_jax.data.tokenizers import MANIFEST_FILE, HFTokenizer
from mosaic_jax.hf.weights import HFImportError, gpt2_from_hf
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.training.checkpoint import TOKENIZER_DIR, export_params


def _read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        out: dict[str, np.ndarray] = {}
        for f in st:
            out.update(load_file(str(f)))
        return out
    if (folder / "pytorch_model.bin").is_file():
        import torch   # optional: extra [hf]
        sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    raise HFImportError(f"{folder}: no *.safetensors and no pytorch_model.bin")


def load_hf_gpt2(path: str | pathlib.Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, params) from a folder written by `GPT2LMHeadModel.save_pretrained` (no network)."""
    folder = pathlib.Path(path)
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HFImportError(f"{folder / 'config.json'}: cannot read ({e})") from None
    if hf_config.get("model_type") != "gpt2":
        raise HFImportError(f"{folder / 'config.json'}: model_type {hf_config.get('model_type')!r} is not 'gpt2'")
    try:
        return gpt2_from_hf(hf_config, _read_tensors(folder))
    except HFImportError as e:
        raise HFImportError(f"{folder}: {e}") from None


def import_to_workdir(hf_dir: str, workdir: str) -> pathlib.Path:
    """Write `workdir/export/` (and `workdir/tokenizer/` when the folder has a tokenizer.json)."""

    wd = pathlib.Path(workdir)
    if (wd / "export").exists() or (wd / "checkpoints").exists():
        raise HFImportError(f"--workdir={workdir}: already holds a run (nothing is overwritten)")
    cfg, params = load_hf_gpt2(hf_dir)
    tok = HFTokenizer.from_path(hf_dir) if (pathlib.Path(hf_dir) / "tokenizer.json").is_file() else None
    export_params(wd / "export", params, cfg.to_dict())
    if tok is not None:
        (wd / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
        tok.save(str(wd / TOKENIZER_DIR / tok.describe()["file"]))
        manifest = {"tokenizer": tok.describe(), "copied_from": str(pathlib.Path(hf_dir).absolute())}
        (wd / TOKENIZER_DIR / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return wd


FLAGS = flags.FlagValues()   # its own, so importing this module beside mosaic_jax.train defines nothing twice
flags.DEFINE_string("hf", None, "A transformers GPT-2 folder (config.json + model.safetensors).", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Run folder to create (export/ and tokenizer/).", flag_values=FLAGS)


def _body(_: list[str]) -> int:
    if not FLAGS.hf or not FLAGS.workdir:
        raise cli_util.UsageError("--hf and --workdir are required")
    wd = import_to_workdir(FLAGS.hf, FLAGS.workdir)
    print(f"imported {FLAGS.hf} into {wd}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status."""
    return cli_util.run("import_gpt2", FLAGS, _body, argv, doc=__doc__, errors=(HFImportError, ValueError))


if __name__ == "__main__":
    cli_util.exit_with(main)()
