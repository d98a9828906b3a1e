"""Hand-written VJPs (`jax.custom_vjp`) for the memory reads (the head, projections and leaky scan: dense_vjp.py).

Each function computes exactly what its plain counterpart computes (`memory.persistent_retrieval`,
`memory.contextual_retrieval`) and is selected by a config switch (`ModelConfig.pmem_impl`, `cmem_impl`);
tests/test_fast_paths.py checks values and gradients.

Why (measured on a 2-core CPU, docs/performance.md): XLA:CPU stores every softmax weight matrix of the
plain form (B·H·T·P floats for the persistent read, 59 MB a layer at the CPU benchmark size) in several
layouts for the backward pass, and the step becomes memory bound. Here the rows (tokens) are processed in
chunks under `lax.scan`, so a chunk's scores live in cache only; nothing of size T×T, T×P or T×V is stored for
the backward pass: the forward keeps the output and the log-sum-exp per row, the backward recomputes the
chunk's weights (flash-attention style, one extra score matmul) and accumulates the parameter gradients.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
CHUNK_FLOATS = 1 << 21   # target size of one chunk's score block (8 MB in float32: fits a CPU L3 slice)


def pick_chunk(rows: int, cols: int, floats: int = CHUNK_FLOATS, minimum: int = 16) -> int:
    """Rows per chunk: a power of two with rows·cols ≤ floats (at least `minimum`), no larger than needed."""
    c = max(minimum, 1 << max(0, int(math.floor(math.log2(max(floats // max(cols, 1), 1))))))
    return min(c, 1 << max(0, math.ceil(math.log2(max(rows, 1)))))


def _t(x: Array) -> Array:
    """Swap the last two axes into a copy that XLA may not fold into a neighbouring dot.

    Layout rules for the dots below, measured on XLA:CPU: a dot contracting the row axis of both operands
    ("TN", e.g. Aᵀ·B) runs 5-10x slower than the NN/NT forms and, with bfloat16 operands and float32
    accumulation, is not implemented at all (DotThunk), so the small operand is transposed instead. In the
    chunk loops the transposes sit OUTSIDE the `lax.scan` (the loop body slices arrays already transposed: a
    bfloat16 dot fed directly by a transpose runs in float32), and behind an optimization barrier, so that
    XLA cannot fold them back into the dots when it removes a one-trip loop."""
    return lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _pad_rows(x: Array, axis: int, n: int) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad) if n != x.shape[axis] else x


def _fmix(h: Array) -> Array:
    """The murmur3 32-bit finaliser (a bijection with good avalanche) on uint32."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout_keep(seed: Array, rows: Array, cols: int, rate: float) -> Array:
    """keep[..., j] for global row ids `rows` (uint32) and columns j < cols, P(keep) = 1 − rate.

    A counter-based hash of (seed, row, column): the backward pass regenerates the forward mask of any chunk
    without storing it, at the cost of a few integer ops per weight (threefry `bernoulli` costs ~100x more on
    CPU). A different random stream from the dense path's `jax.random.bernoulli`, same distribution.
    """
    h_row = _fmix(rows.astype(jnp.uint32) ^ _fmix(seed.astype(jnp.uint32)))
    h = _fmix(h_row[..., None] + jnp.arange(cols, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9))
    return h >= jnp.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))


def _rows(k: Array, n: int, inner: int) -> Array:
    """Global row ids of chunk k as an (inner, n) array: [j, i] = (k·n + i)·inner + j."""
    i = lax.broadcasted_iota(jnp.uint32, (inner, n), 1)
    j = lax.broadcasted_iota(jnp.uint32, (inner, n), 0)
    return (k.astype(jnp.uint32) * jnp.uint32(n) + i) * jnp.uint32(inner) + j


