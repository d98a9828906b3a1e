"""The functional-extension example: swap the kernel and key extractor through MemoryFns."""
import importlib.util
import pathlib

import jax
import numpy as np

import mosaic_jax as mj
from mosaic_jax.models.config import ModelConfig

_spec = importlib.util.spec_from_file_location(
    "gaussian_kernel", pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gaussian_kernel.py")
gk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gk)

CFG = ModelConfig(vocab_size=256, n_layer=1, n_embd=32, n_head=2, pmem_size=16, block_size=32,
                  ic_dropout=0.0, hd_dropout=0.0)


def test_gaussian_on_normalised_keys_is_the_reference_model() -> None:
    # ‖k_j‖ is the same for every stored key of a head, so −‖q−k_j‖²/2 differs from q·k_j by a per-row constant.
    params = mj.init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 256)
    ref = mj.apply(CFG, params, tokens)
    same = mj.apply(CFG, params, tokens, fns=gk.gaussian_fns(normalise_keys=True))
    np.testing.assert_allclose(same, ref, rtol=1e-4, atol=1e-4)


def test_unnormalised_variant_is_a_different_causal_model_that_trains(data_dir: pathlib.Path) -> None:
    fns = gk.gaussian_fns()
    params = mj.init_params(CFG, jax.random.key(0), fns)
    tokens = jax.random.randint(jax.random.key(2), (1, 20), 0, 256)
    out = np.asarray(mj.apply(CFG, params, tokens, fns=fns))
    assert not np.allclose(out, mj.apply(CFG, params, tokens), atol=1e-3)
    changed = np.asarray(mj.apply(CFG, params, tokens.at[0, 10].set(7), fns=fns))
    np.testing.assert_array_equal(changed[:, :10], out[:, :10])

    text = (data_dir / "tinyshakespeare" / "input.txt").read_bytes()[:200_000]
    losses = gk.train(CFG, fns, np.frombuffer(text, np.uint8), steps=40, batch=8, log_every=0)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
