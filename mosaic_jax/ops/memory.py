"""The memory math of Memory Mosaics as pure functions of arrays.

Layout: (batch B, time T, heads H, head dim D); slots P; conv taps K. Every function here is usable on its own
and differentiable; the Flax modules in `layers.py` only own parameters and call these.

Reparameterised per-head scalars (shape (H,)) follow the reference exactly:

    leak      λ = 10·|raw_leak|
    key scale e^{min(10·raw_kb, 5)} (the C-mem kernel β is its square; the P-mem query scale is its square)
    value/out scale e^{10·raw_vb}
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from mosaic_jax.kernels import dense_vjp, memory_vjp, pallas, platform
from mosaic_jax.ops import dispatch

Array = jax.Array
EXP_PARAM_SCALE = 10.0   # the reference's `exp_param_scale`: a learning-rate multiplier in disguise
KEY_SCALE_LOG_MAX = 5.0  # the reference clamps the log key scale at 5 (fp16 safety)


# ---------------------------------------------------------------------------------------------------------------
# Reparameterisations
# ---------------------------------------------------------------------------------------------------------------
def leak_rate(raw_leak_H: Array) -> Array:
    """λ_h = 10·|raw| (the decay per step is e^{-λ})."""
    return EXP_PARAM_SCALE * jnp.abs(raw_leak_H)


def key_scale(raw_kb_H: Array) -> Array:
    return jnp.exp(jnp.minimum(EXP_PARAM_SCALE * raw_kb_H, KEY_SCALE_LOG_MAX))


def value_scale(raw_vb_H: Array) -> Array:
    return jnp.exp(EXP_PARAM_SCALE * raw_vb_H)


def l2_normalize(x: Array, axis: int = -1) -> Array:
    """x/‖x‖ with no ε, as the reference (keys and values are never exactly zero in practice)."""
    x32 = x.astype(jnp.float32)
    return (x32 * lax.rsqrt(jnp.sum(x32 * x32, axis=axis, keepdims=True))).astype(x.dtype)


def layer_norm(x: Array, weight: Array, bias: Optional[Array] = None, eps: float = 1e-5) -> Array:
    """LayerNorm over the last axis in float32 (weight-only when bias is None), cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * lax.rsqrt(var + eps) * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Leaky average  k̄_t = (1 − a)·Σ_{i≤t} a^{t−i} x_i,  a = e^{−λ_h}   (includes the current token)
# ---------------------------------------------------------------------------------------------------------------
def leaky_average_matrix(x_BTHD: Array, lam_H: Array) -> Array:
    """T×T lower-triangular decay matrix times x: O(T²·D) work, the reference's form."""
    T = x_BTHD.shape[1]
    t = jnp.arange(T)
    dist_TT = (t[:, None] - t[None, :]).astype(jnp.float32)
    lam = lam_H.astype(jnp.float32)
    # where() before exp so the masked (negative-distance) entries never overflow.
    decay_HTT = jnp.exp(-lam[:, None, None] * jnp.where(dist_TT >= 0, dist_TT, 0.0)[None])
    decay_HTT = jnp.where(dist_TT[None] >= 0, decay_HTT, 0.0) * (1.0 - jnp.exp(-lam))[:, None, None]
    return jnp.einsum("hts,bshd->bthd", decay_HTT.astype(x_BTHD.dtype), x_BTHD)


def leaky_average_scan(x_BTHD: Array, lam_H: Array) -> Array:
    """Associative scan of the recurrence s_t = a·s_{t−1} + x_t: O(T·D) work, O(log T) depth; the backward
    pass is written out (dense_vjp.leaky_scan)."""
    return dense_vjp.leaky_scan(x_BTHD, lam_H)


