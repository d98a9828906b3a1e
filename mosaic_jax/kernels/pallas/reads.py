"""The memory reads of v1 and v2 on the Pallas flash kernel (`flash.attention`), in the model's (B, T, H, D)
layout. Each equals its dense form (`memory.contextual_retrieval`, `memory.persistent_retrieval`,
`memory_v2.retrieve_dense` with the short or long mask) in value and gradient; tests/test_pallas.py checks it
in interpret mode.

Dropout uses the counter hash of `pallas.dropout` with the row ids of the fused CPU kernels (kernels/memory_vjp.py), so
`contextual_read` / `persistent_read` draw exactly the fused reads' masks for the same seed.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from mosaic_jax.kernels import platform
from mosaic_jax.kernels.pallas import flash, sharded

Array = jax.Array
BLOCK_Q = 128    # query rows per block: a multiple of 128 (the (8, bq) statistics tiles), MXU-sized
BLOCK_K = 128    # keys (or slots) per block
BIG_SKIP = 1 << 30


def interpret_default() -> bool:
    """Interpret mode everywhere but on a TPU (or a compile-only TPU target)."""
    return platform.backend() != "tpu"


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _blocks(rows: int, cols: int, block_q: int, block_k: int) -> tuple[int, int, int, int]:
    """(bq, bk, padded rows, padded cols): one block (a multiple of 8) when the axis is short, else the block."""
    bq = min(block_q, _round_up(rows, 8))
    bk = min(block_k, _round_up(cols, 8))
    return bq, bk, _round_up(rows, bq), _round_up(cols, bk)


def _pad(x_NTD: Array, n: int) -> Array:
    return jnp.pad(x_NTD, ((0, 0), (0, n - x_NTD.shape[1]), (0, 0))) if n != x_NTD.shape[1] else x_NTD


def _groups(x_BTHD: Array) -> Array:
    B, T, H, D = x_BTHD.shape
    return x_BTHD.transpose(0, 2, 1, 3).reshape(B * H, T, D)


def _ungroup(y_NTD: Array, shape: tuple[int, ...]) -> Array:
    B, T, H, D = shape
    return y_NTD[:, :T].reshape(B, H, T, D).transpose(0, 2, 1, 3)


def _seed(seed: Optional[Array], rate: float) -> tuple[Optional[Array], float]:
    return (None, 0.0) if seed is None or rate == 0.0 else (seed, float(rate))


def sequence_read(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, dmin_B: Array | int, dmax: Optional[int],
                  seed: Optional[Array] = None, rate: float = 0.0, *, segment_ids_BT: Optional[Array] = None,
                  block_q: int = BLOCK_Q, block_k: int = BLOCK_K, interpret: Optional[bool] = None) -> Array:
    """y_t = Σ_{dmin_b ≤ t−j ≤ dmax} softmax_j(q_t·k_j) v_j per (batch, head); rows reading nothing are 0.
    dmin ≥ 1 (per batch row or one for all), dmax None for no window; with segment_ids_BT only pairs of one
    document (equal ids). Per device under a traced mesh."""
    B, T, H, D = q_BTHD.shape
    dmin_B = jnp.broadcast_to(jnp.asarray(dmin_B, jnp.int32), (B,))
    kw = dict(block_q=block_q, block_k=block_k, interpret=interpret, dmax=dmax, rate=rate)
    bthd = ("batch", None, "heads", None)
    if segment_ids_BT is None:
        return sharded.run(lambda q, k, v, d, s: _sequence_local(q, k, v, d, None, seed=s, **kw),
                           (q_BTHD, k_BTHD, v_BTHD, dmin_B), (bthd, bthd, bthd, ("batch",)), seed, B, H)
    seg_BT = jnp.asarray(segment_ids_BT, jnp.int32)
    return sharded.run(lambda q, k, v, d, g, s: _sequence_local(q, k, v, d, g, seed=s, **kw),
                       (q_BTHD, k_BTHD, v_BTHD, dmin_B, seg_BT), (bthd, bthd, bthd, ("batch",), ("batch", None)),
                       seed, B, H)


def _sequence_local(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, dmin_B: Array, seg_BT: Optional[Array], *,
                    dmax: Optional[int], seed: Optional[Array], rate: float, block_q: int, block_k: int,
                    interpret: Optional[bool]) -> Array:
    B, T, H, D = q_BTHD.shape
    bq, bk, _, _ = _blocks(T, T, block_q, block_k)
    Tp = _round_up(T, math.lcm(bq, bk))
    rate_seed, rate = _seed(seed, rate)
    spec = flash.Spec(causal=True, dmax=dmax, kv_len=T, bq=bq, bk=bk, rate=rate, row_g=T, row_t=1,
                      interpret=interpret_default() if interpret is None else interpret,
                      seg_heads=0 if seg_BT is None else H)
    dmin_N = jnp.repeat(dmin_B, H)
    q, k, v = (_pad(_groups(x), Tp) for x in (q_BTHD, k_BTHD, v_BTHD))
    if seg_BT is not None:   # padded positions: id -1 (their keys are masked by kv_len, their rows dropped)
        seg_BT = jnp.pad(seg_BT, ((0, 0), (0, Tp - T)), constant_values=-1)
    return _ungroup(flash.attention(spec, q, k, v, dmin_N, rate_seed, seg_BT), q_BTHD.shape)


def contextual_read(k_BTHD: Array, v_BTHD: Array, seed: Optional[Array] = None, rate: float = 0.0,
                    **kw) -> Array:
    """v1's strictly causal read y_t = Σ_{j ≤ t−1} softmax_j(k_t·k_j) v_j (q = k); row 0 is exactly 0."""
    return sequence_read(k_BTHD, k_BTHD, v_BTHD, 1, None, seed, rate, **kw)


