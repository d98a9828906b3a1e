"""Training configuration: an ml_collections ConfigDict with sections `model`, `impl`, `data`, `train`, `optim`,
`mesh`.

Experiment presets (`mosaic_jax/presets/*.py`, `--config=NAME`) start from `base_config()` and change a few
fields; the command line overrides any field (`--config.train.steps=100`). The dict is locked, so a misspelt field
is an error, and a field that moved names its new place (legacy_config). Every field's type, default and help are
declared once, in the typed sections (training/sections.py, models/config.py, each family's fields); `base_config()`
is made from them.

`resolve()` validates everything up front (types included) and fills the derived fields (vocab size from the data,
decay steps = steps, ...) so that bad input fails before anything is written. It returns the typed sections
(`Resolved.model/optim/data/train/mesh`), with every "auto" implementation switch the family reads replaced by
what the rules of ops/dispatch.py choose on this backend (`model`: the training step, `eval_model`: evaluation;
`requested_model` as asked), and `Resolved.impl`, the record of both, written to config.json as `resolved_impl`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Optional

import ml_collections

from mosaic_jax.config_fields import build, check_type, describe
from mosaic_jax.kernels import platform
from mosaic_jax.models import registry
from mosaic_jax.models.config import ImplConfig, ModelConfig, common_fields
from mosaic_jax.ops import dispatch
from mosaic_jax.training import legacy_config, sections, trackers
from mosaic_jax.training.sections import DataConfig, MeshConfig, OptimConfig, TrainConfig


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def base_config(family_module: str = "") -> ml_collections.ConfigDict:
    """The locked ConfigDict of every section's command-line defaults (training/sections.all_sections): the
    `model` section has every registered family's fields (a plug-in's too when its `family_module` is given, as
    a preset for it does)."""
    c = ml_collections.ConfigDict()
    for section in sections.all_sections(family_module):
        c[section.name] = ml_collections.ConfigDict(section.defaults())
    if family_module:
        c.model.family_module = family_module
    c.lock()
    return c


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The validated config: the typed sections, the resolved implementation switches and the ConfigDict.

    `model` is what the training step runs: every "auto" implementation switch of the family replaced by the
    choice of ops/dispatch.py for this backend, sequence length and dropout; `eval_model` the same for the
    evaluation step (no dropout); `requested_model` keeps the switches as asked, for what outlives the run
    (exports, decoding at other lengths), which choose again where they run."""
    model: ModelConfig
    eval_model: ModelConfig
    requested_model: ModelConfig
    optim: OptimConfig
    cfg: ml_collections.ConfigDict
    data: DataConfig
    train: TrainConfig
    mesh: MeshConfig
    impl: dict[str, Any]   # {"backend", "seq_len", "requested", "train": {switch: impl}, "eval"} (resolve_impl)

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
    for section in sections.all_sections(str(raw.get("model", {}).get("family_module", ""))):
        _require(section.name in raw, section.name, None, "missing config section")
        known = {f.name: f for f in section.fields()}
        for name in raw[section.name]:
            moved = legacy_config.moved_to(f"{section.name}.{name}")
            _require(name in known, f"{section.name}.{name}", raw[section.name][name],
                     f"this field moved to {moved}" if moved else "no such config field")
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
        raise ConfigError(str(e).replace("model.", "impl.")) from None
    return {"backend": backend, "seq_len": seq_len, "requested": dataclasses.asdict(model_cfg.impl),
            "train": train, "eval": evaluation}


def model_of(run: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig to load a run's parameters with, from its config.json (or a bare flat model config, such
    as an export's model_config.json): the `model` section and the implementation switches as the run asked for
    them (`resolved_impl.requested`), so that decoding and evaluation choose again for their own backend and
    lengths. A config.json of an earlier layout (switches inside `model`) reads the same."""
    model = run.get("model", run)
    requested = run.get("resolved_impl", {}).get("requested", {}) if "model" in run else {}
    return ModelConfig.from_dict({**model, **requested})


def _model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """The requested ModelConfig from the `model` and `impl` sections: the shared fields and those of the family
    `model.arch` names. The section may hold other families' fields too (one preset for a comparison, the
    family picked on the command line): they are left out, and config.json shows only the family's. Raises
    ConfigError naming the field."""
    m = cfg.model
    try:
        fam = registry.get(m.arch, m.family_module)
        own = [f.name for f in common_fields()] + [f.name for f in describe(fam.fields)]
        return ModelConfig(**{k: m[k] for k in own}, impl=build(ImplConfig, cfg.impl, "impl"))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).replace("ModelConfig.", "model.")) from None


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
    model_cfg = _model_config(cfg)

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
                        documents=bool(d.packing) and getattr(model_cfg, "doc_masking", True))
    # "auto" resolved once: the training and evaluation steps run these choices, and config.json shows them.
    train_model, eval_model = model_cfg.replace(**impl["train"]), model_cfg.replace(**impl["eval"])
    cfg.model = ml_collections.ConfigDict({**train_model.model_dict(), "vocab_multiple": m.vocab_multiple})
    cfg.impl = ml_collections.ConfigDict(dataclasses.asdict(train_model.impl))
    cfg.lock()
    return Resolved(model=train_model, eval_model=eval_model, requested_model=model_cfg, optim=optim_cfg, cfg=cfg,
                    data=build(DataConfig, d, "data"),
                    train=build(TrainConfig, t, "train"), mesh=build(MeshConfig, cfg.mesh, "mesh"), impl=impl)