def leaky_average_chunked(x_BTHD: Array, lam_H: Array, chunk: int = 64) -> Array:
    """Chunked form: Q×Q decay matrix inside each chunk plus a carried state between chunks, O(T·Q·D)."""
    B, T, H, D = x_BTHD.shape
    Q = min(chunk, T)
    n = -(-T // Q)
    pad = n * Q - T
    x = jnp.pad(x_BTHD, ((0, 0), (0, pad), (0, 0), (0, 0))).astype(jnp.float32)
    x_NBQHD = x.reshape(B, n, Q, H, D).transpose(1, 0, 2, 3, 4)
    lam = lam_H.astype(jnp.float32)
    q = jnp.arange(Q, dtype=jnp.float32)
    dist = q[:, None] - q[None, :]
    intra_HQQ = jnp.where(dist[None] >= 0, jnp.exp(-lam[:, None, None] * jnp.maximum(dist, 0.0)[None]), 0.0)
    into_HQ = jnp.exp(-lam[:, None] * (q[None, :] + 1.0))        # weight of the carried state at offset q
    tail_HQ = jnp.exp(-lam[:, None] * (Q - 1.0 - q[None, :]))     # weight of x_q in the state at chunk end
    a_Q = jnp.exp(-lam * Q)

    def step(s_BHD: Array, xc_BQHD: Array) -> tuple[Array, Array]:
        y = jnp.einsum("hqr,brhd->bqhd", intra_HQQ, xc_BQHD) + into_HQ.T[None, :, :, None] * s_BHD[:, None]
        s_new = a_Q[None, :, None] * s_BHD + jnp.einsum("hq,bqhd->bhd", tail_HQ, xc_BQHD)
        return s_new, y

    _, y_NBQHD = lax.scan(step, jnp.zeros((B, H, D), jnp.float32), x_NBQHD)
    y = y_NBQHD.transpose(1, 0, 2, 3, 4).reshape(B, n * Q, H, D)[:, :T]
    return (y * (1.0 - jnp.exp(-lam))[None, None, :, None]).astype(x_BTHD.dtype)


LEAKY_IMPLS: dict[str, Callable[[Array, Array], Array]] = {
    "matrix": leaky_average_matrix,
    "scan": leaky_average_scan,
    "chunked": leaky_average_chunked,
}
MATRIX_MAX_T = dispatch.MATRIX_MAX_T   # the T×T form up to this length (the rule: ops/dispatch.leaky)


def leaky_average(x_BTHD: Array, lam_H: Array, impl: str = "auto") -> Array:
    """Leaky average with decay e^{−λ_h} per head; `auto`: the scan on CPU (measured fastest there, see
    docs/performance.md), elsewhere the T×T form for short sequences and the chunked form for long ones."""
    return LEAKY_IMPLS[dispatch.leaky(impl, platform.backend(), x_BTHD.shape[1])](x_BTHD, lam_H)


# ---------------------------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------------------------
def causal_conv_features(h_BTC: Array, w_KCHD: Array, b_HD: Optional[Array] = None) -> Array:
    """k̃_t = Σ_τ W_τ h_{t−K+1+τ} (left zero padding of K−1): a linear map when K = 1."""
    K = w_KCHD.shape[0]
    T = h_BTC.shape[1]
    hp = jnp.pad(h_BTC, ((0, 0), (K - 1, 0), (0, 0)))
    out = sum(jnp.einsum("btc,chd->bthd", hp[:, tau:tau + T], w_KCHD[tau].astype(h_BTC.dtype)) for tau in range(K))
    if b_HD is not None:
        out = out + b_HD.astype(out.dtype)
    return out


def memory_keys(kt_BTHD: Array, raw_leak_H: Array, scale_H: Array, impl: str = "auto") -> Array:
    """Default key extractor from raw features: leaky average, L2 normalisation, per-head scale."""
    kbar = leaky_average(kt_BTHD, leak_rate(raw_leak_H), impl)
    return l2_normalize(kbar) * scale_H[None, None, :, None].astype(kbar.dtype)


def lookahead_values(vt_BTHD: Array, coef_H: Array, scale_H: Array) -> Array:
    """v_t = scale·normalize(c·ṽ_t + (1−c)·ṽ_{t+1}), ṽ_T := 0 (the last value is never read)."""
    nxt = jnp.pad(vt_BTHD[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))
    c = coef_H[None, None, :, None].astype(vt_BTHD.dtype)
    vbar = c * vt_BTHD + (1 - c) * nxt
    return l2_normalize(vbar) * scale_H[None, None, :, None].astype(vbar.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------
KernelFn = Callable[[Array, Array], Array]  # (q_BTHD, k_BSHD) -> scores_BHTS (float32)


def dot_kernel(q_BTHD: Array, k_BSHD: Array) -> Array:
    """The reference kernel: log K(q, k) = q·k (the scale β lives in the keys; no 1/√d)."""
    return jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32)


def strict_causal_mask(T: int, S: Optional[int] = None, shift: int = 1) -> Array:
    """allowed[t, j] = j ≤ t − shift: query t reads only pairs whose value does not reach x_{t+1}."""
    S = T if S is None else S
    return jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] - shift


