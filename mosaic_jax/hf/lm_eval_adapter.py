"""lm-evaluation-harness model type `mosaic_jax`: a trained run scored and sampled by this library.

    python -m mosaic_jax.hf.lm_eval_cli --model mosaic_jax --model_args workdir=runs/tiny_cpu --batch_size=16 \
        --tasks lambada_openai

(lm_eval discovers models only through its registry and has no plug-in entry point, so the wrapper module
imports this one, whose `@register_model` adds `mosaic_jax`, then runs lm_eval's own command line.)
model_args: workdir (required), step, tokenizer (as mosaic_jax.generate), max_length
(default the run's block_size: the context kept for scoring and generation), seed (sampling); the batch size
is lm_eval's --batch_size (`auto`: 8).

* loglikelihood: every context is preceded by EOS (training data is `doc EOS doc EOS ...`, so a text that
  starts a document follows an EOS); requests are sorted by length and scored in batches of `batch_size`
  right-padded rows (causal models: padding never changes a valid position), padded to multiples of 32 tokens so
  few shapes compile. The forward is `mosaic_jax.apply` (equal to the decoder's prefill, tests/test_decode.py).
* loglikelihood_rolling: lm_eval's disjoint rolling windows of `max_length` tokens, scored as above.
* generate_until: the incremental decoder (mosaic_jax.inference.sampling.generate_stream) on batches of requests that share
  their generation settings, stopping when every row has produced EOS, a stop string or max_gen_toks tokens.
  GPT-2 runs recompute the last block_size tokens past their window; memory mosaics decode on.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mosaic_jax.generate import load_for_inference
from mosaic_jax.inference import sampling
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import apply

PAD_MULTIPLE = 32


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score(cfg: ModelConfig, params: Any, tokens_BT: jax.Array, targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(target) (B,T), target is the argmax (B,T)) at every position."""
    logits = apply(cfg, params, tokens_BT)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets_BT


@register_model("mosaic_jax")
class MosaicJaxLM(TemplateLM):
    def __init__(self, workdir: str, step: Optional[int] = None, tokenizer: Optional[str] = None,
                 batch_size: int | str = 8, max_length: Optional[int] = None, seed: int = 0, **_: Any) -> None:
        super().__init__()
        self.cfg, self.params, self.tok = load_for_inference(str(workdir), None if step is None else int(step),
                                                             tokenizer)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length or self.cfg.block_size)
        self.position_limit = registry.of(self.cfg).max_positions(self.cfg)   # None: no position encoding
        if self.position_limit is not None and self.max_length > self.position_limit:
            raise ValueError(f"max_length={self.max_length} exceeds the run's block_size {self.position_limit} "
                             "(learned positions)")
        self.seed = int(seed)

    # ---- tokens -------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    @property
    def tokenizer_name(self) -> str:
        return f"mosaic_jax-{self.tok.kind}-{self.tok.hash[:12]}"

    # ---- scoring ------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              add_prefix: bool = True) -> list[tuple[float, bool]]:
        rows = []
        for _, ctx, cont in requests:
            if not cont:
                raise ValueError("lm_eval request with an empty continuation (nothing to score)")
            if add_prefix and (not ctx or ctx[0] != self.eot_token_id):
                ctx = [self.eot_token_id] + list(ctx)
            full = (list(ctx) + list(cont))[-(self.max_length + 1):]
            rows.append((full[:-1], full[1:], len(cont)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            T = -(-max(len(rows[i][0]) for i in chunk) // PAD_MULTIPLE) * PAD_MULTIPLE
            if self.position_limit is not None:
                T = min(T, self.position_limit)
            tokens = np.zeros((self.batch_size, T), np.int32)   # a fixed batch: one compile per length bucket
            targets = np.zeros((self.batch_size, T), np.int32)
            for b, i in enumerate(chunk):
                inp, tgt, _ = rows[i]
                tokens[b, :len(inp)], targets[b, :len(tgt)] = inp, tgt
            logp, greedy = (np.asarray(a) for a in _score(self.cfg, self.params, jnp.asarray(tokens),
                                                          jnp.asarray(targets)))
            for b, i in enumerate(chunk):
                inp, _, n = rows[i]
                sl = slice(len(inp) - n, len(inp))
                out[i] = (float(logp[b, sl].sum()), bool(greedy[b, sl].all()))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        pieces, owner = [], []
        for r, (text,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                pieces.append((None, ctx, cont))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, self._loglikelihood_tokens(pieces, add_prefix=False)):
            totals[r] += lp
        return totals

    # ---- generation ---------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for key, idx in groups.items():
            kw = json.loads(key)
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", 256))
            temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
            sc = sampling.SamplingConfig(temperature=temp, top_k=int(kw.get("top_k") or 0),
                                         top_p=float(kw.get("top_p") or 1.0))
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                prompts = [([self.eot_token_id] + self.tok_encode(requests[i].args[0]))[-self.max_length:]
                           for i in chunk]
                texts = self._generate(prompts, max_new, sc, until)
                for i, t in zip(chunk, texts):
                    out[i] = t
        return out

    def _generate(self, prompts: list[list[int]], max_new: int, sc: sampling.SamplingConfig,
                  until: list[str]) -> list[str]:
        """Continuations cut at the first stop string (EOS ends a row too)."""
        gen: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        past = "continue" if self.position_limit is None else "recompute"
        for step in sampling.generate_stream(self.cfg, self.params, prompts, max_new_tokens=max_new, sampling=sc,
                                             seed=self.seed, eos_id=self.eot_token_id, past_window=past,
                                             vocab_limit=self.tok.vocab_size):
            for b, t in enumerate(step.tokens):
                if done[b] or t < 0 or t == self.eot_token_id:
                    done[b] = True
                    continue
                gen[b].append(int(t))
                if until and any(u in self.tok_decode(gen[b]) for u in until):
                    done[b] = True
            if all(done):
                break
        texts = []
        for ids in gen:
            text = self.tok_decode(ids)
            cut = min([text.index(u) for u in until if u in text], default=len(text))
            texts.append(text[:cut])
        return texts
