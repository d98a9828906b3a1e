"""Hand-written VJPs for the dense parts of a training step: the tied head + cross-entropy, the projections and
the leaky-average scan. Selected by `ModelConfig.loss_impl`, `proj_impl` and `leaky_impl`; each is tested equal
to its plain form in tests/test_fast_paths.py. The dot-layout rules they follow are in `kernels._t`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from mosaic_jax.kernels.memory_vjp import _pad_rows, _t, pick_chunk

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Tied head + cross-entropy: Σ_t [lse(scale·x_t·Eᵀ) − scale·x_t·E[y_t]] over valid targets, logits never stored
# ---------------------------------------------------------------------------------------------------------------
def _row_chunks(x_MX: Array, c: int) -> Array:
    K = -(-x_MX.shape[0] // c)
    return _pad_rows(x_MX, 0, K * c).reshape(K, c, *x_MX.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def head_cross_entropy(x_MC: Array, embed_VC: Array, targets_M: Array, scale: float = 1.0, chunk: int = 0) -> Array:
    """Sum over rows of the cross-entropy of logits = scale·x·Eᵀ (float32) against `targets` (−1 = skipped)."""
    return _ce_fwd(x_MC, embed_VC, targets_M, scale, chunk)[0]


def _ce_chunk_logits(x: Array, e: Array, scale: float) -> Array:
    return jnp.einsum("mc,vc->mv", x, e, preferred_element_type=jnp.float32) * scale


def _ce_fwd(x_MC: Array, embed_VC: Array, targets_M: Array, scale: float, chunk: int) -> tuple[Array, tuple]:
    M, V = x_MC.shape[0], embed_VC.shape[0]
    c = chunk or min(pick_chunk(M, V), M)
    e = embed_VC.astype(x_MC.dtype)
    x_KcC, t_Kc = _row_chunks(x_MC, c), _row_chunks(targets_M, c)
    t_Kc = jnp.where(jnp.arange(t_Kc.size).reshape(t_Kc.shape) < M, t_Kc, -1)   # padded rows are skipped

    def body(total: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        x, t = xs
        z = _ce_chunk_logits(x, e, scale)
        lse = jax.nn.logsumexp(z, axis=-1)
        picked = jnp.take_along_axis(z, jnp.maximum(t, 0)[:, None], axis=-1)[:, 0]
        return total + jnp.sum(jnp.where(t >= 0, lse - picked, 0.0)), lse

    total, lse_Kc = lax.scan(body, jnp.zeros((), jnp.float32), (x_KcC, t_Kc))
    return total, (x_KcC, t_Kc, lse_Kc, embed_VC, jnp.zeros((M, 0), x_MC.dtype))  # last: carries M


def _ce_bwd(scale: float, chunk: int, res: tuple, g: Array) -> tuple[Array, Array, None]:
    x_KcC, t_Kc, lse_Kc, embed_VC, rows_M0 = res
    e = embed_VC.astype(x_KcC.dtype)
    V = e.shape[0]

    def body(de: Array, xs: tuple[Array, ...]) -> tuple[Array, Array]:
        x, x_Cc, t, lse = xs
        p = jnp.exp(_ce_chunk_logits(x, e, scale) - lse[:, None])
        onehot = jnp.arange(V)[None, :] == t[:, None]
        dz = jnp.where(t[:, None] >= 0, p - onehot, 0.0) * (g * scale)
        dz = dz.astype(x.dtype)
        dx = jnp.einsum("mv,vc->mc", dz, e, preferred_element_type=jnp.float32).astype(x.dtype)
        de = de + jnp.einsum("cm,mv->cv", x_Cc, dz, preferred_element_type=jnp.float32)   # accumulated as Eᵀ
        return de, dx

    xs = (x_KcC, _t(x_KcC), t_Kc, lse_Kc)
    de_CV, dx_KcC = lax.optimization_barrier(lax.scan(body, jnp.zeros(embed_VC.shape[::-1], jnp.float32), xs))
    dx = dx_KcC.reshape(-1, x_KcC.shape[-1])[:rows_M0.shape[0]]
    return dx, de_CV.T.astype(embed_VC.dtype), None


head_cross_entropy.defvjp(_ce_fwd, _ce_bwd)


# ---------------------------------------------------------------------------------------------------------------
# Projection x·W: operands in the compute dtype, float32 accumulation, the weight gradient kept in float32
# ---------------------------------------------------------------------------------------------------------------
@jax.custom_vjp
def matmul(x_MK: Array, w_KN: Array) -> Array:
    """x·W with W cast to x's dtype and float32 accumulation, output in x's dtype (the `ModelConfig.dtype`).

    The backward pass keeps the same rule (bfloat16 operands, float32 accumulation: the fast form on CPUs with
    AVX512-BF16 and on GPUs) and returns dW in W's dtype without rounding it through the compute dtype.
    """
    return _mm_fwd(x_MK, w_KN)[0]


def _mm_fwd(x_MK: Array, w_KN: Array) -> tuple[Array, tuple[Array, Array]]:
    y = jnp.dot(x_MK, w_KN.astype(x_MK.dtype), preferred_element_type=jnp.float32).astype(x_MK.dtype)
    return y, (x_MK, w_KN)


def _mm_bwd(res: tuple[Array, Array], dy_MN: Array) -> tuple[Array, Array]:
    x_MK, w_KN = res
    dt = x_MK.dtype
    dy = dy_MN.astype(dt)
    dx = jnp.einsum("mn,kn->mk", dy, w_KN.astype(dt), preferred_element_type=jnp.float32).astype(dt)
    dw = jnp.dot(_t(x_MK), dy, preferred_element_type=jnp.float32)  # see _t
    return dx, dw.astype(w_KN.dtype)


matmul.defvjp(_mm_fwd, _mm_bwd)


def project(x: Array, w: Array, n_in: int) -> Array:
    """`matmul` over the last `n_in` axes of x and the first `n_in` axes of w (e.g. (B,T,C)·(C,H,D))."""
    lead, k, out = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:]), w.shape[n_in:]
    y = matmul(x.reshape(-1, k), w.reshape(k, -1))
    return y.reshape(*lead, *out)


# ---------------------------------------------------------------------------------------------------------------
# Leaky average s_t = a·s_{t−1} + x_t, y = (1 − a)·s, a = e^{−λ} per head: associative scans both ways
# ---------------------------------------------------------------------------------------------------------------
def _leak_combine(left: tuple[Array, Array], right: tuple[Array, Array]) -> tuple[Array, Array]:
    return left[0] * right[0], right[0] * left[1] + right[1]


def _leak_scan(x_BTHD: Array, a_H: Array, reverse: bool) -> Array:
    a = jnp.broadcast_to(a_H[None, None, :, None], x_BTHD.shape)
    return lax.associative_scan(_leak_combine, (a, x_BTHD), axis=1, reverse=reverse)[1]


@jax.custom_vjp
def leaky_scan(x_BTHD: Array, lam_H: Array) -> Array:
    """The leaky average of `memory.leaky_average_scan` with its backward pass written out: the reverse scan
    for dx and dλ = −a·Σ_{b,t,d} [ds_t·s_{t−1} − dy_t·s_t]. Autodiff through the scan instead differentiates the
    broadcast decay at every level (windowed reductions that cost ~10% of a CPU training step)."""
    return _leaky_fwd(x_BTHD, lam_H)[0]


def _leaky_fwd(x_BTHD: Array, lam_H: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    a = jnp.exp(-lam_H.astype(jnp.float32))
    s = _leak_scan(x_BTHD.astype(jnp.float32), a, reverse=False)
    y = (s * (1.0 - a)[None, None, :, None]).astype(x_BTHD.dtype)
    return y, (s, a, lam_H)


def _leaky_bwd(res: tuple[Array, Array, Array], dy_BTHD: Array) -> tuple[Array, Array]:
    s, a, lam_H = res
    dy = dy_BTHD.astype(jnp.float32)
    ds = _leak_scan(dy * (1.0 - a)[None, None, :, None], a, reverse=True)
    s_prev = jnp.pad(s[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
    da = jnp.sum(ds * s_prev - dy * s, axis=(0, 1, 3))
    return ds.astype(dy_BTHD.dtype), (-a * da).astype(lam_H.dtype)


leaky_scan.defvjp(_leaky_fwd, _leaky_bwd)
