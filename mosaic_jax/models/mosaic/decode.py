"""The v1 memory mosaic's layer decoder: its cache and the two decoding modes of the training block
(`layers.mosaic_residual` and its branches, run unchanged): `Prefill`, the training forward that also records the
cache, and `Step`, the recurrent key states and the read of the cached pairs. Run by the shared loop of
`mosaic_jax.inference.decode`.

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

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from mosaic_jax.inference.decode import Cache, hist_at, rows_at
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import (DEFAULT_FNS, Parallel, contextual_branch, key_features, mosaic_residual,
                                            persistent_branch, persistent_read, unit_keys)
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
# The block is `layers.mosaic_residual` with the C-mem/P-mem branches of the training forward; only the mode differs.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prefill(Parallel):
    """The training forward over the prompt, recording each unit's last key state, conv taps and the C-mem pairs."""
    lengths_B: Optional[Array] = None
    record: dict[str, Array] = dataclasses.field(default_factory=dict)

    def keys(self, unit: str, p: Params, h_BTC: Array, scale_H: Array) -> Array:
        # the default extractor written out: the cache keeps the leaky average k̄ before normalisation
        kt = key_features(self.cfg, p["k_features"], h_BTC)
        kbar = memory.leaky_average(kt, memory.leak_rate(p["leaky_key_beta"]), self.cfg.leaky_impl)
        self.record[f"{unit}k_state"] = rows_at(kbar, self.lengths_B - 1).astype(jnp.float32)
        self.record[f"{unit}_hist"] = hist_at(h_BTC, self.lengths_B, self.cfg.k_kernel_size)
        return unit_keys(kbar, scale_H)

    def contextual(self, p: Params, k_BTHD: Array, vt_BTHD: Array) -> Array:
        v = self.values(p, vt_BTHD)
        self.record.update(keys=k_BTHD, values=v, vt_prev=rows_at(vt_BTHD, self.lengths_B - 1))
        return self.read(k_BTHD, v)


@dataclasses.dataclass
class Step:
    """One position per row: the recurrent key states and the contextual read of the cached pairs (layer l)."""
    cfg: ModelConfig
    c: Cache
    l: int
    read_len: int

    def keys(self, unit: str, p: Params, h_BC: Array, scale_H: Array) -> Array:
        c, l, hist, state = self.c, self.l, f"{unit}_hist", f"{unit}k_state"
        a = jnp.exp(-memory.leak_rate(p["leaky_key_beta"]))[None, :, None]
        window = jnp.concatenate([c[hist][l], h_BC[:, None]], axis=1)          # (B, K, C): taps t−K+1 .. t
        c[hist] = c[hist].at[l].set(window[:, 1:])
        kt = jnp.einsum("bkc,kchd->bhd", window, p["k_features"]["wk"].astype(h_BC.dtype))
        if "bk" in p["k_features"]:
            kt = kt + p["k_features"]["bk"].astype(kt.dtype)
        s = a * c[state][l] + (1.0 - a) * kt.astype(jnp.float32)         # k̄_t = a·k̄_{t−1} + (1−a)·k̃_t
        c[state] = c[state].at[l].set(s)
        return unit_keys(s, scale_H).astype(h_BC.dtype)

    def contextual(self, p: Params, k_BHD: Array, vt_BHD: Array) -> Array:
        c, l, pos, read_len = self.c, self.l, self.c["pos"], self.read_len
        rows = jnp.arange(k_BHD.shape[0])
        coef = p["v_coef"][None, :, None].astype(vt_BHD.dtype)
        v_prev = unit_keys(coef * c["vt_prev"][l] + (1 - coef) * vt_BHD, memory.value_scale(p["value_beta"]))
        # v_{t−1} is complete now that x_t is known; at t = 0 this writes a never-read slot that t = 1 overwrites.
        c["values"] = c["values"].at[l, rows, jnp.maximum(pos - 1, 0)].set(v_prev)
        c["keys"] = c["keys"].at[l, rows, pos].set(k_BHD)
        c["vt_prev"] = c["vt_prev"].at[l].set(vt_BHD)
        keys, values = c["keys"][l, :, :read_len], c["values"][l, :, :read_len]
        scores = jnp.einsum("bhd,bshd->bhs", k_BHD, keys, preferred_element_type=jnp.float32)
        allowed = (jnp.arange(read_len)[None, :] < pos[:, None])[:, None, :]    # strict: pairs j ≤ t−1
        w = memory.masked_softmax(scores, allowed)
        return jnp.einsum("bhs,bshd->bhd", w.astype(values.dtype), values)

    def persistent(self, q_BHD: Array, p: Params) -> Array:
        return persistent_read(self.cfg, DEFAULT_FNS, q_BHD[:, None], p, "dense")[:, 0]   # one query: dense


def _block(cfg: ModelConfig, p: Params, x: Array, mode: Any) -> Array:
    return mosaic_residual(cfg, p, x, lambda h: contextual_branch(cfg, p["cmem"], h, mode),
                           lambda h: persistent_branch(cfg, p["pmem"], h, mode))


def prefill_layer(cfg: ModelConfig, p: Params, x_BTC: Array, lengths_B: Array) -> tuple[Array, dict[str, Array]]:
    mode = Prefill(cfg, lengths_B=lengths_B)
    return _block(cfg, p, x_BTC, mode), mode.record


def step_layer(cfg: ModelConfig, p: Params, x_BC: Array, c: Cache, l: int, read_len: int) -> Array:
    return _block(cfg, p, x_BC, Step(cfg, c, l, read_len))
