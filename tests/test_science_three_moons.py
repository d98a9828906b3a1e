"""Three moons: the pieces of the pre-registered study (issue 18) and a fixed-seed guard of the mechanism.

* `reference_adamw` is MLX's AdamW update (no bias correction), checked on hand-computed steps;
* the chunked loss used by the study equals `loss_fn` (value and gradients);
* `generate(cached=True)` equals an independent re-implementation of the official code's KV-cache loop;
* the study's success rule, on synthetic runs;
* science guard: a 1-head model trained briefly predicts the next step far better once its context covers the
  combined period (it reads the pair one combined period back through the look-ahead value W_ψ x_{j+1}).
"""
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mosaic_jax.tasks import three_moons as tm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import three_moons_report  # noqa: E402


def test_reference_adamw_is_mlx_adamw_without_bias_correction():
    # MLX AdamW.apply_single: p ← p·(1 − lr·wd); m ← b1 m + (1−b1) g; v ← b2 v + (1−b2) g²; p ← p − lr m/(√v+ε)
    lr = optax.piecewise_constant_schedule(0.1, {1: 0.5})          # 0.1 at update 0, 0.05 at update 1
    opt = tm.reference_adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    p = jnp.array([1.0, 1.0])
    s = opt.init(p)
    g1, g2 = jnp.array([0.5, -2.0]), jnp.array([-1.0, 0.5])
    u, s = opt.update(g1, s, p)
    p1 = optax.apply_updates(p, u)
    # step 1 by hand: m/√v = (1−b1)/√(1−b2)·sign(g) = 3.16227766·sign(g) (f32: ~1e-6 relative)
    np.testing.assert_allclose(p1, [0.999 - 0.316227766, 0.999 + 0.316227766], rtol=1e-6)
    u, s = opt.update(g2, s, p1)
    p2 = optax.apply_updates(p1, u)
    want = []
    for i in range(2):
        m = 0.9 * (0.1 * float(g1[i])) + 0.1 * float(g2[i])
        v = 0.999 * (0.001 * float(g1[i]) ** 2) + 0.001 * float(g2[i]) ** 2
        want.append(float(p1[i]) * (1 - 0.05 * 0.01) - 0.05 * m / (math.sqrt(v) + 1e-8))
    np.testing.assert_allclose(p2, want, rtol=1e-6)
    # optax's adamw is bias-corrected: its first step is lr·sign(g), 3.16× smaller (rtol: optax forms 1 − b2 in
    # f32, 1.3e-5 relative error, halved by the square root)
    o = optax.adamw(0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    np.testing.assert_allclose(o.update(g1, o.init(p), p)[0], [-0.1, 0.1], rtol=1e-5)


@pytest.mark.parametrize("n_head", [1, 3])
def test_chunked_loss_equals_loss(n_head):
    params = tm.init_params(jax.random.key(3))
    b = tm.sample_batch(np.random.default_rng(3), tm.TRAIN_TRIPLES, 2, 50)
    f = jax.jit(jax.value_and_grad(tm.loss_fn), static_argnums=(3, 4, 5))   # eager: minutes of op dispatch
    l0, g0 = f(params, b.x, b.y, n_head, 0.5, None)
    l1, g1 = f(params, b.x, b.y, n_head, 0.5, 16)      # 4 blocks of 16 queries (the last one partial)
    # same sums in a different order: f32 rounding only (~1e-7 relative per term)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-7)


def _official_cached_generation(params, x, context, n_steps, n_head, beta=tm.BETA):
    """The official `ContextMemory.generate` loop, re-written in numpy: run the prompt (its last value is zero,
    x_context being unknown), then feed each prediction back as a 1-step input whose value is zero, attending to
    the whole cache and not to itself."""
    wk, wv, wz = (np.asarray(tm.complexify(params[n]), np.float64) for n in ("wk", "wv", "wz"))
    B, _, C = x.shape
    D = C // n_head
    prompt = np.asarray(x[:, :context], np.float64)
    ck = (prompt @ wk.T).reshape(B, context, n_head, D)
    cv = np.concatenate([prompt[:, 1:] @ wv.T, np.zeros((B, 1, C))], 1).reshape(B, context, n_head, D)

    def read(q_BHD, keys, vals):
        s = beta * np.einsum("bhd,bshd->bhs", q_BHD, keys)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        return np.einsum("bhs,bshd->bhd", w, vals).reshape(B, C) @ wz.T

    out = [read(ck[:, -1], ck[:, :-1], cv[:, :-1])]          # the prompt's last row: pairs j ≤ context − 2
    for _ in range(n_steps - 1):
        kn = (out[-1] @ wk.T).reshape(B, n_head, D)
        out.append(read(kn, ck, cv))
        ck = np.concatenate([ck, kn[:, None]], 1)
        cv = np.concatenate([cv, np.zeros((B, 1, n_head, D))], 1)
    return np.stack(out, 1)


@pytest.mark.parametrize("n_head", [1, 3])
def test_cached_generation_is_the_official_cache(n_head):
    params = {k: 2.0 * v for k, v in tm.init_params(jax.random.key(5)).items()}   # sharper than init
    x = tm.sample_batch(np.random.default_rng(5), [tm.VAL_TRIPLE], 2, 60, tm.time_step(200), extra=10).x
    ctx, n = 40, 8
    got = np.asarray(tm.generate(params, jnp.asarray(x), ctx, n, n_head, cached=True))
    np.testing.assert_allclose(got, _official_cached_generation(params, x, ctx, n, n_head), atol=2e-5)
    exact = np.asarray(tm.generate(params, jnp.asarray(x), ctx, n, n_head))
    np.testing.assert_allclose(exact[:, 0], got[:, 0], atol=1e-6)     # first step: every value is observed
    assert np.abs(exact[:, 1:] - got[:, 1:]).max() > 1e-3              # later: zero values change the read


def test_success_rule_of_the_study():
    proto = {"optimizers": ["a"], "evaluations": ["exact"], "eval": {"ranges": {"mid": [10, 20]}}}
    ctx = list(range(0, 30, 2))

    def run(h, seed, level, blowup=False):
        e = np.full((len(ctx), 4), level)
        if blowup:
            e[6, 0] = 1e3        # one window blows up at one context: the median ignores it
        return {"optimizer": "a", "n_head": h, "seed": seed, "contexts": ctx, "errors": {"exact": e.tolist()},
                "final_loss": 0.0, "w_phi_diagonality": 1.0, "train_s": 0, "eval_s": 0, "loadavg_start": [0] * 3,
                "loadavg_end": [0] * 3, "finished_utc": ""}
    runs = [run(1, 0, 0.5), run(1, 1, 0.6), run(1, 2, 0.4), run(3, 0, 0.2, blowup=True), run(3, 1, 0.3)]
    res = three_moons_report.analyse(proto, runs)
    arm = res["arms"]["a/exact"]
    assert arm["threshold_mid"] == pytest.approx(0.25)                  # ½ × median(0.5, 0.6, 0.4)
    assert arm["successes"] == 1 and arm["success_seeds"] == [0]
    assert json.dumps(res)                                              # serialisable as results.json


def test_one_head_predicts_far_better_once_context_covers_the_combined_period():
    """Fixed-seed guard of the 1-head mechanism at a small geometry (window 200, dt 0.09: val single periods
    11/22/33 steps, combined 67), 200 reference-AdamW steps of batch 8 (~1 CPU-s per 10 steps).

    Teacher-forced |prediction − truth| at positions between the longest single period and the combined period
    ("mid") vs past the combined period ("late"). Measured late/mid: 0.17 (seed 0), 0.15 (seed 1). With the
    look-ahead removed (values W_ψ x_j instead of W_ψ x_{j+1}, monkeypatched in a scratch run) it is 2.46 and
    2.45: the error grows. The bound 0.4 sits 2.4× above the seeds and 6× below the broken model.
    (The free-run error was too noisy here: late/mid 0.54-0.75 vs 0.84-1.05 without the look-ahead.)
    """
    block, steps, seed = 200, 200, 0
    dt = tm.time_step(block)
    params = tm.init_params(jax.random.key(seed))
    opt = tm.reference_adamw(optax.linear_schedule(1e-2, 5e-6, steps))
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(tm.loss_fn)(p, x, y, 1)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = tm.sample_batch(rng, tm.TRAIN_TRIPLES, 8, block, dt)
        params, state = step(params, state, b.x, b.y)
    val = tm.sample_batch(np.random.default_rng(0), [tm.VAL_TRIPLE], 8, block, dt)
    err_T = np.abs(np.asarray(tm.apply(params, jnp.asarray(val.x), 1)) - val.y).mean((0, 2))
    single = tm.period_in_steps(max(tm.VAL_TRIPLE), dt)
    full = tm.period_in_steps(tm.combined_period(tm.VAL_TRIPLE), dt)
    pos = np.arange(block)
    mid = err_T[(pos > single + 3) & (pos < full - 3)].mean()
    late = err_T[pos > full + 5].mean()
    assert late < 0.4 * mid, (mid, late)