def masked_softmax(scores: Array, allowed: Array) -> Array:
    """Softmax over the last axis restricted to `allowed`; rows with nothing allowed are exactly 0."""
    s = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    w = jax.nn.softmax(s, axis=-1)
    return jnp.where(allowed, w, 0.0)


def contextual_retrieval_flash(k_BTHD: Array, v_BTHD: Array) -> Array:
    """The same read through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU), no T×T in HBM.

    The strict mask j ≤ t−1 is an ordinary causal mask between queries k_{1..T−1} and pairs (k, v)_{0..T−2};
    row 0 reads nothing and is exactly 0. The kernel is the dot product with scale 1 (β is inside the keys).
    """
    B, T, H, D = k_BTHD.shape
    if T < 2:
        return jnp.zeros_like(v_BTHD)
    y = jax.nn.dot_product_attention(k_BTHD[:, 1:], k_BTHD[:, :-1], v_BTHD[:, :-1], scale=1.0, is_causal=True,
                                     implementation=attention_backend(k_BTHD.dtype, D))
    return jnp.concatenate([jnp.zeros((B, 1, H, D), y.dtype), y], axis=1)


def attention_backend(dtype: jnp.dtype, head_dim: int) -> Optional[str]:
    """"cudnn" (flash attention) on an NVIDIA GPU for the dtypes and head sizes it takes, else None (XLA)."""
    ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if ok and platform.backend() == "gpu" else None


def resolve_impl(impl: str, fusable: bool, dropout: bool = False) -> str:
    """The read to run. "auto": "pallas" (mosaic_jax.kernels.pallas: flash kernels, dropout supported) on TPU, "flash"
    on GPU (without dropout), "fused" (memory_vjp.py: chunked, hand-written VJP, dropout supported) on CPU, "dense"
    where none applies (the rule: ops/dispatch.retrieval). `fusable`: the default kernel and mask. "pallas"
    elsewhere than on a TPU runs in Pallas interpret mode (for tests). Explicit choices that cannot compute the
    asked function raise."""
    return dispatch.retrieval(impl, platform.backend(), fusable, dropout)


def dropout_seed(rng: Optional[Array], rate: float) -> tuple[Optional[Array], float]:
    """(uint32 seed, rate) for the fused reads' hash masks; (None, 0) when dropout is off."""
    if rng is None or rate == 0.0:
        return None, 0.0
    return jax.random.bits(rng, (), jnp.uint32), float(rate)


