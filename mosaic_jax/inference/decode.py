"""Incremental decoding with preallocated caches, for the memory mosaic and the GPT-2 baseline.

Pure functions; one interface for both architectures:

    cache = init_cache(cfg, batch, max_len)                      # zeros, fixed size S = max_len
    logits_BTV, cache = prefill(cfg, params, tokens_BT, lengths_B, cache)
    logits_BV, cache = step(cfg, params, cache, tokens_B)        # one token per row, at the row's position
    prefill_jit / step_jit                                       # jit-compiled, cfg static, cache donated

Batches hold prompts of different lengths **right-padded**: every row starts at position 0 and carries its own
position `cache["pos"][b]` (= tokens seen). Pad tokens after a row's length are computed in prefill but never
read: every cache slot j is (re)written by the step at position j before anything reads it.

Memory-mosaic cache, per layer l (leading axis L), batch row b, slot j < S:
    ck_state, pk_state (L,B,H,D) f32  leaky key state of the C-mem / P-mem, k̄_t = a·k̄_{t−1} + (1−a)·k̃_t
    c_hist, p_hist   (L,B,K−1,C)      last K−1 LayerNorm outputs feeding the key convs (empty when K = 1)
    keys             (L,B,S,H,D)      k_j for j ≤ pos−1 (k_pos is written by the step at pos)
    values           (L,B,S,H,D)      v_j for j ≤ pos−2: a value needs the next token, so it lags one behind
    vt_prev          (L,B,H,D)        raw value feature ṽ_{pos−1}, which completes v_{pos−1} at the next step
The step at position t: update the key states, write k_t; complete v_{t−1} = c·ṽ_{t−1} + (1−c)·ṽ_t (normalised,
scaled) into slot t−1; query k_t over the pairs 0..t−1 (row 0 reads nothing: output 0); P-mem reads its slots.
There is no position encoding, so a mosaic decoder runs past the training window up to S (see docs/inference.md).

GPT-2 cache: k, v (L,B,S,H,D) and pos; S ≤ block_size (learned positions).
Only the default `MemoryFns` (dot kernel, leaky keys, look-ahead values) are supported here.
"""
from __future__ import annotations

import functools
import math
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp

from mosaic_jax.ops import memory
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.gpt2.layers import causal_attention

Array = jax.Array
Params = Any
Cache = dict[str, Array]


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------
def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    """Zero caches for `batch` rows and up to `max_len` positions (the prompt included)."""
    L, H, D, C = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_embd
    dt = jnp.dtype(cfg.dtype)
    if cfg.arch not in ("mosaic", "gpt2"):
        raise NotImplementedError(f"decode.py handles arch 'mosaic' and 'gpt2', not {cfg.arch!r} (see decode_for)")
    if cfg.arch == "gpt2" and max_len > cfg.block_size:
        raise ValueError(f"GPT-2 baseline: max_len {max_len} exceeds block_size {cfg.block_size} (learned "
                         "positions); use the sliding-window recompute past the window")
    kv = (L, batch, max_len, H, D)
    cache = {"pos": jnp.zeros((batch,), jnp.int32)}
    if cfg.arch == "gpt2":
        return cache | {"k": jnp.zeros(kv, dt), "v": jnp.zeros(kv, dt)}
    hist = (L, batch, cfg.k_kernel_size - 1, C)
    state = (L, batch, H, D)
    return cache | {"ck_state": jnp.zeros(state, jnp.float32), "pk_state": jnp.zeros(state, jnp.float32),
                    "c_hist": jnp.zeros(hist, dt), "p_hist": jnp.zeros(hist, dt),
                    "keys": jnp.zeros(kv, dt), "values": jnp.zeros(kv, dt), "vt_prev": jnp.zeros(state, dt)}


def cache_len(cache: Cache) -> int:
    return (cache["k"] if "k" in cache else cache["keys"]).shape[2]


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------
def _ln(x: Array, p: Params) -> Array:
    return memory.layer_norm(x, p["weight"], p.get("bias"))


def _layer(params: Params, arch: str, l: int) -> Params:
    return jax.tree.map(lambda a: a[l], params["blocks"][arch])


def _embed(cfg: ModelConfig, params: Params, tokens: Array, pos: Array) -> Array:
    x = jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    if cfg.arch == "gpt2":
        x = x + jnp.take(params["pos_embed"], pos, axis=0).astype(x.dtype)
    return x


