"""Sampling (greedy, temperature, top-k, top-p, seeds) and the generation loop (batching, EOS, past the window)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.inference import sampling
from mosaic_jax.inference.sampling import SamplingConfig, filter_logits, generate, sample_logits

from test_decode import APPLY, perturbed_params

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]


def draws(sc, n=2000, seed=0, logits=LOGITS, **kw):
    return np.asarray(sample_logits(jnp.repeat(logits, n, axis=0), jax.random.key(seed), sc, **kw))


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (5, 50))
    got = sample_logits(logits, jax.random.key(1), SamplingConfig(temperature=0.0))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(np.asarray(logits), -1))
    got_k1 = sample_logits(logits, jax.random.key(1), SamplingConfig(temperature=2.0, top_k=1))
    np.testing.assert_array_equal(np.asarray(got_k1), np.argmax(np.asarray(logits), -1))


def test_temperature_one_follows_the_distribution():
    counts = np.bincount(draws(SamplingConfig(temperature=1.0), n=4000), minlength=4) / 4000
    np.testing.assert_allclose(counts, PROBS, atol=0.04)


def test_low_temperature_sharpens():
    counts = np.bincount(draws(SamplingConfig(temperature=0.2)), minlength=4) / 2000
    assert counts[0] > 0.9


def test_top_k_support():
    got = draws(SamplingConfig(top_k=2))
    assert set(np.unique(got)) == {0, 1}


@pytest.mark.parametrize("top_p,kept", [(0.4, {0}), (0.75, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}),
                                        (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    filtered = np.asarray(filter_logits(LOGITS, SamplingConfig(top_p=top_p)))[0]
    assert set(np.flatnonzero(np.isfinite(filtered))) == kept
    assert set(np.unique(draws(SamplingConfig(top_p=top_p), n=500))) <= kept


def test_seeded_and_vocab_limit():
    sc = SamplingConfig(temperature=1.0)
    np.testing.assert_array_equal(draws(sc, seed=3), draws(sc, seed=3))
    assert not np.array_equal(draws(sc, seed=3), draws(sc, seed=4))
    assert draws(sc, vocab_limit=2).max() <= 1


def test_bad_sampling_config():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=-1)


# ---------------------------------------------------------------------------------------------------------------
# The generation loop
# ---------------------------------------------------------------------------------------------------------------
SMALL = dict(vocab_size=64, n_layer=2, n_head=4, n_embd=32, pmem_size=16, block_size=16)
GREEDY = SamplingConfig(temperature=0.0)


def reference_greedy(cfg, params, prompt, n, window=None):
    """Greedy by full recompute (optionally of the last `window` tokens, as the reference's generate).

    The context is right-padded to a fixed width (causality: padding after position t cannot change the logits
    at t), so the full forward compiles once instead of once per length."""
    seq = list(prompt)
    width = window or len(prompt) + n
    for _ in range(n):
        ctx = seq[-window:] if window else seq
        buf = np.zeros((1, width), np.int32)
        buf[0, :len(ctx)] = ctx
        seq.append(int(np.argmax(np.asarray(APPLY(cfg, params, jnp.asarray(buf)))[0, len(ctx) - 1])))
    return seq[len(prompt):]


@pytest.fixture(scope="module")
def mosaic():
    cfg = mj.ModelConfig(**SMALL)
    return cfg, perturbed_params(cfg, seed=11)


def test_batched_greedy_equals_recompute_past_the_window(mosaic):
    cfg, params = mosaic
    prompts = [[5, 9, 3], [7, 1, 2, 8, 8, 4, 30, 12, 11, 6]]
    n = 14                                          # row 1 ends at 24 > block_size 16
    got = generate(cfg, params, prompts, max_new_tokens=n, sampling=GREEDY)
    for b, p in enumerate(prompts):
        assert got[b] == reference_greedy(cfg, params, p, n), b


def test_recompute_mode_equals_the_references_cropped_window(mosaic):
    cfg, params = mosaic
    prompt = [7, 1, 2, 8, 8, 4, 30, 12, 11, 6, 9, 9]
    got = generate(cfg, params, [prompt], max_new_tokens=10, sampling=GREEDY, past_window="recompute")
    assert got[0] == reference_greedy(cfg, params, prompt, 10, window=cfg.block_size)


def test_eos_stops_a_row(mosaic):
    cfg, params = mosaic
    prompts = [[5, 9, 3], [7, 1, 2, 8]]
    sc = SamplingConfig(temperature=1.5)
    free = generate(cfg, params, prompts, max_new_tokens=12, sampling=sc, seed=2)
    eos = free[0][3]
    outs = list(sampling.generate_stream(cfg, params, prompts, max_new_tokens=12, sampling=sc, seed=2,
                                         eos_id=eos))
    stopped = free[0].index(eos)
    assert [int(o.tokens[0]) for o in outs[:stopped + 1]] == free[0][:stopped + 1]
    assert all(o.finished[0] for o in outs[stopped:]) and all(o.tokens[0] == -1 for o in outs[stopped + 1:])
    rows = generate(cfg, params, prompts, max_new_tokens=12, sampling=sc, seed=2, eos_id=eos)
    assert rows[0] == free[0][:stopped]
    assert eos not in rows[1]


def test_gpt2_past_block_size():
    cfg = mj.ModelConfig.from_dict(dict(arch="gpt2", **SMALL))
    params = perturbed_params(cfg, seed=12)
    with pytest.raises(ValueError, match="block_size"):
        generate(cfg, params, [[1, 2, 3]], max_new_tokens=cfg.block_size, sampling=GREEDY)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    got = generate(cfg, params, [prompt], max_new_tokens=8, sampling=GREEDY, past_window="recompute")
    assert got[0] == reference_greedy(cfg, params, prompt, 8, window=cfg.block_size)