def contextual_retrieval(k_BTHD: Array, v_BTHD: Array, *, kernel: KernelFn = dot_kernel,
                         allowed_TT: Optional[Array] = None, dropout_rate: float = 0.0,
                         dropout_rng: Optional[Array] = None, impl: str = "dense") -> Array:
    """Kernel regression y_t = Σ_{j≤t−1} softmax_j(kernel(k_t, k_j)) v_j with the symmetric query (q = k).

    Row 0 has no stored pair and returns exactly 0. Dropout (p = dropout_rate) applies to the read weights
    when a dropout_rng is given. `allowed_TT` overrides the strict causal mask (e.g. windows, documents).
    impl: "dense" (materialises the scores), "flash" (`jax.nn.dot_product_attention`: cuDNN on GPU),
    "fused" (memory_vjp.contextual_read: chunked, hand-written VJP, nothing T×T stored), "pallas"
    (pallas.contextual_read: the TPU flash kernel; interpret mode elsewhere) or "auto" (pallas on TPU, flash on
    GPU, fused on CPU, dense when none applies). The fast forms need the dot kernel and the default mask;
    flash also needs no dropout. Fused and pallas dropout draw their masks from one counter hash
    (memory_vjp.dropout_keep), not from `jax.random.bernoulli`: the same distribution, another random stream than
    dense.
    """
    impl = resolve_impl(impl, kernel is dot_kernel and allowed_TT is None, dropout_rng is not None and dropout_rate > 0)
    if impl == "flash":
        return contextual_retrieval_flash(k_BTHD, v_BTHD)
    if impl == "fused":
        return memory_vjp.contextual_read(k_BTHD, v_BTHD, 0, *dropout_seed(dropout_rng, dropout_rate))
    if impl == "pallas":
        return pallas.contextual_read(k_BTHD, v_BTHD, *dropout_seed(dropout_rng, dropout_rate))
    T = k_BTHD.shape[1]
    scores_BHTS = kernel(k_BTHD, k_BTHD)
    allowed = strict_causal_mask(T) if allowed_TT is None else allowed_TT
    w_BHTS = masked_softmax(scores_BHTS.astype(jnp.float32), allowed)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, w_BHTS.shape)
        w_BHTS = jnp.where(keep, w_BHTS / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhts,bshd->bthd", w_BHTS.astype(v_BTHD.dtype), v_BTHD)


def persistent_retrieval(q_BTHD: Array, mk_NHPD: Array, mv_NHPD: Array, *, dropout_rate: float = 0.0,
                         dropout_rng: Optional[Array] = None, impl: str = "dense") -> Array:
    """y_t = (1/N)·Σ_n softmax_s(q_t·M_k^n[s]) M_v^n[s]: per-head attention over N learned slot tables.

    impl: "dense" (materialises the B·H·T·P weights), "fused" (memory_vjp.persistent_read: chunked over tokens,
    hand-written VJP), "flash" (`jax.nn.dot_product_attention` with the B·T queries in one row against the
    slot table: cuDNN on GPU; no dropout), "pallas" (pallas.persistent_read: unmasked flash over the slot table,
    the fused read's dropout masks) or "auto" (pallas on TPU, flash on GPU, fused on CPU, dense for dropout on
    GPU).
    """
    impl = resolve_impl(impl, True, dropout_rng is not None and dropout_rate > 0)
    if impl in ("fused", "flash", "pallas"):
        N = mk_NHPD.shape[0]
        rngs = [None if dropout_rng is None else jax.random.fold_in(dropout_rng, n) for n in range(N)]
        return sum(_persistent_fast(q_BTHD, mk_NHPD[n], mv_NHPD[n], impl, *dropout_seed(rngs[n], dropout_rate))
                   for n in range(N)) / N
    scores_BNHTP = jnp.einsum("bthd,nhpd->bnhtp", q_BTHD, mk_NHPD.astype(q_BTHD.dtype),
                              preferred_element_type=jnp.float32)
    w = jax.nn.softmax(scores_BNHTP, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, w.shape)
        w = jnp.where(keep, w / (1.0 - dropout_rate), 0.0)
    y = jnp.einsum("bnhtp,nhpd->bthd", w.astype(q_BTHD.dtype), mv_NHPD.astype(q_BTHD.dtype))
    return y / mk_NHPD.shape[0]


def _persistent_fast(q_BTHD: Array, mk_HPD: Array, mv_HPD: Array, impl: str, seed: Optional[Array],
                     rate: float) -> Array:
    if impl == "fused":
        return memory_vjp.persistent_read(q_BTHD, mk_HPD, mv_HPD, 0, seed, rate)
    if impl == "pallas":
        return pallas.persistent_read(q_BTHD, mk_HPD, mv_HPD, seed, rate)
    B, T, H, D = q_BTHD.shape
    dt = q_BTHD.dtype
    y = jax.nn.dot_product_attention(q_BTHD.reshape(1, B * T, H, D), mk_HPD.astype(dt).transpose(1, 0, 2)[None],
                                     mv_HPD.astype(dt).transpose(1, 0, 2)[None], scale=1.0,
                                     implementation=attention_backend(dt, D))
    return y.reshape(B, T, H, D)
