"""The typed sections of the training config: `model` (the shared fields of ModelConfig, then each family's own
section), `impl` (ImplConfig: the implementation switches), `data`, `train` (TrainConfig), `optim` (the optimizer's
OptimConfig) and `mesh`.

Each field's type, default and help are written once, here (and in models/config.py for the model), as dataclass
field metadata: `run_config.base_config()` takes its ConfigDict defaults from them, `run_config.resolve()` builds
the frozen dataclasses from the (overridden) ConfigDict, and `train --help` lists them. A field whose command-line
default means "derived at resolve time" (0 for `optim.decay_steps`: = train.steps) says so in `Section.derived`.
No JAX at import: every CLI imports this module; only listing the `model` section loads the families (and JAX).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from mosaic_jax.config_fields import FieldInfo, describe, field
from mosaic_jax.models import registry
from mosaic_jax.models.config import ImplConfig, ModelConfig
from mosaic_jax.training import trackers


@dataclasses.dataclass(frozen=True)
class ModelExtras:
    """`model.*` fields that are not ModelConfig's: how resolve() derives model.vocab_size."""
    vocab_multiple: int = field(64, "round the tokenizer's vocabulary up to a multiple of this (GPT-2: 50257 -> 50304)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str = field("", "a prepared-data folder or gs:// URL (python -m mosaic_jax.prepare_data)")
    seq_len: int = field(0, "tokens per row (0: model.block_size)")
    packing: bool = field(False, "document-wise rows with segment ids (families with document masking)")
    num_workers: int = field(0, "grain worker processes computing batches (0: in the main process)")
    eval_seed: int = field(0, "seed of the fixed evaluation batches, the same at every evaluation")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = field(1000, "optimizer steps of the run")
    global_batch: int = field(8, "rows per step, over all devices and microbatches")
    microbatches: int = field(1, "gradient accumulation: the step's rows in this many sequential slices")
    seed: int = field(0, "parameter init, dropout and the order of the training batches")
    dropout: bool = field(True, "False: train with dropout off whatever the model's rates")
    log_every: int = field(10, "steps between metric lines (console and trackers)")
    eval_every: int = field(500, "steps between held-out evaluations and samples (0: off)")
    eval_batches: int = field(10, "batches per held-out evaluation")
    eval_batch_size: int = field(0, "rows per evaluation batch (0: train.global_batch)")
    checkpoint_every: int = field(500, "steps between checkpoints (and one at the end)")
    keep_checkpoints: int = field(3, "newest checkpoints kept")
    async_checkpoint: bool = field(True, "save checkpoints in the background while training goes on")
    export_params: bool = field(True, "write workdir/export/ (params + model_config.json) at the end")
    sample_prompt: str = field("Once upon a time", "prompt of the text sampled at each evaluation")
    sample_tokens: int = field(64, "tokens sampled at each evaluation (0: no sample)")
    sample_temperature: float = field(0.8, "sampling temperature of that text")
    peak_flops: float = field(0.0, "per-device peak FLOP/s for MFU (0: table on accelerators, measured on CPU)")
    compilation_cache_dir: str = field("", "persistent XLA cache dir (\"\": off; JAX_COMPILATION_CACHE_DIR works too)")
    trackers: str = field(trackers.DEFAULT, "comma-separated metric sinks: jsonl, tensorboard, wandb (extra [wandb])")
    wandb_project: str = field("mosaic_jax", "W&B project (when trackers contains wandb)")
    profile_steps: str = field("", "\"START:END\": a jax.profiler trace of steps START..END-1 (\"\": off)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = field(1, "devices along the pure data-parallel axis")
    fsdp: int = field(-1, "devices along the FSDP axis (-1: the remaining devices)")
    tensor: int = field(1, "devices along the tensor-parallel axis (heads)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer (training/optim.py): the `optim` section, `--config.optim.lr`, ... (older versions: `train.*`)."""
    lr: float = field(5e-3, "peak learning rate")
    min_lr: float = field(1e-4, "learning rate at the end of the cosine")
    warmup_steps: int = field(2000, "linear warm-up steps")
    decay_steps: int = field(80000, "step at which the cosine reaches min_lr (the reference's lr_decay_iters)")
    b1: float = field(0.9, "AdamW beta1")
    b2: float = field(0.95, "AdamW beta2")
    eps: float = field(1e-8, "AdamW epsilon")
    weight_decay: float = field(0.1, "AdamW weight decay (tensors with >= 2 dimensions only)")
    grad_clip: float = field(1.0, "global-norm gradient clipping (0: off)")

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"optim.lr={self.lr}, optim.min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps}, optim.decay_steps={self.decay_steps}: "
                             "need warmup_steps >= 0 and decay_steps >= 1")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip}, optim.weight_decay={self.weight_decay} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of the ConfigDict: the dataclasses whose fields it holds, and the fields whose command-line
    default is a placeholder that resolve() fills (name -> (placeholder, what it means))."""
    name: str
    classes: tuple[type, ...]
    derived: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)

    def fields(self) -> list[FieldInfo]:
        out, seen = [], set()
        for cls in self.classes:
            for f in describe(cls):
                if f.name in seen:   # a field two families declare (a plug-in reusing a built-in's name)
                    continue
                seen.add(f.name)
                if f.name in self.derived:
                    placeholder, meaning = self.derived[f.name]
                    f = dataclasses.replace(f, default=placeholder, help=f"{f.help} ({meaning})")
                out.append(f)
        return out

    def defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in self.fields()}


def model_section(family_module: str = "") -> Section:
    """`model`: the fields every family has, then each registered family's own (Family.fields, e.g. the v1
    mosaic's pmem_size, v2's short_window), with `family_module` imported first so that a plug-in's fields can
    be set too. resolve() keeps the shared fields and those of the chosen `arch`."""
    if family_module:
        importlib.import_module(family_module)
    own = tuple(dict.fromkeys(f.fields for f in registry.families()))
    return Section("model", (ModelConfig, ModelExtras, *own),
                   {"vocab_size": (0, "0: the tokenizer's vocabulary, rounded up to model.vocab_multiple")})


def all_sections(family_module: str = "") -> tuple[Section, ...]:
    """The sections in config order (a function: listing the families' fields imports them, and JAX)."""
    return (model_section(family_module), *SECTIONS)


SECTIONS = (   # the sections that do not depend on the registered families
    Section("impl", (ImplConfig,)),
    Section("data", (DataConfig,)),
    Section("train", (TrainConfig,)),
    Section("optim", (OptimConfig,), {"decay_steps": (0, "0: = train.steps")}),
    Section("mesh", (MeshConfig,)),
)


def owners() -> dict[str, list[str]]:
    """{model field: the families whose own section declares it} (the shared fields are in none)."""
    out: dict[str, list[str]] = {}
    for fam in registry.families():
        for f in describe(fam.fields):
            out.setdefault(f.name, []).append(fam.name)
    return out


def help_lines() -> list[str]:
    """`--config.<section>.<field> (type, default D): help`, one line per field, for `--help`; a family's own
    model field says whose it is (`[mosaic_v2]`)."""
    own = owners()
    return [f"  --config.{s.name}.{f.name} ({f.type.__name__}, default {f.default!r}): "
            + (f"[{', '.join(own[f.name])}] " if s.name == "model" and f.name in own else "") + f.help
            for s in all_sections() for f in s.fields()]
