"""The v1 memory mosaic (ICLR 2025) as a registered family: contextual + persistent memory per block, no position
encoding, logits divided by √C, and the official checkpoint converter (`reference.py`)."""
from __future__ import annotations

import math
from typing import Any, Optional

import jax

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic import decode, reference
from mosaic_jax.models.mosaic.fields import MosaicFields
from mosaic_jax.models.mosaic.layers import MemoryFns, MosaicBlock, normal

Array = jax.Array


def _run_block(cfg: ModelConfig, fns: MemoryFns, x_BTC: Array, inputs: registry.BlockInputs) -> Array:
    return MosaicBlock(cfg, fns, name="mosaic")(x_BTC, inputs.deterministic)


def _prepare(module: Any, cfg: ModelConfig, x_BTC: Array, segment_ids_BT: Optional[Array], deterministic: bool
             ) -> tuple[Array, None]:
    if segment_ids_BT is not None:
        raise NotImplementedError("document masking for the v1 memory mosaic is not supported (the reference "
                                  "reads across documents); pass segment_ids_BT=None")
    return x_BTC, None


def _validate(cfg: ModelConfig) -> None:
    if cfg.v_shift != 1:
        raise ValueError(f"ModelConfig.v_shift={cfg.v_shift}: only 1 is supported (the reference's value)")
    if cfg.v_kernel_size != 2:
        raise ValueError(f"ModelConfig.v_kernel_size={cfg.v_kernel_size}: lowrlinearconv needs 2")
    if cfg.k_kernel_size < 1:
        raise ValueError(f"ModelConfig.k_kernel_size={cfg.k_kernel_size} must be >= 1")


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, causal_halving: bool = False) -> float:
    """L·((6 + 4K)·C² + 4·N·P·C + 4·T·C) + 2·C·V (models/flops.py explains the terms)."""
    C, K, N, P = cfg.n_embd, cfg.k_kernel_size, cfg.pmem_count, cfg.pmem_size
    context = 4 * seq_len * C * (0.5 if causal_halving else 1.0)
    return float(cfg.n_layer * ((6 + 4 * K) * C * C + 4 * N * P * C + context) + 2 * C * cfg.vocab_size)


# The reference ties emb to a Linear head initialised after it: the shared table is N(0, 1/√C).
FAMILY = registry.register(registry.Family(
    name="mosaic",
    run_block=_run_block,
    embed_init=lambda cfg: normal(1 / math.sqrt(cfg.n_embd) if cfg.weight_tying else 1.0),
    head_init=lambda cfg: normal(1 / math.sqrt(cfg.n_embd)),
    forward_flops_per_token=forward_flops_per_token,
    decoder="mosaic_jax.inference.decode",
    prepare=_prepare,
    validate=_validate,
    logit_divisor=lambda cfg: math.sqrt(cfg.n_embd),
    document_masking=False,
    layer_decoder=decode,
    reference_entries=reference.mosaic_entries,
    title="Memory Mosaic v1",
    describe=lambda cfg: {"P": cfg.pmem_size},
    hf_export="remote",
    baseline="gpt2",
    fields=MosaicFields,
    impl_switches=("leaky_impl", "cmem_impl", "pmem_impl", "proj_impl", "loss_impl"),
))
