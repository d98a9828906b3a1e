"""A trained run → a Hugging Face model folder (`python -m mosaic_jax.export --format=hf`, or `export_hf`).

    export_hf("runs/tiny_cpu", "hf/tiny_cpu")         # config.json, model.safetensors, tokenizer, card, ...
    AutoModelForCausalLM.from_pretrained("hf/tiny_cpu", trust_remote_code=True)   # memory mosaics
    AutoModelForCausalLM.from_pretrained("hf/tiny_gpt2")                           # GPT-2 runs: native GPT2LMHeadModel

The folder holds config.json, model.safetensors (float32), generation_config.json, the tokenizer
(tokenizer.json + tokenizer_config.json, and the sentencepiece `tokenizer.model`), a model card README.md
(run config, data, tokens seen, final losses) and, for memory mosaics, modeling_mosaic.py (PyTorch, written
from the spec). It is written to a temporary folder and renamed: `out` is never half-written or overwritten.
`workdir` and `out` may be gs://bucket/prefix URLs: a gs:// `out` is written to a local temporary folder first and
then uploaded, config.json last (GCS has no folder rename); a gs:// `out` that already holds objects is refused.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Optional, Union

from etils import epath
from safetensors.numpy import save_file

from mosaic_jax.generate import InferenceLoadError, load_for_inference
from mosaic_jax.hf import weights
from mosaic_jax.hf.tokenizer import TokenizerExportError, save_hf_tokenizer
from mosaic_jax.io import data_cache, storage
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig

MODELING_FILE = pathlib.Path(__file__).with_name("modeling_mosaic.py")


class ExportError(RuntimeError):
    """The run cannot be exported, or `out` is in the way (one-line message)."""


def _last_records(workdir: epath.Path) -> dict[str, dict[str, Any]]:
    """The last metrics.jsonl record per split ("train", "eval"), {} when there is no file."""
    last: dict[str, dict[str, Any]] = {}
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return last
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue   # a line cut by an interruption
        if isinstance(r, dict) and r.get("split") in ("train", "eval") and "loss" in r:
            if r["split"] not in last or r["step"] >= last[r["split"]]["step"]:
                last[r["split"]] = r
    return last


def model_card(cfg: ModelConfig, run: dict[str, Any], last: dict[str, dict[str, Any]], tok: Any,
               workdir: epath.Path) -> str:
    """README.md: what was trained, on what, for how long, and how well."""
    model, train, data = run.get("model", cfg.to_dict()), run.get("train", {}), run.get("data", {})
    step = max([r["step"] for r in last.values()], default=0)
    seq = data.get("seq_len") or cfg.block_size
    tokens = step * int(train.get("global_batch", 0)) * int(seq)
    fam = registry.of(cfg)
    native = fam.hf_export == "gpt2"
    load = ('AutoModelForCausalLM.from_pretrained("DIR")' if native else
            'AutoModelForCausalLM.from_pretrained("DIR", trust_remote_code=True)')
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- memory-mosaics",
        "- mosaic_jax", "---", "",
        f"# {workdir.name}: {fam.title or fam.name} trained with mosaic_jax", "",
        f"Exported from `{workdir}` by `python -m mosaic_jax.export --format=hf`.",
        "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = {load}", f"tok = {load.replace('AutoModelForCausalLM', 'AutoTokenizer')}", "```", "",
        "## Training", "",
        f"- steps: {step}; tokens seen: {tokens:,} (steps × global batch {train.get('global_batch', '?')} × "
        f"sequence length {seq})",
    ]
    for split in ("train", "eval"):
        if split in last:
            r = last[split]
            lines.append(f"- final {split} loss: {r['loss']:.4f} (step {r['step']})")
    lines += [f"- data: `{data.get('path', '?')}`; tokenizer: {tok.kind}, vocabulary {tok.vocab_size} "
              f"(hash {tok.hash[:12]})", "", "## Model", "", "```json", json.dumps(model, indent=1, sort_keys=True),
              "```", "", "## Run configuration", "", "```json",
              json.dumps({k: v for k, v in run.items() if k != "model"}, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _write_weights(path: pathlib.Path, sd: dict[str, Any]) -> None:
    save_file(sd, str(path), metadata={"format": "pt"})   # transformers reads "pt"-tagged files


def _write_model(cfg: ModelConfig, params: Any, tok: Any, folder: pathlib.Path) -> None:
    eos = int(tok.eos_id)
    how = registry.of(cfg).hf_export
    if how == "gpt2":
        from transformers import GPT2Config   # optional: extra [hf]
        GPT2Config(**weights.gpt2_config_dict(cfg, eos)).save_pretrained(str(folder))
        _write_weights(folder / "model.safetensors", weights.gpt2_state_dict(cfg, params))
    elif how == "remote":
        from mosaic_jax.hf.modeling_mosaic import MosaicConfig   # optional: imports torch, transformers (extra [hf])
        hf_cfg = MosaicConfig(**weights.mosaic_config_dict(cfg, eos))
        hf_cfg.auto_map = {"AutoConfig": "modeling_mosaic.MosaicConfig",
                           "AutoModelForCausalLM": "modeling_mosaic.MosaicForCausalLM"}
        hf_cfg.architectures = ["MosaicForCausalLM"]
        hf_cfg.save_pretrained(str(folder))
        shutil.copyfile(MODELING_FILE, folder / MODELING_FILE.name)
        _write_weights(folder / "model.safetensors", weights.mosaic_state_dict(cfg, params))
    else:
        raise ExportError(f"arch {cfg.arch!r} has no Hugging Face export (Family.hf_export is empty)")
    from transformers import GenerationConfig   # optional: extra [hf]
    # no cache for the mosaic's remote code (it recomputes the prefix); the first sampled token follows EOS
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=False,
                     use_cache=how == "gpt2").save_pretrained(str(folder))


def _refuse_existing(out: str) -> None:
    """ExportError when `out` (a local folder or a gs:// prefix) already holds something: nothing is overwritten."""
    if storage.is_remote(out):
        try:
            taken = storage.path(out).is_file() or bool(storage.list_files(out))
        except FileNotFoundError:
            raise ExportError(f"--out={out}: no such bucket") from None
    else:
        dest = pathlib.Path(out)
        taken = dest.exists() and (not dest.is_dir() or any(dest.iterdir()))
    if taken:
        raise ExportError(f"--out={out}: already exists and is not an empty folder (nothing is overwritten)")


def export_hf(workdir: str, out: str, *, step: Optional[int] = None, tokenizer: Optional[str] = None,
              push_to_hub: Optional[str] = None) -> Union[pathlib.Path, epath.Path]:
    """Write the Hugging Face folder `out` for the run in `workdir` (newest checkpoint, or `step`); optionally
    upload it to the hub repository `push_to_hub` ("org/name"). Returns the folder (an epath.Path for gs://)."""

    _refuse_existing(out)
    try:
        cfg, params, tok = load_for_inference(workdir, step, tokenizer)
    except InferenceLoadError as e:
        raise ExportError(str(e)) from None
    wd = storage.path(workdir)
    run = json.loads((wd / "config.json").read_text()) if (wd / "config.json").is_file() else {}
    if not storage.is_remote(out):
        dest = pathlib.Path(out).absolute()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            _write_folder(cfg, params, tok, run, wd, tmp)
            if dest.exists():
                dest.rmdir()   # empty (checked above)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if push_to_hub:
            push(dest, push_to_hub)
        return dest
    with tempfile.TemporaryDirectory(prefix="mosaic_jax-export-") as stage:
        _write_folder(cfg, params, tok, run, wd, pathlib.Path(stage))
        _refuse_existing(out)   # again: something may have appeared while the model was written
        data_cache.upload(stage, out.rstrip("/"), last="config.json")   # a folder without config.json loads nothing
        if push_to_hub:
            push(pathlib.Path(stage), push_to_hub)
    return storage.path(out.rstrip("/"))


def _write_folder(cfg: ModelConfig, params: Any, tok: Any, run: dict[str, Any], wd: epath.Path,
                  folder: pathlib.Path) -> None:
    """Every file of the Hugging Face folder into the (empty, local) `folder`."""
    _write_model(cfg, params, tok, folder)
    if tok.kind == "gpt2":
        (folder / "TOKENIZER.md").write_text("This run used the GPT-2 BPE (tiktoken): load it with "
                                             "AutoTokenizer.from_pretrained('gpt2'); the ids are the same.\n")
    else:
        try:
            save_hf_tokenizer(tok, folder)
        except TokenizerExportError as e:
            raise ExportError(str(e)) from None
    (folder / "README.md").write_text(model_card(cfg, run, _last_records(wd), tok, wd))


def push(folder: pathlib.Path, repo_id: str) -> None:
    """Upload `folder` to the hub model repository `repo_id` (created if needed; uses the cached login)."""
    from huggingface_hub import HfApi   # optional: extra [hf]
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="mosaic_jax export")
