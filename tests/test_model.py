"""The language model: golden vectors from the official code, causality, implementations that must agree."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.models.config import ModelConfig

TINY = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, pmem_size=56, block_size=32)


@pytest.mark.parametrize("name", ["mm_v1_tiny", "mm_v1_tiny_short"])
def test_golden_logits_and_loss(golden_dir: pathlib.Path, name: str) -> None:
    ref = np.load(golden_dir / f"{name}.npz")
    cfg, params = mj.load_reference(golden_dir / f"{name}.npz")
    logits = np.asarray(jax.jit(lambda p, x: mj.apply(cfg, p, x))(params, ref["idx"]))
    err = np.abs(logits - ref["logits"]).max()
    assert err <= 2e-5, err
    loss = float(mj.loss_fn(cfg, params, ref["idx"], ref["targets"]))
    assert abs(loss - float(ref["loss"])) <= 2e-5


@pytest.mark.parametrize("arch", ["mosaic", "gpt2"])
@pytest.mark.parametrize("k_kernel_size", [1, 3])
def test_causality(arch: str, k_kernel_size: int) -> None:
    cfg = ModelConfig.from_dict(dict(arch=arch, k_kernel_size=k_kernel_size, **TINY))
    params = mj.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, cfg.vocab_size)
    f = jax.jit(lambda x: mj.apply(cfg, params, x))
    base = np.asarray(f(tokens))
    for s in (0, 7, 19):
        changed = tokens.at[:, s].set((tokens[:, s] + 1) % cfg.vocab_size)
        out = np.asarray(f(changed))
        np.testing.assert_array_equal(out[:, :s], base[:, :s])
        assert np.abs(out[:, s] - base[:, s]).max() > 1e-6


def loss_and_grads(cfg: ModelConfig, params, tokens, targets, rng=None):
    return jax.jit(jax.value_and_grad(lambda p: mj.loss_fn(cfg, p, tokens, targets, rng=rng)))(params)


def test_jit_and_eager_agree_and_grads_are_finite() -> None:
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(2))
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, cfg.vocab_size)
    eager = np.asarray(mj.apply(cfg, params, tokens))  # op by op, no outer jit
    jitted = np.asarray(jax.jit(lambda p: mj.apply(cfg, p, tokens))(params))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    _, grads = loss_and_grads(cfg, params, tokens, jnp.roll(tokens, -1, 1), rng=jax.random.key(4))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) > 0 for g in leaves) == len(leaves)  # every parameter gets a gradient


@pytest.fixture(scope="module")
def baseline():
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(5))
    tokens = jax.random.randint(jax.random.key(6), (2, 24), 0, cfg.vocab_size)
    targets = jnp.roll(tokens, -1, 1)
    logits = jax.jit(lambda p: mj.apply(cfg, p, tokens))(params)
    return cfg, params, tokens, targets, logits, loss_and_grads(cfg, params, tokens, targets)


@pytest.mark.parametrize("change", [dict(scan_layers=False), dict(remat="full"), dict(remat="dots"),
                                    dict(leaky_impl="scan"), dict(leaky_impl="chunked"), dict(cmem_impl="flash")])
def test_implementation_options_compute_the_same_function(baseline, change: dict) -> None:
    cfg, params, tokens, targets, logits, (loss, grads) = baseline
    other = cfg.replace(**change)
    np.testing.assert_allclose(jax.jit(lambda p: mj.apply(other, p, tokens))(params), logits, rtol=1e-5, atol=1e-5)
    loss1, grads1 = loss_and_grads(other, params, tokens, targets)
    np.testing.assert_allclose(loss1, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_is_seeded_and_eval_is_deterministic() -> None:
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(7))
    tokens = jax.random.randint(jax.random.key(8), (2, 16), 0, cfg.vocab_size)
    train = jax.jit(lambda rng: mj.apply(cfg, params, tokens, rng=rng))
    a, b, c = train(jax.random.key(9)), train(jax.random.key(9)), train(jax.random.key(10))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ev = jax.jit(lambda p: mj.apply(cfg, p, tokens))
    np.testing.assert_array_equal(ev(params), ev(params))
    assert not np.allclose(a, ev(params))


def test_bfloat16_compute_keeps_float32_logits_and_stays_close() -> None:
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(11))
    tokens = jax.random.randint(jax.random.key(12), (2, 16), 0, cfg.vocab_size)
    bf16 = cfg.replace(dtype="bfloat16")
    lo = jax.jit(lambda p: mj.apply(bf16, p, tokens))(params)
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, jax.jit(lambda p: mj.apply(cfg, p, tokens))(params), atol=0.05)


@pytest.mark.parametrize("arch,n_layer,expected", [
    ("mosaic", 1, 45_713_748), ("mosaic", 12, 123_588_336), ("gpt2", 1, 46_106_880), ("gpt2", 12, 123_980_544)])
def test_parameter_counts_match_the_reference(arch: str, n_layer: int, expected: int) -> None:
    cfg = ModelConfig(arch=arch, n_layer=n_layer)
    shapes = jax.eval_shape(lambda: mj.init_params(cfg, jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected


def test_initialisation_follows_the_reference() -> None:
    cfg = ModelConfig(vocab_size=512, n_layer=4, n_embd=128, n_head=4, pmem_size=64)
    p = mj.init_params(cfg, jax.random.key(13))
    blk = p["blocks"]["mosaic"]
    np.testing.assert_allclose(np.std(p["embed"]), 1 / np.sqrt(128), rtol=0.05)
    np.testing.assert_allclose(np.std(blk["cmem"]["out"]["wo"]), 1 / np.sqrt(128) / 2, rtol=0.05)
    np.testing.assert_allclose(np.std(blk["cmem"]["wv"]), 1 / np.sqrt(128), rtol=0.05)
    np.testing.assert_allclose(np.std(blk["pmem"]["mk"]), 1 / np.sqrt(32), rtol=0.05)
    np.testing.assert_allclose(blk["pmem"]["leaky_key_beta"][2], np.linspace(0.5, 5, 4) / 10, rtol=1e-6)
    assert np.all(blk["cmem"]["kernel_beta"] == np.float32(0.1))
    assert np.all(blk["cmem"]["value_beta"] == np.float32(-0.05))
    coef = blk["cmem"]["v_coef"]
    assert coef.min() >= 0 and coef.max() <= 1 and len(np.unique(coef)) > 1
    # Layers get independent draws.
    assert not np.allclose(blk["cmem"]["wv"][0], blk["cmem"]["wv"][1])
    # Same seed, same params.
    np.testing.assert_array_equal(mj.init_params(cfg, jax.random.key(13))["embed"], p["embed"])


def test_param_axes_name_every_dimension() -> None:
    for arch in ("mosaic", "gpt2"):
        cfg = ModelConfig.from_dict(dict(arch=arch, bias=True, **TINY))
        params = mj.init_params(cfg, jax.random.key(0))
        axes = mj.param_axes(cfg)
        flat_p = jax.tree.leaves(params)
        flat_a = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
        assert len(flat_p) == len(flat_a)
        for p, a in zip(flat_p, flat_a):
            assert len(a) == p.ndim and all(isinstance(n, str) for n in a)


def test_long_sequences_beyond_block_size_run_for_the_mosaic_only() -> None:
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(0))
    long = jax.jit(lambda p, x: mj.apply(cfg, p, x))(params, jnp.zeros((1, 3 * cfg.block_size), jnp.int32))
    assert long.shape == (1, 96, 96) and bool(jnp.all(jnp.isfinite(long)))
    g = ModelConfig.from_dict(dict(arch="gpt2", **TINY))
    with pytest.raises(ValueError, match="block_size"):
        mj.apply(g, mj.init_params(g, jax.random.key(0)), jnp.zeros((1, 33), jnp.int32))


def test_bad_config_values_are_named() -> None:
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="leaky_impl"):
        ModelConfig(leaky_impl="fft")