def _head(cfg: ModelConfig, params: Params, x: Array) -> Array:
    x = _ln(x, params["ln_out"])
    head = params["embed"] if cfg.weight_tying else params["head"]
    logits = jnp.einsum("...c,vc->...v", x, head.astype(x.dtype)).astype(jnp.float32)
    return logits / cfg.logit_divisor


def _out_proj(p: Params, y: Array) -> Array:
    out = jnp.einsum("...hd,hdc->...c", y, p["wo"].astype(y.dtype))
    return out + p["bo"].astype(out.dtype) if "bo" in p else out


def _residual(cfg: ModelConfig, p: Params, x: Array, cmem_fn: Any, pmem_fn: Any) -> Array:
    """The block's two branches with pre-LN (reference) or post-LN ordering."""
    if cfg.pre_ln:
        x = x + cmem_fn(_ln(x, p["ln1"]))
        return x + pmem_fn(_ln(x, p["ln2"]))
    x = _ln(x, p["ln1"])
    x = x + cmem_fn(x)
    x = _ln(x, p["ln2"])
    return x + pmem_fn(x)


def _rows_at(x_BT: Array, idx_B: Array) -> Array:
    """x[b, idx[b]] for every row b."""
    return jnp.take_along_axis(x_BT, idx_B.reshape((-1, 1) + (1,) * (x_BT.ndim - 2)), axis=1)[:, 0]


def _hist_at(h_BTC: Array, lengths_B: Array, K: int) -> Array:
    """h[b, len−K+1 .. len−1] (zeros before position 0): the conv taps carried into the first step."""
    hp = jnp.pad(h_BTC, ((0, 0), (K - 1, 0), (0, 0)))
    idx = lengths_B[:, None] + jnp.arange(K - 1)[None]         # padded coordinates of len−K+1.. len−1
    return jnp.take_along_axis(hp, idx[:, :, None], axis=1)


def _scalars(p: Params) -> tuple[Array, Array, Array]:
    """(decay a = e^{−λ}, key scale, value scale) per head, float32."""
    return jnp.exp(-memory.leak_rate(p["leaky_key_beta"])), memory.key_scale(p["kernel_beta"]), \
        memory.value_scale(p["value_beta"])


# ---------------------------------------------------------------------------------------------------------------
# Memory mosaic: prefill (parallel, the full-forward math) and step (recurrent)
# ---------------------------------------------------------------------------------------------------------------
def _mosaic_prefill_layer(cfg: ModelConfig, p: Params, x_BTC: Array, lengths_B: Array
                          ) -> tuple[Array, dict[str, Array]]:
    K = cfg.k_kernel_size
    st: dict[str, Array] = {}

    def keys(pm: Params, h: Array, scale: Array) -> tuple[Array, Array]:
        kt = memory.causal_conv_features(h, pm["k_features"]["wk"], pm["k_features"].get("bk"))
        kbar = memory.leaky_average(kt, memory.leak_rate(pm["leaky_key_beta"]), cfg.leaky_impl)
        return kbar, memory.l2_normalize(kbar) * scale[None, None, :, None].astype(kbar.dtype)

    def cmem(h: Array) -> Array:
        pm = p["cmem"]
        kbar, k = keys(pm, h, memory.key_scale(pm["kernel_beta"]))
        vt = jnp.einsum("btc,chd->bthd", h, pm["wv"].astype(h.dtype))
        if "bv" in pm:
            vt = vt + pm["bv"].astype(vt.dtype)
        v = memory.lookahead_values(vt, pm["v_coef"], memory.value_scale(pm["value_beta"]))
        y = memory.contextual_retrieval(k, v, impl=cfg.cmem_impl)
        st.update(ck_state=_rows_at(kbar, lengths_B - 1).astype(jnp.float32), c_hist=_hist_at(h, lengths_B, K),
                  keys=k, values=v, vt_prev=_rows_at(vt, lengths_B - 1))
        return _out_proj(pm["out"], y)

    def pmem(h: Array) -> Array:
        pm = p["pmem"]
        kbar, q = keys(pm, h, jnp.square(memory.key_scale(pm["kernel_beta"])))
        y = memory.persistent_retrieval(q, pm["mk"], pm["mv"])
        y = y * memory.value_scale(pm["value_beta"])[None, None, :, None].astype(y.dtype)
        st.update(pk_state=_rows_at(kbar, lengths_B - 1).astype(jnp.float32), p_hist=_hist_at(h, lengths_B, K))
        return _out_proj(pm["out"], y)

    x_BTC = _residual(cfg, p, x_BTC, cmem, pmem)
    return x_BTC, st


