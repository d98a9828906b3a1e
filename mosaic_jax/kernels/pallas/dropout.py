"""The dropout mask of the Pallas kernels: `kernels.dropout_keep`'s counter hash written in int32 arithmetic.

Same bits as the CPU kernels' uint32 form (xor, logical shifts and wrapping multiplies agree bit for bit between
int32 and uint32; the unsigned comparison is a signed one after flipping the top bit), so a Pallas read and the
fused read draw the same mask for the same seed, and the backward kernels regenerate the forward mask from
(seed, row, column) without storing it. int32 only: every op has a Mosaic (TPU) lowering.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _i32(u: int) -> Array:
    """A uint32 constant as the int32 with the same bits."""
    return jnp.int32(u - (1 << 32) if u >= 1 << 31 else u)


def fmix(h: Array) -> Array:
    """murmur3's 32-bit finaliser on int32 bits (kernels._fmix on uint32)."""
    h = h ^ lax.shift_right_logical(h, jnp.int32(16))
    h = h * _i32(0x85EBCA6B)
    h = h ^ lax.shift_right_logical(h, jnp.int32(13))
    h = h * _i32(0xC2B2AE35)
    return h ^ lax.shift_right_logical(h, jnp.int32(16))


def threshold(rate: float) -> int:
    """The uint32 threshold of kernels.dropout_keep: keep iff hash >= threshold."""
    return min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)


def keep(seed: Array, rows: Array, cols: Array, rate: float) -> Array:
    """keep[r, c] (broadcast of rows against cols, int32 ids) with P(keep) = 1 − rate; equals
    kernels.dropout_keep(seed, rows, C, rate)[..., cols] for uint32-cast ids."""
    h_row = fmix(rows ^ fmix(seed))
    h = fmix(h_row + cols * _i32(0x9E3779B9))
    flip = _i32(0x80000000)
    return (h ^ flip) >= (_i32(threshold(rate)) ^ flip)
