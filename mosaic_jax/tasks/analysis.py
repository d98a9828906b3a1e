"""Analysis as pure functions: per-position losses (the paper's Fig. 8) and attention maps of any layer/head.

    losses_BT = token_losses(cfg, params, windows_BT1)        # windows of T+1 tokens: loss of predicting t+1
    maps_LBHTT = attention_maps(cfg, params, tokens_BT)       # C-mem read weights (mosaic) / attention (GPT-2)

For the memory mosaic the map of layer l, head h is the C-mem kernel-regression weight matrix
A[t, j] = softmax_{j ≤ t−1}(k_t·k_j): strictly causal (A[t, t] = 0) and row 0 is all zeros (nothing stored yet).
For GPT-2 it is the causal softmax(q·k/√D) (diagonal included). Rows sum to one otherwise.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mosaic_jax.inference import decode
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import apply

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("cfg",))
def token_losses(cfg: ModelConfig, params: Any, windows_BT1: Array) -> Array:
    """Cross-entropy (nats) of each next token: (B, T) for windows (B, T+1); position t predicts token t+1."""
    logits = apply(cfg, params, windows_BT1[:, :-1]).astype(jnp.float32)
    targets = windows_BT1[:, 1:]
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def mean_by_position(losses_NT: Array, valid_NT: Array) -> tuple[Array, Array]:
    """(mean loss per position (T,), count per position (T,)) over the valid windows."""
    counts = jnp.sum(valid_NT, axis=0)
    return jnp.sum(jnp.where(valid_NT, losses_NT, 0.0), axis=0) / jnp.maximum(counts, 1), counts


@functools.partial(jax.jit, static_argnames=("cfg",))
def attention_maps(cfg: ModelConfig, params: Any, tokens_BT: Array) -> Array:
    """Read weights of every layer and head: (L, B, H, T, T) float32 (see the module docstring)."""
    _, internals = decode.forward_with_internals(cfg, params, tokens_BT)
    fam = registry.of(cfg)
    if fam.layer_decoder is None:
        raise ValueError(f"arch {cfg.arch!r}: attention maps need the family's layer decoder (Family.layer_decoder)")
    read_weights = fam.layer_decoder.read_weights
    return jnp.stack([read_weights(st) for st in internals])


def attention_map(cfg: ModelConfig, params: Any, tokens_T: Array, layer: int, head: int) -> Array:
    """(T, T) read weights of one layer and head for one text."""
    if not (0 <= layer < cfg.n_layer and 0 <= head < cfg.n_head):
        raise ValueError(f"layer {layer} / head {head} out of range ({cfg.n_layer} layers, {cfg.n_head} heads)")
    return attention_maps(cfg, params, jnp.asarray(tokens_T)[None])[layer, 0, head]
