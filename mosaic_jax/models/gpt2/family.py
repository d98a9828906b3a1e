"""The GPT-2 baseline (nanoGPT-equivalent) as a registered family: learned positions up to block_size,
causal self-attention and a 4C tanh-GELU MLP per block."""
from __future__ import annotations

from typing import Any, Optional

import jax

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.gpt2 import decode
from mosaic_jax.models.gpt2.layers import GPT2_STD, GPT2Block
from mosaic_jax.models.mosaic import reference
from mosaic_jax.models.mosaic.layers import MemoryFns, normal, param

Array = jax.Array


def _run_block(cfg: ModelConfig, fns: MemoryFns, x_BTC: Array, inputs: registry.BlockInputs) -> Array:
    return GPT2Block(cfg, name="gpt2")(x_BTC, inputs.deterministic, inputs.segment_ids_BT)


def _prepare(module: Any, cfg: ModelConfig, x_BTC: Array, segment_ids_BT: Optional[Array], deterministic: bool
             ) -> tuple[Array, None]:
    T = x_BTC.shape[1]
    if T > cfg.block_size:
        raise ValueError(f"GPT-2 baseline: sequence length {T} exceeds block_size {cfg.block_size}")
    wpe = param(module, "pos_embed", normal(GPT2_STD), (cfg.block_size, cfg.n_embd), ("positions", "embed"))
    return x_BTC + wpe[:T].astype(x_BTC.dtype)[None], None


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, causal_halving: bool = False) -> float:
    """L·(24·C² + 4·T·C) + 2·C·V: qkv 6C², out 2C², MLP 16C², scores and read 4TC, tied head 2CV."""
    C = cfg.n_embd
    context = 4 * seq_len * C * (0.5 if causal_halving else 1.0)
    return float(cfg.n_layer * (24 * C * C + context) + 2 * C * cfg.vocab_size)


FAMILY = registry.register(registry.Family(
    name="gpt2",
    run_block=_run_block,
    embed_init=lambda cfg: normal(GPT2_STD),
    head_init=lambda cfg: normal(GPT2_STD),
    forward_flops_per_token=forward_flops_per_token,
    decoder="mosaic_jax.inference.decode",
    prepare=_prepare,
    max_positions=lambda cfg: cfg.block_size,
    layer_decoder=decode,
    reference_entries=reference.gpt2_entries,
    title="GPT-2 baseline",
    hf_export="gpt2",
))
