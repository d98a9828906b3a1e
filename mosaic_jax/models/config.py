"""Model configuration: one frozen (hashable) dataclass shared by every model family (models/registry.py).

The defaults are the paper's 12-layer BabiStories memory mosaic (`ModelConfig()`; `arch="gpt2"` for its baseline).

Field names follow the official PyTorch reference (`model_args` in its checkpoints), so a reference
checkpoint maps onto a config without renaming.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mosaic_jax.config_fields import field

Arch = str   # a registered family: "mosaic", "gpt2", "mosaic_v2", or a plug-in's name (models/registry.py)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Arch = field("mosaic", "model family: mosaic, gpt2, mosaic_v2, or a plug-in's registered name")
    family_module: str = field("", "module that registers a plug-in family `arch` (imported on first use)")
    vocab_size: int = field(50304, "vocabulary size (rows of the token table)")
    n_layer: int = field(12, "number of blocks")
    n_head: int = field(12, "heads per memory (attention heads for gpt2)")
    n_embd: int = field(768, "model width C")
    block_size: int = field(512, "training window; the memory mosaic itself has no position limit")
    pmem_size: int = field(2688, "P: persistent-memory slots per head (3.5 C matches GPT-2's MLP)")
    pmem_count: int = field(1, "number of slot tables averaged per head")
    v_shift: int = field(1, "value look-ahead (only 1 is supported, as in the paper)")
    k_kernel_size: int = field(1, "key feature conv width, left padded")
    v_kernel_size: int = field(2, "value feature kernel (`lowrlinearconv` needs 2)")
    ic_dropout: float = field(0.05, "dropout on memory read weights (C-mem and P-mem)")
    hd_dropout: float = field(0.05, "dropout on each residual branch output")
    bias: bool = field(False, "biases in projections and LayerNorms")
    pre_ln: bool = field(True, "LayerNorm before each branch (pre-LN) rather than after")
    weight_tying: bool = field(True, "the output head is the token table")
    # --- implementation choices (do not change the function computed); "auto" is resolved by the rules in
    # ops/dispatch.py, and a training run records what they chose (config.json, `resolved_impl`) ---
    dtype: str = field("float32", "compute dtype; params stay float32, softmax and logits float32")
    leaky_impl: str = field("auto", 'leaky key average: "matrix" | "scan" | "chunked" | "auto"')
    cmem_impl: str = field("auto", 'contextual read: "dense" | "flash" | "fused" | "pallas" | "auto"')
    pmem_impl: str = field("auto", 'persistent read: "dense" | "flash" | "fused" | "pallas" | "auto"')
    loss_impl: str = field("auto", 'tied head + cross-entropy: "dense" | "fused" | "auto" (lm.loss_sum)')
    proj_impl: str = field("auto", 'projections: "dense" (einsum) | "fused" (dense_vjp.matmul) | "auto"')
    scan_layers: bool = field(True, "lax.scan over stacked layers (fast compile) or an unrolled loop")
    remat: str = field("none", '"none" | "full" | "dots" (jax.checkpoint policy per block)')
    # --- Memory Mosaics v2 (arch="mosaic_v2", spec §5, docs/v2.md); ignored by the other architectures ---
    n_head_short: int = field(-1, "short-term memory heads of size head_dim (-1: n_head; 0: no short-term memory)")
    n_head_long: int = field(-1, "long-term memory heads (-1: n_head; 0: no long-term memory)")
    short_window: int = field(256, "h: the short-term memory reads the pairs t-h+1 .. t-1")
    short_oldest: str = field("t-h+1", 'oldest short-term pair: "t-h+1" (v2 main text) or "t-h" (v2 appendix Fig. 11)')
    long_skip_min: int = field(64, "training: the long-term memory reads pairs 1 .. t-m, m ~ U{min..max}")
    long_skip_max: int = field(256, "upper end of m (m is drawn per sequence from the 'dropout' rng stream)")
    long_skip_eval: int = field(64, "m in eval mode (no rng) and at inference")
    ffn_hidden: int = field(0, "SwiGLU (persistent memory) hidden size d' (0: 3 * n_embd)")
    doc_masking: bool = field(True, "honour segment ids: document-wise masks and key-state reset at doc starts")
    v2_impl: str = field("auto", 'retrieval: "dense" | "flash" | "blockwise" | "pallas" | "auto" (memory_v2.retrieve)')
    v2_key_impl: str = field("auto", 'gated key recurrence: "scan" | "matrix" | "auto"')

    def __post_init__(self) -> None:
        from mosaic_jax.models import registry   # here: the families import this module
        registry.of(self).validate(self)
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name, allowed in (("leaky_impl", ("auto", "matrix", "scan", "chunked")),
                              ("cmem_impl", ("auto", "dense", "flash", "fused", "pallas")),
                              ("pmem_impl", ("auto", "dense", "flash", "fused", "pallas")),
                              ("loss_impl", ("auto", "dense", "fused")),
                              ("proj_impl", ("auto", "dense", "fused")),
                              ("remat", ("none", "full", "dots")),
                              ("dtype", ("float32", "bfloat16", "float16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} not in {allowed}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def short_heads(self) -> int:
        return self.n_head if self.n_head_short == -1 else self.n_head_short

    @property
    def long_heads(self) -> int:
        return self.n_head if self.n_head_long == -1 else self.n_head_long

    @property
    def short_lookback(self) -> int:
        """Pairs the v2 short-term memory holds: h-1 (pairs t-h+1..t-1) or h (pairs t-h..t-1)."""
        return self.short_window - 1 if self.short_oldest == "t-h+1" else self.short_window

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden or 3 * self.n_embd

    @property
    def logit_divisor(self) -> float:
        """What the family divides the logits by (the v1 mosaic: √C, as the reference does; the others: 1)."""
        from mosaic_jax.models import registry
        return registry.of(self).logit_divisor(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = False) -> "ModelConfig":
        """Build from a dict; unknown keys raise when `strict`, else are ignored (reference model_args)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if strict and unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

