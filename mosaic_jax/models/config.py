"""Model configuration: the shared fields, the family's own section and the implementation switches.

`ModelConfig` is one frozen (hashable) dataclass, the static argument of every jitted model function. It has three
parts, each a typed section of the training config:

* the fields every family reads (`arch`, sizes, dropouts, ...), declared below;
* `fields`: the family's own section, the dataclass its `Family.fields` names (models/registry.py): the v1
  mosaic's `MosaicFields` (persistent-memory slots, kernel sizes), v2's `V2Fields` (short/long-term memories),
  none for GPT-2, or a plug-in's own;
* `impl`: `ImplConfig`, how to compute (dtype, kernels, scan, remat); "auto" is turned into a choice by the rules in
  ops/dispatch.py, once per training run (`run_config.resolve`).

Every field reads flat (`cfg.pmem_size`, `cfg.cmem_impl`) and the constructor, `replace`, `to_dict` and
`from_dict` take flat names, so a reference checkpoint's `model_args` maps onto a config without renaming (the
field names follow the official PyTorch reference). A name the family does not have is refused in one line.

The defaults are the paper's 12-layer BabiStories memory mosaic (`ModelConfig()`; `arch="gpt2"` for its baseline).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from mosaic_jax.config_fields import field

Arch = str   # a registered family: "mosaic", "gpt2", "mosaic_v2", or a plug-in's name (models/registry.py)


@dataclasses.dataclass(frozen=True)
class NoFields:
    """The section of a family without fields of its own (GPT-2)."""


@dataclasses.dataclass(frozen=True)
class ImplConfig:
    """Implementation choices: they do not change the function computed (dtype: up to rounding)."""
    dtype: str = field("float32", "compute dtype; params stay float32, softmax and logits float32")
    leaky_impl: str = field("auto", 'leaky key average: "matrix" | "scan" | "chunked" | "auto"')
    cmem_impl: str = field("auto", 'contextual read: "dense" | "flash" | "fused" | "pallas" | "auto"')
    pmem_impl: str = field("auto", 'persistent read: "dense" | "flash" | "fused" | "pallas" | "auto"')
    loss_impl: str = field("auto", 'tied head + cross-entropy: "dense" | "fused" | "auto" (lm.loss_sum)')
    proj_impl: str = field("auto", 'projections: "dense" (einsum) | "fused" (dense_vjp.matmul) | "auto"')
    v2_impl: str = field("auto", 'v2 retrieval: "dense" | "flash" | "blockwise" | "pallas" | "auto"')
    v2_key_impl: str = field("auto", 'v2 gated key recurrence: "scan" | "matrix" | "auto"')
    scan_layers: bool = field(True, "lax.scan over stacked layers (fast compile) or an unrolled loop")
    remat: str = field("none", '"none" | "full" | "dots" (jax.checkpoint policy per block)')

    ALLOWED: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "dtype": ("float32", "bfloat16", "float16"),
        "leaky_impl": ("auto", "matrix", "scan", "chunked"),
        "cmem_impl": ("auto", "dense", "flash", "fused", "pallas"),
        "pmem_impl": ("auto", "dense", "flash", "fused", "pallas"),
        "loss_impl": ("auto", "dense", "fused"),
        "proj_impl": ("auto", "dense", "fused"),
        "v2_impl": ("auto", "dense", "flash", "blockwise", "pallas"),
        "v2_key_impl": ("auto", "scan", "matrix"),
        "remat": ("none", "full", "dots"),
    }

    def __post_init__(self) -> None:
        for name, allowed in self.ALLOWED.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"impl.{name}={getattr(self, name)!r} not in {allowed}")


def _nested(help: str) -> Any:   # noqa: A002 - a section inside ModelConfig, filled by its __init__
    return dataclasses.field(default=None, metadata={"help": help, "nested": True})


@dataclasses.dataclass(frozen=True, init=False)
class ModelConfig:
    arch: Arch = field("mosaic", "model family: mosaic, gpt2, mosaic_v2, or a plug-in's registered name")
    family_module: str = field("", "module that registers a plug-in family `arch` (imported on first use)")
    vocab_size: int = field(50304, "vocabulary size (rows of the token table)")
    n_layer: int = field(12, "number of blocks")
    n_head: int = field(12, "heads per memory (attention heads for gpt2)")
    n_embd: int = field(768, "model width C")
    block_size: int = field(512, "training window; the memory mosaic itself has no position limit")
    ic_dropout: float = field(0.05, "dropout on memory read weights (C-mem and P-mem; attention for gpt2)")
    hd_dropout: float = field(0.05, "dropout on each residual branch output")
    bias: bool = field(False, "biases in projections and LayerNorms")
    weight_tying: bool = field(True, "the output head is the token table")
    fields: Any = _nested("the family's own section (Family.fields)")
    impl: Any = _nested("implementation switches (ImplConfig)")

    def __init__(self, **kwargs: Any) -> None:
        """Flat keyword arguments (any field of the three parts), or `fields=` / `impl=` section objects that the
        flat ones then override (what `dataclasses.replace` passes)."""
        from mosaic_jax.models import registry   # here: registry (and the families) import this module
        for f in common_fields():
            object.__setattr__(self, f.name, kwargs.pop(f.name, f.default))
        family = registry.of(self)
        section = family.fields
        base, impl = kwargs.pop("fields", None), kwargs.pop("impl", None)
        own = {f.name for f in dataclasses.fields(section)}
        # A section object of another family (after replace(arch=...)) gives only the fields the new one has too.
        carried = {k: v for k, v in _as_dict(base).items() if k in own}
        fam_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in own}
        impl_names = {f.name for f in dataclasses.fields(ImplConfig)}
        impl_kw = {**_as_dict(impl), **{k: kwargs.pop(k) for k in list(kwargs) if k in impl_names}}
        if kwargs:
            raise ValueError(f"ModelConfig.{sorted(kwargs)[0]}: not a field of arch={self.arch!r} (its own fields: "
                             f"{sorted(own) or 'none'}; shared: {[f.name for f in common_fields()]})")
        object.__setattr__(self, "fields", section(**{**carried, **fam_kw}))
        object.__setattr__(self, "impl", ImplConfig(**impl_kw))
        family.validate(self)
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    def __getattr__(self, name: str) -> Any:
        """A field of the family's section or of `impl`, or a size the section derives (`DERIVED`)."""
        parts = [self.__dict__.get("fields"), self.__dict__.get("impl")]
        if name.startswith("__") or parts[0] is None:
            raise AttributeError(name)
        for part in parts:
            if name in getattr(type(part), "__dataclass_fields__", {}):
                return getattr(part, name)
        derived = getattr(type(parts[0]), "DERIVED", {})
        if name in derived:
            return derived[name](self)
        raise AttributeError(f"ModelConfig(arch={self.arch!r}) has no field {name!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def logit_divisor(self) -> float:
        """What the family divides the logits by (the v1 mosaic: √C, as the reference does; the others: 1)."""
        from mosaic_jax.models import registry   # here: registry imports this module
        return registry.of(self).logit_divisor(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Flat: the shared fields, then the family's, then the implementation switches."""
        return {**self.model_dict(), **_as_dict(self.impl)}

    def model_dict(self) -> dict[str, Any]:
        """The `model` section of a run config: the shared fields and the family's (no implementation switches)."""
        return {**{f.name: getattr(self, f.name) for f in common_fields()}, **_as_dict(self.fields)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = False) -> "ModelConfig":
        """Build from a flat dict; keys that are not fields of the family raise when `strict`, else are ignored
        (reference model_args, or a config written when every family's fields were in one class)."""
        if strict:
            return cls(**d)
        from mosaic_jax.models import registry   # here: registry imports this module
        family = registry.get(d.get("arch", "mosaic"), d.get("family_module", ""))
        names = ({f.name for f in common_fields()} | {f.name for f in dataclasses.fields(family.fields)}
                 | {f.name for f in dataclasses.fields(ImplConfig)})
        return cls(**{k: v for k, v in d.items() if k in names})


def common_fields() -> list[dataclasses.Field]:
    """The fields every family has (ModelConfig's own, without the two nested sections)."""
    return [f for f in dataclasses.fields(ModelConfig) if not f.metadata.get("nested")]


def _as_dict(section: Any) -> dict[str, Any]:
    return {} if section is None else {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