def _mosaic_step_layer(cfg: ModelConfig, p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    pos = c["pos"]
    rows = jnp.arange(x_BC.shape[0])

    def key_state(pm: Params, h: Array, hist: str, state: str, scale: Array) -> Array:
        a, _, _ = _scalars(pm)
        window = jnp.concatenate([c[hist][l], h[:, None]], axis=1)          # (B, K, C): taps t−K+1 .. t
        c[hist] = c[hist].at[l].set(window[:, 1:])
        kt = jnp.einsum("bkc,kchd->bhd", window, pm["k_features"]["wk"].astype(h.dtype))
        if "bk" in pm["k_features"]:
            kt = kt + pm["k_features"]["bk"].astype(kt.dtype)
        s = a[None, :, None] * c[state][l] + (1.0 - a)[None, :, None] * kt.astype(jnp.float32)
        c[state] = c[state].at[l].set(s)
        return (memory.l2_normalize(s) * scale[None, :, None]).astype(h.dtype)

    def cmem(h: Array) -> Array:
        pm = p["cmem"]
        _, ks, vs = _scalars(pm)
        k = key_state(pm, h, "c_hist", "ck_state", ks)
        vt = jnp.einsum("bc,chd->bhd", h, pm["wv"].astype(h.dtype))
        if "bv" in pm:
            vt = vt + pm["bv"].astype(vt.dtype)
        coef = pm["v_coef"][None, :, None].astype(vt.dtype)
        v_prev = memory.l2_normalize(coef * c["vt_prev"][l] + (1 - coef) * vt) * vs[None, :, None].astype(vt.dtype)
        # v_{t−1} is complete now that x_t is known; at t = 0 this writes a never-read slot that t = 1 overwrites.
        c["values"] = c["values"].at[l, rows, jnp.maximum(pos - 1, 0)].set(v_prev)
        c["keys"] = c["keys"].at[l, rows, pos].set(k)
        c["vt_prev"] = c["vt_prev"].at[l].set(vt)
        keys, values = c["keys"][l, :, :read_len], c["values"][l, :, :read_len]
        scores = jnp.einsum("bhd,bshd->bhs", k, keys, preferred_element_type=jnp.float32)
        allowed = (jnp.arange(read_len)[None, :] < pos[:, None])[:, None, :]    # strict: pairs j ≤ t−1
        w = memory.masked_softmax(scores, allowed)
        y = jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values)
        return _out_proj(pm["out"], y)

    def pmem(h: Array) -> Array:
        pm = p["pmem"]
        _, ks, vs = _scalars(pm)
        q = key_state(pm, h, "p_hist", "pk_state", jnp.square(ks))
        y = memory.persistent_retrieval(q[:, None], pm["mk"], pm["mv"])[:, 0]
        return _out_proj(pm["out"], y * vs[None, :, None].astype(y.dtype))

    return _residual(cfg, p, x_BC, cmem, pmem)


# ---------------------------------------------------------------------------------------------------------------
# GPT-2: KV cache
# ---------------------------------------------------------------------------------------------------------------
def _gpt2_qkv(p: Params, h: Array) -> Array:
    qkv = jnp.einsum("...c,cjhd->j...hd", h, p["c_attn"].astype(h.dtype))
    if "b_attn" in p:
        qkv = qkv + p["b_attn"].astype(h.dtype).reshape((3,) + (1,) * (h.ndim - 1) + p["b_attn"].shape[1:])
    return qkv


def _gpt2_tail(p: Params, x: Array, y: Array) -> Array:
    """Attention output projection, residual, then the MLP branch."""
    dt = x.dtype
    x = x + jnp.einsum("...hd,hdc->...c", y, p["attn_proj"].astype(dt)) + p.get("b_attn_proj", 0)
    h = _ln(x, p["ln_2"])
    h = jax.nn.gelu(jnp.einsum("...c,cf->...f", h, p["c_fc"].astype(dt)) + p.get("b_fc", 0), approximate=True)
    return x + jnp.einsum("...f,fc->...c", h, p["mlp_proj"].astype(dt)) + p.get("b_mlp_proj", 0)


def _gpt2_prefill_layer(p: Params, x_BTC: Array) -> tuple[Array, dict[str, Array]]:
    q, k, v = _gpt2_qkv(p, _ln(x_BTC, p["ln_1"]))
    return _gpt2_tail(p, x_BTC, causal_attention(q, k, v)), {"k": k, "v": v, "q": q}   # q: analysis only


