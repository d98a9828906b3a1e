"""Memory Mosaics v2: which pairs a query may read, and the read (spec §5), as pure functions of arrays.

Layout as in `memory.py`: (batch B, time T, heads H, head dim D); a pair j may be read at t only when j ≤ t − 1
(v_j looks one token ahead). `memory_v2` re-exports every public name here; the unit that uses them is there.

  * three-level memory   short-term pairs t−h+1 … t−1 (or t−h … t−1, `oldest="t-h"`), long-term pairs 0 … t−m
                         (m drawn per training sequence, fixed at inference). Both contextual memories stay inside
                         the query's document. Masks are functions of positions and segment ids.

Four retrieval implementations agree (tests/test_v2*.py, tests/test_pallas.py):
  dense      materialises the (B,H,T,T) scores (CPU default for short sequences);
  flash      `jax.nn.dot_product_attention`: the short window is its `local_window_size`, the long skip a
             per-row query offset (queries rolled by m, causal mask); no T×T when it lowers to cuDNN;
             no document masks (that API has no segment ids);
  blockwise  query blocks of Q rows under `jax.checkpoint`, each reading only the keys it can see (a band of
             Q + lookback keys for the short memory): any mask, O(Q·T) memory, forward and backward;
  pallas     the TPU flash kernels (mosaic_jax.kernels.pallas): the short window and the long skip as block-sparse
             band masks, document masks (segment ids compared per tile), dropout, O(T) memory
             (interpret mode off-TPU).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from mosaic_jax.kernels import pallas, platform
from mosaic_jax.ops import dispatch, memory

Array = jax.Array
OLDEST = ("t-h+1", "t-h")


# ---------------------------------------------------------------------------------------------------------------
# Positions, documents, windows
# ---------------------------------------------------------------------------------------------------------------
def doc_starts(segment_ids_BT: Optional[Array], B: int, T: int) -> Array:
    """(B,T) bool: True where a document starts (position 0 always; wherever the segment id changes)."""
    first = jnp.zeros((B, T), bool).at[:, 0].set(True)
    if segment_ids_BT is None:
        return first
    seg = jnp.asarray(segment_ids_BT)
    return first | jnp.pad(seg[:, 1:] != seg[:, :-1], ((0, 0), (1, 0)))


def doc_positions(segment_ids_BT: Optional[Array], B: int, T: int) -> Array:
    """(B,T) int32: position within the document (0 at each document start)."""
    t = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if segment_ids_BT is None:
        return t
    start = lax.cummax(jnp.where(doc_starts(segment_ids_BT, B, T), t, 0), axis=1)
    return t - start


def lookback(window: int, oldest: str = "t-h+1") -> int:
    """The number of pairs the short-term memory holds: h − 1 (pairs t−h+1 … t−1) or h (pairs t−h … t−1)."""
    if oldest not in OLDEST:
        raise ValueError(f"oldest={oldest!r} not in {OLDEST}")
    return window - 1 if oldest == "t-h+1" else window


def short_term_count(pos_BT: Array, look: int) -> Array:
    """Pairs a short-term query reads: min(position in document, lookback)."""
    return jnp.minimum(pos_BT, look)


def long_term_count(pos_BT: Array, skip_B: Array) -> Array:
    """Pairs a long-term query reads: pairs 0 … t−m of its document, max(0, position − m + 1)."""
    return jnp.maximum(pos_BT - jnp.asarray(skip_B)[:, None] + 1, 0)


def short_term_mask(T: int, look: int, S: Optional[int] = None) -> Array:
    """(T,S) allowed[t,j] = t − look ≤ j ≤ t − 1."""
    S = T if S is None else S
    d = jnp.arange(T)[:, None] - jnp.arange(S)[None, :]
    return (d >= 1) & (d <= look)


def long_term_mask(T: int, skip_B: Array, S: Optional[int] = None) -> Array:
    """(B,T,S) allowed[b,t,j] = j ≤ t − m_b (m_b ≥ 1)."""
    S = T if S is None else S
    d = jnp.arange(T)[:, None] - jnp.arange(S)[None, :]
    return d[None] >= jnp.asarray(skip_B)[:, None, None]


def document_mask(segment_ids_BT: Array) -> Array:
    """(B,T,T) allowed[b,t,j] = same segment id."""
    seg = jnp.asarray(segment_ids_BT)
    return seg[:, :, None] == seg[:, None, :]


def memory_mask(kind: str, T: int, *, look: int = 0, skip_B: Optional[Array] = None,
                segment_ids_BT: Optional[Array] = None, B: int = 1) -> Array:
    """(B,T,T) allowed pairs of the short ("short") or long ("long") memory, documents included."""
    if kind == "short":
        allowed = jnp.broadcast_to(short_term_mask(T, look)[None], (B, T, T))
    elif kind == "long":
        allowed = long_term_mask(T, jnp.broadcast_to(jnp.asarray(skip_B), (B,)))
    else:
        raise ValueError(f"memory kind {kind!r} not in ('short', 'long')")
    if segment_ids_BT is not None:
        allowed = allowed & document_mask(segment_ids_BT)
    return allowed


def pair_counts(kind: str, pos_BT: Array, *, look: int = 0, skip_B: Optional[Array] = None) -> Array:
    """n per query (B,T), equal to memory_mask(...).sum(-1) (tested)."""
    return short_term_count(pos_BT, look) if kind == "short" else long_term_count(pos_BT, skip_B)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval: y_t = Σ_j softmax_j(q_t·k_j) v_j over the allowed pairs (q_t = β_t k_t)
# ---------------------------------------------------------------------------------------------------------------
def _dropout_weights(w: Array, rate: float, rng: Optional[Array]) -> Array:
    if rng is None or rate == 0.0:
        return w
    keep = jax.random.bernoulli(rng, 1.0 - rate, w.shape)
    return jnp.where(keep, w / (1.0 - rate), 0.0)


def retrieve_dense(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, allowed_BTT: Array, *,
                   dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None) -> Array:
    """Materialised scores; rows with nothing allowed are exactly 0."""
    scores = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BTHD, preferred_element_type=jnp.float32)
    allowed = allowed_BTT if allowed_BTT.ndim == 2 else allowed_BTT[:, None]
    w = _dropout_weights(memory.masked_softmax(scores, allowed), dropout_rate, dropout_rng)
    return jnp.einsum("bhts,bshd->bthd", w.astype(v_BTHD.dtype), v_BTHD)


def _sdpa(q: Array, k: Array, v: Array, implementation: Optional[str], **kw) -> Array:
    return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True, implementation=implementation, **kw)


def retrieve_flash_short(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, look: int,
                         implementation: Optional[str] = None) -> Array:
    """Short-term read through fused attention: queries 1..T−1 over pairs 0..T−2 with a causal mask and a left
    window of look − 1 (pairs t−look … t−1); row 0 is exactly 0."""
    B, T, H, D = q_BTHD.shape
    if T < 2:
        return jnp.zeros_like(v_BTHD)
    y = _sdpa(q_BTHD[:, 1:], k_BTHD[:, :-1], v_BTHD[:, :-1], implementation, local_window_size=(look - 1, 0))
    return jnp.concatenate([jnp.zeros((B, 1, H, D), y.dtype), y], axis=1)


def retrieve_flash_long(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, skip_B: Array,
                        implementation: Optional[str] = None) -> Array:
    """Long-term read through fused attention with a per-row skip m_b: the query at t = i + m_b is moved to row
    i (a gather), so j ≤ t − m_b becomes the causal j ≤ i; rows t < m_b are exactly 0."""
    B, T, H, D = q_BTHD.shape
    skip = jnp.broadcast_to(jnp.asarray(skip_B, jnp.int32), (B,))
    i = jnp.arange(T)[None, :]
    src = jnp.minimum(i + skip[:, None], T - 1)                      # rows i ≥ T − m read garbage, dropped below
    q_shift = jnp.take_along_axis(q_BTHD, src[:, :, None, None], axis=1)
    y = _sdpa(q_shift, k_BTHD, v_BTHD, implementation)
    back = jnp.maximum(i - skip[:, None], 0)
    y = jnp.take_along_axis(y, back[:, :, None, None], axis=1)
    return jnp.where((i >= skip[:, None])[:, :, None, None], y, 0.0).astype(v_BTHD.dtype)


def retrieve_blockwise(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, kind: str, *, look: int = 0,
                       skip_B: Optional[Array] = None, segment_ids_BT: Optional[Array] = None,
                       block: int = 128, dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None) -> Array:
    """Query blocks of `block` rows, each under jax.checkpoint: a block reads a band of block + look keys (short)
    or all keys (long), so memory is O(block·T) in the forward and the backward; any mask, documents included."""
    B, T, H, D = q_BTHD.shape
    Q = min(block, T)
    nb = -(-T // Q)
    Tp = nb * Q
    pad_t = ((0, 0), (0, Tp - T), (0, 0), (0, 0))
    q, k, v = (jnp.pad(a, pad_t) for a in (q_BTHD, k_BTHD, v_BTHD))
    seg = None if segment_ids_BT is None else jnp.pad(jnp.asarray(segment_ids_BT), ((0, 0), (0, Tp - T)),
                                                      constant_values=-1)
    skip = None if skip_B is None else jnp.broadcast_to(jnp.asarray(skip_B, jnp.int32), (B,))
    if kind == "short":
        W = Q + look                                                 # keys s−look … s+Q−1
        kpad = ((0, 0), (look, 0), (0, 0), (0, 0))
        k_src, v_src = jnp.pad(k, kpad), jnp.pad(v, kpad)
        seg_src = None if seg is None else jnp.pad(seg, ((0, 0), (look, 0)), constant_values=-2)
    elif kind == "long":
        W = Tp
        k_src, v_src, seg_src = k, v, seg
    else:
        raise ValueError(f"memory kind {kind!r} not in ('short', 'long')")

    def one_block(qb: Array) -> Array:
        s = qb * Q
        t_abs = s + jnp.arange(Q)
        qq = lax.dynamic_slice_in_dim(q, s, Q, axis=1)
        if kind == "short":
            kk = lax.dynamic_slice_in_dim(k_src, s, W, axis=1)
            vv = lax.dynamic_slice_in_dim(v_src, s, W, axis=1)
            j_abs = s - look + jnp.arange(W)
            d = t_abs[:, None] - j_abs[None, :]
            allowed = ((d >= 1) & (d <= look) & (j_abs[None, :] >= 0))[None]
            sk = None if seg_src is None else lax.dynamic_slice_in_dim(seg_src, s, W, axis=1)
        else:
            kk, vv, sk = k_src, v_src, seg_src
            d = t_abs[:, None] - jnp.arange(W)[None, :]
            allowed = d[None] >= skip[:, None, None]
        if seg is not None:
            sq = lax.dynamic_slice_in_dim(seg, s, Q, axis=1)
            allowed = allowed & (sq[:, :, None] == sk[:, None, :])
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, qb)
        return retrieve_dense(qq, kk, vv, allowed, dropout_rate=dropout_rate, dropout_rng=rng)

    y = lax.map(jax.checkpoint(one_block), jnp.arange(nb))          # (nb, B, Q, H, D)
    return jnp.moveaxis(y, 0, 1).reshape(B, Tp, H, D)[:, :T]


def flash_implementation(dtype: jnp.dtype) -> Optional[str]:
    """cuDNN flash attention on GPUs for 16-bit inputs (its supported case); the XLA lowering otherwise."""
    if platform.backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return None


def choose_impl(impl: str, T: int, segment_ids_BT: Optional[Array], dropout: bool) -> str:
    """`auto`: dense on CPU up to T = 512, blockwise beyond; on TPU the Pallas kernels (document masks
    included); on GPU flash, or blockwise where flash cannot express the mask (documents) or the dropout
    (the rule: ops/dispatch.v2_retrieval)."""
    return dispatch.v2_retrieval(impl, platform.backend(), T, segment_ids_BT is not None, dropout)


def retrieve(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, kind: str, *, look: int = 0,
             skip_B: Optional[Array] = None, segment_ids_BT: Optional[Array] = None, impl: str = "auto",
             dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None, block: int = 128) -> Array:
    """The read of one v2 contextual memory (kind "short" or "long"), any implementation."""
    B, T = q_BTHD.shape[:2]
    dropout = dropout_rng is not None and dropout_rate > 0.0
    impl = choose_impl(impl, T, segment_ids_BT, dropout)
    if impl == "dense":
        allowed = memory_mask(kind, T, look=look, skip_B=skip_B, segment_ids_BT=segment_ids_BT, B=B)
        return retrieve_dense(q_BTHD, k_BTHD, v_BTHD, allowed, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    if impl == "blockwise":
        return retrieve_blockwise(q_BTHD, k_BTHD, v_BTHD, kind, look=look, skip_B=skip_B,
                                  segment_ids_BT=segment_ids_BT, block=block, dropout_rate=dropout_rate,
                                  dropout_rng=dropout_rng)
    if impl == "flash":
        if segment_ids_BT is not None or dropout:
            raise ValueError("v2 retrieval impl='flash' supports neither document masks nor read dropout; "
                             "use 'blockwise' (or 'auto')")
        implementation = flash_implementation(q_BTHD.dtype)
        if kind == "short":
            return retrieve_flash_short(q_BTHD, k_BTHD, v_BTHD, look, implementation)
        return retrieve_flash_long(q_BTHD, k_BTHD, v_BTHD, skip_B, implementation)
    if impl == "pallas":
        seed, rate = memory.dropout_seed(dropout_rng, dropout_rate)
        if kind == "short":
            return pallas.short_term_read(q_BTHD, k_BTHD, v_BTHD, look, seed, rate, segment_ids_BT=segment_ids_BT)
        if kind == "long":
            return pallas.long_term_read(q_BTHD, k_BTHD, v_BTHD, skip_B, seed, rate, segment_ids_BT=segment_ids_BT)
        raise ValueError(f"memory kind {kind!r} not in ('short', 'long')")
    raise ValueError(f"v2 retrieval impl={impl!r} not in ('auto', 'dense', 'flash', 'blockwise', 'pallas')")