def _apply_keep(w: Array, keep: Optional[Array], rate: float) -> Array:
    return w if keep is None else jnp.where(keep, w * (1.0 / (1.0 - rate)), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Persistent-memory read: y = softmax(q·M_kᵀ)·M_v per head, rows = all B·T tokens, one shared slot table
# ---------------------------------------------------------------------------------------------------------------
def _to_chunks(x_BTHD: Array, c: int) -> tuple[Array, int]:
    """(B,T,H,D) -> (K, H, c, D) with rows m = b·T + t, zero padded to K·c rows."""
    B, T, H, D = x_BTHD.shape
    M = B * T
    K = -(-M // c)
    x_HMD = _pad_rows(x_BTHD.reshape(M, H, D), 0, K * c).transpose(1, 0, 2)
    return x_HMD.reshape(H, K, c, D).transpose(1, 0, 2, 3), M


def _from_chunks(x_KHcD: Array, shape: tuple[int, ...]) -> Array:
    B, T, H, D = shape
    K, _, c, _ = x_KHcD.shape
    x_MHD = x_KHcD.transpose(0, 2, 1, 3).reshape(K * c, H, D)[:B * T]
    return x_MHD.reshape(B, T, H, D)


def _slot_scores(q_HcD: Array, mk_HPD: Array) -> Array:
    return jnp.einsum("hcd,hpd->hcp", q_HcD, mk_HPD, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 5))
def persistent_read(q_BTHD: Array, mk_HPD: Array, mv_HPD: Array, chunk: int = 0, seed: Optional[Array] = None,
                    rate: float = 0.0) -> Array:
    """softmax_p(q_t·M_k[p])·M_v per head (no mask, scale 1), chunked over tokens; `chunk` 0 = automatic.
    Dropout `rate` > 0 on the weights (after the softmax, as the dense form) with masks from `dropout_keep`."""
    return _pmem_fwd(q_BTHD, mk_HPD, mv_HPD, chunk, seed, rate)[0]


def _pmem_keep(seed: Optional[Array], k: Array, H: int, c: int, P: int, rate: float) -> Optional[Array]:
    return None if rate == 0.0 else dropout_keep(seed, _rows(k, c, H), P, rate)      # rows m·H + h


def _pmem_fwd(q_BTHD: Array, mk_HPD: Array, mv_HPD: Array, chunk: int, seed: Optional[Array],
              rate: float) -> tuple[Array, tuple]:
    H, P, D = mk_HPD.shape
    dt = q_BTHD.dtype
    c = chunk or pick_chunk(q_BTHD.shape[0] * q_BTHD.shape[1], H * P)
    q_KHcD, _ = _to_chunks(q_BTHD, c)
    mk, mv = mk_HPD.astype(dt), mv_HPD.astype(dt)

    def body(_: None, xs: tuple[Array, Array]) -> tuple[None, tuple[Array, Array]]:
        q_HcD, k = xs
        s = _slot_scores(q_HcD, mk)
        mx = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - mx)
        l = jnp.sum(e, axis=-1, keepdims=True)
        e = _apply_keep(e, _pmem_keep(seed, k, H, c, P, rate), rate)
        y = jnp.einsum("hcp,hpd->hcd", e.astype(dt), mv, preferred_element_type=jnp.float32) / l
        return None, (y.astype(dt), mx + jnp.log(l))

    _, (y_KHcD, lse_KHc1) = lax.scan(body, None, (q_KHcD, jnp.arange(q_KHcD.shape[0])))
    y = _from_chunks(y_KHcD, q_BTHD.shape)
    return y, (q_KHcD, y_KHcD, lse_KHc1, mk_HPD, mv_HPD, seed)


