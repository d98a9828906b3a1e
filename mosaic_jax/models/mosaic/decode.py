"""The v1 memory mosaic's layer decoder: its cache, the parallel prefill (the full-forward math) and the recurrent
step, run by the shared loop of `mosaic_jax.inference.decode`.

Memory-mosaic cache, per layer l (leading axis L), batch row b, slot j < S:
    ck_state, pk_state (L,B,H,D) f32  leaky key state of the C-mem / P-mem, k̄_t = a·k̄_{t−1} + (1−a)·k̃_t
    c_hist, p_hist   (L,B,K−1,C)      last K−1 LayerNorm outputs feeding the key convs (empty when K = 1)
    keys             (L,B,S,H,D)      k_j for j ≤ pos−1 (k_pos is written by the step at pos)
    values           (L,B,S,H,D)      v_j for j ≤ pos−2: a value needs the next token, so it lags one behind
    vt_prev          (L,B,H,D)        raw value feature ṽ_{pos−1}, which completes v_{pos−1} at the next step
The step at position t: update the key states, write k_t; complete v_{t−1} = c·ṽ_{t−1} + (1−c)·ṽ_t (normalised,
scaled) into slot t−1; query k_t over the pairs 0..t−1 (row 0 reads nothing: output 0); P-mem reads its slots.
There is no position encoding, so a mosaic decoder runs past the training window up to S (see docs/inference.md).

"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import Cache, hist_at, out_proj, residual, rows_at, scalars
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.ops import memory

Array = jax.Array
Params = Any
reads_own_key = False   # the query at t reads the pairs j <= t-1


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
    L, H, D, C = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_embd
    dt = jnp.dtype(cfg.dtype)
    kv, hist, state = (L, batch, max_len, H, D), (L, batch, cfg.k_kernel_size - 1, C), (L, batch, H, D)
    return {"ck_state": jnp.zeros(state, jnp.float32), "pk_state": jnp.zeros(state, jnp.float32),
            "c_hist": jnp.zeros(hist, dt), "p_hist": jnp.zeros(hist, dt),
            "keys": jnp.zeros(kv, dt), "values": jnp.zeros(kv, dt), "vt_prev": jnp.zeros(state, dt)}


def read_weights(internals: dict[str, Array]) -> Array:
    """(B, H, T, T) C-mem read weights of one layer: query k_t over the keys k_j, j <= t-1 (analysis)."""
    keys = internals["keys"]
    scores = memory.dot_kernel(keys, keys)
    return memory.masked_softmax(scores, memory.strict_causal_mask(keys.shape[1]))


def embed_positions(params: Params, x: Array, pos: Array) -> Array:
    return x   # no position encoding


# ---------------------------------------------------------------------------------------------------------------
def prefill_layer(cfg: ModelConfig, p: Params, x_BTC: Array, lengths_B: Array
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
        st.update(ck_state=rows_at(kbar, lengths_B - 1).astype(jnp.float32), c_hist=hist_at(h, lengths_B, K),
                  keys=k, values=v, vt_prev=rows_at(vt, lengths_B - 1))
        return out_proj(pm["out"], y)

    def pmem(h: Array) -> Array:
        pm = p["pmem"]
        kbar, q = keys(pm, h, jnp.square(memory.key_scale(pm["kernel_beta"])))
        y = memory.persistent_retrieval(q, pm["mk"], pm["mv"])
        y = y * memory.value_scale(pm["value_beta"])[None, None, :, None].astype(y.dtype)
        st.update(pk_state=rows_at(kbar, lengths_B - 1).astype(jnp.float32), p_hist=hist_at(h, lengths_B, K))
        return out_proj(pm["out"], y)

    x_BTC = residual(cfg, p, x_BTC, cmem, pmem)
    return x_BTC, st


def step_layer(cfg: ModelConfig, p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    pos = c["pos"]
    rows = jnp.arange(x_BC.shape[0])

    def key_state(pm: Params, h: Array, hist: str, state: str, scale: Array) -> Array:
        a, _, _ = scalars(pm)
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
        _, ks, vs = scalars(pm)
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
        return out_proj(pm["out"], y)

    def pmem(h: Array) -> Array:
        pm = p["pmem"]
        _, ks, vs = scalars(pm)
        q = key_state(pm, h, "p_hist", "pk_state", jnp.square(ks))
        y = memory.persistent_retrieval(q[:, None], pm["mk"], pm["mv"])[:, 0]
        return out_proj(pm["out"], y * vs[None, :, None].astype(y.dtype))

    return residual(cfg, p, x_BC, cmem, pmem)
