"""Incremental decoding with preallocated caches: the shared decoder of the memory mosaic and the GPT-2 baseline.

Pure functions; one interface for every family (v2 has its own module with the same interface):

    cache = init_cache(cfg, batch, max_len)                      # zeros, fixed size S = max_len
    logits_BTV, cache = prefill(cfg, params, tokens_BT, lengths_B, cache)
    logits_BV, cache = step(cfg, params, cache, tokens_B)        # one token per row, at the row's position
    prefill_jit / step_jit                                       # jit-compiled, cfg static, cache donated

Batches hold prompts of different lengths **right-padded**: every row starts at position 0 and carries its own
position `cache["pos"][b]` (= tokens seen). Pad tokens after a row's length are computed in prefill but never
read: every cache slot j is (re)written by the step at position j before anything reads it.

The per-layer work and the cache layout belong to the family (`Family.layer_decoder`: models/mosaic/decode.py,
models/gpt2/decode.py); this module is the loop over layers, the embedding and the head they share.
Only the default `MemoryFns` (dot kernel, leaky keys, look-ahead values) are supported here.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from mosaic_jax.models import registry
from mosaic_jax.models.lm import apply
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import ln

Array = jax.Array
Params = Any
Cache = dict[str, Array]


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------
def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    """Zero caches for `batch` rows and up to `max_len` positions (the prompt included)."""
    check_positions(cfg, max_len)
    return {"pos": jnp.zeros((batch,), jnp.int32)} | _family(cfg).layer_decoder.init_cache(cfg, batch, max_len)


def check_positions(cfg: ModelConfig, max_len: int) -> None:
    """A family with learned positions cannot decode past them (every decoder's cache checks this)."""
    limit = registry.of(cfg).max_positions(cfg)
    if limit is not None and max_len > limit:
        raise ValueError(f"{cfg.arch}: max_len {max_len} exceeds block_size {limit} (learned positions); use the "
                         "sliding-window recompute past the window")


def cache_len(cache: Cache) -> int:
    """S, the positions the cache holds (every per-position cache has shape (L, B, S, ...))."""
    return next(v.shape[2] for k, v in cache.items() if k != "pos" and v.ndim == 5)


def _family(cfg: ModelConfig) -> registry.Family:
    fam = registry.of(cfg)
    if fam.layer_decoder is None:
        raise NotImplementedError(f"arch {cfg.arch!r} has its own decoder ({fam.decoder}); use "
                                  "registry.decoder(cfg)")
    return fam


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------
def _layer(cfg: ModelConfig, params: Params, l: int) -> Params:
    return jax.tree.map(lambda a: a[l], params["blocks"][cfg.arch])


def _embed(cfg: ModelConfig, params: Params, tokens: Array, pos: Array) -> Array:
    x = jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    return _family(cfg).layer_decoder.embed_positions(params, x, pos)


def _head(cfg: ModelConfig, params: Params, x: Array) -> Array:
    x = ln(x, params["ln_out"])
    head = params["embed"] if cfg.weight_tying else params["head"]
    logits = jnp.einsum("...c,vc->...v", x, head.astype(x.dtype)).astype(jnp.float32)
    return logits / registry.of(cfg).logit_divisor(cfg)


def rows_at(x_BT: Array, idx_B: Array) -> Array:
    """x[b, idx[b]] for every row b."""
    return jnp.take_along_axis(x_BT, idx_B.reshape((-1, 1) + (1,) * (x_BT.ndim - 2)), axis=1)[:, 0]


def hist_at(h_BTC: Array, lengths_B: Array, K: int) -> Array:
    """h[b, len−K+1 .. len−1] (zeros before position 0): the conv taps carried into the first step."""
    hp = jnp.pad(h_BTC, ((0, 0), (K - 1, 0), (0, 0)))
    idx = lengths_B[:, None] + jnp.arange(K - 1)[None]         # padded coordinates of len−K+1.. len−1
    return jnp.take_along_axis(hp, idx[:, :, None], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def prefill(cfg: ModelConfig, params: Params, tokens_BT: Array, lengths_B: Array, cache: Cache, *,
            all_logits: bool = True) -> tuple[Array, Cache]:
    """Run right-padded prompts (row b valid for t < lengths[b], 1 ≤ lengths[b] ≤ T) and fill the cache.

    Returns the logits of every position (B,T,V), or only at each row's last prompt token (B,V) when
    `all_logits=False`. The cache must be fresh (pos = 0) and hold at least T positions.
    """
    B, T = tokens_BT.shape
    S = cache_len(cache)
    if T > S:
        raise ValueError(f"prompt length {T} exceeds the cache size {S}")
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    layers = _family(cfg).layer_decoder
    x = _embed(cfg, params, tokens_BT, jnp.arange(T)[None])
    new = dict(cache)
    for l in range(cfg.n_layer):
        x, st = layers.prefill_layer(cfg, _layer(cfg, params, l), x, lengths_B)
        for name, val in st.items():
            if name not in new:
                continue
            if new[name].ndim == 5:      # per-position caches: slots 0..T−1
                new[name] = new[name].at[l, :, :T].set(val.astype(new[name].dtype))
            else:
                new[name] = new[name].at[l].set(val.astype(new[name].dtype))
    new["pos"] = lengths_B
    if not all_logits:
        x = rows_at(x, lengths_B - 1)
    return _head(cfg, params, x), new


def step(cfg: ModelConfig, params: Params, cache: Cache, tokens_B: Array, *, read_len: Optional[int] = None
         ) -> tuple[Array, Cache]:
    """Feed one token per row at position `cache['pos'][b]`; returns the next-token logits (B,V) and the cache.

    `read_len` (static) bounds the slots read: at least max(pos) for the mosaic, max(pos)+1 for GPT-2 (see
    `read_len_for`; the generation loop buckets it by powers of two so early steps are cheap). None: all.
    """
    S = cache_len(cache)
    read_len = S if read_len is None else min(read_len, S)
    c = dict(cache)
    x = _embed(cfg, params, tokens_B, c["pos"])
    layers = _family(cfg).layer_decoder
    for l in range(cfg.n_layer):
        x = layers.step_layer(cfg, _layer(cfg, params, l), x, c, l, read_len)
    c["pos"] = c["pos"] + 1
    return _head(cfg, params, x), c


prefill_jit = jax.jit(prefill, static_argnames=("cfg", "all_logits"), donate_argnames=("cache",))
step_jit = jax.jit(step, static_argnames=("cfg", "read_len"), donate_argnames=("cache",))


def decode_for(cfg: ModelConfig) -> Any:
    """The decoder module of cfg's family: this one, or the family's own (v2: same interface)."""
    return registry.decoder(cfg)


def read_bucket(needed: int, cache_size: int, minimum: int = 64) -> int:
    """Smallest power of two (≥ minimum) holding `needed` slots, capped at the cache size: few compiled steps."""
    n = minimum
    while n < needed:
        n *= 2
    return min(n, cache_size)


def read_len_for(cfg: ModelConfig, max_pos: int, cache_size: int, minimum: int = 64) -> int:
    """The `read_len` for a step whose rows sit at positions ≤ max_pos: the mosaic reads slots j ≤ t−1, GPT-2
    reads j ≤ t (its own key included)."""
    return read_bucket(max_pos + _family(cfg).layer_decoder.reads_own_key, cache_size, minimum)


# ---------------------------------------------------------------------------------------------------------------
# Full forward with the per-layer internals (prefill without a cache), for analysis
# ---------------------------------------------------------------------------------------------------------------
def forward_with_internals(cfg: ModelConfig, params: Params, tokens_BT: Array) -> tuple[Array, list[dict]]:
    """Logits (B,T,V) and, per layer, the memory keys/values (mosaic) or attention keys/values (GPT-2)."""
    B, T = tokens_BT.shape
    lengths = jnp.full((B,), T, jnp.int32)
    x = _embed(cfg, params, tokens_BT, jnp.arange(T)[None])
    internals = []
    layers = _family(cfg).layer_decoder
    for l in range(cfg.n_layer):
        x, st = layers.prefill_layer(cfg, _layer(cfg, params, l), x, lengths)
        internals.append(st)
    return _head(cfg, params, x), internals


@functools.partial(jax.jit, static_argnames=("cfg",))
def window_logits(cfg: ModelConfig, params: Params, windows_BW: Array, lengths_B: Array) -> Array:
    """Sliding-window recompute (the reference's `generate`): full forward of each row's last ≤ W tokens,
    right-padded, and the logits at its last valid token (B,V). The leaky sums restart at the window start."""
    return rows_at(apply(cfg, params, windows_BW), jnp.asarray(lengths_B, jnp.int32) - 1)
