"""The GPT-2 baseline's layer decoder: a KV cache, run by the shared loop of `mosaic_jax.inference.decode`.

GPT-2 cache: k, v (L,B,S,H,D) and pos; S ≤ block_size (learned positions).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import Cache, ln
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.gpt2.layers import causal_attention
from mosaic_jax.ops import memory

Array = jax.Array
Params = Any
reads_own_key = True   # the query at t attends to j <= t


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    kv = (cfg.n_layer, batch, max_len, cfg.n_head, cfg.head_dim)
    return {"k": jnp.zeros(kv, jnp.dtype(cfg.dtype)), "v": jnp.zeros(kv, jnp.dtype(cfg.dtype))}


def read_weights(internals: dict[str, Array]) -> Array:
    """(B, H, T, T) attention weights of one layer, j <= t (analysis)."""
    q, k = internals["q"], internals["k"]
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    return memory.masked_softmax(scores, memory.strict_causal_mask(q.shape[1], shift=0))


def embed_positions(params: Params, x: Array, pos: Array) -> Array:
    return x + jnp.take(params["pos_embed"], pos, axis=0).astype(x.dtype)   # learned positions


# ---------------------------------------------------------------------------------------------------------------
def _qkv(p: Params, h: Array) -> Array:
    qkv = jnp.einsum("...c,cjhd->j...hd", h, p["c_attn"].astype(h.dtype))
    if "b_attn" in p:
        qkv = qkv + p["b_attn"].astype(h.dtype).reshape((3,) + (1,) * (h.ndim - 1) + p["b_attn"].shape[1:])
    return qkv


def _tail(p: Params, x: Array, y: Array) -> Array:
    """Attention output projection, residual, then the MLP branch."""
    dt = x.dtype
    x = x + jnp.einsum("...hd,hdc->...c", y, p["attn_proj"].astype(dt)) + p.get("b_attn_proj", 0)
    h = ln(x, p["ln_2"])
    h = jax.nn.gelu(jnp.einsum("...c,cf->...f", h, p["c_fc"].astype(dt)) + p.get("b_fc", 0), approximate=True)
    return x + jnp.einsum("...f,fc->...c", h, p["mlp_proj"].astype(dt)) + p.get("b_mlp_proj", 0)


def prefill_layer(cfg: ModelConfig, p: Params, x_BTC: Array, lengths_B: Array) -> tuple[Array, dict[str, Array]]:
    q, k, v = _qkv(p, ln(x_BTC, p["ln_1"]))
    return _tail(p, x_BTC, causal_attention(q, k, v)), {"k": k, "v": v, "q": q}   # q: analysis only


def step_layer(cfg: ModelConfig, p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    pos, rows = c["pos"], jnp.arange(x_BC.shape[0])
    q, k, v = _qkv(p, ln(x_BC, p["ln_1"]))
    c["k"] = c["k"].at[l, rows, pos].set(k)
    c["v"] = c["v"].at[l, rows, pos].set(v)
    keys, values = c["k"][l, :, :read_len], c["v"][l, :, :read_len]
    scores = jnp.einsum("bhd,bshd->bhs", q, keys, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    w = memory.masked_softmax(scores, (jnp.arange(read_len)[None, :] <= pos[:, None])[:, None, :])
    return _tail(p, x_BC, jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values))