def _pmem_bwd(chunk: int, rate: float, res: tuple, dy_BTHD: Array) -> tuple[Array, Array, Array, None]:
    q_KHcD, y_KHcD, lse_KHc1, mk_HPD, mv_HPD, seed = res
    dt = q_KHcD.dtype
    c = q_KHcD.shape[2]
    H, P, D = mk_HPD.shape
    dy_KHcD, _ = _to_chunks(dy_BTHD.astype(dt), c)
    mk, mv = mk_HPD.astype(dt), mv_HPD.astype(dt)

    def body(carry: tuple[Array, Array], xs: tuple[Array, ...]) -> tuple[tuple[Array, Array], Array]:
        dmk, dmv = carry
        q, q_HDc, dy, dy_HDc, y, lse, k = xs
        a = jnp.exp(_slot_scores(q, mk) - lse)                                   # (H,c,P) f32
        da = jnp.einsum("hcd,hpd->hcp", dy, mv, preferred_element_type=jnp.float32)
        keep = _pmem_keep(seed, k, H, c, P, rate)
        if keep is None:
            r = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), axis=-1, keepdims=True)  # Σ a·da = dy·y
        else:
            da = _apply_keep(da, keep, rate)
            r = jnp.sum(a * da, axis=-1, keepdims=True)
        ds = (a * (da - r)).astype(dt)
        a = _apply_keep(a, keep, rate)
        dmv = dmv + jnp.einsum("hdc,hcp->hdp", dy_HDc, a.astype(dt), preferred_element_type=jnp.float32)
        dmk = dmk + jnp.einsum("hdc,hcp->hdp", q_HDc, ds, preferred_element_type=jnp.float32)
        dq = jnp.einsum("hcp,hpd->hcd", ds, mk, preferred_element_type=jnp.float32).astype(dt)
        return (dmk, dmv), dq

    zero = jnp.zeros((H, D, P), jnp.float32)   # accumulated transposed: M_kᵀ, M_vᵀ gradients
    xs = (q_KHcD, _t(q_KHcD), dy_KHcD, _t(dy_KHcD), y_KHcD, lse_KHc1, jnp.arange(q_KHcD.shape[0]))
    (dmk, dmv), dq_KHcD = lax.scan(body, (zero, zero), xs)
    dq = _from_chunks(dq_KHcD, dy_BTHD.shape).astype(dy_BTHD.dtype)
    dmk, dmv = lax.optimization_barrier((dmk, dmv))   # see _t
    return dq, jnp.swapaxes(dmk, 1, 2).astype(mk_HPD.dtype), jnp.swapaxes(dmv, 1, 2).astype(mv_HPD.dtype), None


persistent_read.defvjp(_pmem_fwd, _pmem_bwd)


# ---------------------------------------------------------------------------------------------------------------
# Contextual-memory read: y_t = Σ_{j ≤ t−1} softmax_j(k_t·k_j) v_j (symmetric query), row 0 exactly 0
# ---------------------------------------------------------------------------------------------------------------
def _pairs(x_BTHD: Array, g: int) -> Array:
    """(B,T,H,D) -> (K, g, T, D): (batch, head) pairs in groups of g, zero padded."""
    B, T, H, D = x_BTHD.shape
    x_GTD = x_BTHD.transpose(0, 2, 1, 3).reshape(B * H, T, D)
    K = -(-(B * H) // g)
    return _pad_rows(x_GTD, 0, K * g).reshape(K, g, T, D)


def _unpairs(x_KgTD: Array, shape: tuple[int, ...]) -> Array:
    B, T, H, D = shape
    return x_KgTD.reshape(-1, T, D)[:B * H].reshape(B, H, T, D).transpose(0, 2, 1, 3)


def _strict_causal(T: int) -> Array:
    return jnp.arange(T)[None, :] <= jnp.arange(T)[:, None] - 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 4))
def contextual_read(k_BTHD: Array, v_BTHD: Array, group: int = 0, seed: Optional[Array] = None,
                    rate: float = 0.0) -> Array:
    """The strict-causal kernel regression of `memory.contextual_retrieval` (dot kernel, default mask),
    chunked over (batch, head) pairs; `group` pairs per chunk, 0 = automatic. Dropout as `persistent_read`."""
    return _cmem_fwd(k_BTHD, v_BTHD, group, seed, rate)[0]


def _cmem_keep(seed: Optional[Array], k: Array, g: int, T: int, rate: float) -> Optional[Array]:
    return None if rate == 0.0 else dropout_keep(seed, _rows(k, g, T).T, T, rate)    # rows pair·T + t


