"""The pure memory functions: leaky-average forms, retrieval masks, order invariance, fast paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.ops import memory

jax.config.update("jax_enable_x64", False)


def rand(key: int, *shape: int) -> jax.Array:
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def naive_leaky(x_BTHD: np.ndarray, lam_H: np.ndarray) -> np.ndarray:
    """The recurrence s_t = a s_{t-1} + x_t, times (1 - a), in float64 numpy."""
    x = np.asarray(x_BTHD, np.float64)
    a = np.exp(-np.asarray(lam_H, np.float64))[None, :, None]
    s = np.zeros_like(x[:, 0])
    out = np.zeros_like(x)
    for t in range(x.shape[1]):
        s = a * s + x[:, t]
        out[:, t] = s * (1 - a)
    return out


@pytest.mark.parametrize("T", [1, 7, 64, 100, 300])
@pytest.mark.parametrize("impl", ["matrix", "scan", "chunked"])
def test_leaky_average_forms_match_recurrence(T: int, impl: str) -> None:
    x = rand(0, 2, T, 3, 5)
    lam = jnp.array([0.05, 0.7, 5.0])
    got = memory.leaky_average(x, lam, impl)
    np.testing.assert_allclose(got, naive_leaky(x, lam), rtol=2e-5, atol=2e-6)


def test_leaky_chunked_chunk_sizes_and_gradients_agree() -> None:
    x = rand(1, 2, 50, 2, 4)
    lam = jnp.array([0.3, 2.0])
    ref = memory.leaky_average_matrix(x, lam)
    for q in (1, 8, 16, 64):
        np.testing.assert_allclose(memory.leaky_average_chunked(x, lam, chunk=q), ref, rtol=1e-5, atol=1e-6)

    def loss(impl: str):
        return lambda x, lam: jnp.sum(jnp.sin(memory.leaky_average(x, lam, impl)))

    g_ref = jax.grad(loss("matrix"), argnums=(0, 1))(x, lam)
    for impl in ("scan", "chunked"):
        g = jax.grad(loss(impl), argnums=(0, 1))(x, lam)
        for a, b in zip(g, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_leaky_auto_picks_by_length() -> None:
    x = rand(2, 1, memory.MATRIX_MAX_T + 1, 1, 2)
    lam = jnp.array([1.0])
    np.testing.assert_allclose(memory.leaky_average(x, lam), memory.leaky_average_matrix(x, lam), rtol=1e-5, atol=1e-6)


def test_causal_conv_features_left_padding() -> None:
    h = rand(3, 2, 6, 4)
    w = rand(4, 3, 4, 2, 2)  # K=3
    out = np.asarray(memory.causal_conv_features(h, w))
    hn, wn = np.asarray(h), np.asarray(w)
    for t in range(6):
        exp = sum(np.einsum("bc,chd->bhd", hn[:, t - 2 + tau], wn[tau]) for tau in range(3) if t - 2 + tau >= 0)
        np.testing.assert_allclose(out[:, t], exp, rtol=1e-5, atol=1e-5)


def test_lookahead_values() -> None:
    vt = rand(5, 1, 4, 2, 3)
    coef = jnp.array([0.25, 0.9])
    scale = jnp.array([2.0, 0.5])
    v = np.asarray(memory.lookahead_values(vt, coef, scale))
    vtn = np.asarray(vt)
    for t in range(4):
        nxt = vtn[:, t + 1] if t < 3 else 0.0
        mix = np.asarray(coef)[None, :, None] * vtn[:, t] + (1 - np.asarray(coef))[None, :, None] * nxt
        exp = mix / np.linalg.norm(mix, axis=-1, keepdims=True) * np.asarray(scale)[None, :, None]
        np.testing.assert_allclose(v[:, t], exp, rtol=1e-5, atol=1e-6)


def test_contextual_retrieval_mask_and_row_zero() -> None:
    k, v = rand(6, 2, 9, 2, 4), rand(7, 2, 9, 2, 4)
    y = memory.contextual_retrieval(k, v)
    assert np.all(np.asarray(y[:, 0]) == 0.0)
    # Query t reads pairs j <= t-1: the value at j >= t, and keys at j > t, cannot matter.
    t = 4
    v2 = v.at[:, t:].set(rand(8, 2, 9 - t, 2, 4))
    k2 = k.at[:, t + 1:].set(rand(9, 2, 9 - t - 1, 2, 4))
    y2 = memory.contextual_retrieval(k2, v2)
    np.testing.assert_array_equal(np.asarray(y[:, :t + 1]), np.asarray(y2[:, :t + 1]))
    # ... but the value at t-1 does.
    v3 = v.at[:, t - 1].add(1.0)
    assert not np.allclose(memory.contextual_retrieval(k, v3)[:, t], y[:, t])


def test_contextual_retrieval_matches_naive_kernel_regression() -> None:
    k, v = rand(10, 1, 6, 1, 3), rand(11, 1, 6, 1, 3)
    y = np.asarray(memory.contextual_retrieval(k, v))[0, :, 0]
    kn, vn = np.asarray(k)[0, :, 0], np.asarray(v)[0, :, 0]
    for t in range(1, 6):
        s = kn[:t] @ kn[t]
        w = np.exp(s - s.max())
        np.testing.assert_allclose(y[t], (w / w.sum()) @ vn[:t], rtol=1e-5, atol=1e-6)


def test_retrieval_is_invariant_to_the_order_of_stored_pairs() -> None:
    T = 12
    k, v = rand(12, 2, T, 3, 4), rand(13, 2, T, 3, 4)
    perm = np.random.default_rng(0).permutation(T - 1)
    order = np.concatenate([perm, [T - 1]])  # shuffle the stored pairs, keep the query last
    y = memory.contextual_retrieval(k, v)[:, -1]
    y_perm = memory.contextual_retrieval(k[:, order], v[:, order])[:, -1]
    np.testing.assert_allclose(y, y_perm, rtol=1e-5, atol=1e-6)


def test_persistent_retrieval_naive_and_slot_order_invariance() -> None:
    q = rand(14, 2, 5, 3, 4)
    mk, mv = rand(15, 2, 3, 7, 4), rand(16, 2, 3, 7, 4)  # two tables
    y = np.asarray(memory.persistent_retrieval(q, mk, mv))
    qn, mkn, mvn = np.asarray(q), np.asarray(mk), np.asarray(mv)
    s = np.einsum("bthd,nhpd->bnhtp", qn, mkn)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    exp = np.einsum("bnhtp,nhpd->bthd", w, mvn) / 2
    np.testing.assert_allclose(y, exp, rtol=1e-5, atol=1e-6)
    perm = np.random.default_rng(1).permutation(7)
    np.testing.assert_allclose(memory.persistent_retrieval(q, mk[:, :, perm], mv[:, :, perm]), y, rtol=1e-5, atol=1e-6)


def test_flash_path_equals_dense() -> None:
    k = memory.l2_normalize(rand(17, 2, 33, 2, 8)) * 2.0
    v = rand(18, 2, 33, 2, 8)
    dense = memory.contextual_retrieval(k, v, impl="dense")
    flash = memory.contextual_retrieval(k, v, impl="flash")
    np.testing.assert_allclose(flash, dense, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(flash[:, 0]) == 0.0)
    with pytest.raises(ValueError, match="flash"):
        memory.contextual_retrieval(k, v, impl="flash", dropout_rate=0.1, dropout_rng=jax.random.key(0))


def test_retrieval_dropout_needs_a_key_and_is_seeded() -> None:
    k, v = rand(19, 1, 10, 1, 4), rand(20, 1, 10, 1, 4)
    a = memory.contextual_retrieval(k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
    b = memory.contextual_retrieval(k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
    c = memory.contextual_retrieval(k, v, dropout_rate=0.5)  # no key: eval mode
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(c, memory.contextual_retrieval(k, v))


def test_reparameterisations() -> None:
    np.testing.assert_allclose(memory.leak_rate(jnp.array([-0.05, 0.5])), [0.5, 5.0], rtol=1e-6)
    np.testing.assert_allclose(memory.key_scale(jnp.array([0.1, 2.0])), [np.e, np.exp(5.0)], rtol=1e-6)
    np.testing.assert_allclose(memory.value_scale(jnp.array([-0.05])), [np.exp(-0.5)], rtol=1e-6)
