"""Run integrity (issue 13, items 1-3): checksummed checkpoints, the resume compatibility check, untrusted states.

In-process on the 8 simulated CPU devices with a tiny GPT-2 state (tests/test_checkpoint.py); the end-to-end
versions through `python -m mosaic_jax.train` are in tests/test_train_cli.py.
"""
import hashlib
import json
import random
import shutil

import jax
import numpy as np
import pytest

from mosaic_jax.training import checkpoint, integrity
from tests.test_checkpoint import CFG, DATA, _assert_equal, _on_mesh, _target

SAVED_CFG = {"model": {**CFG.to_dict()}, "train": {"steps": 4}, "optim": {"grad_clip": 1.0, "lr": 1e-3}}
LEGACY_CFG = {"model": SAVED_CFG["model"], "train": {"steps": 4, "grad_clip": 1.0, "lr": 1e-3}}   # before `optim`


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, host_state):
    """Steps 1 and 2 (different states) saved asynchronously, as training does."""
    root = tmp_path_factory.mktemp("two") / "ckpt"
    state, _ = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(root, every=1, keep=5)
    ck.save(1, state, SAVED_CFG, {**DATA, "position": 1})
    ck.save(2, state.replace(step=state.step + 1, params=jax.tree.map(lambda x: x * 2, state.params)), SAVED_CFG,
            {**DATA, "position": 2})
    ck.close()
    return root


@pytest.fixture(scope="module")
def host_state():
    from tests.test_checkpoint import TX
    from mosaic_jax.training import train_state
    return jax.device_get(train_state.init_state(CFG, TX, seed=3)).replace(step=np.int32(7))


def _restore(directory, host_state, mesh=(1, 8, 1)):
    _, sh = _on_mesh(host_state, mesh)
    said = []
    ck = checkpoint.Checkpointer(directory, every=1, keep=5)
    out = ck.restore(_target(sh), say=said.append)
    ck.close()
    return out, said


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _assert_fell_back(d, out, said, host_state):
    step, restored, data = out
    assert step == 1 and data["position"] == 1
    _assert_equal(restored, host_state)                    # step 1's state, bitwise
    assert len(said) == 1, said                            # one line naming the bad one, where it went, the next
    assert f"checkpoint {d / '2'} failed its integrity check" in said[0] or "is unreadable" in said[0], said
    assert f"set aside as {d / '2.broken-'}" in said[0] and f"trying {d / '1'}" in said[0], said
    moved = [p for p in d.iterdir() if p.name.startswith("2.broken-")]
    assert len(moved) == 1 and (moved[0] / "state").is_dir()   # set aside, not deleted


@pytest.mark.parametrize("trial", range(6))
def test_single_bit_flip_in_state_data_falls_back_to_previous(two_checkpoints, host_state, tmp_path, trial):
    """Flip one bit anywhere in checkpoints/2/state/.../d/* (seeded): restore refuses 2 and restores 1."""
    d = tmp_path / "ckpt"
    shutil.copytree(two_checkpoints, d)
    files = sorted(p for p in (d / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d")
    rng = random.Random(trial)
    f = files[trial % len(files)] if trial < 3 else rng.choice(files)   # the index file and data files
    data = bytearray(f.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    f.write_bytes(bytes(data))
    out, said = _restore(d, host_state)
    _assert_fell_back(d, out, said, host_state)


@pytest.mark.parametrize("damage", ["garbage", "valid_json"])
def test_corrupt_data_item_falls_back_to_previous(two_checkpoints, host_state, tmp_path, damage):
    d = tmp_path / "ckpt"
    shutil.copytree(two_checkpoints, d)
    meta = d / "2" / "data" / "metadata"
    if damage == "garbage":
        meta.write_bytes(b"\x00not json" + meta.read_bytes()[9:])
    else:   # still valid JSON, another data position: only the checksums can tell
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "position": 3}))
    out, said = _restore(d, host_state)
    _assert_fell_back(d, out, said, host_state)


