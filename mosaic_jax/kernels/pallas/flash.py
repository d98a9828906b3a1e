"""A blocked flash-attention kernel for the memory reads, in Pallas (Mosaic TPU; interpret mode elsewhere).

    y[g, t] = Σ_{j allowed} softmax_j(q[g, t]·k[g, j]) · v[g, j]            (scale 1: β lives in q and k)

for N groups g (a (batch, head) pair, or a head whose rows are all B·T tokens), with the band mask

    allowed(g, t, j) = [dmin_g ≤ t − j]  (if `causal`)  and  [t − j ≤ dmax]  (if `dmax`)  and  [j < kv_len]

which covers every read of the project: the strictly causal contextual read (dmin = 1), v2's short window
(1 ≤ t − j ≤ h), v2's long-term memory (t − j ≥ m_b, one m per batch row, so dmin is per group and arrives
as a scalar-prefetch operand) and the persistent read over the slot table (no mask). With `Spec.seg_heads`,
packed documents add [seg(t) = seg(j)] (segment ids per batch row). Rows with nothing allowed (row 0 of the
causal reads, a document's first token) return exactly 0.

Block sparsity: the grid's last axis walks only the key blocks a query block can see (a band of
⌈(bq + h)/bk⌉ + 1 blocks for the short window; blocks past the causal edge are skipped with `pl.when` and their
index map repeats the last needed block, so no DMA is issued for them). Blocks entirely inside the band
skip the mask arithmetic.

Forward (here): online softmax (running max m and sum l in VMEM scratch, lane-replicated (bq, 128) as in JAX's
TPU flash kernel); saves only the output and the log-sum-exp per row. Backward (`jax.custom_vjp`,
`flash_backward`): two kernels that recompute the weights from the log-sum-exp, one over key blocks (dk, dv;
scores computed transposed, k·qᵀ, so no in-kernel transpose) and one over query blocks (dq). di = Σ_d dy·y is
the same with dropout. The block geometry and tile masks both passes use are in `flash_tiles`.

Dropout (rate > 0) applies to the normalised weights as the dense form does (w·keep/(1 − rate)); the mask is
the counter hash of `pallas.dropout`, regenerated in the backward kernels. Row id g·row_g + t·row_t and
column id j reproduce the fused CPU kernels' streams.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mosaic_jax.kernels.pallas.flash_backward import _backward
# Spec, NO_DMIN and the constants stay importable from here (reads.py uses flash.Spec, flash.NO_DMIN)
from mosaic_jax.kernels.pallas.flash_tiles import (  # noqa: F401
    EMPTY_LSE, LANES, NEG, NO_DMIN, NT, SUBLANES, Spec, _allowed, _full, _keep, _kv_block, _kv_index, _kv_steps,
    _masked_pair, _prefetch, _run_tiles, _seg_specs, _segments, _split)

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------
def _fwd_kernel(dmin_ref, seed_ref, *refs, s: Spec, nk: int):
    (q_ref, k_ref, v_ref), qs_ref, ks_ref, (o_ref, lse_ref, m_sc, l_sc, acc_sc) = _split(s, refs, 3)
    g, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    dmin = dmin_ref[g]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    kb, run, _ = _kv_block(s, nk, i, j, dmin)
    full = _full(s, i * s.bq, kb * s.bk, dmin)

    def body(masked: bool) -> None:
        sc = lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=jnp.float32)   # (bq, bk)
        t = i * s.bq + lax.broadcasted_iota(jnp.int32, sc.shape, 0)
        jj = kb * s.bk + lax.broadcasted_iota(jnp.int32, sc.shape, 1)
        same = None if qs_ref is None else qs_ref[:, :1] == ks_ref[0:1, :]          # (bq, 1) vs (1, bk)
        sc = _masked_pair(s, masked, sc, t, jj, dmin, same)
        m_prev, l_prev = m_sc[...], l_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(sc, axis=1, keepdims=True))                       # (bq, LANES)
        p = jnp.exp(sc - m_next[:, :1])
        if masked:   # rows with nothing allowed yet: sc = m = NEG would give exp(0)
            p = jnp.where(_allowed(s, t, jj, dmin, same), p, 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
        m_sc[...] = m_next
        if s.rate > 0.0:
            p = jnp.where(_keep(s, seed_ref[0], g, t, jj), p, 0.0)
        v = v_ref[...]
        acc_sc[...] = acc_sc[...] * alpha[:, :1] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)

    _run_tiles(s, run, full, body)

    @pl.when(j == pl.num_programs(2) - 1)
    def _store():
        l = l_sc[...]
        nonempty = l > 0.0
        inv = jnp.where(nonempty, 1.0 / jnp.where(nonempty, l, 1.0), 0.0)[:, :1]
        if s.rate > 0.0:
            inv = inv * (1.0 / (1.0 - s.rate))
        o_ref[...] = (acc_sc[...] * inv).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(nonempty, m_sc[...] + jnp.log(jnp.where(nonempty, l, 1.0)), EMPTY_LSE)




def _forward(s: Spec, q_NTD: Array, k_NSD: Array, v_NSD: Array, dmin_N: Array, seed: Optional[Array],
             seg_BT: Optional[Array] = None) -> tuple[Array, Array]:
    N, T, D = q_NTD.shape
    S = k_NSD.shape[1]
    nq, nk = T // s.bq, S // s.bk
    kv_map = lambda g, i, j, dmin, seed: (g, _kv_index(s, nk, i, j, dmin[g]), 0)   # noqa: E731
    q_map = lambda g, i, j, dmin, seed: (g, i, 0)                                   # noqa: E731
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, s=s, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(N, nq, _kv_steps(s, nk)),
            in_specs=[pl.BlockSpec((None, s.bq, D), q_map), pl.BlockSpec((None, s.bk, D), kv_map),
                      pl.BlockSpec((None, s.bk, D), kv_map)] + _seg_specs(s, q_map, kv_map, s.bq, s.bk),
            out_specs=[pl.BlockSpec((None, s.bq, D), q_map), pl.BlockSpec((None, s.bq, LANES), q_map)],
            scratch_shapes=[pltpu.VMEM((s.bq, LANES), jnp.float32), pltpu.VMEM((s.bq, LANES), jnp.float32),
                            pltpu.VMEM((s.bq, D), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct((N, T, D), v_NSD.dtype), jax.ShapeDtypeStruct((N, T, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=s.interpret,
    )(*_prefetch(dmin_N, seed), q_NTD, k_NSD, v_NSD, *_segments(s, seg_BT, T, S))
    return o, lse[..., 0]


# ---------------------------------------------------------------------------------------------------------------
# The differentiable read
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention(s: Spec, q_NTD: Array, k_NSD: Array, v_NSD: Array, dmin_N: Array, seed: Optional[Array],
              seg_BT: Optional[Array] = None) -> Array:
    """The masked read of the module docstring. T and S must be multiples of s.bq and s.bk (pad first: keys past
    s.kv_len are masked; padded query rows are computed and should be dropped by the caller). With
    s.seg_heads > 0, seg_BT (B, T) int segment ids add the document mask [seg(g, t) = seg(g, j)], where
    group g = b·seg_heads + h reads row b."""
    return _forward(s, q_NTD, k_NSD, v_NSD, dmin_N, seed, seg_BT)[0]


def _attention_fwd(s: Spec, q_NTD: Array, k_NSD: Array, v_NSD: Array, dmin_N: Array, seed: Optional[Array],
                   seg_BT: Optional[Array] = None):
    o, lse = _forward(s, q_NTD, k_NSD, v_NSD, dmin_N, seed, seg_BT)
    return o, (q_NTD, k_NSD, v_NSD, dmin_N, seed, seg_BT, o, lse)


def _attention_bwd(s: Spec, res: tuple, do_NTD: Array):
    q, k, v, dmin, seed, seg, o, lse = res
    dq, dk, dv = _backward(s, q, k, v, dmin, seed, seg, o, lse, do_NTD)
    return dq, dk, dv, None, None, None


attention.defvjp(_attention_fwd, _attention_bwd)
