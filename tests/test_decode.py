"""The incremental decoder (prefill + one step per token) equals the full forward pass at every position."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.inference import decode

TOL = 1e-5
TINY = dict(vocab_size=96, n_layer=2, n_head=4, n_embd=64, block_size=32, pmem_size=56)


@functools.lru_cache(maxsize=None)
def perturbed_params(cfg: mj.ModelConfig, seed: int = 0):
    """Parameters near the reference's init, but with every per-head scalar, LayerNorm weight and bias moved off
    its initial value. Drawn with numpy from the param shapes: a (jitted or eager) Flax init costs seconds of
    CPU per config."""
    rng = np.random.default_rng(seed)
    H, C, D = cfg.n_head, cfg.n_embd, cfg.head_dim

    def draw(path, s):
        name = path[-1].key
        noise = rng.normal(size=s.shape)
        if name == "leaky_key_beta":
            x = np.linspace(0.05, 0.5, H) + 0.02 * noise
        elif name == "kernel_beta":
            x = 0.1 + 0.03 * noise
        elif name == "value_beta":
            x = -0.05 + 0.03 * noise
        elif name == "v_coef":
            x = rng.uniform(size=s.shape)
        elif name == "weight":                      # LayerNorm
            x = 1.0 + 0.1 * noise
        elif name == "bias" or name.startswith("b"):
            x = 0.05 * noise
        else:
            x = noise / np.sqrt(D if name in ("mk", "mv") else C)
        return jnp.asarray(x, jnp.float32)

    shapes = jax.eval_shape(lambda: mj.init_params(cfg, jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(draw, shapes)


def full_forward(cfg, params, tokens):
    return np.asarray(APPLY(cfg, params, jnp.asarray(tokens)))


APPLY = jax.jit(mj.apply, static_argnums=0)


def decode_all(cfg, params, tokens_BT, lengths, total, read_len=None, cache_size=None):
    """Prefill right-padded prompts of `lengths`, then step each row up to `total` tokens; logits (B,total,V).

    The steps run under one jitted lax.scan of `decode.step` (one compile per test instead of one per bucket).
    """
    B = tokens_BT.shape[0]
    lengths = np.asarray(lengths)
    T0 = int(lengths.max())
    cache = decode.init_cache(cfg, B, cache_size or total)
    logits, cache = decode.prefill_jit(cfg, params, jnp.asarray(tokens_BT[:, :T0]), jnp.asarray(lengths), cache)
    n_steps = total - int(lengths.min())
    pos_NB = lengths[None, :] + np.arange(n_steps)[:, None]
    tok_NB = tokens_BT[np.arange(B)[None, :], np.minimum(pos_NB, total - 1)]

    @jax.jit
    def run(cache, tok_NB):
        def body(c, tok):
            lg, c = decode.step(cfg, params, c, tok, read_len=read_len)
            return c, lg
        return jax.lax.scan(body, cache, tok_NB)

    cache, step_logits_NBV = run(cache, jnp.asarray(tok_NB))
    np.testing.assert_array_equal(np.asarray(cache["pos"]), lengths + n_steps)
    logits, step_logits_NBV = np.asarray(logits), np.asarray(step_logits_NBV)
    out = np.zeros((B, total, logits.shape[-1]), np.float32)
    for b in range(B):
        L = lengths[b]
        out[b, :L] = logits[b, :L]
        out[b, L:] = step_logits_NBV[:total - L, b]
    return out


def random_tokens(cfg, B, T, seed=3):
    return np.asarray(jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size), np.int32)


@pytest.mark.parametrize("arch,K,bias,pre_ln", [
    ("mosaic", 1, False, True), ("mosaic", 2, True, True), ("mosaic", 2, False, False),
    ("gpt2", 1, True, True)])
def test_decoder_matches_full_forward(arch, K, bias, pre_ln):
    cfg = mj.ModelConfig.from_dict(dict(arch=arch, k_kernel_size=K, bias=bias, pre_ln=pre_ln, **TINY))
    params = perturbed_params(cfg)
    tokens = random_tokens(cfg, 3, cfg.block_size)
    ref = full_forward(cfg, params, tokens)
    got = decode_all(cfg, params, tokens, lengths=[5, 13, 1], total=cfg.block_size)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["mm_v1_tiny.npz", "mm_v1_tiny_short.npz"])
def test_decoder_on_golden_weights(golden_dir, name):
    cfg, params = mj.load_reference(str(golden_dir / name))
    data = np.load(golden_dir / name)
    tokens = data["idx"].astype(np.int32)
    B, T = tokens.shape
    ref = full_forward(cfg, params, tokens)
    lengths = [1 + (7 * b) % T for b in range(B)]
    got = decode_all(cfg, params, tokens, lengths=lengths, total=T)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(got, data["logits"], atol=1e-4, rtol=0)   # the PyTorch reference itself


def test_prefill_only_and_last_logits():
    cfg = mj.ModelConfig(k_kernel_size=2, **TINY)
    params = perturbed_params(cfg, seed=5)
    tokens = random_tokens(cfg, 2, 20)
    ref = full_forward(cfg, params, tokens)
    last, cache = decode.prefill_jit(cfg, params, jnp.asarray(tokens), jnp.array([20, 9]),
                                 decode.init_cache(cfg, 2, 24), all_logits=False)
    np.testing.assert_allclose(np.asarray(last), ref[[0, 1], [19, 8]], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache["pos"]), [20, 9])


def test_mosaic_decoder_runs_past_the_window():
    """No position encoding: past block_size the decoder still equals the (unwindowed) full forward."""
    cfg = mj.ModelConfig(k_kernel_size=2, **TINY)
    params = perturbed_params(cfg, seed=7)
    T = 3 * cfg.block_size
    tokens = random_tokens(cfg, 2, T)
    ref = full_forward(cfg, params, tokens)
    got = decode_all(cfg, params, tokens, lengths=[40, 3], total=T, read_len=T)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_sliding_window_recompute_matches_cropped_forward():
    cfg = mj.ModelConfig(**TINY)
    params = perturbed_params(cfg, seed=9)
    W = cfg.block_size
    tokens = random_tokens(cfg, 2, W)
    lengths = np.array([W, 11])
    got = np.asarray(decode.window_logits(cfg, params, jnp.asarray(tokens), jnp.asarray(lengths)))
    ref0 = full_forward(cfg, params, tokens[:1])[0, -1]
    ref1 = full_forward(cfg, params, tokens[1:, :11])[0, -1]
    np.testing.assert_allclose(got, np.stack([ref0, ref1]), atol=TOL, rtol=0)


def test_gpt2_cache_cannot_exceed_block_size():
    cfg = mj.ModelConfig.from_dict(dict(arch="gpt2", **TINY))
    with pytest.raises(ValueError, match="block_size"):
        decode.init_cache(cfg, 1, cfg.block_size + 1)


def test_prefill_longer_than_cache_raises():
    cfg = mj.ModelConfig(**TINY)
    params = perturbed_params(cfg)
    with pytest.raises(ValueError, match="cache size"):
        decode.prefill(cfg, params, jnp.zeros((1, 10), jnp.int32), jnp.array([10]), decode.init_cache(cfg, 1, 8))


def test_step_donates_the_cache():
    cfg = mj.ModelConfig(**TINY)
    params = perturbed_params(cfg)
    cache = decode.init_cache(cfg, 1, 16)
    _, cache = decode.prefill_jit(cfg, params, jnp.ones((1, 4), jnp.int32), jnp.array([4]), cache)
    old = cache["keys"]
    _, cache = decode.step_jit(cfg, params, cache, jnp.array([2]))
    assert old.is_deleted()
    assert int(cache["pos"][0]) == 5


def test_read_bucket():
    assert decode.read_bucket(0, 4096) == 64
    assert decode.read_bucket(65, 4096) == 128
    assert decode.read_bucket(3000, 4096) == 4096
    assert decode.read_bucket(100, 80) == 80
    mosaic, gpt2 = mj.ModelConfig(**TINY), mj.ModelConfig.from_dict(dict(arch="gpt2", **TINY))
    assert decode.read_len_for(mosaic, 64, 4096) == 64 and decode.read_len_for(gpt2, 64, 4096) == 128


def test_bench_decode_smoke(capsys):
    from mosaic_jax.tools import bench_decode
    assert bench_decode.main(["--positions=8,16", "--rounds=1", "--steps=2", "--n_layer=1", "--n_embd=32",
                              "--vocab_size=64", "--pmem_size=16", "--block_size=8"]) == 0
    out = capsys.readouterr().out
    assert "| 8 |" in out and "| 16 |" in out and "Sliding-window recompute" in out


@pytest.mark.parametrize("arch", ["mosaic", "gpt2"])
def test_smallest_read_len_is_exact(arch):
    """A step at position t reads slots < t (mosaic) or ≤ t (GPT-2): the tightest read_len still matches."""
    cfg = mj.ModelConfig.from_dict(dict(arch=arch, **TINY))
    params = perturbed_params(cfg, seed=13)
    tokens = random_tokens(cfg, 1, 9)
    cache = decode.init_cache(cfg, 1, 16)
    _, cache = decode.prefill_jit(cfg, params, jnp.asarray(tokens[:, :8]), jnp.array([8]), cache)
    read_len = 8 if arch == "mosaic" else 9
    logits, _ = decode.step_jit(cfg, params, cache, jnp.asarray(tokens[:, 8]), read_len=read_len)
    np.testing.assert_allclose(np.asarray(logits)[0], full_forward(cfg, params, tokens)[0, 8], atol=TOL, rtol=0)
