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

Forward: online softmax (running max m and sum l in VMEM scratch, lane-replicated (bq, 128) as in JAX's TPU
flash kernel); saves only the output and the log-sum-exp per row. Backward (`jax.custom_vjp`): two kernels
that recompute the weights from the log-sum-exp, one over key blocks (dk, dv; scores computed transposed,
k·qᵀ, so no in-kernel transpose) and one over query blocks (dq). di = Σ_d dy·y is the same with dropout.

Dropout (rate > 0) applies to the normalised weights as the dense form does (w·keep/(1 − rate)); the mask is
the counter hash of `pallas.dropout`, regenerated in the backward kernels. Row id g·row_g + t·row_t and
column id j reproduce the fused CPU kernels' streams.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mosaic_jax.kernels.pallas import dropout

Array = jax.Array
LANES = 128              # lane-replicated row statistics, as JAX's TPU flash kernels keep them
SUBLANES = 8             # the log-sum-exp as rows (8, bq) for the key-block kernel
NEG = -1e30              # masked score (finite: no inf − inf)
EMPTY_LSE = 1e30         # log-sum-exp of a row that reads nothing: exp(s − lse) = 0 in the backward
NO_DMIN = -(1 << 30)     # dmin of an unmasked read
NT = (((1,), (1,)), ((), ()))   # contract the last axes: a·bᵀ


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static description of one read (hashable: a nondiff argument of the custom VJP)."""
    causal: bool             # mask t − j ≥ dmin_g
    dmax: Optional[int]      # mask t − j ≤ dmax (needs causal)
    kv_len: int              # keys ≥ kv_len are padding
    bq: int                  # query rows per block
    bk: int                  # keys per block
    rate: float = 0.0        # dropout on the weights
    row_g: int = 0           # dropout row id = g·row_g + t·row_t
    row_t: int = 1
    interpret: bool = False  # Pallas interpret mode (off-TPU)
    seg_heads: int = 0       # > 0: document masks; group g reads segment-id row g // seg_heads (needs S = T)

    def __post_init__(self) -> None:
        if self.dmax is not None and not self.causal:
            raise ValueError("flash.Spec: a window (dmax) needs the causal lower bound")


def _fdiv(x: Array, b: int) -> Array:
    """floor(x / b) for int32 x of either sign (lax.div truncates)."""
    return jnp.where(x >= 0, lax.div(x, b), -lax.div(b - 1 - x, b))


def _clamp(x: Array, hi: int) -> Array:
    return jnp.minimum(jnp.maximum(x, 0), hi)


def _kv_steps(s: Spec, nk: int) -> int:
    """Key blocks per query block on the grid: all of them, or the window's band."""
    return nk if s.dmax is None else min(nk, pl.cdiv(s.bq + s.dmax, s.bk) + 1)


def _q_steps(s: Spec, nq: int) -> int:
    return nq if s.dmax is None else min(nq, pl.cdiv(s.bk + s.dmax, s.bq) + 1)


