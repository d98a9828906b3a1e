"""The jitted train step: sharded on three mesh shapes == single device; k microbatches of b == one batch of k·b."""
import jax
import numpy as np
import pytest

from mosaic_jax.models import lm
from mosaic_jax.parallel import sharding
from mosaic_jax.training import optim, train_state, train_step
from mosaic_jax.models.config import ModelConfig

MOSAIC = ModelConfig(n_layer=2, n_embd=32, n_head=4, pmem_size=32, vocab_size=64, block_size=16)
# eps 1e-6: Adam's first update is lr·g/(|g|+eps), a sign function for |g| >> eps; a larger eps keeps
# gradients of ~1e-8 (float noise level) from flipping an update by ±lr between layouts.
OPT = optim.OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, decay_steps=10, eps=1e-6)
_INIT_CACHE: dict = {}


def _batch(rows: int, T: int = 16, vocab: int = 64, seed: int = 0, ignore_some: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, T + 1)).astype(np.int32)
    targets = tokens[:, 1:].copy()
    if ignore_some:   # uneven ignored targets: the loss must be token-weighted across microbatches
        targets[rng.random(targets.shape) < 0.3] = -1
        targets[0, :] = -1
    return {"inputs": tokens[:, :-1], "targets": targets}


def _one_step(cfg, shape, batch, microbatches=1):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = sharding.make_mesh(*shape, devices=devices)
    tx = optim.make_optimizer(OPT, optim.decay_mask(lm.param_axes(cfg)))
    sh = train_state.state_shardings(cfg, tx, mesh)
    if cfg not in _INIT_CACHE:   # one host copy of the initial state, laid out on each mesh by device_put
        _INIT_CACHE[cfg] = jax.device_get(train_state.init_state(cfg, tx, 0))
    state = jax.device_put(_INIT_CACHE[cfg], sh)
    step = train_step.make_train_step(cfg, tx, optim.lr_schedule(OPT), microbatches=microbatches, dropout=False,
                                      mesh=mesh, param_shardings=sh.params)
    fn = train_step.jit_train_step(step, sh, mesh)
    state, metrics = fn(state, train_step.global_batch(batch, mesh, batch["inputs"].shape[0]))
    return jax.device_get(state), {k: float(v) for k, v in jax.device_get(metrics).items()}, state


@pytest.fixture(scope="module")
def single_device_step():
    return _one_step(MOSAIC, (1, 1, 1), _batch(8))


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(single_device_step, shape):
    ref_state, ref_metrics, _ = single_device_step
    state, metrics, live = _one_step(MOSAIC, shape, _batch(8))
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], abs=1e-5)
    assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], abs=1e-5)
    assert int(state.step) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # Adam's first moment after one step is (1 - b1)·gradient: compare the gradients themselves
    adam, ref_adam = state.opt_state[1][0], ref_state.opt_state[1][0]
    for a, b in zip(jax.tree.leaves(adam.mu), jax.tree.leaves(ref_adam.mu)):
        np.testing.assert_allclose(a / (1 - OPT.b1), b / (1 - OPT.b1), atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # the state really is laid out on the mesh (FSDP on the embedding table's embed dim)
    assert live.params["embed"].sharding.spec == sharding.logical_to_spec(("vocab", "embed"), (64, 32),
                                                                          live.params["embed"].sharding.mesh)
    assert len(live.params["embed"].sharding.device_set) == int(np.prod(shape))


def test_split_microbatches_distinct_rows():
    x = np.arange(12)[:, None] * np.ones((1, 3), np.int32)
    mb = np.asarray(train_step.split_microbatches(x, 3))
    assert mb.shape == (3, 4, 3)
    assert sorted(mb[:, :, 0].ravel().tolist()) == list(range(12))   # every row exactly once
    assert mb[1, :, 0].tolist() == [1, 4, 7, 10]                     # row r -> microbatch r mod k
    with pytest.raises(ValueError, match="microbatches"):
        train_step.split_microbatches(x, 5)


def test_k_microbatches_equal_one_big_batch():
    """4 microbatches of 4 rows == 1 batch of 16 rows (token-weighted loss, uneven ignored targets)."""
    cfg = ModelConfig(arch="gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=64, block_size=16)
    batch = _batch(16, ignore_some=True)
    big_state, big_m, _ = _one_step(cfg, (1, 1, 1), batch, microbatches=1)
    acc_state, acc_m, _ = _one_step(cfg, (1, 1, 1), batch, microbatches=4)
    assert acc_m["tokens"] == big_m["tokens"] < 16 * 16
    assert acc_m["loss"] == pytest.approx(big_m["loss"], abs=1e-6)
    assert acc_m["grad_norm"] == pytest.approx(big_m["grad_norm"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(big_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
