"""The decoder every family has: each step recomputes the full forward pass over the tokens seen so far.

Same interface as `inference/decode.py` (init_cache, prefill, step and their jitted forms). The cache holds the
tokens, not the memories, so the result is exact for any causal family by construction (logits at position t
depend only on tokens ≤ t; the slots after a row's position are never read by it). A step costs one forward
pass over S positions, so this is the decoder of a new family until it brings a layer decoder of its own
(`Family.layer_decoder`, docs/extending.md).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import check_positions, rows_at
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import apply

Array = jax.Array
Cache = dict[str, Array]


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    check_positions(cfg, max_len)
    return {"pos": jnp.zeros((batch,), jnp.int32), "tokens": jnp.zeros((batch, max_len), jnp.int32)}


def prefill(cfg: ModelConfig, params: Any, tokens_BT: Array, lengths_B: Array, cache: Cache, *,
            all_logits: bool = True) -> tuple[Array, Cache]:
    """Right-padded prompts (row b valid for t < lengths[b]); logits (B,T,V), or (B,V) at each row's last token."""
    T, S = tokens_BT.shape[1], cache["tokens"].shape[1]
    if T > S:
        raise ValueError(f"prompt length {T} exceeds the cache size {S}")
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    logits = apply(cfg, params, tokens_BT)
    new = {"pos": lengths_B, "tokens": cache["tokens"].at[:, :T].set(jnp.asarray(tokens_BT, jnp.int32))}
    return (logits if all_logits else rows_at(logits, lengths_B - 1)), new


def step(cfg: ModelConfig, params: Any, cache: Cache, tokens_B: Array) -> tuple[Array, Cache]:
    """Feed one token per row at its position; the next-token logits (B,V) and the cache."""
    pos = cache["pos"]
    tokens = cache["tokens"].at[jnp.arange(pos.shape[0]), pos].set(jnp.asarray(tokens_B, jnp.int32))
    return rows_at(apply(cfg, params, tokens), pos), {"pos": pos + 1, "tokens": tokens}


prefill_jit = jax.jit(prefill, static_argnames=("cfg", "all_logits"), donate_argnames=("cache",))
step_jit = jax.jit(step, static_argnames=("cfg",), donate_argnames=("cache",))
