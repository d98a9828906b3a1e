"""mosaic_jax: Memory Mosaics (Zhang et al., ICLR 2025; v2 NeurIPS 2025) in JAX/Flax.

    import mosaic_jax as mj
    cfg, params = mj.load_reference("ckpt.pt")        # official PyTorch checkpoint
    logits = mj.apply(cfg, params, tokens)             # (B, T, V), eval mode when rng is None

Names are imported lazily, so light tools (data preparation, grain worker processes) do not pay for JAX.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "mosaic_jax.models.config",
    "MemoryFns": "mosaic_jax.models.mosaic.layers",
    "apply": "mosaic_jax.models.lm",
    "count_params": "mosaic_jax.models.lm",
    "init_params": "mosaic_jax.models.lm",
    "loss_fn": "mosaic_jax.models.lm",
    "param_axes": "mosaic_jax.models.lm",
    "load_reference": "mosaic_jax.models.mosaic.reference",
    "export_reference": "mosaic_jax.models.mosaic.reference",
    "ReferenceFormatError": "mosaic_jax.models.mosaic.reference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mosaic_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
