"""GPT-2 baseline block (nanoGPT-equivalent): causal self-attention and a tanh-GELU MLP of 4C, pre-LN.

Initialisation is nanoGPT's: N(0, 0.02) and c_proj N(0, 0.02/√(2L)). The language-model wrapper (embedding,
learned positions, tied head) is shared with the memory mosaic in `models/lm.py`.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.ops import memory
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import LayerNorm, dropout, normal, param

Array = jax.Array
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


class GPT2Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTC: Array, deterministic: bool = True, segment_ids_BT: Optional[Array] = None) -> Array:
        c = self.cfg
        C, H, D = c.n_embd, c.n_head, c.head_dim
        proj_std = GPT2_STD / math.sqrt(2 * c.n_layer)
        dt = x_BTC.dtype

        w_qkv = param(self, "c_attn", normal(GPT2_STD), (C, 3, H, D), ("embed", "qkv", "heads", "head_dim"))
        w_o = param(self, "attn_proj", normal(proj_std), (H, D, C), ("heads", "head_dim", "embed"))
        w_fc = param(self, "c_fc", normal(GPT2_STD), (C, 4 * C), ("embed", "mlp"))
        w_mp = param(self, "mlp_proj", normal(proj_std), (4 * C, C), ("mlp", "embed"))
        bias = {}
        if c.bias:
            for name, shape, axes in (("b_attn", (3, H, D), ("qkv", "heads", "head_dim")), ("b_attn_proj", (C,), ("embed",)),
                                      ("b_fc", (4 * C,), ("mlp",)), ("b_mlp_proj", (C,), ("embed",))):
                bias[name] = param(self, name, nn.initializers.zeros, shape, axes).astype(dt)

        h = LayerNorm(c, name="ln_1")(x_BTC)
        qkv = jnp.einsum("btc,cjhd->jbthd", h, w_qkv.astype(dt))
        if c.bias:
            qkv = qkv + bias["b_attn"][:, None, None]
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        y = causal_attention(qkv[0], qkv[1], qkv[2], dropout_rate=c.ic_dropout, dropout_rng=rng,
                             segment_ids_BT=segment_ids_BT)
        y = jnp.einsum("bthd,hdc->btc", y, w_o.astype(dt)) + (bias["b_attn_proj"] if c.bias else 0)
        x_BTC = x_BTC + dropout(self, y, c.hd_dropout, deterministic)

        h = LayerNorm(c, name="ln_2")(x_BTC)
        h = jnp.einsum("btc,cf->btf", h, w_fc.astype(dt)) + (bias["b_fc"] if c.bias else 0)
        h = jax.nn.gelu(h, approximate=True)
        h = jnp.einsum("btf,fc->btc", h, w_mp.astype(dt)) + (bias["b_mlp_proj"] if c.bias else 0)
        return x_BTC + dropout(self, h, c.hd_dropout, deterministic)
