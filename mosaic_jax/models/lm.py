"""The language model: token embedding → L stacked blocks (memory mosaic or GPT-2) → LayerNorm → tied head.

The memory mosaic has no position encoding and scales its logits by 1/√C, as the reference does. Layers are
stacked (leading `layers` axis) and run under `lax.scan` (or unrolled), optionally rematerialised.

Pure-function API:
    params = init_params(cfg, rng)                      # float32 pytree
    logits_BTV = apply(cfg, params, tokens_BT, rng=None)  # eval mode when rng is None
    axes = param_axes(cfg)                              # the same pytree of logical axis-name tuples
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.kernels import dense_vjp, platform
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.gpt2.layers import GPT2_STD, GPT2Block
from mosaic_jax.models.mosaic.layers import DEFAULT_FNS, LayerNorm, MemoryFns, MosaicBlock, normal, param
from mosaic_jax.models.mosaic_v2.layers import V2Block, trunc_normal

Array = jax.Array
Params = Any
IGNORE_INDEX = -1

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _Layer(nn.Module):
    """One block in the scan convention: (carry, broadcast inputs) -> (carry, None)."""
    cfg: ModelConfig
    fns: MemoryFns
    deterministic: bool

    @nn.compact
    def __call__(self, x_BTC: Array, segment_ids_BT: Optional[Array], long_skip_B: Optional[Array] = None,
                 layer_idx: Optional[Array] = None) -> tuple[Array, None]:
        if self.cfg.arch == "mosaic_v2":   # the block index (scanned input) sets v2's per-depth init scale
            return V2Block(self.cfg, name="mosaic_v2")(x_BTC, layer_idx, segment_ids_BT, long_skip_B,
                                                       self.deterministic), None
        if self.cfg.arch == "mosaic":
            return MosaicBlock(self.cfg, self.fns, name="mosaic")(x_BTC, self.deterministic), None
        return GPT2Block(self.cfg, name="gpt2")(x_BTC, self.deterministic, segment_ids_BT), None


class LanguageModel(nn.Module):
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, tokens_BT: Array, deterministic: bool = True,
                 segment_ids_BT: Optional[Array] = None, features: bool = False) -> Array:
        c = self.cfg
        dt = jnp.dtype(c.dtype)
        V, C, T = c.vocab_size, c.n_embd, tokens_BT.shape[1]
        mosaic = c.arch == "mosaic"
        if mosaic and segment_ids_BT is not None:
            raise NotImplementedError("document masking for the v1 memory mosaic is not supported (the reference "
                                      "reads across documents); pass segment_ids_BT=None")
        # The reference ties emb to a Linear head initialised after it: the shared table is N(0, 1/√C).
        head_std = 1 / math.sqrt(C) if mosaic else GPT2_STD
        emb_std = head_std if (c.weight_tying or not mosaic) else 1.0
        v2 = c.arch == "mosaic_v2"   # v2 Table 6: embedding and classifier trunc. normal, σ = 1/√(2C); no logit scale
        v2_init = trunc_normal(1 / math.sqrt(2 * C))
        embed = param(self, "embed", v2_init if v2 else normal(emb_std), (V, C), ("vocab", "embed"))
        x = jnp.take(embed, tokens_BT, axis=0).astype(dt)
        long_skip_B = None
        if v2:   # long-term skip m: one draw per sequence from the 'dropout' stream when training, fixed in eval
            B = tokens_BT.shape[0]
            long_skip_B = (jnp.full((B,), c.long_skip_eval, jnp.int32) if deterministic else
                           jax.random.randint(self.make_rng("dropout"), (B,), c.long_skip_min, c.long_skip_max + 1))
        if c.arch == "gpt2":
            if T > c.block_size:
                raise ValueError(f"GPT-2 baseline: sequence length {T} exceeds block_size {c.block_size}")
            wpe = param(self, "pos_embed", normal(GPT2_STD), (c.block_size, C), ("positions", "embed"))
            x = x + wpe[:T].astype(dt)[None]

        layer = _Layer
        if c.remat != "none":
            layer = nn.remat(layer, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, 0), length=c.n_layer,
                        unroll=1 if c.scan_layers else c.n_layer,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(c, self.fns, deterministic, name="blocks")(x, segment_ids_BT, long_skip_B,
                                                                jnp.arange(c.n_layer, dtype=jnp.int32))

        x = LayerNorm(c, name="ln_out")(x)
        if features:   # the final hidden states, for a fused head + loss (loss_sum)
            return x
        head = embed if c.weight_tying else param(self, "head", v2_init if v2 else normal(head_std), (V, C),
                                                  ("vocab", "embed"))
        logits = jnp.einsum("btc,vc->btv", x, head.astype(dt)).astype(jnp.float32)
        return logits / c.logit_divisor


def build_model(cfg: ModelConfig, fns: MemoryFns = DEFAULT_FNS) -> LanguageModel:
    return LanguageModel(cfg, fns)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(cfg: ModelConfig, rng: Array, fns: MemoryFns) -> Params:
    tokens = jnp.zeros((1, min(cfg.block_size, 8)), jnp.int32)
    return nn.meta.unbox(build_model(cfg, fns).init({"params": rng}, tokens)["params"])


def init_params(cfg: ModelConfig, rng: Array, fns: MemoryFns = DEFAULT_FNS) -> Params:
    """Parameters (float32 pytree, layers stacked on a leading axis) drawn with the reference's distributions."""
    return _init(cfg, rng, fns)


