"""Every fast path equals its plain form: values and gradients in float32 (speed is never asserted here)."""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mosaic_jax as mj
from mosaic_jax.kernels import dense_vjp, memory_vjp
from mosaic_jax.models import lm
from mosaic_jax.ops import memory
from mosaic_jax.training import train_step
from mosaic_jax.models.config import ModelConfig

TINY = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, pmem_size=56, block_size=32)
PLAIN = dict(cmem_impl="dense", pmem_impl="dense", loss_impl="dense", proj_impl="dense")
FAST = dict(cmem_impl="fused", pmem_impl="fused", loss_impl="fused", proj_impl="fused")


def rand(key: int, *shape: int, scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


def assert_same_value_and_grads(f: Callable, g: Callable, args: tuple, rtol: float = 1e-5,
                                atol: float = 1e-5) -> None:
    """f and g agree on a random linear functional of their output and on its gradient in every argument."""
    w = rand(99, *jax.eval_shape(f, *args).shape)
    argnums = tuple(range(len(args)))
    vf, gf = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) * w), argnums))(*args)
    vg, gg = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(g(*a) * w), argnums))(*args)
    np.testing.assert_allclose(f(*args), g(*args), rtol=rtol, atol=atol)
    np.testing.assert_allclose(vf, vg, rtol=rtol, atol=atol)
    for a, b in zip(gf, gg):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------------------
# Persistent memory
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,H,D,P,N,chunk", [(2, 16, 2, 8, 24, 1, 0), (3, 37, 4, 8, 50, 1, 16),
                                               (1, 5, 3, 4, 7, 2, 0), (2, 9, 2, 4, 9, 1, 4)])
def test_persistent_fused_equals_dense(B: int, T: int, H: int, D: int, P: int, N: int, chunk: int) -> None:
    q = rand(0, B, T, H, D, scale=2.0)        # large scores: the softmax is far from uniform
    mk, mv = rand(1, N, H, P, D), rand(2, N, H, P, D)
    dense = lambda q, mk, mv: memory.persistent_retrieval(q, mk, mv, impl="dense")
    if chunk:   # an explicit chunk that does not divide B·T: padded rows must not leak into the gradients
        fast = lambda q, mk, mv: memory_vjp.persistent_read(q, mk[0], mv[0], chunk)
        assert (B * T) % chunk
    else:
        fast = lambda q, mk, mv: memory.persistent_retrieval(q, mk, mv, impl="fused")
    assert_same_value_and_grads(fast, dense, (q, mk, mv))


def test_persistent_flash_equals_dense() -> None:
    q, mk, mv = rand(3, 2, 11, 2, 8, scale=2.0), rand(4, 1, 2, 13, 8), rand(5, 1, 2, 13, 8)
    assert_same_value_and_grads(lambda *a: memory.persistent_retrieval(*a, impl="flash"),
                                lambda *a: memory.persistent_retrieval(*a, impl="dense"), (q, mk, mv))


def test_persistent_bfloat16_fused_stays_close() -> None:
    q, mk, mv = rand(6, 2, 16, 2, 8), rand(7, 1, 2, 24, 8), rand(8, 1, 2, 24, 8)
    bf = memory.persistent_retrieval(q.astype(jnp.bfloat16), mk, mv, impl="fused")
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf.astype(jnp.float32), memory.persistent_retrieval(q, mk, mv), atol=0.03)


# ---------------------------------------------------------------------------------------------------------------
# Contextual memory
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,H,D,group", [(2, 16, 2, 8, 0), (3, 33, 3, 4, 0), (1, 2, 1, 4, 0), (1, 1, 2, 4, 0),
                                           (3, 9, 3, 4, 2)])
def test_contextual_fused_equals_dense(B: int, T: int, H: int, D: int, group: int) -> None:
    k = memory.l2_normalize(rand(10, B, T, H, D)) * 2.5      # keys as the model makes them: β = 6.25
    v = rand(11, B, T, H, D)
    fast = ((lambda k, v: memory_vjp.contextual_read(k, v, group)) if group else
            (lambda k, v: memory.contextual_retrieval(k, v, impl="fused")))
    assert_same_value_and_grads(fast, lambda k, v: memory.contextual_retrieval(k, v, impl="dense"), (k, v))
    assert np.all(np.asarray(fast(k, v)[:, 0]) == 0.0)     # row 0 reads nothing: exactly 0


def test_contextual_flash_gradients_equal_dense() -> None:
    k, v = memory.l2_normalize(rand(12, 2, 17, 2, 8)) * 2.0, rand(13, 2, 17, 2, 8)
    assert_same_value_and_grads(lambda k, v: memory.contextual_retrieval(k, v, impl="flash"),
                                lambda k, v: memory.contextual_retrieval(k, v, impl="dense"), (k, v))