def test_value_checksums_catch_what_the_file_record_would(two_checkpoints, host_state, tmp_path):
    """Without the file record (removed), the per-array record alone still refuses a changed value."""
    d = tmp_path / "ckpt"
    shutil.copytree(two_checkpoints, d)
    (d / "2" / integrity.FILES_RECORD).unlink()
    record_file = d / "2" / "integrity" / "metadata"
    record = json.loads(record_file.read_text())
    key = next(k for k in record["arrays"] if "embed" in k)
    record["arrays"][key][0] ^= 1
    record_file.write_text(json.dumps(record))
    out, said = _restore(d, host_state)
    _assert_fell_back(d, out, said, host_state)
    assert f"checksum mismatch in state{key}" in said[0]


def test_intact_checkpoint_restores_on_any_mesh(two_checkpoints, host_state, tmp_path):
    """The per-array sums do not depend on the layout: a restore onto 2x2x2 or 1 device verifies."""
    for mesh in [(2, 2, 2), (1, 1, 1)]:
        d = tmp_path / f"ckpt{len(mesh)}{mesh[0]}"
        shutil.copytree(two_checkpoints, d)
        (step, restored, _), said = _restore(d, host_state, mesh)
        assert step == 2 and said == []
        assert float(np.asarray(restored.params["embed"])[0, 0]) == 2 * float(host_state.params["embed"][0, 0])


def test_checksum_sees_every_single_bit_and_no_layout(host_state):
    """Every bit of an element changes its lane sums (w odd), whatever the mesh the array is laid out on."""
    ref, _ = integrity.state_report(host_state)
    for mesh in [(1, 8, 1), (2, 2, 2)]:
        on_mesh, _ = _on_mesh(host_state, mesh)
        assert integrity.state_report(on_mesh)[0] == ref
    embed = np.asarray(host_state.params["embed"])
    key = next(k for k in ref if "embed" in k)
    for bit in range(32):
        flipped = embed.copy()
        flipped.view(np.uint32)[5, 3] ^= np.uint32(1 << bit)
        sums, _ = integrity.state_report(host_state.replace(params={**host_state.params, "embed": flipped}))
        assert sums[key][0] != ref[key][0] and sums[key][1] != ref[key][1], bit
    swapped = embed.copy()
    swapped[[0, 1]] = swapped[[1, 0]]   # two rows exchanged: same multiset of values, other positions
    assert integrity.state_report(host_state.replace(params={**host_state.params, "embed": swapped}))[0][key] != ref[key]


def test_nonfinite_state_is_not_saved_and_not_restored(host_state, tmp_path):
    state, _ = _on_mesh(host_state, (1, 8, 1))
    bad = state.replace(params={**state.params, "embed": state.params["embed"].at[0, 0].set(np.nan)})
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=5)
    ck.save(1, state, SAVED_CFG, {**DATA, "position": 1})
    with pytest.raises(FloatingPointError, match="state after step 2 holds NaN/Inf in .*embed"):
        ck.save(2, bad, SAVED_CFG, {**DATA, "position": 2})
    ck.wait()
    assert ck.all_steps() == [1]
    # one written by a version that saved anything (plain Orbax, no records) is set aside on restore
    import orbax.checkpoint as ocp
    ck.mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(bad), config=ocp.args.JsonSave(SAVED_CFG),
                                            data=ocp.args.JsonSave({**DATA, "position": 2})), force=True)
    ck.close()
    (step, restored, _), said = _restore(tmp_path, host_state)
    assert step == 1 and len(said) == 1 and "holds NaN/Inf" in said[0] and "2.nonfinite-" in said[0], said
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if "." in p.name] == ["2.nonfinite"]


