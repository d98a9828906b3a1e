"""An example model family that lives outside the library: the v1 memory mosaic with its persistent memory
replaced by a SwiGLU feed-forward layer (as v2 does), keeping v1's contextual memory.

Nothing in `mosaic_jax/` names it. Importing this module registers it; a config selects it with
`model.arch = "mosaic_swiglu"` and `model.family_module = "experiments.families.mosaic_swiglu.family"`, which the
run's config.json records, so `generate`, `evaluate`, `bench --family_module=...` and `aot` find it again.
docs/extending.md walks through this file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import jax

from mosaic_jax.config_fields import field
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import ContextualMemory, LayerNorm, MemoryFns, dropout
from mosaic_jax.models.mosaic_v2.layers import SwiGLU

Array = jax.Array
V1 = registry.get("mosaic")   # reuse what does not change: init scales, logit scale, the no-packing check


@dataclasses.dataclass(frozen=True)
class SwiGLUMosaicFields:
    """This family's own `model.*` fields: v1's contextual-memory fields and the SwiGLU's width (no P-mem slots;
    the block is always pre-LN).
    `--config.model.ffn_hidden=...` sets it; `train --help` lists it when the preset names this module."""
    v_shift: int = field(1, "value look-ahead (only 1 is supported, as in the paper)")
    k_kernel_size: int = field(1, "key feature conv width, left padded")
    v_kernel_size: int = field(2, "value feature kernel (`lowrlinearconv` needs 2)")
    ffn_hidden: int = field(0, "SwiGLU hidden size (0: 3 * n_embd)")

    DERIVED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"ffn_dim": lambda c: c.ffn_hidden or 3 * c.n_embd}


class SwiGLUMosaicBlock(nn.Module):
    """x + C-mem(LN1 x), then + SwiGLU(LN2 x) (pre-LN); each branch ends in dropout p_hd."""
    cfg: ModelConfig
    fns: MemoryFns

    @nn.compact
    def __call__(self, x_BTC: Array, inputs: registry.BlockInputs) -> Array:
        c, det = self.cfg, inputs.deterministic
        y = ContextualMemory(c, self.fns, name="cmem")(LayerNorm(c, name="ln1")(x_BTC), det)
        x_BTC = x_BTC + dropout(self, y, c.hd_dropout, det)
        y = SwiGLU(c, name="ffn")(LayerNorm(c, name="ln2")(x_BTC), inputs.layer_idx)
        return x_BTC + dropout(self, y, c.hd_dropout, det)


def _run_block(cfg: ModelConfig, fns: MemoryFns, x_BTC: Array, inputs: registry.BlockInputs) -> Array:
    return SwiGLUMosaicBlock(cfg, fns, name="mosaic_swiglu")(x_BTC, inputs)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, causal_halving: bool = False) -> float:
    """Per layer: C-mem W_k 2KC², W_v 2C², out 2C², scores and read 4TC; SwiGLU 3 matmuls of C×F: 6CF.
    Plus the tied head 2CV."""
    C, K, F = cfg.n_embd, cfg.k_kernel_size, cfg.ffn_dim
    context = 4 * seq_len * C * (0.5 if causal_halving else 1.0)
    return float(cfg.n_layer * ((4 + 2 * K) * C * C + 6 * C * F + context) + 2 * C * cfg.vocab_size)


def _validate(cfg: ModelConfig) -> None:
    V1.validate(cfg)   # the contextual memory's constraints (value look-ahead 1, kernel sizes)
    if cfg.ffn_hidden < 0:
        raise ValueError(f"ModelConfig.ffn_hidden={cfg.ffn_hidden} must be >= 0 (0: 3 * n_embd)")


FAMILY = registry.register(registry.Family(
    name="mosaic_swiglu",
    run_block=_run_block,
    embed_init=V1.embed_init,
    head_init=V1.head_init,
    forward_flops_per_token=forward_flops_per_token,
    prepare=V1.prepare,
    validate=_validate,
    logit_divisor=V1.logit_divisor,
    document_masking=False,
    impl_switches=("leaky_impl", "cmem_impl", "proj_impl", "loss_impl"),   # v1's contextual memory, no pmem
    title="Memory Mosaic with a SwiGLU persistent memory (example family)",
    describe=lambda cfg: {"ffn": cfg.ffn_dim},
    fields=SwiGLUMosaicFields,
))
