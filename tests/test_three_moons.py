"""Three-moons generator and one-layer contextual-memory model (mosaic_jax/tasks/three_moons.py)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.tasks import three_moons as tm


def test_triples_are_the_nine_smallest_combined_periods():
    all_lcm = sorted(tm.combined_period(p) for p in itertools.combinations([0.5, 1, 1.5, 2, 2.5, 3, 3.5], 3))
    assert len(all_lcm) == 35
    assert sorted(tm.combined_period(p) for p in tm.PERIOD_TRIPLES) == all_lcm[:9] == [2, 3, 3, 3, 3, 5, 6, 6, 6]
    assert tm.VAL_TRIPLE == (1.0, 2.0, 3.0) and tm.VAL_TRIPLE not in tm.TRAIN_TRIPLES and len(tm.TRAIN_TRIPLES) == 8
    assert tm.time_step(800) == pytest.approx(0.0225)
    assert tm.period_in_steps(6.0, 0.0225) == pytest.approx(266.67, abs=0.01)


def test_data_is_three_points_on_circles_with_their_periods():
    t = np.linspace(0.0, 7.0, 50)
    x = tm.moons(tm.VAL_TRIPLE, t)
    assert x.shape == (50, 6)
    np.testing.assert_allclose(x[:, 0::2] ** 2 + x[:, 1::2] ** 2, 1.0, atol=1e-6)
    for i, p in enumerate(tm.VAL_TRIPLE):       # moon i repeats after its own period
        np.testing.assert_allclose(tm.moons(tm.VAL_TRIPLE, t + p)[:, 2 * i:2 * i + 2], x[:, 2 * i:2 * i + 2], atol=1e-5)
    np.testing.assert_allclose(x[0, 0], np.sin(0.3), atol=1e-6)   # θ(0) = 0.3, layout (sin, cos) per moon
    b = tm.sample_batch(np.random.default_rng(0), tm.TRAIN_TRIPLES, 4, 32)
    assert b.x.shape == b.y.shape == (4, 32, 6)
    np.testing.assert_array_equal(b.x[:, 1:], b.y[:, :-1])        # targets are the inputs shifted by one step


def test_complexify_is_a_rotation_scaling_projection():
    w = jax.random.normal(jax.random.key(0), (6, 6))
    c = tm.complexify(w)
    np.testing.assert_allclose(tm.complexify(c), c, atol=1e-6)      # idempotent
    np.testing.assert_allclose(c[0::2, 0::2], c[1::2, 1::2])
    np.testing.assert_allclose(c[0::2, 1::2], -c[1::2, 0::2])
    # a = cos φ, b = sin φ on the diagonal rotates (sin θ, cos θ) by φ
    phi, theta = 0.7, 1.9
    r = jnp.zeros((2, 2)).at[0, 0].set(np.cos(phi)).at[1, 1].set(np.cos(phi)).at[0, 1].set(np.sin(phi)) \
        .at[1, 0].set(-np.sin(phi))
    np.testing.assert_allclose(r @ jnp.array([np.sin(theta), np.cos(theta)]),
                               [np.sin(theta + phi), np.cos(theta + phi)], atol=1e-6)
    np.testing.assert_allclose(tm.complex_modulus(3.0 * jnp.eye(6)), 3.0 * np.eye(3), atol=1e-6)


@pytest.mark.parametrize("n_head", [1, 3])
def test_model_is_causal_and_row0_reads_nothing(n_head):
    params = tm.init_params(jax.random.key(1))
    x = jnp.asarray(tm.sample_batch(np.random.default_rng(1), tm.TRAIN_TRIPLES, 2, 40).x)
    apply = jax.jit(tm.apply, static_argnums=2)
    y = apply(params, x, n_head)
    np.testing.assert_array_equal(np.asarray(y[:, 0]), 0.0)
    w = jax.jit(tm.attention, static_argnums=2)(params, x, n_head)
    np.testing.assert_allclose(np.asarray(w[:, :, 1:].sum(-1)), 1.0, atol=1e-5)
    assert float(jnp.abs(jnp.triu(w, k=0)).max()) == 0.0           # query t reads only j ≤ t − 1
    s = 25
    y2 = apply(params, x.at[:, s].set(0.5), n_head)
    np.testing.assert_array_equal(np.asarray(y2[:, :s]), np.asarray(y[:, :s]))   # prediction at t uses x_0..x_t
    assert float(jnp.abs(y2[:, s] - y[:, s]).max()) > 0
    assert float(jax.jit(tm.loss_fn, static_argnums=3)(params, x, x + 10.0, n_head)) <= 0.25 + 1e-6         # clipped at ±0.5


def test_generate_matches_recomputing_the_whole_window():
    params = tm.init_params(jax.random.key(2))
    x = jnp.asarray(tm.sample_batch(np.random.default_rng(2), [tm.VAL_TRIPLE], 2, 40).x)
    c, n = 20, 6
    gen = tm.generate(params, x, c, n, 3)
    # full-window recompute; the model is causal, so steps past the one being generated do not matter
    buf = x[:, :c + n]
    apply = jax.jit(tm.apply, static_argnums=2)
    for i in range(n):
        buf = buf.at[:, c + i].set(apply(params, buf, 3)[:, c + i - 1])
    np.testing.assert_allclose(np.asarray(gen), np.asarray(buf[:, c:]), atol=1e-5)
    err = tm.generation_error(params, x, [10, 20], n, 3, chunk=2)
    assert err.shape == (2,) and np.isfinite(err).all()


def test_disentangled_solution_needs_only_the_single_periods():
    """The solution the paper says training finds for 3 heads (W_φ = s·I, W_ψ = W_z = I: head i tracks moon i)
    predicts well once the context covers each moon's own period, before the combined period (267 steps);
    the same maps with ONE head (a joint key over all three moons) need the combined period."""
    dt = tm.time_step(800)
    eye = jnp.eye(6)
    params = {"wk": 3.0 * eye, "wv": eye, "wz": eye}
    x = tm.sample_batch(np.random.default_rng(3), [tm.VAL_TRIPLE], 2, 420, dt, extra=25).x
    e3 = tm.generation_error(params, x, [200, 400], 25, 3, chunk=2)
    e1 = tm.generation_error(params, x, [200, 400], 25, 1, chunk=2)
    assert e3[0] < 0.1 and e3[1] < 0.1
    assert e1[0] > 2 * e3[0] and e1[1] < 0.5 * e1[0]
