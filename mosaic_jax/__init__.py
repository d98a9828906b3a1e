"""mosaic_jax: Memory Mosaics (Zhang et al., ICLR 2025; v2 NeurIPS 2025) in JAX/Flax.

    import mosaic_jax as mj
    cfg, params = mj.load_reference("ckpt.pt")        # official PyTorch checkpoint
    logits = mj.apply(cfg, params, tokens)             # (B, T, V), eval mode when rng is None
"""
from mosaic_jax.config import ModelConfig
from mosaic_jax.layers import MemoryFns
from mosaic_jax.model import apply, count_params, init_params, loss_fn, param_axes
from mosaic_jax.reference import ReferenceFormatError, export_reference, load_reference

__all__ = ["ModelConfig", "MemoryFns", "apply", "count_params", "init_params", "loss_fn", "param_axes",
           "load_reference", "export_reference", "ReferenceFormatError"]