def short_term_read(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, look: int, seed: Optional[Array] = None,
                    rate: float = 0.0, **kw) -> Array:
    """v2's short-term memory: pairs t−look … t−1 (memory_v2.short_term_mask); segment_ids_BT=... adds the
    document mask."""
    return sequence_read(q_BTHD, k_BTHD, v_BTHD, 1, look, seed, rate, **kw)


def long_term_read(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, skip_B: Array, seed: Optional[Array] = None,
                   rate: float = 0.0, **kw) -> Array:
    """v2's long-term memory: pairs 0 … t−m_b (memory_v2.long_term_mask), m_b ≥ 1 per batch row;
    segment_ids_BT=... adds the document mask."""
    return sequence_read(q_BTHD, k_BTHD, v_BTHD, skip_B, None, seed, rate, **kw)


def persistent_read(q_BTHD: Array, mk_HPD: Array, mv_HPD: Array, seed: Optional[Array] = None, rate: float = 0.0,
                    *, block_q: int = BLOCK_Q, block_k: int = BLOCK_K, interpret: Optional[bool] = None) -> Array:
    """softmax_p(q_t·M_k[p])·M_v per head over one slot table (unmasked flash; the B·T tokens are the rows).
    Per device under a traced mesh (the slot tables replicated over the batch axes)."""
    B, T, H, D = q_BTHD.shape
    kw = dict(block_q=block_q, block_k=block_k, interpret=interpret, rate=rate)
    return sharded.run(lambda q, mk, mv, s: _persistent_local(q, mk, mv, seed=s, **kw), (q_BTHD, mk_HPD, mv_HPD),
                       (("batch", None, "heads", None), ("heads", None, None), ("heads", None, None)), seed, B, H)


def _persistent_local(q_BTHD: Array, mk_HPD: Array, mv_HPD: Array, *, seed: Optional[Array], rate: float,
                      block_q: int, block_k: int, interpret: Optional[bool]) -> Array:
    B, T, H, D = q_BTHD.shape
    P = mk_HPD.shape[1]
    dt = q_BTHD.dtype
    bq, bk, M, Pp = _blocks(B * T, P, block_q, block_k)
    rate_seed, rate = _seed(seed, rate)
    spec = flash.Spec(causal=False, dmax=None, kv_len=P, bq=bq, bk=bk, rate=rate, row_g=1, row_t=H,
                      interpret=interpret_default() if interpret is None else interpret)
    q = _pad(q_BTHD.reshape(B * T, H, D).transpose(1, 0, 2), M)
    mk, mv = _pad(mk_HPD.astype(dt), Pp), _pad(mv_HPD.astype(dt), Pp)
    y = flash.attention(spec, q, mk, mv, jnp.full((H,), flash.NO_DMIN, jnp.int32), rate_seed, None)
    return y[:, :B * T].transpose(1, 0, 2).reshape(B, T, H, D)
