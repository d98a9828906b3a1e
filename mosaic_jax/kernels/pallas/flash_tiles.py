"""What the forward and backward passes of the flash kernel (`flash`) share: the static `Spec` of a read, the
block geometry of the band mask (which key blocks a query block sees, and back), the mask and dropout of a tile,
and the layout of the scalar-prefetch and segment-id operands."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

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
