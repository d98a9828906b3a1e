"""Model configuration: one frozen (hashable) dataclass shared by the memory mosaic and the GPT-2 baseline.

Field names follow the official PyTorch reference (`model_args` in its checkpoints), so a reference
checkpoint maps onto a config without renaming.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

Arch = Literal["mosaic", "gpt2"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "mosaic"
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 512          # training window; the memory mosaic itself has no position limit
    pmem_size: int = 2688          # P: persistent-memory slots per head (3.5 C matches GPT-2's MLP)
    pmem_count: int = 1            # number of slot tables averaged per head
    v_shift: int = 1               # value look-ahead (only 1 is supported, as in the paper)
    k_kernel_size: int = 1         # key feature conv width, left padded
    v_kernel_size: int = 2         # value feature kernel (`lowrlinearconv` needs 2)
    ic_dropout: float = 0.05       # dropout on memory read weights (C-mem and P-mem)
    hd_dropout: float = 0.05       # dropout on each residual branch output
    bias: bool = False
    pre_ln: bool = True
    weight_tying: bool = True
    # --- implementation choices (do not change the function computed) ---
    dtype: str = "float32"         # compute dtype; params stay float32, softmax and logits float32
    leaky_impl: str = "auto"       # "matrix" | "scan" | "chunked" | "auto" (by sequence length)
    cmem_impl: str = "auto"        # "dense" | "flash" | "auto" (see memory.contextual_retrieval)
    scan_layers: bool = True       # lax.scan over stacked layers (fast compile) or an unrolled loop
    remat: str = "none"            # "none" | "full" | "dots" (jax.checkpoint policy per block)

    def __post_init__(self) -> None:
        if self.arch not in ("mosaic", "gpt2"):
            raise ValueError(f"ModelConfig.arch must be 'mosaic' or 'gpt2', got {self.arch!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.arch == "mosaic":
            if self.v_shift != 1:
                raise ValueError(f"ModelConfig.v_shift={self.v_shift}: only 1 is supported (the reference's value)")
            if self.v_kernel_size != 2:
                raise ValueError(f"ModelConfig.v_kernel_size={self.v_kernel_size}: lowrlinearconv needs 2")
            if self.k_kernel_size < 1:
                raise ValueError(f"ModelConfig.k_kernel_size={self.k_kernel_size} must be >= 1")
        for name, allowed in (("leaky_impl", ("auto", "matrix", "scan", "chunked")),
                              ("cmem_impl", ("auto", "dense", "flash")),
                              ("remat", ("none", "full", "dots")),
                              ("dtype", ("float32", "bfloat16", "float16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} not in {allowed}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

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


# Sizes from the paper and the reference scripts.
PAPER_MOSAIC_12L = ModelConfig()
PAPER_GPT2_12L = ModelConfig(arch="gpt2")
