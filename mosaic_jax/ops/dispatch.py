"""The rules that turn an implementation switch ("auto" or an explicit choice) into the implementation that runs.

One function per switch of ModelConfig, pure in (choice, backend, shapes and modes): the ops and the model call
them at trace time with `platform.backend()` and the traced shapes, and `resolve_impl` calls the same functions
once, at config resolve time, for the training step's conditions, so the run's config.json records what ran
(`resolved_impl`). The choices were measured (docs/performance.md); change a rule here and both follow.
No JAX here: the rules see only strings and ints.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

MATRIX_MAX_T = 256   # measured: the T×T leaky average is as fast as the others up to 256 (performance_notes.md)
V2_KEY_MATRIX_MAX_T = 64   # the v2 gated-key recurrence: the T×T form up to 64, the scan beyond
V2_DENSE_MAX_T = 512       # v2 reads on CPU: dense scores up to 512, blockwise beyond


def leaky(impl: str, backend: str, T: int) -> str:
    """Leaky key average: the scan on CPU (measured fastest there), elsewhere the T×T form for short sequences
    and the chunked form for long ones."""
    if impl != "auto":
        return impl
    if backend == "cpu":
        return "scan"
    return "matrix" if T <= MATRIX_MAX_T else "chunked"


def retrieval(impl: str, backend: str, fusable: bool, dropout: bool = False) -> str:
    """A v1 memory read (contextual or persistent). "auto": "pallas" on TPU, "flash" on GPU (without dropout),
    "fused" on CPU, "dense" where none applies. `fusable`: the default kernel and mask. Explicit choices that
    cannot compute the asked function raise ValueError."""
    if impl == "auto":
        if not fusable:
            return "dense"
        if backend == "tpu":
            return "pallas"
        if backend == "gpu":
            return "dense" if dropout else "flash"
        return "fused"
    if impl != "dense" and (not fusable or (impl == "flash" and dropout)):
        raise ValueError(f"impl={impl!r} needs the default kernel and mask" + (" and no dropout" if impl == "flash"
                         else "") + "; use 'dense' or 'auto'")
    return impl


def v2_retrieval(impl: str, backend: str, T: int, documents: bool, dropout: bool) -> str:
    """A v2 read: dense on CPU up to T = 512, blockwise beyond; on TPU the Pallas kernels (document masks
    included); on GPU flash, or blockwise where flash cannot express the mask (documents) or the dropout."""
    if impl != "auto":
        return impl
    if backend == "cpu":
        return "dense" if T <= V2_DENSE_MAX_T else "blockwise"
    if backend == "tpu":
        return "pallas"
    return "blockwise" if (documents or dropout) else "flash"


def v2_keys(impl: str, T: int) -> str:
    """The v2 gated-key recurrence: the T×T form for short sequences, the scan for long ones (any backend)."""
    if impl != "auto":
        return impl
    return "matrix" if T <= V2_KEY_MATRIX_MAX_T else "scan"


def loss(impl: str, backend: str) -> str:
    """Tied head + cross-entropy: the chunked hand-written VJP on CPU, the dense logits elsewhere."""
    if impl != "auto":
        return impl
    return "fused" if backend == "cpu" else "dense"


def proj(impl: str, backend: str) -> str:
    """v1 projections: dense_vjp.matmul (float32 accumulation, hand-written VJP) on CPU, einsum elsewhere."""
    if impl != "auto":
        return impl
    return "fused" if backend == "cpu" else "dense"


SWITCHES = ("leaky_impl", "cmem_impl", "pmem_impl", "loss_impl", "proj_impl", "v2_impl", "v2_key_impl")


def resolve_impl(cfg: Any, backend: str, seq_len: int, *, dropout: bool, documents: bool = False,
                 switches: Optional[Iterable[str]] = None) -> dict[str, str]:
    """{switch: implementation} of a ModelConfig for one step on `backend` with sequences of `seq_len` tokens,
    read dropout on or off (`dropout`) and segment ids present or not (`documents`), by the rules above; only
    `switches` (default: all). Reads through the default memory functions (MemoryFns) are assumed: a custom
    kernel or mask turns an "auto" read into "dense" at trace time. Raises ValueError for an impossible choice."""
    rules = {
        "leaky_impl": lambda: leaky(cfg.leaky_impl, backend, seq_len),
        "cmem_impl": lambda: retrieval(cfg.cmem_impl, backend, True, dropout),
        "pmem_impl": lambda: retrieval(cfg.pmem_impl, backend, True, dropout),
        "loss_impl": lambda: loss(cfg.loss_impl, backend),
        "proj_impl": lambda: proj(cfg.proj_impl, backend),
        "v2_impl": lambda: v2_retrieval(cfg.v2_impl, backend, seq_len, documents, dropout),
        "v2_key_impl": lambda: v2_keys(cfg.v2_key_impl, seq_len),
    }
    out = {}
    for name in SWITCHES if switches is None else switches:
        try:
            out[name] = rules[name]()
        except ValueError as e:
            raise ValueError(f"model.{name}={getattr(cfg, name)!r}: {e}") from None
    return out
