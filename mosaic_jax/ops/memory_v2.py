"""Memory Mosaics v2 ("at scale", spec §5) as pure functions of arrays: one contextual memory unit.

Layout as in `memory.py`: (batch B, time T, heads H, head dim D). Positions are 0-based; a *pair* j is the
(key k_j, value v_j) stored at position j, and v_j looks one token ahead (it contains x_{j+1}), so a query at t
may read pair j only when j ≤ t − 1.

Pieces:
  * adaptive bandwidth   β(n) = β₁·n^α + β₀, with β₀ = e^{min(θ₀,10)}, β₁ = e^{min(θ₁,10)}, α = min(|θ_α|, 1)
                         (Table 6; n = number of pairs the query can read). The kernel is e^{β k_t·k_j} on
                         L2-normalised keys, so β is folded into the query: q_t = β_t·k_t, scores q_t·k_j.
  * gated keys           k̄_t = g_t·k̃_t + λ_t·k̄_{t−1},  g_t = e^{W_g x_t},  λ_t = e^{−|W_λ x_t|},  k_t = k̄_t/‖k̄_t‖,
                         computed in log space with a running max (the exponential gate never overflows) and
                         reset at document starts (a document's keys never mix in the previous document).
  * values               v_t = α_ψ·Norm(γ ṽ_t + (1−γ) ṽ_{t+1}), α_ψ = e^{min(|θ|,15)} (v1's look-ahead values).
  * three-level memory   short-term pairs t−h+1 … t−1, long-term pairs 0 … t−m, persistent memory = SwiGLU. The
                         masks, pair counts and the four read implementations (dense, flash, blockwise, pallas)
                         are in `retrieval_v2`; every public name there is re-exported here.
  * the unit             `unit_read(p, h, kind, mode)`, written once: the mode says how keys are formed and what
                         the query reads (`FullSequence` here for training and prefill; the decoder's `Step` in
                         models/mosaic_v2/decode.py for one position per row against a cache).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from mosaic_jax.ops import dispatch, memory
from mosaic_jax.ops.retrieval_v2 import (OLDEST, choose_impl, doc_positions, doc_starts, document_mask,  # noqa: F401
                                         flash_implementation, long_term_count, long_term_mask, lookback,
                                         memory_mask, pair_counts, retrieve, retrieve_blockwise, retrieve_dense,
                                         retrieve_flash_long, retrieve_flash_short, short_term_count,
                                         short_term_mask)

Array = jax.Array

# Table 6 reparameterisations and initial raw values.
BETA_LOG_MAX = 10.0      # β₀, β₁ = e^{min(θ, 10)}
ALPHA_MAX = 1.0          # α = min(|θ|, 1)
VALUE_LOG_MAX = 15.0     # α_ψ = e^{min(|θ|, 15)}
BETA_INIT = 1.5
ALPHA_INIT = 1.0 / 3.0
VALUE_SCALE_INIT = 0.0
NEG_LOG = -1e30          # log of "nothing": an empty key state / a reset decay (finite: no inf·0 in gradients)


# ---------------------------------------------------------------------------------------------------------------
# Reparameterisations
# ---------------------------------------------------------------------------------------------------------------
def bandwidth(n: Array, theta_b0_H: Array, theta_b1_H: Array, theta_alpha_H: Array) -> Array:
    """β = β₁·n^α + β₀ per head; n (...,) pair counts broadcast against the heads -> (..., H) float32.

    n is clamped at 1: a query with no pair reads nothing, and n^α at n = 0 has no gradient in α.
    """
    n = jnp.maximum(jnp.asarray(n, jnp.float32), 1.0)[..., None]
    b0 = jnp.exp(jnp.minimum(theta_b0_H.astype(jnp.float32), BETA_LOG_MAX))
    b1 = jnp.exp(jnp.minimum(theta_b1_H.astype(jnp.float32), BETA_LOG_MAX))
    alpha = jnp.minimum(jnp.abs(theta_alpha_H.astype(jnp.float32)), ALPHA_MAX)
    return b1 * jnp.exp(alpha * jnp.log(n)) + b0


def value_scale(theta_H: Array) -> Array:
    """α_ψ = e^{min(|θ|, 15)}."""
    return jnp.exp(jnp.minimum(jnp.abs(theta_H.astype(jnp.float32)), VALUE_LOG_MAX))


# ---------------------------------------------------------------------------------------------------------------
# Gated, input-dependent leaky keys
# ---------------------------------------------------------------------------------------------------------------
def _gated_combine(left: tuple[Array, Array, Array], right: tuple[Array, Array, Array]
                   ) -> tuple[Array, Array, Array]:
    """Compose affine maps s ↦ e^{A}s + e^{m}x (left first). Elements: (A (…,H), m (…,H), x (…,H,D))."""
    a1, m1, x1 = left
    a2, m2, x2 = right
    m = jnp.maximum(a2 + m1, m2)
    x = jnp.exp(a2 + m1 - m)[..., None] * x1 + jnp.exp(m2 - m)[..., None] * x2
    return a1 + a2, m, x


def _reset_decay(log_decay_BTH: Array, reset_BT: Optional[Array]) -> Array:
    if reset_BT is None:
        return log_decay_BTH
    return jnp.where(reset_BT[..., None], NEG_LOG, log_decay_BTH)


def gated_state_scan(kt_BTHD: Array, log_gate_BTH: Array, log_decay_BTH: Array,
                     reset_BT: Optional[Array] = None) -> tuple[Array, Array]:
    """k̄_t = e^{m_t}·s_t for the recurrence k̄_t = g_t k̃_t + λ_t k̄_{t−1} (k̄_{−1} = 0; λ_t = 0 where reset_t).

    Associative scan in log space: returns (s (B,T,H,D) f32, m (B,T,H) f32), s bounded by the largest ‖k̃‖.
    """
    a = _reset_decay(log_decay_BTH.astype(jnp.float32), reset_BT)
    _, m, s = lax.associative_scan(_gated_combine, (a, log_gate_BTH.astype(jnp.float32),
                                                     kt_BTHD.astype(jnp.float32)), axis=1)
    return s, m


def gated_state_matrix(kt_BTHD: Array, log_gate_BTH: Array, log_decay_BTH: Array,
                       reset_BT: Optional[Array] = None) -> tuple[Array, Array]:
    """The same state from a (B,H,T,T) weight matrix w[t,i] = g_i·Π_{i<r≤t} λ_r (T×T; for short sequences)."""
    B, T = kt_BTHD.shape[:2]
    a = log_decay_BTH.astype(jnp.float32)
    if reset_BT is None:
        cum = jnp.cumsum(a, axis=1)                                  # Λ_t = Σ_{r≤t} log λ_r
    else:   # restarted at each document start: a document's weights never round with another's sums
        def seg_add(left, right):
            return left[0] | right[0], jnp.where(right[0][..., None], right[1], left[1] + right[1])
        a = jnp.where(reset_BT[..., None], 0.0, a)
        _, cum = lax.associative_scan(seg_add, (reset_BT, a), axis=1)
    logw = (cum[:, :, None, :] - cum[:, None, :, :]) + log_gate_BTH.astype(jnp.float32)[:, None, :, :]  # (B,t,i,H)
    t = jnp.arange(T)
    allowed = (t[:, None] >= t[None, :])[None]
    if reset_BT is not None:                                         # i must not precede t's document start
        start = lax.cummax(jnp.where(reset_BT, t[None], 0), axis=1)
        allowed = allowed & (t[None, None, :] >= start[:, :, None])
    logw = jnp.where(allowed[..., None], logw, NEG_LOG)
    m = jnp.max(logw, axis=2)                                        # (B,T,H)
    w = jnp.where(allowed[..., None], jnp.exp(logw - m[:, :, None, :]), 0.0)
    s = jnp.einsum("btih,bihd->bthd", w, kt_BTHD.astype(jnp.float32))
    return s, m


def gated_state_step(s_BHD: Array, m_BH: Array, kt_BHD: Array, log_gate_BH: Array, log_decay_BH: Array
                     ) -> tuple[Array, Array]:
    """One recurrent step of the stabilised state (the decoder's form). Empty state: s = 0, m = NEG_LOG."""
    m = jnp.maximum(log_decay_BH + m_BH, log_gate_BH)
    s = jnp.exp(log_decay_BH + m_BH - m)[..., None] * s_BHD + jnp.exp(log_gate_BH - m)[..., None] * kt_BHD
    return s, m


def gated_keys(kt_BTHD: Array, log_gate_BTH: Array, log_decay_BTH: Array, reset_BT: Optional[Array] = None,
               impl: str = "auto") -> tuple[Array, Array, Array]:
    """(k = Norm(k̄) in kt's dtype, s, m): the normalised keys and the stabilised state for the decoder."""
    fn = {"scan": gated_state_scan, "matrix": gated_state_matrix}[dispatch.v2_keys(impl, kt_BTHD.shape[1])]
    s, m = fn(kt_BTHD, log_gate_BTH, log_decay_BTH, reset_BT)
    return memory.l2_normalize(s).astype(kt_BTHD.dtype), s, m

# ---------------------------------------------------------------------------------------------------------------
# One contextual memory unit on a parameter dict, written once for training, prefill and the decoding step
# ---------------------------------------------------------------------------------------------------------------
class UnitMode(Protocol):
    """How a unit forms its keys and what its query reads: the only part that differs between modes."""

    def keys(self, kind: str, kt: Array, log_gate: Array, log_decay: Array) -> Array:
        """Normalised keys k from the raw features k̃ and the log gate / log decay."""

    def pair_counts(self, kind: str, k: Array) -> Array:
        """n, the number of pairs each query can read (sets the bandwidth β(n))."""

    def read(self, kind: str, p: dict, q: Array, k: Array, vt: Array) -> Array:
        """The read of the pairs (k, v from ṽ) the query q = β·k may see."""


def unit_features(p: dict, h_BTC: Array) -> tuple[Array, Array, Array, Array]:
    """(k̃ (B,T,H,D), log gate (B,T,H), log decay (B,T,H), ṽ (B,T,H,D)) from LayerNorm outputs h (any leading axes)."""
    dt = h_BTC.dtype
    kt = jnp.einsum("...c,chd->...hd", h_BTC, p["wk"].astype(dt))
    log_gate = jnp.einsum("...c,ch->...h", h_BTC, p["wg"].astype(dt)).astype(jnp.float32)
    log_decay = -jnp.abs(jnp.einsum("...c,ch->...h", h_BTC, p["wl"].astype(dt)).astype(jnp.float32))
    vt = jnp.einsum("...c,chd->...hd", h_BTC, p["wv"].astype(dt))
    return kt, log_gate, log_decay, vt


def unit_read(p: dict, h: Array, kind: str, mode: UnitMode) -> Array:
    """Read of one v2 memory (kind "short" or "long") from its params (wk, wg, wl, wv, v_coef, value_scale, bw_b0,
    bw_b1, bw_alpha): features, gated keys, the query q = β(n)·k, the read. h: (B,T,C) or one position (B,C)."""
    kt, log_gate, log_decay, vt = unit_features(p, h)
    k = mode.keys(kind, kt, log_gate, log_decay)
    beta = bandwidth(mode.pair_counts(kind, k), p["bw_b0"], p["bw_b1"], p["bw_alpha"])
    q = (k.astype(jnp.float32) * beta[..., None]).astype(k.dtype)
    return mode.read(kind, p, q, k, vt)


@dataclasses.dataclass
class FullSequence:
    """Every position at once (training, evaluation, the decoder's prefill). `record[kind]` keeps each unit's
    internals for the decoder: keys, values, ṽ and the key state (state_s, state_m) of every position."""
    look: int = 0
    skip_B: Optional[Array] = None
    segment_ids_BT: Optional[Array] = None
    impl: str = "auto"
    key_impl: str = "auto"
    dropout_rate: float = 0.0
    dropout_rngs: Mapping[str, Array] = dataclasses.field(default_factory=dict)   # per kind; none: no dropout
    record: dict[str, dict[str, Array]] = dataclasses.field(default_factory=dict)

    def keys(self, kind: str, kt: Array, log_gate: Array, log_decay: Array) -> Array:
        B, T = kt.shape[:2]
        reset = None if self.segment_ids_BT is None else doc_starts(self.segment_ids_BT, B, T)
        k, s, m = gated_keys(kt, log_gate, log_decay, reset, self.key_impl)
        self.record[kind] = {"keys": k, "state_s": s, "state_m": m}
        return k

    def pair_counts(self, kind: str, k: Array) -> Array:
        B, T = k.shape[:2]
        return pair_counts(kind, doc_positions(self.segment_ids_BT, B, T), look=self.look, skip_B=self.skip_B)

    def read(self, kind: str, p: dict, q: Array, k: Array, vt: Array) -> Array:
        v = memory.lookahead_values(vt, p["v_coef"], value_scale(p["value_scale"]))
        self.record[kind].update(values=v, vt=vt)
        return retrieve(q, k, v, kind, look=self.look, skip_B=self.skip_B, segment_ids_BT=self.segment_ids_BT,
                        impl=self.impl, dropout_rate=self.dropout_rate, dropout_rng=self.dropout_rngs.get(kind))


def unit_forward(p: dict, h_BTC: Array, kind: str, *, look: int = 0, skip_B: Optional[Array] = None,
                 segment_ids_BT: Optional[Array] = None, impl: str = "auto", key_impl: str = "auto",
                 dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None) -> tuple[Array, dict]:
    """`unit_read` of one memory over the whole sequence: (y (B,T,H,D), internals: keys, values, ṽ, key state)."""
    mode = FullSequence(look, skip_B, segment_ids_BT, impl, key_impl, dropout_rate,
                        {} if dropout_rng is None else {kind: dropout_rng})
    return unit_read(p, h_BTC, kind, mode), mode.record[kind]


def swiglu(p: dict, h: Array) -> Array:
    """Persistent memory: W₂(SiLU(W₁h) ⊙ W₃h)."""
    dt = h.dtype
    a = jnp.einsum("...c,cf->...f", h, p["w1"].astype(dt))
    b = jnp.einsum("...c,cf->...f", h, p["w3"].astype(dt))
    return jnp.einsum("...f,fc->...c", jax.nn.silu(a) * b, p["w2"].astype(dt))