def test_auto_falls_back_to_dense_where_fast_forms_do_not_apply() -> None:
    k, v = rand(14, 1, 8, 1, 4), rand(15, 1, 8, 1, 4)
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match="flash"):
        memory.contextual_retrieval(k, v, impl="flash", dropout_rate=0.1, dropout_rng=rng)
    with pytest.raises(ValueError, match="flash"):
        memory.persistent_retrieval(k, v[None, 0], v[None, 0], impl="flash", dropout_rate=0.1, dropout_rng=rng)
    mask = jnp.tril(jnp.ones((8, 8), bool))
    with pytest.raises(ValueError, match="fused"):
        memory.contextual_retrieval(k, v, impl="fused", allowed_TT=mask)
    # auto with another mask (or kernel) is the dense form.
    np.testing.assert_array_equal(memory.contextual_retrieval(k, v, allowed_TT=mask),
                                  memory.contextual_retrieval(k, v, allowed_TT=mask, impl="dense"))
    cpu = jax.default_backend() == "cpu"
    assert memory.resolve_impl("auto", True) == ("fused" if cpu else "flash")
    assert memory.resolve_impl("auto", True, dropout=True) == ("fused" if cpu else "dense")
    assert memory.resolve_impl("auto", False) == "dense"


def test_fused_dropout_equals_dense_with_the_same_masks() -> None:
    """Fused dropout draws its masks from memory_vjp.dropout_keep; the dense computation with those masks agrees."""
    B, T, H, D, P, rate, seed = 2, 13, 3, 4, 10, 0.3, jnp.uint32(7)
    q, mk, mv = rand(30, B, T, H, D, scale=2.0), rand(31, H, P, D), rand(32, H, P, D)
    c = 8                                   # token rows per chunk; the mask row of (token m, head h) is m·H + h
    rows = (jnp.arange(B * T)[:, None] * H + jnp.arange(H)[None, :])
    keep = memory_vjp.dropout_keep(seed, rows, P, rate).reshape(B, T, H, P)
    assert abs(float(keep.mean()) - (1 - rate)) < 0.05

    def dense_p(q, mk, mv):
        a = jax.nn.softmax(jnp.einsum("bthd,hpd->bthp", q, mk), -1)
        return jnp.einsum("bthp,hpd->bthd", jnp.where(keep, a / (1 - rate), 0.0), mv)
    assert_same_value_and_grads(lambda *a: memory_vjp.persistent_read(*a, c, seed, rate), dense_p, (q, mk, mv))

    k, v, g = memory.l2_normalize(q) * 2.0, rand(33, B, T, H, D), 4      # mask row of (pair b·H + h, t): pair·T + t
    keep_c = memory_vjp.dropout_keep(seed, jnp.arange(B * H)[:, None] * T + jnp.arange(T)[None, :], T, rate)

    def dense_c(k, v):
        a = memory.masked_softmax(jnp.einsum("bthd,bshd->bhts", k, k), memory.strict_causal_mask(T))
        a = jnp.where(keep_c.reshape(B, H, T, T), a / (1 - rate), 0.0)
        return jnp.einsum("bhts,bshd->bthd", a, v)
    assert_same_value_and_grads(lambda k, v: memory_vjp.contextual_read(k, v, g, seed, rate), dense_c, (k, v))


def test_fused_dropout_through_memory_is_seeded() -> None:
    k, v = memory.l2_normalize(rand(34, 2, 9, 2, 4)), rand(35, 2, 9, 2, 4)
    f = lambda key: memory.contextual_retrieval(k, v, impl="fused", dropout_rate=0.5, dropout_rng=jax.random.key(key))
    np.testing.assert_array_equal(f(1), f(1))
    assert not np.allclose(f(1), f(2))
    assert not np.allclose(f(1), memory.contextual_retrieval(k, v))
    mk = rand(36, 2, 2, 5, 4)
    p = lambda key: memory.persistent_retrieval(k, mk, mk, impl="fused", dropout_rate=0.5,
                                                dropout_rng=jax.random.key(key))
    np.testing.assert_array_equal(p(1), p(1))
    assert not np.allclose(p(1), p(2))


