"""GPU-only checks of the accelerator fast paths (cuDNN flash attention); skipped where JAX has no GPU.

Run on a GPU machine with `JAX_PLATFORMS=cuda python -m pytest tests/test_gpu.py` (benchmarks/gpu_check.sh does,
together with the GPU benchmark). On CPU the same functions run XLA's implementation and are tested equal to the
dense forms in tests/test_fast_paths.py; here the cuDNN kernels themselves are checked against them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.models.gpt2 import layers as gpt2
from mosaic_jax.ops import memory
from mosaic_jax.models.config import ModelConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (JAX_PLATFORMS=cuda)")
BF16_ATOL = 3e-2    # bf16 has an 8-bit mantissa: outputs of O(1) agree to a few 1e-3, sums of grads to ~1e-2


def rand(key: int, *shape: int, dtype: jnp.dtype = jnp.bfloat16) -> jax.Array:
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def value_and_grads(f, args: tuple) -> tuple[jax.Array, tuple]:
    w = rand(99, *jax.eval_shape(f, *args).shape, dtype=jnp.float32)
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w),
                                      tuple(range(len(args)))))(*args)


def assert_close_to_f32_dense(fast, dense, args: tuple) -> None:
    """fast on bf16 inputs against dense on the same values in float32: outputs and gradients."""
    args32 = tuple(a.astype(jnp.float32) for a in args)
    np.testing.assert_allclose(np.asarray(fast(*args), np.float32), dense(*args32), atol=BF16_ATOL)
    vf, gf = value_and_grads(fast, args)
    vd, gd = value_and_grads(dense, args32)
    np.testing.assert_allclose(vf, vd, rtol=2e-2, atol=1.0)
    for a, b in zip(gf, gd):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=BF16_ATOL * max(scale, 1.0))


def test_backend_rule_picks_cudnn_for_bf16() -> None:
    assert memory.attention_backend(jnp.bfloat16, 64) == "cudnn"
    assert memory.attention_backend(jnp.float32, 64) is None          # cuDNN flash takes bf16/f16 only
    assert memory.attention_backend(jnp.bfloat16, 256) is None        # head_dim above cuDNN's limit


@pytest.mark.parametrize("T", [256, 511])
def test_cudnn_contextual_read_matches_dense(T: int) -> None:
    k = memory.l2_normalize(rand(0, 2, T, 4, 64).astype(jnp.float32)).astype(jnp.bfloat16) * 2
    v = rand(1, 2, T, 4, 64)
    fast = lambda k, v: memory.contextual_retrieval(k, v, impl="flash")
    dense = lambda k, v: memory.contextual_retrieval(k, v, impl="dense")
    assert_close_to_f32_dense(fast, dense, (k, v))
    assert np.all(np.asarray(fast(k, v)[:, 0], np.float32) == 0.0)    # the first token reads nothing


def test_cudnn_persistent_read_matches_dense() -> None:
    q = memory.l2_normalize(rand(2, 2, 256, 4, 64).astype(jnp.float32)).astype(jnp.bfloat16) * 2
    mk, mv = rand(3, 1, 4, 448, 64), rand(4, 1, 4, 448, 64)
    fast = lambda q, mk, mv: memory.persistent_retrieval(q, mk, mv, impl="flash")
    dense = lambda q, mk, mv: memory.persistent_retrieval(q, mk, mv, impl="dense")
    assert_close_to_f32_dense(fast, dense, (q, mk, mv))


def test_gpt2_attention_cudnn_matches_einsum() -> None:
    q, k, v = rand(5, 2, 256, 4, 64), rand(6, 2, 256, 4, 64), rand(7, 2, 256, 4, 64)
    T = q.shape[1]

    def dense(q, k, v):
        s = jnp.einsum("bthd,bshd->bhts", q, k) / 8.0
        s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
        return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), v)
    assert_close_to_f32_dense(gpt2.causal_attention, dense, (q, k, v))


@pytest.mark.parametrize("arch", ["mosaic", "gpt2"])
def test_model_auto_equals_plain_in_float32_on_gpu(arch: str) -> None:
    """float32 on GPU: `auto` picks the flash forms (XLA's implementation for f32) and must equal the dense model."""
    cfg = ModelConfig.from_dict(dict(arch=arch, vocab_size=512, n_layer=2, n_embd=128, n_head=4, pmem_size=448, block_size=128,
                      ic_dropout=0.0, hd_dropout=0.0))
    plain = cfg.replace(cmem_impl="dense", pmem_impl="dense", loss_impl="dense", proj_impl="dense")
    params = mj.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, cfg.vocab_size)
    loss = lambda c: jax.jit(jax.value_and_grad(lambda p: mj.loss_fn(c, p, tokens, jnp.roll(tokens, -1, 1))))(params)
    (la, ga), (lp, gp) = loss(cfg), loss(plain)
    np.testing.assert_allclose(la, lp, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gp)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_model_bf16_cudnn_loss_close_to_float32() -> None:
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_embd=256, n_head=4, pmem_size=896, block_size=256,
                      ic_dropout=0.0, hd_dropout=0.0)
    params = mj.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 256), 0, cfg.vocab_size)
    loss = lambda c: jax.jit(lambda p: mj.loss_fn(c, p, tokens, jnp.roll(tokens, -1, 1)))(params)
    np.testing.assert_allclose(loss(cfg.replace(dtype="bfloat16")), loss(cfg), rtol=1e-2)
