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
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from mosaic_jax.models.config import ModelConfig
from mosaic_jax.hf.weights import HFImportError, gpt2_from_hf


def _read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        from safetensors.numpy import load_file
        out: dict[str, np.ndarray] = {}
        for f in st:
            out.update(load_file(str(f)))
        return out
    if (folder / "pytorch_model.bin").is_file():
        import torch
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
    from mosaic_jax.training.checkpoint import TOKENIZER_DIR, export_params
    from mosaic_jax.data.tokenizers import MANIFEST_FILE, HFTokenizer

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


_HF = flags.DEFINE_string("hf", None, "A transformers GPT-2 folder (config.json + model.safetensors).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder to create (export/ and tokenizer/).")


def _fail(message: str, code: int) -> None:
    print(f"import_gpt2: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(__doc__.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e), 2)
    return []


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if not _HF.value or not _WORKDIR.value:
        _fail("--hf and --workdir are required", 2)
    try:
        wd = import_to_workdir(_HF.value, _WORKDIR.value)
    except (HFImportError, ValueError, OSError) as e:
        _fail(str(e), 1)
    print(f"imported {_HF.value} into {wd}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