def _gpt2_step_layer(p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    pos, rows = c["pos"], jnp.arange(x_BC.shape[0])
    q, k, v = _gpt2_qkv(p, _ln(x_BC, p["ln_1"]))
    c["k"] = c["k"].at[l, rows, pos].set(k)
    c["v"] = c["v"].at[l, rows, pos].set(v)
    keys, values = c["k"][l, :, :read_len], c["v"][l, :, :read_len]
    scores = jnp.einsum("bhd,bshd->bhs", q, keys, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    w = memory.masked_softmax(scores, (jnp.arange(read_len)[None, :] <= pos[:, None])[:, None, :])
    return _gpt2_tail(p, x_BC, jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values))


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
    arch = cfg.arch
    x = _embed(cfg, params, tokens_BT, jnp.arange(T)[None])
    new = dict(cache)
    for l in range(cfg.n_layer):
        p = _layer(params, arch, l)
        if arch == "mosaic":
            x, st = _mosaic_prefill_layer(cfg, p, x, lengths_B)
        else:
            x, st = _gpt2_prefill_layer(p, x)
        for name, val in st.items():
            if name not in new:
                continue
            if new[name].ndim == 5:      # per-position caches: slots 0..T−1
                new[name] = new[name].at[l, :, :T].set(val.astype(new[name].dtype))
            else:
                new[name] = new[name].at[l].set(val.astype(new[name].dtype))
    new["pos"] = lengths_B
    if not all_logits:
        x = _rows_at(x, lengths_B - 1)
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
    for l in range(cfg.n_layer):
        p = _layer(params, cfg.arch, l)
        if cfg.arch == "mosaic":
            x = _mosaic_step_layer(cfg, p, x, c, l, read_len)
        else:
            x = _gpt2_step_layer(p, x, c, l, read_len)
    c["pos"] = c["pos"] + 1
    return _head(cfg, params, x), c


prefill_jit = jax.jit(prefill, static_argnames=("cfg", "all_logits"), donate_argnames=("cache",))
step_jit = jax.jit(step, static_argnames=("cfg", "read_len"), donate_argnames=("cache",))


def decode_for(cfg: ModelConfig) -> Any:
    """The decoder module for cfg.arch: this one, or decode_v2 (same interface, no read_len) for v2."""
    if cfg.arch == "mosaic_v2":
        from mosaic_jax.models.mosaic_v2 import decode as decode_v2
        return decode_v2
    return sys.modules[__name__]


def read_bucket(needed: int, cache_size: int, minimum: int = 64) -> int:
    """Smallest power of two (≥ minimum) holding `needed` slots, capped at the cache size: few compiled steps."""
    n = minimum
    while n < needed:
        n *= 2
    return min(n, cache_size)


def read_len_for(cfg: ModelConfig, max_pos: int, cache_size: int, minimum: int = 64) -> int:
    """The `read_len` for a step whose rows sit at positions ≤ max_pos: the mosaic reads slots j ≤ t−1, GPT-2
    reads j ≤ t (its own key included)."""
    return read_bucket(max_pos + (cfg.arch == "gpt2"), cache_size, minimum)


# ---------------------------------------------------------------------------------------------------------------
# Full forward with the per-layer internals (prefill without a cache), for analysis
# ---------------------------------------------------------------------------------------------------------------
def forward_with_internals(cfg: ModelConfig, params: Params, tokens_BT: Array) -> tuple[Array, list[dict]]:
    """Logits (B,T,V) and, per layer, the memory keys/values (mosaic) or attention keys/values (GPT-2)."""
    B, T = tokens_BT.shape
    lengths = jnp.full((B,), T, jnp.int32)
    x = _embed(cfg, params, tokens_BT, jnp.arange(T)[None])
    internals = []
    for l in range(cfg.n_layer):
        p = _layer(params, cfg.arch, l)
        if cfg.arch == "mosaic":
            x, st = _mosaic_prefill_layer(cfg, p, x, lengths)
        else:
            x, st = _gpt2_prefill_layer(p, x)
        internals.append(st)
    return _head(cfg, params, x), internals


@functools.partial(jax.jit, static_argnames=("cfg",))
def window_logits(cfg: ModelConfig, params: Params, windows_BW: Array, lengths_B: Array) -> Array:
    """Sliding-window recompute (the reference's `generate`): full forward of each row's last ≤ W tokens,
    right-padded, and the logits at its last valid token (B,V). The leaky sums restart at the window start."""
    from mosaic_jax.models.lm import apply  # local: model.py imports nothing from here, keep the dependency one-way
    return _rows_at(apply(cfg, params, windows_BW), jnp.asarray(lengths_B, jnp.int32) - 1)
