"""The training loop as a library (training/loop.py), used as a research script would: its own hook runs at the
steps it asked for and sees the right state and metrics, and the loop computes what the plain step applied N
times computes, bitwise (same compiled step, same batches: no tolerance). `train()` is this loop with the default
hooks; its behaviour is tested end to end in test_train_cli.py, test_train_io.py and test_distributed.py.
One device and one compilation keep this test to seconds."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.data import loader, store
from mosaic_jax.parallel import sharding
from mosaic_jax.training import loop, run_config, setup, train_state, train_step

STEPS = 5


def _config(data: str):
    c = run_config.base_config()
    c.model.update(arch="mosaic", n_layer=1, n_embd=32, n_head=2, pmem_size=64, block_size=32,
                   ic_dropout=0.0, hd_dropout=0.0)
    c.data.path = data
    c.train.update(steps=STEPS, global_batch=8, log_every=1, eval_every=0, sample_tokens=0,
                   checkpoint_every=100, trackers="jsonl")
    c.optim.warmup_steps = 2
    return c


class Recorder(loop.Hook):
    """What a research script might do: every fetched metric, and the state's step at its own interval."""

    def __init__(self) -> None:
        self.fetched: list[int] = []
        self.seen: list[tuple[int, int, float]] = []

    def on_metrics(self, step: int, metrics: dict[str, float], timed: bool) -> None:
        self.fetched.append(step)

    def after_step(self, info: loop.StepInfo) -> None:
        self.seen.append((info.step, int(jax.device_get(info.state.step)), info.metrics()["loss"]))


def _research_setup(cfg):
    """The set-up a script writes: resolve, mesh, setup.build (what train runs), fresh state, batches."""
    ds = store.open_prepared(cfg.data.path, "train")
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rc = run_config.resolve(cfg, ds.vocab_size, sharding.data_parallel_size(mesh))
    t, d = rc.train, rc.data
    su = setup.build(rc.model, rc.optim, mesh, dropout=t.dropout)
    src = loader.BatchSource(ds, d.seq_len, t.global_batch, t.seed, packing=d.packing)

    state0 = train_state.create_sharded_state(rc.model, su.tx, t.seed, su.shardings)

    def fresh():   # the step donates its state: each run starts from its own copy of state0
        state = jax.tree.map(jnp.copy, state0)
        batches = (train_step.global_batch(b, mesh, t.global_batch)
                   for b in loader.make_iterator(src, 0, num_steps=STEPS))
        return state, batches
    return su, fresh


def test_own_hook_runs_every_n_and_loop_equals_plain_steps(prepared_byte):
    su, fresh = _research_setup(_config(str(prepared_byte)))
    lp = loop.Loop(su.train_step)
    rec = lp.add_hook(Recorder(), every=2)
    state, batches = fresh()
    res = lp.run(state, batches, start=0, total=STEPS)

    assert (res.step, res.stopped) == (STEPS, False)
    assert [s for s, _, _ in rec.seen] == [2, 4, 5]        # every=2, and the last step (at_last)
    assert [s for _, s, _ in rec.seen] == [2, 4, 5]        # the state the hook sees is after that step
    assert rec.fetched == [1, 2, 3, 4, 5]                  # each step's metrics once, in order
    assert rec.seen[-1][2] == res.metrics["loss"]

    plain, batches = fresh()
    for b in batches:   # the compiled step applied N times, no loop
        plain, m = su.train_step(plain, b)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(res.state), jax.device_get(plain))
    assert res.metrics["loss"] == float(m["loss"]) and res.metrics["grad_norm"] == float(m["grad_norm"])

    # a hook may stop the run (as the checkpoint hook does on preemption): later hooks of that step still run
    stopper = loop.Loop(su.train_step)
    stopper.add_hook(lambda info: setattr(info, "stop", True), every=3)
    late = stopper.add_hook(Recorder())
    state, batches = fresh()
    res = stopper.run(state, batches, start=0, total=STEPS)
    assert (res.step, res.stopped) == (3, True) and [s for s, _, _ in late.seen] == [1, 2, 3]


def test_add_hook_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="every=0"):
        loop.Loop(lambda s, b: (s, {})).add_hook(lambda info: None, every=0)
