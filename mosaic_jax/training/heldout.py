"""Held-out evaluation (mean token loss, perplexity) and a small text sampler for the training loop.

The evaluation batches are fixed (steps 0..n-1 of a BatchSource over the validation split with its own seed),
so numbers from successive evaluations, and from resumed runs, are comparable.

`sample_tokens` recomputes the whole window for every new token (no cache): simple, works for both
architectures, and small enough to swap for the incremental decoder (mosaic_jax/inference/decode.py) later.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mosaic_jax.models import lm
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.training.train_step import Batch, global_batch

Array = jax.Array
EvalFn = Callable[[Any, Batch], tuple[Array, Array]]


def evaluate(eval_fn: EvalFn, params: Any, source: Any, num_batches: int, mesh: Mesh,
             process_index: int = 0, process_count: int = 1) -> dict[str, float]:
    """Token-weighted mean loss over `num_batches` fixed batches of `source` (a loader.BatchSource)."""
    total, count = 0.0, 0
    sums = []
    for i in range(num_batches):
        local = source.process_batch_at(i, process_index, process_count)
        sums.append(eval_fn(params, global_batch(local, mesh, source.global_batch)))
    for loss_sum, n in jax.device_get(sums):   # one host transfer at the end, not one per batch
        total += float(loss_sum)
        count += int(n)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": float(count)}


@functools.partial(jax.jit, static_argnames=("cfg", "total_len"))
def _sample_loop(cfg: ModelConfig, params: Any, buf_1L: Array, start: Array, rng: Array, temperature: Array,
                 total_len: int) -> Array:
    """Fill buf[start:total_len] one token at a time. Causality makes the not-yet-written tail irrelevant to
    the logits at position i-1, so one fixed-shape program serves every prompt length."""
    def body(i: Array, buf: Array) -> Array:
        logits_V = lm.apply(cfg, params, buf)[0, i - 1]
        greedy = jnp.argmax(logits_V)
        drawn = jax.random.categorical(jax.random.fold_in(rng, i), logits_V / jnp.maximum(temperature, 1e-6))
        tok = jnp.where(temperature > 0, drawn, greedy).astype(buf.dtype)
        return jnp.where(i < total_len, buf.at[0, i].set(tok), buf)
    return jax.lax.fori_loop(start, total_len, body, buf_1L)


def sample_tokens(cfg: ModelConfig, params: Any, prompt: Sequence[int], num_new: int, *, temperature: float = 0.8,
                  seed: int = 0) -> list[int]:
    """`num_new` tokens after `prompt` (temperature 0: greedy). The window is capped at block_size."""
    prompt = list(prompt)[-(cfg.block_size - 1):] or [0]
    total = min(len(prompt) + num_new, cfg.block_size)
    buf = np.zeros((1, total), np.int32)
    buf[0, :len(prompt)] = prompt
    out = _sample_loop(cfg, params, jnp.asarray(buf), jnp.int32(len(prompt)), jax.random.PRNGKey(seed),
                       jnp.float32(temperature), total)
    return [int(t) for t in np.asarray(out)[0, len(prompt):]]


def sample_text(cfg: ModelConfig, params: Any, tokenizer: Any, prompt: str, num_new: int, *,
                temperature: float = 0.8, seed: int = 0) -> str:
    """Prompt + generated continuation as text (decoded together, so word boundaries survive), cut at the
    first end-of-sequence token."""
    ids = tokenizer.encode(prompt)
    new = sample_tokens(cfg, params, ids, num_new, temperature=temperature, seed=seed)
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None and eos in new:
        new = new[:new.index(eos)]
    vocab = getattr(tokenizer, "vocab_size", 1 << 31)   # the model's padded vocabulary can exceed it
    return tokenizer.decode(list(ids) + [t for t in new if t < vocab])
