"""The GPT-2 baseline's layer decoder: a KV cache, run by the shared loop of `mosaic_jax.inference.decode`.

GPT-2 cache: k, v (L,B,S,H,D) and pos; S ≤ block_size (learned positions).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import Cache
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.gpt2.layers import causal_attention, gpt2_block
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
def prefill_layer(cfg: ModelConfig, p: Params, x_BTC: Array, lengths_B: Array) -> tuple[Array, dict[str, Array]]:
    """The training block with plain causal attention; keeps k, v for the cache (q: analysis only)."""
    st: dict[str, Array] = {}

    def attend(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array) -> Array:
        st.update(k=k_BTHD, v=v_BTHD, q=q_BTHD)
        return causal_attention(q_BTHD, k_BTHD, v_BTHD)

    return gpt2_block(p, x_BTC, attend), st


def step_layer(cfg: ModelConfig, p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    """The training block at one position per row: attention writes k, v into the cache and reads slots j <= pos."""
    pos, rows = c["pos"], jnp.arange(x_BC.shape[0])

    def attend(q_BHD: Array, k_BHD: Array, v_BHD: Array) -> Array:
        c["k"] = c["k"].at[l, rows, pos].set(k_BHD)
        c["v"] = c["v"].at[l, rows, pos].set(v_BHD)
        keys, values = c["k"][l, :, :read_len], c["v"][l, :, :read_len]
        scores = jnp.einsum("bhd,bshd->bhs", q_BHD, keys, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(q_BHD.shape[-1])
        w = memory.masked_softmax(scores, (jnp.arange(read_len)[None, :] <= pos[:, None])[:, None, :])
        return jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values)

    return gpt2_block(p, x_BC, attend)
