"""The attention-consistency metric is softmax-invariant (issue 18 item 4): per-row offsets of the scores, which
softmax ignores, must not count as inconsistency."""
import pathlib
import sys

import numpy as np

from mosaic_jax.ops import memory

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import attention_consistency as ac  # noqa: E402


def test_centred_scores_ignore_per_row_offsets_and_keep_the_softmax():
    rng = np.random.default_rng(0)
    T = 24
    allowed = np.asarray(memory.strict_causal_mask(T, shift=1))
    s = rng.normal(size=(2, T, T))
    shifted = s + 10.0 * np.arange(T)[None, :, None]       # a query-position-dependent offset per row
    c = ac.centre_rows(s, allowed)
    np.testing.assert_allclose(ac.centre_rows(shifted, allowed), c, atol=1e-9)

    def softmax(x):
        x = np.where(allowed, x, -np.inf)
        m = np.max(x, -1, keepdims=True)
        e = np.where(allowed, np.exp(x - np.where(np.isfinite(m), m, 0.0)), 0.0)
        return e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    np.testing.assert_allclose(softmax(c), softmax(s), atol=1e-12)

    # the metric: with raw scores the offsets look like a strong position dependence; centred they vanish
    std = np.ones((1, 1))
    raw = ac.inconsistency(shifted.mean(0)[None, None], std, allowed, 4)
    cen = ac.inconsistency(ac.centre_rows(shifted, allowed).mean(0)[None, None], std, allowed, 4)
    base = ac.inconsistency(c.mean(0)[None, None], std, allowed, 4)
    assert np.nanmean(raw) > 10 * np.nanmean(cen)
    np.testing.assert_allclose(cen, base, atol=1e-9)
