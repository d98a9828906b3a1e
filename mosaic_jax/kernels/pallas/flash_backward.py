"""The backward pass of the flash kernel (`flash.attention`'s custom VJP): two kernels that recompute the weights
from the saved log-sum-exp, one over key blocks (dk, dv; scores computed transposed, k·qᵀ, so no in-kernel
transpose) and one over query blocks (dq); the dropout mask is regenerated from the same counter hash."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mosaic_jax.kernels.pallas.flash_tiles import (LANES, SUBLANES, NT, Spec, _allowed, _full, _keep, _kv_block,
                                                   _kv_index, _kv_steps, _prefetch, _q_block, _q_index, _q_steps,
                                                   _run_tiles, _seg_specs, _segments, _split)

Array = jax.Array


def _dkv_kernel(dmin_ref, seed_ref, *refs, s: Spec, nq: int):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref), ks_ref, qs_ref, (dk_ref, dv_ref, dk_sc, dv_sc) = \
        _split(s, refs, 6)
    g, j, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    dmin = dmin_ref[g]

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    qb, run, _ = _q_block(s, nq, j, i, dmin)
    full = _full(s, qb * s.bq, j * s.bk, dmin)

    def body(masked: bool) -> None:
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        sT = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32)           # (bk, bq): keys x queries
        jj = j * s.bk + lax.broadcasted_iota(jnp.int32, sT.shape, 0)
        t = qb * s.bq + lax.broadcasted_iota(jnp.int32, sT.shape, 1)
        pT = jnp.exp(sT - lse_ref[0:1, :])
        if masked:
            same = None if ks_ref is None else ks_ref[:, :1] == qs_ref[0:1, :]      # (bk, 1) vs (1, bq)
            pT = jnp.where(_allowed(s, t, jj, dmin, same), pT, 0.0)
        dpT = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
        if s.rate > 0.0:
            z = jnp.where(_keep(s, seed_ref[0], g, t, jj), 1.0 / (1.0 - s.rate), 0.0)
            dpT, pdT = dpT * z, pT * z
        else:
            pdT = pT
        dv_sc[...] += jnp.dot(pdT.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dsT = pT * (dpT - di_ref[0:1, :])
        dk_sc[...] += jnp.dot(dsT.astype(q.dtype), q, preferred_element_type=jnp.float32)

    _run_tiles(s, run, full, body)

    @pl.when(i == pl.num_programs(2) - 1)
    def _store():
        dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(dmin_ref, seed_ref, *refs, s: Spec, nk: int):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref), qs_ref, ks_ref, (dq_ref, dq_sc) = _split(s, refs, 6)
    g, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    dmin = dmin_ref[g]

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    kb, run, _ = _kv_block(s, nk, i, j, dmin)
    full = _full(s, i * s.bq, kb * s.bk, dmin)

    def body(masked: bool) -> None:
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        sc = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32)
        t = i * s.bq + lax.broadcasted_iota(jnp.int32, sc.shape, 0)
        jj = kb * s.bk + lax.broadcasted_iota(jnp.int32, sc.shape, 1)
        p = jnp.exp(sc - lse_ref[:, :1])
        if masked:
            same = None if qs_ref is None else qs_ref[:, :1] == ks_ref[0:1, :]
            p = jnp.where(_allowed(s, t, jj, dmin, same), p, 0.0)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        if s.rate > 0.0:
            dp = dp * jnp.where(_keep(s, seed_ref[0], g, t, jj), 1.0 / (1.0 - s.rate), 0.0)
        ds = p * (dp - di_ref[:, :1])
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    _run_tiles(s, run, full, body)

    @pl.when(j == pl.num_programs(2) - 1)
    def _store():
        dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _backward(s: Spec, q_NTD: Array, k_NSD: Array, v_NSD: Array, dmin_N: Array, seed: Optional[Array],
              seg_BT: Optional[Array], o_NTD: Array, lse_NT: Array, do_NTD: Array) -> tuple[Array, Array, Array]:
    N, T, D = q_NTD.shape
    S = k_NSD.shape[1]
    nq, nk = T // s.bq, S // s.bk
    do_NTD = do_NTD.astype(o_NTD.dtype)
    di_NT = jnp.sum(do_NTD.astype(jnp.float32) * o_NTD.astype(jnp.float32), axis=-1)
    pre = _prefetch(dmin_N, seed)
    segs = _segments(s, seg_BT, T, S)
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))

    # dk, dv: grid over key blocks, the query blocks that see them innermost; statistics as rows (8, bq).
    lse_rows = jnp.broadcast_to(lse_NT[:, None, :], (N, SUBLANES, T))
    di_rows = jnp.broadcast_to(di_NT[:, None, :], (N, SUBLANES, T))
    q_of = lambda g, j, i, dmin, seed: (g, _q_index(s, nq, j, i, dmin[g]), 0)      # noqa: E731
    row_of = lambda g, j, i, dmin, seed: (g, 0, _q_index(s, nq, j, i, dmin[g]))    # noqa: E731
    kv_own = lambda g, j, i, dmin, seed: (g, j, 0)                                   # noqa: E731
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, s=s, nq=nq),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(N, nk, _q_steps(s, nq)),
            in_specs=[pl.BlockSpec((None, s.bq, D), q_of), pl.BlockSpec((None, s.bk, D), kv_own),
                      pl.BlockSpec((None, s.bk, D), kv_own), pl.BlockSpec((None, s.bq, D), q_of),
                      pl.BlockSpec((None, SUBLANES, s.bq), row_of), pl.BlockSpec((None, SUBLANES, s.bq), row_of)]
            + _seg_specs(s, kv_own, q_of, s.bk, s.bq),
            out_specs=[pl.BlockSpec((None, s.bk, D), kv_own), pl.BlockSpec((None, s.bk, D), kv_own)],
            scratch_shapes=[pltpu.VMEM((s.bk, D), jnp.float32), pltpu.VMEM((s.bk, D), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(k_NSD.shape, k_NSD.dtype), jax.ShapeDtypeStruct(v_NSD.shape, v_NSD.dtype)],
        compiler_params=params, interpret=s.interpret,
    )(*pre, q_NTD, k_NSD, v_NSD, do_NTD, lse_rows, di_rows, *segs)

    # dq: grid over query blocks, the key blocks they see innermost; statistics lane-replicated (bq, 128).
    lse_cols = jnp.broadcast_to(lse_NT[..., None], (N, T, LANES))
    di_cols = jnp.broadcast_to(di_NT[..., None], (N, T, LANES))
    kv_map = lambda g, i, j, dmin, seed: (g, _kv_index(s, nk, i, j, dmin[g]), 0)   # noqa: E731
    q_own = lambda g, i, j, dmin, seed: (g, i, 0)                                   # noqa: E731
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, s=s, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(N, nq, _kv_steps(s, nk)),
            in_specs=[pl.BlockSpec((None, s.bq, D), q_own), pl.BlockSpec((None, s.bk, D), kv_map),
                      pl.BlockSpec((None, s.bk, D), kv_map), pl.BlockSpec((None, s.bq, D), q_own),
                      pl.BlockSpec((None, s.bq, LANES), q_own), pl.BlockSpec((None, s.bq, LANES), q_own)]
            + _seg_specs(s, q_own, kv_map, s.bq, s.bk),
            out_specs=pl.BlockSpec((None, s.bq, D), q_own),
            scratch_shapes=[pltpu.VMEM((s.bq, D), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q_NTD.shape, q_NTD.dtype),
        compiler_params=params, interpret=s.interpret,
    )(*pre, q_NTD, k_NSD, v_NSD, do_NTD, lse_cols, di_cols, *segs)
    return dq, dk, dv
