"""Memory Mosaics v2 incremental decoding equals the full forward (ring-buffer short-term memory, long skip)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.models.mosaic_v2 import decode as decode_v2
from mosaic_jax.models.config import ModelConfig


@pytest.mark.parametrize("heads", [dict(short_oldest="t-h"), dict(n_head_long=0)])
def test_decoder_equals_full_forward(heads) -> None:
    cfg = ModelConfig(arch="mosaic_v2", vocab_size=64, n_layer=2, n_embd=32, n_head=2, block_size=32,
                      short_window=5, long_skip_min=2, long_skip_max=6, long_skip_eval=3, ic_dropout=0.0,
                      hd_dropout=0.0, **heads)
    params = mj.init_params(cfg, jax.random.key(0))
    B, T = 3, 17
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 64)
    full = np.asarray(mj.apply(cfg, params, tokens))
    lengths = np.array([4, 9, 1])                      # right-padded prompts of different lengths
    cache = decode_v2.init_cache(cfg, B, T)
    logits, cache = decode_v2.prefill_jit(cfg, params, tokens, jnp.asarray(lengths), cache)
    for b in range(B):
        np.testing.assert_allclose(np.asarray(logits)[b, :lengths[b]], full[b, :lengths[b]], atol=1e-5)
    pos = lengths.copy()
    for _ in range(T - 9):                             # past the window (5) and the skip (3)
        step_logits, cache = decode_v2.step_jit(cfg, params, cache, tokens[jnp.arange(B), jnp.asarray(pos)])
        np.testing.assert_allclose(np.asarray(step_logits), full[np.arange(B), pos], atol=1e-5)
        pos += 1
    assert cache["short_keys"].shape[2] == cfg.short_lookback + 1      # the short memory is a ring of h(+1) slots

