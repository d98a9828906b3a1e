"""The backend the memory reads are chosen for: jax's default backend, or a compile-only target.

`python -m mosaic_jax.tools.aot --topology=...` compiles for a TPU from a CPU-only host (JAX's AOT topology API): the
traced program must be the one a TPU would run (Pallas kernels, not the CPU's chunked scans), although
`jax.default_backend()` says "cpu" there. Every `auto` implementation switch asks `backend()` instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import jax

_TARGET: Optional[str] = None


def backend() -> str:
    """"cpu" | "gpu" | "tpu": the compile-only target inside `target(...)`, else jax.default_backend()."""
    return _TARGET or jax.default_backend()


@contextlib.contextmanager
def target(name: str) -> Iterator[None]:
    """Trace for backend `name` ("tpu", "gpu", "cpu") whatever devices this process has."""
    global _TARGET
    if name not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"target backend {name!r} not in ('cpu', 'gpu', 'tpu')")
    previous, _TARGET = _TARGET, name
    try:
        yield
    finally:
        _TARGET = previous
