"""The language model: token embedding → L stacked blocks of the config's family → LayerNorm → tied head.

What differs between families (the block, init scales, positions, the logit scale: v1 divides by √C as the
reference does) comes from `registry.of(cfg)`; this module never looks at the architecture name. Layers are
stacked (leading `layers` axis) and run under `lax.scan` (or unrolled), optionally rematerialised.

Pure-function API:
    params = init_params(cfg, rng)                      # float32 pytree
    logits_BTV = apply(cfg, params, tokens_BT, rng=None)  # eval mode when rng is None
    axes = param_axes(cfg)                              # the same pytree of logical axis-name tuples
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.kernels import dense_vjp, platform
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.ops import dispatch
from mosaic_jax.data.batch import IGNORE
from mosaic_jax.models import registry
from mosaic_jax.models.mosaic.layers import DEFAULT_FNS, LayerNorm, MemoryFns, param

Array = jax.Array
Params = Any

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _Layer(nn.Module):
    """One block in the scan convention: (carry, broadcast inputs) -> (carry, None); the family runs the block."""
    cfg: ModelConfig
    fns: MemoryFns
    deterministic: bool

    @nn.compact
    def __call__(self, x_BTC: Array, segment_ids_BT: Optional[Array], extras: Any = None,
                 layer_idx: Optional[Array] = None) -> tuple[Array, None]:
        inputs = registry.BlockInputs(segment_ids_BT, extras, layer_idx, self.deterministic)
        return registry.of(self.cfg).run_block(self.cfg, self.fns, x_BTC, inputs), None


class LanguageModel(nn.Module):
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, tokens_BT: Array, deterministic: bool = True,
                 segment_ids_BT: Optional[Array] = None, features: bool = False) -> Array:
        c = self.cfg
        fam = registry.of(c)
        dt = jnp.dtype(c.dtype)
        embed = param(self, "embed", fam.embed_init(c), (c.vocab_size, c.n_embd), ("vocab", "embed"))
        x = jnp.take(embed, tokens_BT, axis=0).astype(dt)
        x, extras = fam.prepare(self, c, x, segment_ids_BT, deterministic)

        layer = _Layer
        if c.remat != "none":
            layer = nn.remat(layer, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, 0), length=c.n_layer,
                        unroll=1 if c.scan_layers else c.n_layer,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(c, self.fns, deterministic, name="blocks")(x, segment_ids_BT, extras,
                                                                jnp.arange(c.n_layer, dtype=jnp.int32))

        x = LayerNorm(c, name="ln_out")(x)
        if features:   # the final hidden states, for a fused head + loss (loss_sum)
            return x
        head = embed if c.weight_tying else param(self, "head", fam.head_init(c), (c.vocab_size, c.n_embd),
                                                  ("vocab", "embed"))
        logits = jnp.einsum("btc,vc->btv", x, head.astype(dt)).astype(jnp.float32)
        return logits / fam.logit_divisor(c)


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
    """(sum of token losses, number of counted tokens); targets equal to IGNORE are skipped."""
    logits = logits_BTV.astype(jnp.float32)
    valid = targets_BT != IGNORE
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
    impl = dispatch.loss(cfg.loss_impl, platform.backend())
    if impl == "dense":
        return cross_entropy(apply(cfg, params, tokens_BT, rng=rng, fns=fns, segment_ids_BT=segment_ids_BT),
                             targets_BT)
    rngs = {} if rng is None else {"dropout": rng}
    x_BTC = build_model(cfg, fns).apply({"params": params}, jnp.asarray(tokens_BT), rng is None, segment_ids_BT,
                                        True, rngs=rngs)
    head_VC = params["embed"] if cfg.weight_tying else params["head"]
    scale = 1 / registry.of(cfg).logit_divisor(cfg)
    B, T, C = x_BTC.shape
    targets_M = jnp.asarray(targets_BT).reshape(B * T)
    total = dense_vjp.head_cross_entropy(x_BTC.reshape(B * T, C), head_VC, targets_M, scale)
    return total, jnp.sum(targets_M != IGNORE)


def loss_fn(cfg: ModelConfig, params: Params, tokens_BT: Array, targets_BT: Array, *,
            rng: Optional[Array] = None, fns: MemoryFns = DEFAULT_FNS) -> Array:
    """Mean next-token cross-entropy (the reference's loss, ignore_index = -1)."""
    total, count = loss_sum(cfg, params, tokens_BT, targets_BT, rng=rng, fns=fns)
    return total / jnp.maximum(count, 1)


def count_params(params: Params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
