"""The calibrated LM study (issue 18 item 3, experiments/lm_calibrated.py): its scoring and its rules.

* the tempered per-token NLL equals the library's `analysis.token_losses` at τ = 1 and a log-softmax of logits/τ
  written out independently at other τ (one forward pass serves the whole temperature grid);
* T* is the grid temperature of lowest calibration NLL, and the slope past 50 is the least-squares slope;
* the registered OOD verdict needs the mosaic's slope to be more negative in every seed pairing.
"""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax.tasks import analysis
from mosaic_jax.models import lm as M
from mosaic_jax.models.config import ModelConfig

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import lm_calibrated as lc  # noqa: E402


def test_tempered_losses_equal_the_library_and_an_explicit_log_softmax():
    cfg = ModelConfig(arch="mosaic", vocab_size=32, n_layer=1, n_embd=32, n_head=2, pmem_size=112, block_size=16,
                      ic_dropout=0.0, hd_dropout=0.0)
    params = jax.tree.map(lambda x: 3.0 * x, M.init_params(cfg, jax.random.key(0)))   # sharper than init
    w = np.random.default_rng(0).integers(0, 32, (5, 17)).astype(np.int32)             # 5 windows: one padded batch
    temps = [0.5, 1.0, 2.0]
    got = lc.tempered_losses(cfg, params, w, temps, batch=4)
    assert got.shape == (5, 3, 16)
    # f32 logsumexp over 32 logits of size O(1-10): rounding ~1e-6 relative
    np.testing.assert_allclose(got[:, 1], np.asarray(analysis.token_losses(cfg, params, jnp.asarray(w))),
                               rtol=1e-5, atol=1e-5)
    logits = np.asarray(M.apply(cfg, params, jnp.asarray(w[:, :-1])), np.float64)
    for k, tau in enumerate(temps):
        z = logits / tau
        lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        want = lse - np.take_along_axis(z, w[:, 1:, None], -1)[..., 0]
        np.testing.assert_allclose(got[:, k], want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[:, 0], got[:, 2])      # the temperature changes the loss


def test_t_star_is_the_argmin_and_the_slope_is_least_squares():
    temps = np.array([0.5, 0.8, 1.0, 1.5, 2.0])
    calib = np.broadcast_to(np.array([3.0, 2.5, 2.4, 2.2, 2.3])[None, :, None], (2, 5, 256))   # minimum at 1.5
    pos = np.arange(256.0)
    curve = 5.0 - 0.01 * pos                                       # slope −1 nat per 100 tokens
    curve[:50] += 1.0                                              # positions < 50 do not enter the slope
    L = np.broadcast_to(curve[None, None], (3, 2, 256))
    r = lc.analyse_run({"TinyStories valid": L, "WikiText-2 valid": L, "Gutenberg (6 books)": L}, temps, calib)
    assert r["T_star"] == 1.5 and not r["T_star_at_grid_edge"]
    assert abs(r["WikiText-2 valid"]["Tstar"]["slope_ge_50_per_100"] + 1.0) < 1e-9
    assert abs(r["WikiText-2 valid"]["T1"]["pos_lt_50"] - r["WikiText-2 valid"]["T1"]["pos_ge_50"] - 1.0 -
               0.01 * (np.mean(pos[50:]) - np.mean(pos[:50]))) < 1e-9


def _run(slope: float, level: float) -> dict:
    c = {"mean": level, "pos_lt_50": level, "pos_ge_50": level, "slope_ge_50_per_100": slope, "curve": []}
    return {"T_star": 1.0, **{k: {"T1": c, "Tstar": c} for k in lc.CORPORA}}


def test_ood_verdict_needs_every_seed_pairing():
    p = {"archs": ["mosaic", "gpt2"], "seeds": [0, 1, 2]}
    runs = {lc.run_name("gpt2", s): _run(-0.1, 5.0) for s in range(3)}
    runs |= {lc.run_name("mosaic", s): _run(-0.3, 5.5) for s in range(3)}
    v = lc.summarise(p, runs)["verdicts"]
    assert v["WikiText-2 valid: mosaic's calibrated loss falls faster past 50"]
    assert not v["mosaic better in distribution (calibrated)"]              # 5.5 > 5.0
    runs[lc.run_name("mosaic", 2)] = _run(0.5, 5.5)                         # one pairing the other way
    v = lc.summarise(p, runs)["verdicts"]
    assert not v["WikiText-2 valid: mosaic's calibrated loss falls faster past 50"]
    del runs[lc.run_name("gpt2", 2)]                # a missing run: verdicts over the pairings that exist
    sm = lc.summarise(p, runs)
    assert sm["verdict_pairs"] == [0, 1] and sm["verdicts"]["WikiText-2 valid: mosaic's calibrated loss falls faster past 50"]
    del runs[lc.run_name("gpt2", 1)]                # one pairing: no verdict
    assert lc.summarise(p, runs)["verdicts"] == {}
