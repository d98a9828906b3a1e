"""Memory Mosaics v2's own `model.*` fields (its config section; spec §5, docs/v2.md), and the sizes derived from
them and the shared fields (`DERIVED`, read as `cfg.short_heads` etc.). No JAX here: `train --help` lists them."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

from mosaic_jax.config_fields import field


@dataclasses.dataclass(frozen=True)
class V2Fields:
    n_head_short: int = field(-1, "short-term memory heads of size head_dim (-1: n_head; 0: no short-term memory)")
    n_head_long: int = field(-1, "long-term memory heads (-1: n_head; 0: no long-term memory)")
    short_window: int = field(256, "h: the short-term memory reads the pairs t-h+1 .. t-1")
    short_oldest: str = field("t-h+1", 'oldest short-term pair: "t-h+1" (v2 main text) or "t-h" (v2 appendix Fig. 11)')
    long_skip_min: int = field(64, "training: the long-term memory reads pairs 1 .. t-m, m ~ U{min..max}")
    long_skip_max: int = field(256, "upper end of m (m is drawn per sequence from the 'dropout' rng stream)")
    long_skip_eval: int = field(64, "m in eval mode (no rng) and at inference")
    ffn_hidden: int = field(0, "SwiGLU (persistent memory) hidden size d' (0: 3 * n_embd)")
    doc_masking: bool = field(True, "honour segment ids: document-wise masks and key-state reset at doc starts")

    # Sizes that need the shared fields too (the whole ModelConfig `c`): `cfg.short_heads`, ...
    DERIVED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "short_heads": lambda c: c.n_head if c.n_head_short == -1 else c.n_head_short,
        "long_heads": lambda c: c.n_head if c.n_head_long == -1 else c.n_head_long,
        # pairs the short-term memory holds: h-1 (pairs t-h+1..t-1) or h (pairs t-h..t-1)
        "short_lookback": lambda c: c.short_window - 1 if c.short_oldest == "t-h+1" else c.short_window,
        "ffn_dim": lambda c: c.ffn_hidden or 3 * c.n_embd,
    }