def _cmem_fwd(k_BTHD: Array, v_BTHD: Array, group: int, seed: Optional[Array], rate: float) -> tuple[Array, tuple]:
    B, T, H, D = k_BTHD.shape
    g = group or min(pick_chunk(B * H, T * T, CHUNK_FLOATS // 2, minimum=1), B * H)   # measured: 16 pairs at T 256
    allowed = _strict_causal(T)
    dt = v_BTHD.dtype

    def body(_: None, xs: tuple[Array, Array, Array]) -> tuple[None, tuple[Array, Array]]:
        k, v, i = xs
        s = jnp.einsum("gtd,gsd->gts", k, k, preferred_element_type=jnp.float32)
        mx = jnp.max(jnp.where(allowed, s, -jnp.inf), axis=-1, keepdims=True)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)                         # row 0: nothing allowed
        e = jnp.where(allowed, jnp.exp(s - mx), 0.0)
        l = jnp.sum(e, axis=-1, keepdims=True)
        l = jnp.where(l > 0, l, 1.0)
        e = _apply_keep(e, _cmem_keep(seed, i, g, T, rate), rate)
        y = jnp.einsum("gts,gsd->gtd", e.astype(dt), v, preferred_element_type=jnp.float32) / l
        return None, (y.astype(dt), mx + jnp.log(l))

    k_KgTD, v_KgTD = _pairs(k_BTHD, g), _pairs(v_BTHD, g)
    _, (y_KgTD, lse_KgT1) = lax.scan(body, None, (k_KgTD, v_KgTD, jnp.arange(k_KgTD.shape[0])))
    return _unpairs(y_KgTD, v_BTHD.shape), (k_KgTD, v_KgTD, y_KgTD, lse_KgT1, seed)


def _cmem_bwd(group: int, rate: float, res: tuple, dy_BTHD: Array) -> tuple[Array, Array, None]:
    k_KgTD, v_KgTD, y_KgTD, lse_KgT1, seed = res
    g, T = k_KgTD.shape[1:3]
    allowed = _strict_causal(T)
    dt = v_KgTD.dtype
    dy_KgTD = _pairs(dy_BTHD.astype(dt), g)

    def body(_: None, xs: tuple[Array, ...]) -> tuple[None, tuple[Array, Array, Array]]:
        k, k_gDT, v, y, lse, dy, dy_gDT, i = xs
        s = jnp.einsum("gtd,gsd->gts", k, k, preferred_element_type=jnp.float32)
        a = jnp.where(allowed, jnp.exp(s - lse), 0.0)
        da = jnp.einsum("gtd,gsd->gts", dy, v, preferred_element_type=jnp.float32)
        keep = _cmem_keep(seed, i, g, T, rate)
        if keep is None:
            r = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), axis=-1, keepdims=True)
        else:
            da = _apply_keep(da, keep, rate)
            r = jnp.sum(a * da, axis=-1, keepdims=True)
        ds = (a * (da - r)).astype(k.dtype)
        a = _apply_keep(a, keep, rate)
        dv_gDS = jnp.einsum("gdt,gts->gds", dy_gDT, a.astype(dt), preferred_element_type=jnp.float32)
        dk_gDS = jnp.einsum("gdt,gts->gds", k_gDT, ds, preferred_element_type=jnp.float32)   # as a key
        dk = jnp.einsum("gts,gsd->gtd", ds, k, preferred_element_type=jnp.float32)          # as the query
        return None, (dk, dk_gDS, dv_gDS)

    xs = (k_KgTD, _t(k_KgTD), v_KgTD, y_KgTD, lse_KgT1, dy_KgTD, _t(dy_KgTD), jnp.arange(k_KgTD.shape[0]))
    _, (dk_q, dk_gDS, dv_gDS) = lax.optimization_barrier(lax.scan(body, None, xs))   # see _t
    shape = dy_BTHD.shape
    dk = (dk_q + _t(dk_gDS)).astype(k_KgTD.dtype)
    return _unpairs(dk, shape), _unpairs(_t(dv_gDS).astype(dt), shape), None


contextual_read.defvjp(_cmem_fwd, _cmem_bwd)
