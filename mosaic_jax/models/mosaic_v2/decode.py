"""Incremental decoding for Memory Mosaics v2 (arch="mosaic_v2"); same interface as `decode.py`:

    cache = init_cache(cfg, batch, max_len)
    logits_BTV, cache = prefill(cfg, params, tokens_BT, lengths_B, cache)   # right-padded prompts
    logits_BV, cache = step(cfg, params, cache, tokens_B)                   # one token per row
    prefill_jit / step_jit                                                  # jitted, cfg static, cache donated

Each row is one document (no segment ids while decoding) and the model runs in eval mode: the long-term skip
is `cfg.long_skip_eval`. Per layer l and memory X ∈ {short, long} (those enabled):
    X_s (L,B,H,D) f32, X_m (L,B,H) f32   gated key state k̄_t = e^{m}·s (log-space, m = −1e30 when empty)
    X_vt (L,B,H,D)                        raw value feature ṽ_{t−1}: completes v_{t−1} once x_t is known
    X_keys, X_values (L,B,R,H,D)          the pairs; short: a ring of R = lookback + 1 slots (slot = j mod R),
                                          long: R = max_len (slot = j)
    X_slot (B,R) int32                    the position held by each slot (−1: empty), shared by the layers
The step at t: update the key states, write k_t at t's slot, complete v_{t−1} (written at t−1's slot), then
query q_t = β(n_t)·k_t over the slots holding pairs t−lookback … t−1 (short) or 0 … t−m (long). The short
memory therefore costs O(h) per token and memory whatever the context length; the long memory O(t).

Prefill and step run the training block (`layers.v2_block`, `memory_v2.unit_read`) unchanged: prefill in its
whole-sequence mode, which records each unit's internals; the step in the mode `Step` below, which keeps the
key states and the pairs in the cache. Only the cache layout is written here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import _head, rows_at   # the shared decoder's head: one logit rule for all families
from mosaic_jax.ops import memory, memory_v2
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic_v2.layers import full_sequence, kinds, v2_block

Array = jax.Array
Params = Any
Cache = dict[str, Array]


def _slots(cfg: ModelConfig, kind: str, max_len: int) -> int:
    return cfg.short_lookback + 1 if kind == "short" else max_len


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    """Empty caches for `batch` rows and up to `max_len` positions (prompt included)."""
    if registry.of(cfg).decoder != __name__:
        raise ValueError(f"this decoder serves Memory Mosaics v2, not arch {cfg.arch!r} (use registry.decoder(cfg))")
    L, D = cfg.n_layer, cfg.head_dim
    dt = jnp.dtype(cfg.dtype)
    cache: Cache = {"pos": jnp.zeros((batch,), jnp.int32)}
    for kind, H in kinds(cfg):
        R = _slots(cfg, kind, max_len)
        cache[f"{kind}_s"] = jnp.zeros((L, batch, H, D), jnp.float32)
        cache[f"{kind}_m"] = jnp.full((L, batch, H), memory_v2.NEG_LOG, jnp.float32)
        cache[f"{kind}_vt"] = jnp.zeros((L, batch, H, D), dt)
        cache[f"{kind}_keys"] = jnp.zeros((L, batch, R, H, D), dt)
        cache[f"{kind}_values"] = jnp.zeros((L, batch, R, H, D), dt)
        cache[f"{kind}_slot"] = jnp.full((batch, R), -1, jnp.int32)
    return cache


def _layer(cfg: ModelConfig, params: Params, l: int) -> Params:
    return jax.tree.map(lambda a: a[l], params["blocks"][cfg.arch])


def _embed(cfg: ModelConfig, params: Params, tokens: Array) -> Array:
    return jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))


def prefill(cfg: ModelConfig, params: Params, tokens_BT: Array, lengths_B: Array, cache: Cache, *,
            all_logits: bool = True) -> tuple[Array, Cache]:
    """Run right-padded prompts (row b valid for t < lengths[b]) through the full-forward math; fill the cache.

    Returns the logits of every position (B,T,V), or at each row's last prompt token (B,V) when not
    `all_logits`. The cache must be fresh and hold at least T positions.
    """
    B, T = tokens_BT.shape
    S = cache["long_keys"].shape[2] if "long_keys" in cache else None
    if S is not None and T > S:
        raise ValueError(f"prompt length {T} exceeds the cache size {S}")
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    last = lengths_B - 1
    skip_B = jnp.full((B,), cfg.long_skip_eval, jnp.int32)
    x = _embed(cfg, params, tokens_BT)
    new = dict(cache)
    for kind, _ in kinds(cfg):
        R = new[f"{kind}_slot"].shape[1]
        if kind == "short":   # slot r holds the latest position p ≤ len−1 with p ≡ r (mod R)
            p_BR = last[:, None] - jnp.mod(last[:, None] - jnp.arange(R)[None], R)
        else:
            p_BR = jnp.broadcast_to(jnp.arange(R)[None], (B, R))
            p_BR = jnp.where(p_BR <= last[:, None], p_BR, -1)
        new[f"{kind}_slot"] = jnp.where(p_BR >= 0, p_BR, -1).astype(jnp.int32)
    for l in range(cfg.n_layer):
        mode = full_sequence(cfg, skip_B)
        x = v2_block(cfg, _layer(cfg, params, l), x, mode)
        for kind, st in mode.record.items():
            slot = new[f"{kind}_slot"]
            src = jnp.clip(slot, 0, T - 1)
            for name, key in (("keys", "keys"), ("values", "values")):
                val = jnp.take_along_axis(st[key], src[:, :, None, None], axis=1) if kind == "short" else \
                    jnp.pad(st[key], ((0, 0), (0, slot.shape[1] - T), (0, 0), (0, 0)))
                new[f"{kind}_{name}"] = new[f"{kind}_{name}"].at[l].set(val.astype(new[f"{kind}_{name}"].dtype))
            new[f"{kind}_s"] = new[f"{kind}_s"].at[l].set(rows_at(st["state_s"], last))
            new[f"{kind}_m"] = new[f"{kind}_m"].at[l].set(rows_at(st["state_m"], last))
            new[f"{kind}_vt"] = new[f"{kind}_vt"].at[l].set(rows_at(st["vt"], last).astype(new[f"{kind}_vt"].dtype))
    new["pos"] = lengths_B
    if not all_logits:
        x = rows_at(x, last)
    return _head(cfg, params, x), new


@dataclasses.dataclass
class Step:
    """One position per row (t = c["pos"]) of layer l: the recurrent key state and the read of the cached pairs.
    Updates the cache c (a dict of arrays) in place."""
    cfg: ModelConfig
    c: Cache
    l: int

    def keys(self, kind: str, kt_BHD: Array, log_gate_BH: Array, log_decay_BH: Array) -> Array:
        c, l = self.c, self.l
        s, m = memory_v2.gated_state_step(c[f"{kind}_s"][l], c[f"{kind}_m"][l], kt_BHD.astype(jnp.float32),
                                          log_gate_BH, log_decay_BH)
        c[f"{kind}_s"] = c[f"{kind}_s"].at[l].set(s)
        c[f"{kind}_m"] = c[f"{kind}_m"].at[l].set(m)
        return memory.l2_normalize(s).astype(kt_BHD.dtype)

    def pair_counts(self, kind: str, k_BHD: Array) -> Array:
        t = self.c["pos"]
        if kind == "short":
            return memory_v2.short_term_count(t, self.cfg.short_lookback)
        return memory_v2.long_term_count(t[:, None], jnp.full_like(t, self.cfg.long_skip_eval))[:, 0]

    def read(self, kind: str, p: Params, q_BHD: Array, k_BHD: Array, vt_BHD: Array) -> Array:
        c, l, t = self.c, self.l, self.c["pos"]
        rows = jnp.arange(q_BHD.shape[0])
        slots = c[f"{kind}_slot"]
        R = slots.shape[1]
        # v_{t−1} = α_ψ·Norm(γ ṽ_{t−1} + (1−γ) ṽ_t), memory.lookahead_values at one position (written out: the
        # call on the pair (t−1, t) would compile a pad and a second normalisation into every step)
        coef = p["v_coef"][None, :, None].astype(vt_BHD.dtype)
        vs = memory_v2.value_scale(p["value_scale"])[None, :, None].astype(vt_BHD.dtype)
        v_prev = memory.l2_normalize(coef * c[f"{kind}_vt"][l] + (1 - coef) * vt_BHD) * vs
        c[f"{kind}_vt"] = c[f"{kind}_vt"].at[l].set(vt_BHD)
        if kind == "short":
            slot_t, slot_prev = jnp.mod(t, R), jnp.mod(t - 1, R)
            allowed = (slots >= 0) & (slots <= t[:, None] - 1) & (slots >= t[:, None] - self.cfg.short_lookback)
        else:
            slot_t, slot_prev = t, jnp.maximum(t - 1, 0)
            allowed = (slots >= 0) & (slots <= t[:, None] - self.cfg.long_skip_eval)
        # v_{t−1} is complete now; at t = 0 this writes an empty slot that a later step overwrites before any read.
        c[f"{kind}_values"] = c[f"{kind}_values"].at[l, rows, slot_prev].set(v_prev.astype(c[f"{kind}_values"].dtype))
        c[f"{kind}_keys"] = c[f"{kind}_keys"].at[l, rows, slot_t].set(k_BHD.astype(c[f"{kind}_keys"].dtype))
        keys, values = c[f"{kind}_keys"][l], c[f"{kind}_values"][l]
        scores = jnp.einsum("bhd,bshd->bhs", q_BHD, keys, preferred_element_type=jnp.float32)
        w = memory.masked_softmax(scores, allowed[:, None, :])
        return jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values)


def step(cfg: ModelConfig, params: Params, cache: Cache, tokens_B: Array) -> tuple[Array, Cache]:
    """Feed one token per row at position `cache['pos'][b]`; returns the next-token logits (B,V) and the cache."""
    c = dict(cache)
    t = c["pos"]
    rows = jnp.arange(tokens_B.shape[0])
    for kind, _ in kinds(cfg):   # the slot of position t now holds t (its key is written by every layer below)
        R = c[f"{kind}_slot"].shape[1]
        if kind == "long" and R > 0:
            c[f"{kind}_slot"] = c[f"{kind}_slot"].at[rows, jnp.minimum(t, R - 1)].set(t)
        else:
            c[f"{kind}_slot"] = c[f"{kind}_slot"].at[rows, jnp.mod(t, R)].set(t)
    x = _embed(cfg, params, tokens_B)
    for l in range(cfg.n_layer):
        x = v2_block(cfg, _layer(cfg, params, l), x, Step(cfg, c, l))
    c["pos"] = t + 1
    return _head(cfg, params, x), c


prefill_jit = jax.jit(prefill, static_argnames=("cfg", "all_logits"), donate_argnames=("cache",))
step_jit = jax.jit(step, static_argnames=("cfg",), donate_argnames=("cache",))


def greedy(cfg: ModelConfig, params: Params, prompt_BT: Array, new_tokens: int) -> Array:
    """Greedy continuation of equal-length prompts (B,T) -> (B, new_tokens): a small usage example."""
    B, T = prompt_BT.shape
    cache = init_cache(cfg, B, T + new_tokens)
    logits, cache = prefill_jit(cfg, params, prompt_BT, jnp.full((B,), T, jnp.int32), cache, all_logits=False)
    out = []
    for _ in range(new_tokens):
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out.append(tok)
        logits, cache = step_jit(cfg, params, cache, tok)
    return jnp.stack(out, axis=1)
