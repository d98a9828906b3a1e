"""Memory Mosaics v2 (NeurIPS 2025) as a registered family: short- and long-term contextual memories, a SwiGLU
persistent memory, truncated-normal init scaled by depth, no logit scale, and its own incremental decoder."""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import MemoryFns
from mosaic_jax.models.mosaic_v2 import counts
from mosaic_jax.models.mosaic_v2.fields import V2Fields
from mosaic_jax.models.mosaic_v2.layers import V2Block, trunc_normal

Array = jax.Array


def _run_block(cfg: ModelConfig, fns: MemoryFns, x_BTC: Array, inputs: registry.BlockInputs) -> Array:
    # the block index (scanned input) sets v2's per-depth init scale
    return V2Block(cfg, name="mosaic_v2")(x_BTC, inputs.layer_idx, inputs.segment_ids_BT, inputs.extras,
                                          inputs.deterministic)


def _prepare(module: Any, cfg: ModelConfig, x_BTC: Array, segment_ids_BT: Optional[Array], deterministic: bool
             ) -> tuple[Array, Array]:
    """The long-term skip m: one draw per sequence from the 'dropout' stream when training, fixed in eval."""
    B = x_BTC.shape[0]
    skip_B = (jnp.full((B,), cfg.long_skip_eval, jnp.int32) if deterministic else
              jax.random.randint(module.make_rng("dropout"), (B,), cfg.long_skip_min, cfg.long_skip_max + 1))
    return x_BTC, skip_B


def _validate(c: ModelConfig) -> None:
    for name in ("n_head_short", "n_head_long"):
        if getattr(c, name) < -1:
            raise ValueError(f"ModelConfig.{name}={getattr(c, name)}: must be -1 (n_head), 0 (off) or > 0")
    if c.short_heads + c.long_heads == 0:
        raise ValueError("ModelConfig.n_head_short=0 and n_head_long=0: v2 needs at least one contextual memory")
    if c.short_oldest not in ("t-h+1", "t-h"):
        raise ValueError(f"ModelConfig.short_oldest={c.short_oldest!r} not in ('t-h+1', 't-h')")
    if c.short_lookback < 1:
        raise ValueError(f"ModelConfig.short_window={c.short_window}: the short-term memory must hold at "
                         "least one pair (short_window >= 2, or >= 1 with short_oldest='t-h')")
    if not 1 <= c.long_skip_min <= c.long_skip_max:
        raise ValueError(f"ModelConfig.long_skip_min={c.long_skip_min}, long_skip_max={c.long_skip_max}: "
                         "need 1 <= long_skip_min <= long_skip_max (a skip of 0 would read the current pair)")
    if c.long_skip_eval < 1:
        raise ValueError(f"ModelConfig.long_skip_eval={c.long_skip_eval} must be >= 1")
    if c.ffn_hidden < 0:
        raise ValueError(f"ModelConfig.ffn_hidden={c.ffn_hidden} must be >= 0 (0: 3 * n_embd)")
    if c.bias:
        raise ValueError("ModelConfig.bias=True is not supported by arch='mosaic_v2' (v2 has no biases)")


def _std(cfg: ModelConfig) -> Any:   # v2 Table 6: embedding and classifier trunc. normal, σ = 1/√(2C)
    return trunc_normal(1 / math.sqrt(2 * cfg.n_embd))


FAMILY = registry.register(registry.Family(
    name="mosaic_v2",
    run_block=_run_block,
    embed_init=_std,
    head_init=_std,
    # the reads over the pairs each query actually reads (short window, long memory past the skip), as the
    # v2 paper counts them; causal halving does not apply
    forward_flops_per_token=lambda cfg, seq_len, causal_halving=False: counts.forward_flops_per_token(
        cfg, seq_len)["total"],
    decoder="mosaic_jax.models.mosaic_v2.decode",
    prepare=_prepare,
    validate=_validate,
    title="Memory Mosaic v2",
    describe=lambda cfg: {"ffn": cfg.ffn_dim},
    hf_export="remote",
    fields=V2Fields,
    impl_switches=("v2_impl", "v2_key_impl", "loss_impl"),
))
