"""Training configuration: an ml_collections ConfigDict with sections `model`, `data`, `train`, `mesh`.

Experiment presets (`mosaic_jax/presets/*.py`, `--config=NAME`) start from `base_config()` and change a few
fields; the command line overrides any field (`--config.train.steps=100`). The dict is locked, so a misspelt field is an error.
`resolve()` validates everything up front and fills the derived fields (vocab size from the data, decay
steps = steps, ...) so that bad input fails before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import ml_collections

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.training import trackers
from mosaic_jax.training.optim import OptimConfig


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    model = ModelConfig().to_dict()
    model["vocab_size"] = 0              # 0: the tokenizer's vocabulary, rounded up to vocab_multiple
    model["vocab_multiple"] = 64         # the reference pads GPT-2's 50257 to 50304 (a multiple of 64)
    c.model = ml_collections.ConfigDict(model)

    c.data = ml_collections.ConfigDict(dict(
        path="",                         # a prepared-data folder (python -m mosaic_jax.prepare_data)
        seq_len=0,                       # 0: model.block_size
        packing=False,                   # document-wise rows with segment ids (GPT-2 only)
        num_workers=0,                   # grain worker processes computing batches (0: in the main process)
        eval_seed=0,                     # fixed evaluation batches, the same at every evaluation
    ))

    o = OptimConfig()
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, global_batch=8, microbatches=1, seed=0,
        lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps, decay_steps=0,   # 0: = steps
        b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
        dropout=True,                    # False: train with dropout off whatever the model's rates
        log_every=10, eval_every=500, eval_batches=10, eval_batch_size=0,       # 0: = global_batch
        checkpoint_every=500, keep_checkpoints=3, async_checkpoint=True, export_params=True,
        sample_prompt="Once upon a time", sample_tokens=64, sample_temperature=0.8,
        peak_flops=0.0,                  # per-device peak FLOP/s for MFU; 0: table (accelerators) / measured (CPU)
        compilation_cache_dir="",        # persistent XLA cache ("" = off; JAX_COMPILATION_CACHE_DIR also works)
        trackers=trackers.DEFAULT,       # comma-separated: jsonl, tensorboard, wandb (extra [wandb])
        wandb_project="mosaic_jax",      # W&B project (trackers containing wandb)
        profile_steps="",                # "START:END": jax.profiler trace of steps START..END-1 ("" = off)
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))   # -1: the remaining devices
    c.lock()
    return c


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The validated config: typed model/optimizer configs plus the (resolved) ConfigDict."""
    model: ModelConfig
    optim: OptimConfig
    cfg: ml_collections.ConfigDict

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.cfg.to_json_best_effort())


def _require(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r}: {why}")


def padded_vocab(n: int, multiple: int) -> int:
    return int(math.ceil(n / max(multiple, 1)) * max(multiple, 1))


def parse_profile_steps(spec: str, steps: int) -> Optional[tuple[int, int]]:
    """`"START:END"` -> (START, END), the steps START..END-1 to trace; "" -> None. Raises ConfigError."""
    if not str(spec).strip():
        return None
    parts = str(spec).split(":")
    try:
        start, end = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        start = end = None
    _require(start is not None and end is not None, "train.profile_steps", spec, "expected START:END, e.g. '10:15'")
    _require(0 <= start < end <= steps, "train.profile_steps", spec,
             f"needs 0 <= START < END <= train.steps={steps}")
    return start, end


def resolve(cfg: ml_collections.ConfigDict, data_vocab_size: Optional[int] = None,
            data_parallel: int = 1, process_count: int = 1) -> Resolved:
    """Validate `cfg` and fill derived fields (on a copy). Raises ConfigError naming the field."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # unlocked deep copy: the caller's config is untouched
    for section in ("model", "data", "train", "mesh"):
        _require(section in cfg, section, None, "missing config section")
    m, d, t = cfg.model, cfg.data, cfg.train

    _require(bool(d.path), "data.path", d.path, "set it to a prepared-data folder (python -m mosaic_jax.prepare_data)")
    if data_vocab_size is not None:
        if m.vocab_size == 0:
            m.vocab_size = padded_vocab(data_vocab_size, m.vocab_multiple)
        _require(m.vocab_size >= data_vocab_size, "model.vocab_size", m.vocab_size,
                 f"smaller than the tokenizer's vocabulary ({data_vocab_size})")
    _require(m.vocab_size > 0, "model.vocab_size", m.vocab_size, "must be positive (or 0 with data.path set)")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        model_cfg = ModelConfig(**{k: v for k, v in m.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).replace("ModelConfig.", "model.")) from None

    if d.seq_len == 0:
        d.seq_len = model_cfg.block_size
    _require(d.seq_len > 0, "data.seq_len", d.seq_len, "must be positive")
    fam = registry.of(model_cfg)
    limit = fam.max_positions(model_cfg)
    if limit is not None:
        _require(d.seq_len <= limit, "data.seq_len", d.seq_len,
                 f"exceeds model.block_size={limit} ({fam.title or fam.name} has learned positions)")
    _require(not (d.packing and not fam.document_masking), "data.packing", d.packing,
             f"document masking is not supported by {fam.title or fam.name} (it reads across documents)")

    for name in ("steps", "global_batch", "microbatches", "checkpoint_every", "keep_checkpoints", "log_every"):
        _require(int(t[name]) > 0, f"train.{name}", t[name], "must be positive")
    for name in ("eval_every", "eval_batches", "sample_tokens", "seed", "warmup_steps"):
        _require(int(t[name]) >= 0, f"train.{name}", t[name], "must be >= 0")
    rows = t.global_batch // t.microbatches
    _require(t.global_batch % t.microbatches == 0, "train.microbatches", t.microbatches,
             f"does not divide train.global_batch={t.global_batch}")
    _require(rows % data_parallel == 0, "train.global_batch", t.global_batch,
             f"each of the {t.microbatches} microbatch(es) has {rows} rows, not divisible by the "
             f"{data_parallel} data-parallel devices (mesh.data x mesh.fsdp)")
    _require(t.global_batch % process_count == 0, "train.global_batch", t.global_batch,
             f"not divisible by the {process_count} processes")
    if t.decay_steps == 0:
        t.decay_steps = t.steps
    if t.eval_batch_size == 0:
        t.eval_batch_size = t.global_batch
    _require(t.eval_batch_size % data_parallel == 0, "train.eval_batch_size", t.eval_batch_size,
             f"not divisible by the {data_parallel} data-parallel devices")
    try:
        trackers.parse(t.trackers)
    except ValueError as e:
        raise ConfigError(f"train.trackers: {e}") from None
    parse_profile_steps(t.profile_steps, t.steps)
    try:
        optim_cfg = OptimConfig(lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, decay_steps=t.decay_steps,
                                b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg.lock()
    return Resolved(model=model_cfg, optim=optim_cfg, cfg=cfg)
