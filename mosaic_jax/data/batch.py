"""The training batch and the library's one ignore index.

A batch is a dict of int32 (B, T) arrays, so it stays a pytree that `jax.device_put`, the sharding rules and
grain handle as is; `Batch` names its keys for readers and type checkers. The global batch of step s is a pure
function of (seed, s) (data/loader.py).
"""
from __future__ import annotations

from typing import TypedDict

import numpy as np

IGNORE = -1   # a target the loss skips: padding, document boundaries in packed rows, RegBench separators


class Batch(TypedDict, total=False):
    inputs: np.ndarray        # (B, T) token ids
    targets: np.ndarray       # (B, T) next-token ids, IGNORE where no loss is taken
    segment_ids: np.ndarray   # (B, T) document ids within a packed row (1, 2, ...; 0: padding); packing only
