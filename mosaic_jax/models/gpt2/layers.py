"""GPT-2 baseline block (nanoGPT-equivalent): causal self-attention and a tanh-GELU MLP of 4C, pre-LN.

Initialisation is nanoGPT's: N(0, 0.02) and c_proj N(0, 0.02/√(2L)). The language-model wrapper (embedding,
learned positions, tied head) is shared with the memory mosaic in `models/lm.py`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.ops import memory
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import LayerNorm, dropout, ln, normal, param

Array = jax.Array
Params = Any
GPT2_STD = 0.02


def causal_attention(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, *, dropout_rate: float = 0.0,
                     dropout_rng: Optional[Array] = None, segment_ids_BT: Optional[Array] = None) -> Array:
    """softmax(q·kᵀ/√D) v with a causal mask (j ≤ t); fused attention when no dropout is asked for."""
    D = q_BTHD.shape[-1]
    T = q_BTHD.shape[1]
    if (dropout_rng is None or dropout_rate == 0.0) and segment_ids_BT is None:
        # same backend rule as the memory reads (cuDNN flash on GPU for bf16/f16), so comparisons are like for like
        return jax.nn.dot_product_attention(q_BTHD, k_BTHD, v_BTHD, is_causal=True,
                                            implementation=memory.attention_backend(q_BTHD.dtype, D))
    s = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BTHD, preferred_element_type=jnp.float32) / math.sqrt(D)
    allowed = (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None])[None, None]
    if segment_ids_BT is not None:
        allowed = allowed & (segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :])
    w = jax.nn.softmax(jnp.where(allowed, s, jnp.finfo(s.dtype).min), axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, w.shape)
        w = jnp.where(keep, w / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhts,bshd->bthd", w.astype(v_BTHD.dtype), v_BTHD)


# ---------------------------------------------------------------------------------------------------------------
# The block's math, once: training, prefill and the decoding step differ only in `attend` (MaxText's mode switch)
# ---------------------------------------------------------------------------------------------------------------
Attend = Callable[[Array, Array, Array], Array]   # (q, k, v) (..., H, D) -> attention read (..., H, D)
Branch = Callable[[Array], Array]                 # applied to each residual branch (dropout p_hd in training)


def _bias(p: Params, name: str, dt: jnp.dtype) -> Array | float:
    return p[name].astype(dt) if name in p else 0.0


def qkv(p: Params, h_XC: Array) -> Array:
    """(3, ..., H, D) projections of h (..., C): (B,T,C) in training/prefill, (B,C) in a decoding step."""
    out = jnp.einsum("...c,cjhd->j...hd", h_XC, p["c_attn"].astype(h_XC.dtype))
    if "b_attn" in p:
        b = p["b_attn"].astype(h_XC.dtype)
        out = out + b.reshape((3,) + (1,) * (h_XC.ndim - 1) + b.shape[1:])
    return out


def gpt2_block(p: Params, x_XC: Array, attend: Attend, branch: Branch = lambda y: y) -> Array:
    """x + attn(LN1 x), then + MLP(LN2 x), on the parameter dict of `GPT2Block` (x: (..., C))."""
    dt = x_XC.dtype
    q, k, v = qkv(p, ln(x_XC, p["ln_1"]))
    y = jnp.einsum("...hd,hdc->...c", attend(q, k, v), p["attn_proj"].astype(dt)) + _bias(p, "b_attn_proj", dt)
    x_XC = x_XC + branch(y)
    h = jnp.einsum("...c,cf->...f", ln(x_XC, p["ln_2"]), p["c_fc"].astype(dt)) + _bias(p, "b_fc", dt)
    h = jax.nn.gelu(h, approximate=True)
    h = jnp.einsum("...f,fc->...c", h, p["mlp_proj"].astype(dt)) + _bias(p, "b_mlp_proj", dt)
    return x_XC + branch(h)


class GPT2Block(nn.Module):
    """Declares the parameters (names, shapes, logical axes, nanoGPT's init) and runs `gpt2_block` on them."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTC: Array, deterministic: bool = True, segment_ids_BT: Optional[Array] = None) -> Array:
        c = self.cfg
        C, H, D = c.n_embd, c.n_head, c.head_dim
        proj_std = GPT2_STD / math.sqrt(2 * c.n_layer)
        p = {"c_attn": param(self, "c_attn", normal(GPT2_STD), (C, 3, H, D), ("embed", "qkv", "heads", "head_dim")),
             "attn_proj": param(self, "attn_proj", normal(proj_std), (H, D, C), ("heads", "head_dim", "embed")),
             "c_fc": param(self, "c_fc", normal(GPT2_STD), (C, 4 * C), ("embed", "mlp")),
             "mlp_proj": param(self, "mlp_proj", normal(proj_std), (4 * C, C), ("mlp", "embed"))}
        if c.bias:
            for name, shape, axes in (("b_attn", (3, H, D), ("qkv", "heads", "head_dim")), ("b_attn_proj", (C,), ("embed",)),
                                      ("b_fc", (4 * C,), ("mlp",)), ("b_mlp_proj", (C,), ("embed",))):
                p[name] = param(self, name, nn.initializers.zeros, shape, axes)
        p["ln_1"] = LayerNorm(c, name="ln_1").params_of(C)
        p["ln_2"] = LayerNorm(c, name="ln_2").params_of(C)
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")

        def attend(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array) -> Array:
            return causal_attention(q_BTHD, k_BTHD, v_BTHD, dropout_rate=c.ic_dropout, dropout_rng=rng,
                                    segment_ids_BT=segment_ids_BT)

        return gpt2_block(p, x_BTC, attend, lambda y: dropout(self, y, c.hd_dropout, deterministic))