def param_axes(cfg: ModelConfig, fns: MemoryFns = DEFAULT_FNS) -> Params:
    """The logical axis names of every parameter dimension, as a pytree shaped like the params."""
    tokens = jax.ShapeDtypeStruct((1, min(cfg.block_size, 8)), jnp.int32)
    boxed = jax.eval_shape(lambda t: build_model(cfg, fns).init({"params": jax.random.key(0)}, t), tokens)
    specs = nn.get_partition_spec(boxed["params"])
    return jax.tree.map(tuple, specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


def apply(cfg: ModelConfig, params: Params, tokens_BT: Array, *, rng: Optional[Array] = None,
          fns: MemoryFns = DEFAULT_FNS, segment_ids_BT: Optional[Array] = None) -> Array:
    """Logits (B, T, V) in float32; dropout is on when `rng` is given (training), off otherwise (eval)."""
    rngs = {} if rng is None else {"dropout": rng}
    return build_model(cfg, fns).apply({"params": params}, jnp.asarray(tokens_BT), rng is None,
                                       segment_ids_BT, rngs=rngs)


def cross_entropy(logits_BTV: Array, targets_BT: Array) -> tuple[Array, Array]:
    """(sum of token losses, number of counted tokens); targets equal to IGNORE_INDEX are skipped."""
    logits = logits_BTV.astype(jnp.float32)
    valid = targets_BT != IGNORE_INDEX
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets_BT, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, lse - picked, 0.0)), jnp.sum(valid)


def loss_sum(cfg: ModelConfig, params: Params, tokens_BT: Array, targets_BT: Array, *,
             rng: Optional[Array] = None, fns: MemoryFns = DEFAULT_FNS,
             segment_ids_BT: Optional[Array] = None) -> tuple[Array, Array]:
    """(sum of token losses, number of counted tokens) = cross_entropy(apply(...), targets).

    cfg.loss_impl "fused" (or "auto" on CPU) computes the tied head and the cross-entropy in chunks of tokens
    with a hand-written VJP (dense_vjp.head_cross_entropy): the (B, T, V) logits are never stored.
    """
    impl = cfg.loss_impl
    if impl == "auto":
        impl = "fused" if platform.backend() == "cpu" else "dense"
    if impl == "dense":
        return cross_entropy(apply(cfg, params, tokens_BT, rng=rng, fns=fns, segment_ids_BT=segment_ids_BT),
                             targets_BT)
    rngs = {} if rng is None else {"dropout": rng}
    x_BTC = build_model(cfg, fns).apply({"params": params}, jnp.asarray(tokens_BT), rng is None, segment_ids_BT,
                                        True, rngs=rngs)
    head_VC = params["embed"] if cfg.weight_tying else params["head"]
    scale = 1 / cfg.logit_divisor
    B, T, C = x_BTC.shape
    targets_M = jnp.asarray(targets_BT).reshape(B * T)
    total = dense_vjp.head_cross_entropy(x_BTC.reshape(B * T, C), head_VC, targets_M, scale)
    return total, jnp.sum(targets_M != IGNORE_INDEX)


def loss_fn(cfg: ModelConfig, params: Params, tokens_BT: Array, targets_BT: Array, *,
            rng: Optional[Array] = None, fns: MemoryFns = DEFAULT_FNS) -> Array:
    """Mean next-token cross-entropy (the reference's loss, ignore_index = -1)."""
    total, count = loss_sum(cfg, params, tokens_BT, targets_BT, rng=rng, fns=fns)
    return total / jnp.maximum(count, 1)


def count_params(params: Params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
