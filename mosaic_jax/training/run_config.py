"""Training configuration: an ml_collections ConfigDict with sections `model`, `data`, `train`, `optim`, `mesh`.

Experiment presets (`mosaic_jax/presets/*.py`, `--config=NAME`) start from `base_config()` and change a few
fields; the command line overrides any field (`--config.train.steps=100`). The dict is locked, so a misspelt field
is an error. Every field's type, default and help are declared once, in the typed sections (training/sections.py,
models/config.py); `base_config()` is made from them.

`resolve()` validates everything up front (types included) and fills the derived fields (vocab size from the data,
decay steps = steps, ...) so that bad input fails before anything is written. It returns the typed sections
(`Resolved.model/optim/data/train/mesh`) and `Resolved.impl`: what each "auto" implementation switch the family
reads resolves to on this backend for the training step (ops/dispatch.py), recorded in config.json as
`resolved_impl`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import ml_collections

from mosaic_jax.config_fields import build, check_type
from mosaic_jax.kernels import platform
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.ops import dispatch
from mosaic_jax.training import sections, trackers
from mosaic_jax.training.sections import DataConfig, MeshConfig, OptimConfig, TrainConfig


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def base_config() -> ml_collections.ConfigDict:
    """The locked ConfigDict of every section's command-line defaults (training/sections.SECTIONS)."""
    c = ml_collections.ConfigDict()
    for section in sections.SECTIONS:
        c[section.name] = ml_collections.ConfigDict(section.defaults())
    c.lock()
    return c


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The validated config: the typed sections, the resolved implementation switches and the ConfigDict."""
    model: ModelConfig
    optim: OptimConfig
    cfg: ml_collections.ConfigDict
    data: DataConfig
    train: TrainConfig
    mesh: MeshConfig
    impl: dict[str, Any]   # {"backend", "seq_len", "train": {switch: impl}, "eval": {...}} (resolve_impl)

    def to_dict(self) -> dict[str, Any]:
        """The run's config.json: the resolved ConfigDict plus `resolved_impl`."""
        return {**json.loads(self.cfg.to_json_best_effort()), "resolved_impl": self.impl}


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


def _checked(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (a config as plain dicts) with every section present, no unknown field and each value of its field's
    type (an int given for a float becomes a float). Raises ConfigError naming the field."""
    for section in sections.SECTIONS:
        _require(section.name in raw, section.name, None, "missing config section")
        known = {f.name: f for f in section.fields()}
        for name in raw[section.name]:
            _require(name in known, f"{section.name}.{name}", raw[section.name][name], "no such config field")
        for name, f in known.items():
            if name in raw[section.name]:
                try:
                    raw[section.name][name] = check_type(raw[section.name][name], f.type, f"{section.name}.{name}")
                except TypeError as e:
                    raise ConfigError(str(e)) from None
    return raw


def resolve_impl(model_cfg: ModelConfig, backend: str, seq_len: int, *, dropout: bool, documents: bool
                 ) -> dict[str, Any]:
    """What each implementation switch the family reads runs as on `backend` (ops/dispatch.py): for the training
    step (`dropout`: read dropout on) and for evaluation (no dropout). Decoding and sampling call the same rules at
    their own lengths. Raises ConfigError for a choice that cannot run (e.g. "flash" with read dropout)."""
    switches = registry.of(model_cfg).impl_switches
    try:
        train = dispatch.resolve_impl(model_cfg, backend, seq_len, dropout=dropout, documents=documents,
                                      switches=switches)
        evaluation = dispatch.resolve_impl(model_cfg, backend, seq_len, dropout=False, documents=documents,
                                           switches=switches)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"backend": backend, "seq_len": seq_len, "train": train, "eval": evaluation}


def resolve(cfg: ml_collections.ConfigDict, data_vocab_size: Optional[int] = None,
            data_parallel: int = 1, process_count: int = 1, *, backend: Optional[str] = None,
            require_data: bool = True) -> Resolved:
    """Validate `cfg` and fill derived fields (on a copy). Raises ConfigError naming the field.

    `backend`: what the "auto" switches are resolved for (default: platform.backend(), the compile target inside
    `platform.target`). `require_data=False` (`train --print_config`): data.path may be unset and
    model.vocab_size stays 0 when the data's vocabulary is not known."""
    cfg = ml_collections.ConfigDict(_checked(cfg.to_dict()))  # unlocked deep copy: the caller's config is untouched
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim

    if require_data:
        _require(bool(d.path), "data.path", d.path,
                 "set it to a prepared-data folder (python -m mosaic_jax.prepare_data)")
    if data_vocab_size is not None:
        if m.vocab_size == 0:
            m.vocab_size = padded_vocab(data_vocab_size, m.vocab_multiple)
        _require(m.vocab_size >= data_vocab_size, "model.vocab_size", m.vocab_size,
                 f"smaller than the tokenizer's vocabulary ({data_vocab_size})")
    _require(m.vocab_size > 0 or not require_data, "model.vocab_size", m.vocab_size,
             "must be positive (or 0 with data.path set)")
    try:
        model_cfg = build(ModelConfig, m, "model")
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
    for name in ("eval_every", "eval_batches", "sample_tokens", "seed"):
        _require(int(t[name]) >= 0, f"train.{name}", t[name], "must be >= 0")
    _require(int(o.warmup_steps) >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    rows = t.global_batch // t.microbatches
    _require(t.global_batch % t.microbatches == 0, "train.microbatches", t.microbatches,
             f"does not divide train.global_batch={t.global_batch}")
    _require(rows % data_parallel == 0, "train.global_batch", t.global_batch,
             f"each of the {t.microbatches} microbatch(es) has {rows} rows, not divisible by the "
             f"{data_parallel} data-parallel devices (mesh.data x mesh.fsdp)")
    _require(t.global_batch % process_count == 0, "train.global_batch", t.global_batch,
             f"not divisible by the {process_count} processes")
    if o.decay_steps == 0:
        o.decay_steps = t.steps
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
        optim_cfg = build(OptimConfig, o, "optim")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    impl = resolve_impl(model_cfg, backend or platform.backend(), int(d.seq_len),
                        dropout=bool(t.dropout) and model_cfg.ic_dropout > 0,
                        documents=bool(d.packing) and model_cfg.doc_masking)
    cfg.lock()
    return Resolved(model=model_cfg, optim=optim_cfg, cfg=cfg, data=build(DataConfig, d, "data"),
                    train=build(TrainConfig, t, "train"), mesh=build(MeshConfig, cfg.mesh, "mesh"), impl=impl)
