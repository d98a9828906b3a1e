"""The v1 memory mosaic's own `model.*` fields (its config section; models/config.py explains the layout).
No JAX here: `train --help` lists these fields."""
from __future__ import annotations

import dataclasses

from mosaic_jax.config_fields import field


@dataclasses.dataclass(frozen=True)
class MosaicFields:
    pmem_size: int = field(2688, "P: persistent-memory slots per head (3.5 C matches GPT-2's MLP)")
    pmem_count: int = field(1, "number of slot tables averaged per head")
    v_shift: int = field(1, "value look-ahead (only 1 is supported, as in the paper)")
    k_kernel_size: int = field(1, "key feature conv width, left padded")
    v_kernel_size: int = field(2, "value feature kernel (`lowrlinearconv` needs 2)")
    pre_ln: bool = field(True, "LayerNorm before each branch (pre-LN) rather than after")