def _kv_block(s: Spec, nk: int, i: Array, j: Array, dmin: Array) -> tuple[Array, Array, Array]:
    """(key block of grid step j for query block i, whether it has an allowed pair, the last such block)."""
    lo = jnp.int32(0) if s.dmax is None else jnp.maximum(_fdiv(i * s.bq - s.dmax, s.bk), 0)
    hi = jnp.int32(min(nk - 1, (s.kv_len - 1) // s.bk))
    if s.causal:
        hi = jnp.minimum(hi, _fdiv(i * s.bq + s.bq - 1 - dmin, s.bk))
    kb = lo + j
    return kb, kb <= hi, hi


def _kv_index(s: Spec, nk: int, i: Array, j: Array, dmin: Array) -> Array:
    """The block to fetch: a skipped step repeats the last needed one (no new DMA)."""
    kb, _, hi = _kv_block(s, nk, i, j, dmin)
    return _clamp(jnp.minimum(kb, hi), nk - 1)


def _q_block(s: Spec, nq: int, j: Array, i: Array, dmin: Array) -> tuple[Array, Array, Array]:
    """(query block of grid step i for key block j, whether it has an allowed pair, the last such block)."""
    lo = jnp.maximum(_fdiv(j * s.bk + dmin, s.bq), 0) if s.causal else jnp.int32(0)
    hi = jnp.int32(nq - 1)
    if s.dmax is not None:
        hi = jnp.minimum(hi, _fdiv(j * s.bk + s.bk - 1 + s.dmax, s.bq))
    qb = lo + i
    return qb, (qb <= hi) & (j * s.bk < s.kv_len), hi


def _q_index(s: Spec, nq: int, j: Array, i: Array, dmin: Array) -> Array:
    qb, _, hi = _q_block(s, nq, j, i, dmin)
    return _clamp(jnp.minimum(qb, hi), nq - 1)


def _full(s: Spec, t_lo: Array, s_lo: Array, dmin: Array) -> Array:
    """Whether every pair of the (query block at t_lo, key block at s_lo) tile is allowed."""
    ok = s_lo + s.bk <= s.kv_len
    if s.causal:
        ok = ok & (t_lo - (s_lo + s.bk - 1) >= dmin)
    if s.dmax is not None:
        ok = ok & (t_lo + s.bq - 1 - s_lo <= s.dmax)
    return ok


def _allowed(s: Spec, t: Array, j: Array, dmin: Array, same: Optional[Array] = None) -> Array:
    """The band mask, and with documents `same` (query and key in one document)."""
    ok = j < s.kv_len if same is None else (j < s.kv_len) & same
    if s.causal:
        ok = ok & (t - j >= dmin)
    if s.dmax is not None:
        ok = ok & (t - j <= s.dmax)
    return ok


def _keep(s: Spec, seed: Array, g: Array, t: Array, j: Array) -> Array:
    return dropout.keep(seed, g * s.row_g + t * s.row_t, j, s.rate)


def _masked_pair(s: Spec, masked: bool, x: Array, t: Array, j: Array, dmin: Array, same: Optional[Array]) -> Array:
    return jnp.where(_allowed(s, t, j, dmin, same), x, NEG) if masked else x


def _run_tiles(s: Spec, run: Array, full: Array, body) -> None:
    """body(masked) on the grid steps with an allowed pair; the mask arithmetic only where a tile is not all
    allowed. With documents every tile is masked (whether a tile lies in one document is data, not position)."""
    if s.seg_heads:
        pl.when(run)(lambda: body(True))
        return
    pl.when(run & full)(lambda: body(False))
    pl.when(run & jnp.logical_not(full))(lambda: body(True))


def _split(s: Spec, refs: tuple, n_in: int) -> tuple[list, Optional[object], Optional[object], list]:
    """(the n_in tensor inputs, the two segment-id refs or None, outputs and scratch)."""
    if s.seg_heads:
        return list(refs[:n_in]), refs[n_in], refs[n_in + 1], list(refs[n_in + 2:])
    return list(refs[:n_in]), None, None, list(refs[n_in:])


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


def _prefetch(dmin_N: Array, seed: Optional[Array]) -> tuple[Array, Array]:
    seed_1 = jnp.zeros((1,), jnp.int32) if seed is None else lax.bitcast_convert_type(
        jnp.asarray(seed, jnp.uint32), jnp.int32).reshape(1)
    return dmin_N.astype(jnp.int32), seed_1


def _segments(s: Spec, seg_BT: Optional[Array], T: int, S: int) -> tuple[Array, ...]:
    """Segment ids as lane-replicated columns (B, T, 128) and sublane-replicated rows (B, 8, T): the two
    orientations a (rows, cols) tile compares, as JAX's TPU flash kernel keeps them; () without documents."""
    if not s.seg_heads:
        return ()
    if seg_BT is None or T != S or seg_BT.shape[1] != T:
        raise ValueError(f"flash.attention: seg_heads={s.seg_heads} needs segment ids (B, {T}) and S = T (S = {S})")
    seg = seg_BT.astype(jnp.int32)
    B = seg.shape[0]
    return (jnp.broadcast_to(seg[:, :, None], (B, T, LANES)), jnp.broadcast_to(seg[:, None, :], (B, SUBLANES, T)))


def _seg_specs(s: Spec, rows_of, cols_of, rows: int, cols: int) -> list:
    """BlockSpecs of the tile's row segment ids (rows, 128) and column segment ids (8, cols); rows_of / cols_of
    map the grid to the group and the block index along T."""
    if not s.seg_heads:
        return []
    h = s.seg_heads    # g ≥ 0: lax.div is the floor (jnp's // lowers a sign op that Mosaic index maps lack)
    return [pl.BlockSpec((None, rows, LANES), lambda *a: (lax.div(rows_of(*a)[0], h), rows_of(*a)[1], 0)),
            pl.BlockSpec((None, SUBLANES, cols), lambda *a: (lax.div(cols_of(*a)[0], h), 0, cols_of(*a)[1]))]


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
# Backward
# ---------------------------------------------------------------------------------------------------------------
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
