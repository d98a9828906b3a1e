"""Sampling from next-token logits and the generation loop on top of the incremental decoder.

    sc = SamplingConfig(temperature=0.8, top_k=50, top_p=0.95)    # temperature 0 → greedy
    tokens_B = sample_logits(logits_BV, rng, sc)
    for out in generate_stream(cfg, params, prompts, max_new_tokens=100, sampling=sc, seed=0, eos_id=tok.eos_id):
        out.tokens   # (B,) the token each row produced at this step (-1 once a row has stopped)
    rows = generate(...)                                            # list of generated ids per row, EOS excluded

Past the training window (`cfg.block_size`) the loop either keeps decoding incrementally ("continue", mosaic
only: unbounded memory up to the cache size) or recomputes the last `block_size` tokens for every new token as the
reference does ("recompute", both architectures). See docs/inference.md.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax.inference import decode
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig

Array = jax.Array
PAST_WINDOW_MODES = ("continue", "recompute")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0   # 0 (or less): greedy argmax
    top_k: int = 0             # keep the k most likely tokens (0: off)
    top_p: float = 1.0         # nucleus: keep the smallest set whose probability reaches p (1: off)

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits_BV: Array, sc: SamplingConfig) -> Array:
    """Temperature, then top-k, then top-p; removed tokens get -inf. Ties at a threshold are kept."""
    logits = logits_BV.astype(jnp.float32) / max(sc.temperature, 1e-6)
    if sc.top_k and sc.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sc.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sc.top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The most likely token is always kept (mass before it is 0); the threshold is the last kept logit.
        n_keep = jnp.sum(mass_before < sc.top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("sc", "vocab_limit"))
def sample_logits(logits_BV: Array, rng: Array, sc: SamplingConfig, vocab_limit: Optional[int] = None) -> Array:
    """Next token per row (int32): argmax when temperature ≤ 0, else a categorical draw from the filtered logits.

    vocab_limit: ids ≥ it are never produced (the model's vocabulary is padded past the tokenizer's).
    """
    if vocab_limit is not None and vocab_limit < logits_BV.shape[-1]:
        logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)
    if sc.temperature <= 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BV, sc), axis=-1).astype(jnp.int32)


class StepOutput(NamedTuple):
    tokens: np.ndarray      # (B,) int: the new token per row, -1 for rows that had already stopped
    finished: np.ndarray    # (B,) bool: the row has produced EOS (now or before) or reached max_new_tokens


def _pad_right(rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(rows), width), np.int32)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


def generate_stream(cfg: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    sampling: SamplingConfig = SamplingConfig(), seed: int = 0, eos_id: Optional[int] = None,
                    past_window: str = "continue", max_len: Optional[int] = None,
                    vocab_limit: Optional[int] = None) -> Iterator[StepOutput]:
    """Yield one StepOutput per generated position for a batch of prompts (of different lengths).

    past_window: "continue" decodes incrementally past cfg.block_size (mosaic only; GPT-2 raises); "recompute"
    switches to the reference's sliding-window recompute once a row's context exceeds cfg.block_size.
    max_len: decoder cache size (default: longest prompt + max_new_tokens, capped at block_size in recompute).
    vocab_limit: the tokenizer's vocabulary size; padded ids beyond it are never sampled.
    """
    if past_window not in PAST_WINDOW_MODES:
        raise ValueError(f"past_window must be one of {PAST_WINDOW_MODES}, got {past_window!r}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    W = cfg.block_size
    seqs = [list(map(int, p)) for p in prompts]
    B, longest = len(seqs), max(len(p) for p in prompts)
    need = longest + max_new_tokens - 1          # the last sampled token is never fed back
    limit = registry.of(cfg).max_positions(cfg)
    if past_window == "continue" and limit is not None and need > limit:
        raise ValueError(f"{registry.of(cfg).title}: {need} positions exceed block_size {limit} (learned "
                         "positions); use past_window='recompute'")
    if past_window == "recompute":
        S = min(max_len or need, W)
    else:
        S = max_len or need
        if need > S:
            raise ValueError(f"cache size {S} is smaller than the {need} positions needed")
    dec = decode.decode_for(cfg)
    base = jax.random.key(seed)
    finished = np.zeros(B, bool)
    use_cache = longest <= S
    if use_cache:
        tokens, lengths = _pad_right(seqs, longest)
        cache = dec.init_cache(cfg, B, S)
        logits, cache = dec.prefill_jit(cfg, params, jnp.asarray(tokens), jnp.asarray(lengths), cache,
                                        all_logits=False)
    for i in range(max_new_tokens):
        if not use_cache:           # sliding-window recompute: each row's last ≤ W tokens, right-padded
            windows, wl = _pad_right([s[-W:] for s in seqs], min(W, max(len(s) for s in seqs)))
            logits = decode.window_logits(cfg, params, jnp.asarray(windows), jnp.asarray(wl))
        new = np.asarray(sample_logits(logits, jax.random.fold_in(base, i), sampling, vocab_limit))
        out = np.where(finished, -1, new)
        if eos_id is not None:
            finished = finished | (new == eos_id)
        if i == max_new_tokens - 1:
            finished = np.ones(B, bool)
        for b in range(B):
            seqs[b].append(int(new[b]))     # stopped rows keep running (their output is ignored)
        yield StepOutput(out, finished.copy())
        if finished.all():
            return
        if use_cache:
            max_pos = max(len(s) for s in seqs) - 1          # the position the next step writes
            if max_pos >= S:
                if past_window == "recompute":
                    use_cache = False
                    continue
                raise ValueError(f"decoder cache of {S} positions is full")
            extra = {"read_len": decode.read_len_for(cfg, max_pos, S)} if dec is decode else {}
            logits, cache = dec.step_jit(cfg, params, cache, jnp.asarray(new), **extra)


def generate(cfg: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list[list[int]]:
    """The generated ids per row (prompt excluded, generation stops at and excludes EOS)."""
    rows: list[list[int]] = [[] for _ in prompts]
    eos_id = kwargs.get("eos_id")
    for out in generate_stream(cfg, params, prompts, **kwargs):
        for b, t in enumerate(out.tokens):
            if t >= 0 and t != eos_id:
                rows[b].append(int(t))
    return rows