# ---------------------------------------------------------------------------------------------------------------
# Tied head + cross-entropy
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M,C,V,chunk", [(48, 16, 40, 0), (37, 8, 20, 16), (5, 4, 7, 0)])
def test_head_cross_entropy_equals_dense(M: int, C: int, V: int, chunk: int) -> None:
    x, e = rand(20, M, C), rand(21, V, C)
    t = jax.random.randint(jax.random.key(22), (M,), -1, V)     # includes ignored (-1) targets
    scale = 0.7
    fast = lambda x, e: dense_vjp.head_cross_entropy(x, e, t, scale, chunk)
    dense = lambda x, e: lm.cross_entropy(jnp.einsum("mc,vc->mv", x, e) * scale, t)[0]
    assert_same_value_and_grads(fast, dense, (x, e), rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# The whole model and training step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,tied", [("mosaic", True), ("mosaic", False), ("gpt2", True)])
def test_model_loss_and_grads_fast_equal_plain(arch: str, tied: bool) -> None:
    cfg = ModelConfig.from_dict(dict(arch=arch, weight_tying=tied, **TINY))
    params = mj.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)
    targets = jnp.roll(tokens, -1, 1).at[0, :3].set(-1)

    def value_and_grads(c: ModelConfig):
        return jax.jit(jax.value_and_grad(lambda p: mj.loss_fn(c, p, tokens, targets)))(params)

    lp, gp = value_and_grads(cfg.replace(**PLAIN))
    lf, gf = value_and_grads(cfg.replace(**FAST) if arch == "mosaic" else cfg.replace(loss_impl="fused"))
    np.testing.assert_allclose(lf, lp, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gp)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_golden_logits_with_every_fast_path(golden_dir) -> None:
    ref = np.load(golden_dir / "mm_v1_tiny.npz")
    cfg, params = mj.load_reference(golden_dir / "mm_v1_tiny.npz")
    fast = cfg.replace(**FAST)
    logits = jax.jit(lambda p, x: mj.apply(fast, p, x))(params, ref["idx"])
    assert np.abs(np.asarray(logits) - ref["logits"]).max() <= 2e-5
    total, count = lm.loss_sum(fast, params, ref["idx"], ref["targets"])
    assert abs(float(total / count) - float(ref["loss"])) <= 2e-5


def test_train_step_fast_equals_plain() -> None:
    cfg = ModelConfig(**TINY, ic_dropout=0.0, hd_dropout=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1))
    tokens = jax.random.randint(jax.random.key(2), (4, 17), 0, cfg.vocab_size, jnp.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    out = {}
    for name, c in (("plain", cfg.replace(**PLAIN)), ("fast", cfg.replace(**FAST))):
        state = mj_state(c, tx)
        step = jax.jit(train_step.make_train_step(c, tx, lambda s: 1e-3, microbatches=2, dropout=False))
        for _ in range(2):
            state, metrics = step(state, batch)
        out[name] = (state.params, metrics["loss"])
    np.testing.assert_allclose(out["fast"][1], out["plain"][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["fast"][0]), jax.tree.leaves(out["plain"][0])):
        # Adam divides by √v: gradients that differ by float rounding move a weight by < 1% of one update (lr 1e-3)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def mj_state(cfg: ModelConfig, tx: optax.GradientTransformation):
    from mosaic_jax.training import train_state
    return train_state.init_state(cfg, tx, seed=0)


def test_bfloat16_fast_model_is_close_to_float32() -> None:
    cfg = ModelConfig(**TINY).replace(**FAST)
    params = mj.init_params(cfg, jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, cfg.vocab_size)
    targets = jnp.roll(tokens, -1, 1)
    l32 = mj.loss_fn(cfg, params, tokens, targets)
    l16, g16 = jax.value_and_grad(lambda p: mj.loss_fn(cfg.replace(dtype="bfloat16"), p, tokens, targets))(params)
    assert abs(float(l16) - float(l32)) < 0.02
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g16))


@pytest.mark.parametrize("rows", [16, 200])   # one chunk (XLA removes the loop) and several
def test_bfloat16_kernels_compile_and_differentiate_under_jit(rows: int) -> None:
    """bf16 operands with float32 accumulation exist on XLA:CPU only in some dot forms (others fail with
    'Unsupported element type for DotThunk'): every kernel must stay in the supported ones."""
    bf = jnp.bfloat16
    q, mk, mv = rand(40, 2, rows // 2, 4, 16).astype(bf), rand(41, 4, 56, 16), rand(42, 4, 56, 16)
    k, v = memory.l2_normalize(rand(43, 2, rows // 2, 4, 16)).astype(bf), rand(44, 2, rows // 2, 4, 16).astype(bf)
    x, e, w = rand(45, rows, 16).astype(bf), rand(46, 96, 16), rand(47, 16, 24)
    t = jnp.arange(rows) % 96
    fns = {"pmem": (lambda q, mk, mv: memory_vjp.persistent_read(q, mk, mv, 0, jnp.uint32(1), 0.1), (q, mk, mv)),
           "cmem": (lambda k, v: memory_vjp.contextual_read(k, v, 0, jnp.uint32(1), 0.1), (k, v)),
           "ce": (lambda x, e: dense_vjp.head_cross_entropy(x, e, t, 0.25), (x, e)),
           "matmul": (dense_vjp.matmul, (x, w))}
    for name, (f, args) in fns.items():
        loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32))
        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
        assert all(bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in grads), name


def test_new_config_switches_are_validated() -> None:
    for name in ("pmem_impl", "loss_impl", "cmem_impl", "proj_impl"):
        with pytest.raises(ValueError, match=name):
            ModelConfig(**{name: "bogus"})     # ("pallas" is a valid cmem/pmem choice since issue 17)
