"""Orbax checkpoints: round trip, restore onto another mesh, fallback past a broken checkpoint, hash check, export."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mosaic_jax.models import lm
from mosaic_jax.parallel import sharding
from mosaic_jax.training import checkpoint, optim, train_state
from mosaic_jax.models.config import ModelConfig
from tests.conftest import REPO

CFG = ModelConfig(arch="gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=64, block_size=16)
OPT = optim.OptimConfig(lr=1e-3, warmup_steps=0, decay_steps=10)
TX = optim.make_optimizer(OPT, optim.decay_mask(lm.param_axes(CFG)))
DATA = {"path": "/data/x", "seed": 0, "tokenizer_hash": "abc", "global_batch": 8, "seq_len": 16}


@pytest.fixture(scope="module")
def host_state():
    state = jax.device_get(train_state.init_state(CFG, TX, seed=3))
    # make every leaf distinctive (a restore that mixed up leaves would not pass)
    return state.replace(step=np.int32(7), opt_state=jax.tree.map(
        lambda x: x + 0.5 if np.issubdtype(x.dtype, np.floating) else x + 2, state.opt_state))


def _on_mesh(host_state, shape):
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])
    sh = train_state.state_shardings(CFG, TX, mesh)
    return jax.device_put(host_state, sh), sh


def _target(sh):
    return train_state.with_shardings(train_state.abstract_state(CFG, TX), sh)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("new_shape", [(2, 2, 2), (1, 1, 1)])
def test_restore_onto_another_mesh(tmp_path, host_state, new_shape):
    state, _ = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=2)
    assert ck.save(7, state, {"model": {"n_layer": 2}}, {**DATA, "position": 7})
    ck.close()

    _, new_sh = _on_mesh(host_state, new_shape)
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=2)
    step, restored, data = ck.restore(_target(new_sh))
    assert step == 7 and data["position"] == 7 and data["tokenizer_hash"] == "abc"
    assert ck.read_json(7, "config") == {"model": {"n_layer": 2}}
    _assert_equal(restored, host_state)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(new_sh)):
        assert leaf.sharding == want   # laid out on the NEW mesh, not the saved one
    ck.close()


def test_keeps_last_k_and_skips_saved_step(tmp_path, host_state):
    state, _ = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=2, keep=2)
    for s in range(1, 8):
        ck.save(s, state, {}, DATA)
    ck.wait()
    assert ck.all_steps() == [4, 6]
    assert not ck.save(6, state, {}, DATA, force=True)   # already there (SIGTERM right after a periodic save)
    ck.close()


def test_broken_checkpoint_falls_back_to_previous(tmp_path, host_state):
    state, sh = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=3)
    ck.save(1, state, {}, {**DATA, "position": 1})
    ck.save(2, state.replace(step=state.step + 1), {}, {**DATA, "position": 2})
    ck.close()
    for f in (tmp_path / "2" / "state").rglob("*"):   # truncate every file of the newest state
        if f.is_file():
            f.write_bytes(b"")

    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=3)
    said = []
    step, restored, data = ck.restore(_target(sh), say=said.append)
    assert step == 1 and data["position"] == 1
    assert len(said) == 1 and f"checkpoint {tmp_path / '2'} failed" in said[0]
    assert f"set aside as {tmp_path / '2.broken-'}" in said[0] and f"trying {tmp_path / '1'}" in said[0]
    assert ck.all_steps() == [1]
    assert any(p.name.startswith("2.broken-") for p in tmp_path.iterdir())
    _assert_equal(restored, host_state.replace(step=np.int32(7)))
    # training on from step 1 can save step 2 again
    assert ck.save(2, restored, {}, DATA, force=True)
    ck.close()


def test_no_checkpoint_restores_none(tmp_path, host_state):
    _, sh = _on_mesh(host_state, (1, 1, 1))
    assert checkpoint.Checkpointer(tmp_path, every=1, keep=1).restore(_target(sh)) is None


def test_tokenizer_hash_mismatch_is_refused():
    checkpoint.check_data_compatible(DATA, dict(DATA), "ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer hash abc differs"):
        checkpoint.check_data_compatible(DATA, {**DATA, "tokenizer_hash": "other"}, "ckpt")


def test_params_export_round_trip(tmp_path, host_state):
    state, _ = _on_mesh(host_state, (2, 2, 2))
    checkpoint.export_params(tmp_path / "export", state.params, CFG.to_dict())
    cfg, params = checkpoint.load_exported(tmp_path / "export")
    assert ModelConfig.from_dict(cfg) == CFG
    _assert_equal(params, host_state.params)


_EXPORT_4 = """
import sys, jax, numpy as np
from mosaic_jax.parallel import sharding
from mosaic_jax.training import checkpoint
from tests.test_checkpoint import CFG, TX, _on_mesh
from mosaic_jax.training import train_state
assert len(jax.devices()) == 4
state, _ = _on_mesh(jax.device_get(train_state.init_state(CFG, TX, seed=5)), (2, 2, 1))
assert any(len(x.sharding.device_set) > 1 for x in jax.tree.leaves(state.params))   # really spread out
checkpoint.export_params(sys.argv[1], state.params, CFG.to_dict())
np.savez(sys.argv[2], **{jax.tree_util.keystr(k): np.asarray(v)
                         for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]})
"""

_LOAD_1 = """
import sys, jax, numpy as np
from mosaic_jax.training import checkpoint
assert len(jax.devices()) == 1
_, params = checkpoint.load_exported(sys.argv[1])
assert all(x.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]) for x in jax.tree.leaves(params))
np.savez(sys.argv[2], **{jax.tree_util.keystr(k): np.asarray(v)
                         for k, v in jax.tree_util.tree_flatten_with_path(params)[0]})
"""


def _run(code: str, devices: int, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_export_from_4_devices_loads_without_target_on_1(tmp_path):
    """The saved shardings name 4 devices; a 1-device process must still load the export (no target given)."""
    _run(_EXPORT_4, 4, str(tmp_path / "export"), str(tmp_path / "saved.npz"))
    _run(_LOAD_1, 1, str(tmp_path / "export"), str(tmp_path / "loaded.npz"))
    saved, loaded = np.load(tmp_path / "saved.npz"), np.load(tmp_path / "loaded.npz")
    assert sorted(saved.files) == sorted(loaded.files) and saved.files
    for k in saved.files:
        np.testing.assert_array_equal(loaded[k], saved[k], err_msg=k)


def test_load_exported_without_params_names_the_folder(tmp_path):
    (tmp_path / "model_config.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "params")):
        checkpoint.load_exported(tmp_path)