def test_after_nonfinite_sets_aside_the_checkpoint_that_computed_the_loss(host_state, tmp_path):
    state, _ = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=5)
    for s in (1, 2, 3):
        ck.save(s, state, SAVED_CFG, {**DATA, "position": s})
    err = FloatingPointError("loss is nan at step 4; stopping (the last good checkpoint is kept)")
    err.step = 4
    msg = ck.after_nonfinite(err)
    assert ck.all_steps() == [1, 2]
    assert msg.startswith("loss is nan at step 4; checkpoint 3 computed it and is set aside as "
                          f"{tmp_path / '3.nonfinite-'}")
    assert msg.endswith(f"Re-running resumes from checkpoint {tmp_path / '2'} (step 2)")
    assert (next(tmp_path.glob("3.nonfinite-*")) / "state").is_dir()
    ck.close()


def test_config_mismatch_is_refused_naming_fields_and_writes_nothing(two_checkpoints, host_state, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(two_checkpoints, d)
    before = _hashes(d)
    _, sh = _on_mesh(host_state, (1, 8, 1))
    target = _target(sh)
    checkpoint.check_resume(d, SAVED_CFG, DATA, target)   # same run: fine
    same_structure = {"model": {**SAVED_CFG["model"], "hd_dropout": 0.3, "dtype": "bfloat16"},
                      "optim": {"grad_clip": 0.5, "lr": 1.0}}
    checkpoint.check_resume(d, same_structure, DATA, target)   # dropout, dtype, lr, clip value: may change
    wrong = {"model": {**SAVED_CFG["model"], "n_layer": 4, "vocab_size": 128}, "optim": {"grad_clip": 0.0}}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_resume(d, wrong, DATA, target)
    msg = str(e.value)
    assert "\n" not in msg and "model.n_layer: saved 2, requested 4" in msg and "vocab_size: saved 64, requested 128" in msg
    assert "optim.grad_clip: saved 1.0, requested 0.0" in msg and "another --workdir" in msg and str(d / "2") in msg
    # shapes that differ although no listed field does (here: a target built for another vocabulary)
    other = jax.eval_shape(lambda: jax.tree.map(lambda x: x, target))
    other = other.replace(params={**other.params, "embed": jax.ShapeDtypeStruct((128, 32), np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match=r"state params/embed: saved \(64, 32\) float32, requested "
                                                         r"\(128, 32\) float32"):
        checkpoint.check_resume(d, SAVED_CFG, DATA, other)
    assert _hashes(d) == before   # every byte as it was


def test_checkpoint_of_the_old_config_layout_resumes_with_the_same_settings(host_state, tmp_path):
    """A checkpoint whose config kept the optimizer under `train` (before the `optim` section) resumes when the
    settings are the same, restores verified (its config item is checked as saved) and is refused when not."""
    state, sh = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=5)
    ck.save(1, state, LEGACY_CFG, {**DATA, "position": 1})
    ck.close()
    checkpoint.check_resume(tmp_path, SAVED_CFG, DATA, _target(sh))   # same settings, new layout: fine
    (step, restored, _), said = _restore(tmp_path, host_state)
    assert step == 1 and said == [], said
    _assert_equal(restored, host_state)
    with pytest.raises(checkpoint.CheckpointError, match=r"optim\.grad_clip: saved 1\.0, requested 0\.0"):
        checkpoint.check_resume(tmp_path, {**SAVED_CFG, "optim": {"grad_clip": 0.0, "lr": 1e-3}}, DATA, _target(sh))


def test_checkpoint_without_records_still_restores_with_a_note(host_state, tmp_path):
    """Checkpoints written before the records existed (plain Orbax items) resume, unverified, saying so."""
    import orbax.checkpoint as ocp
    state, _ = _on_mesh(host_state, (1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, every=1, keep=5)
    ck.mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(SAVED_CFG),
                                            data=ocp.args.JsonSave({**DATA, "position": 3})), force=True)
    ck.close()
    (step, restored, data), said = _restore(tmp_path, host_state)
    assert step == 3 and data["position"] == 3 and len(said) == 1 and "no integrity record" in said[0], said
    _assert_equal(restored, host_state)
