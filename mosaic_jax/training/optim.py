"""The optimizer of the paper's recipe (spec §4.1): AdamW(0.9, 0.95), weight decay on ≥2-D tensors only,
linear warm-up then cosine decay to a minimum learning rate, global-norm clipping.

Embedding, projections and P-mem slot tables (≥2-D) are decayed; LayerNorm weights and the per-head scalars
(leak, key/value scales, value mix: 1-D) are not, as in the reference's `configure_optimizers`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mosaic_jax.training.sections import OptimConfig   # typed with the other config sections


def lr_schedule(c: OptimConfig) -> optax.Schedule:
    """nanoGPT's `get_lr` (the reference's): lr·(s+1)/(warmup+1) for s < warmup, then a cosine from lr to min_lr
    reached at decay_steps, then min_lr. `s` is the 0-based update index (optax's count)."""
    lr, min_lr, warmup = c.lr, c.min_lr, c.warmup_steps
    span = max(c.decay_steps - warmup, 1)

    def schedule(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32)
        warm = lr * (s + 1.0) / (warmup + 1.0)
        ratio = jnp.clip((s - warmup) / span, 0.0, 1.0)
        cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)
        return jnp.where(s < warmup, warm, cosine)

    return schedule


# Logical axes that the reference stores as ONE tensor dimension (it keeps W as (C, C), we keep (C, H, D)).
_MERGED = ("qkv", "heads", "head_dim")


def reference_ndim(axes: Sequence[Optional[str]]) -> int:
    """The number of dimensions the reference's tensor has: drop the stacked `layers` axis and count each run
    of consecutive (qkv, heads, head_dim) axes as one dimension."""
    n, prev_merged = 0, False
    for a in axes:
        if a == "layers":
            continue
        merged = a in _MERGED
        if not (merged and prev_merged):
            n += 1
        prev_merged = merged
    return n


def decay_mask(param_axes: Any) -> Any:
    """True where the reference's `configure_optimizers` applies weight decay: tensors with dim >= 2.

    Computed from the logical axes (`model.param_axes`), not from `ndim`: our params are stacked over layers and
    split per head, so a LayerNorm weight is (L, C) and a key bias (L, H, D) here, yet 1-D in the reference.
    """
    return jax.tree.map(lambda ax: reference_ndim(ax) >= 2, param_axes,
                        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))


def make_optimizer(c: OptimConfig, mask: Any) -> optax.GradientTransformation:
    """clip_by_global_norm → AdamW(schedule, weight decay where `mask`). The clip sees the whole accumulated
    gradient of the step (after microbatch accumulation), as one large batch would."""
    adamw = optax.adamw(lr_schedule(c), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=mask)
    return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw) if c.grad_clip > 0 else adamw
