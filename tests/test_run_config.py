"""The typed training config (issue 14, item 4): typed sections built by `run_config.resolve()` from the ConfigDict,
defaults and help declared once in the dataclasses, wrong types named up front, every "auto" implementation switch
resolved once by the rules the ops use (ops/dispatch.py) and recorded, `train --print_config` and `train --help`.
(config.json of a real run recording `resolved_impl`: tests/test_train_cli.py::test_uninterrupted_run.)"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from mosaic_jax import cli_util, train
from mosaic_jax.config_fields import describe
from mosaic_jax.kernels import platform
from mosaic_jax.ops import memory, memory_v2
from mosaic_jax.training import integrity, legacy_config, run_config, sections
from _configs import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _parse(*args):
    """The ConfigDict that flag parsing as in the CLIs (cli_util.parse) gives, on a fresh FlagValues so that tests
    can parse repeatedly (ml_collections registers the `--config.*` overrides it finds in `sys_argv`)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "preset", flag_values=fv, sys_argv=["train", *args])
    cli_util.parse("train", fv, list(args))
    return cli_util.load_config(fv)


def test_defaults_and_help_are_declared_once_in_the_dataclasses():
    base = run_config.base_config()
    assert sorted(s.name for s in sections.all_sections()) == sorted(base.keys())
    for s in sections.all_sections():
        fields = s.fields()
        assert base[s.name].to_dict() == {f.name: f.default for f in fields}
        for f in fields:
            assert f.type in (int, float, bool, str) and f.help and "\n" not in f.help, (s.name, f.name)
            assert type(f.default) is f.type, (s.name, f.name)
    # the placeholders resolve() fills are the only defaults that differ from the dataclasses'
    assert base.optim.decay_steps == 0 and sections.OptimConfig().decay_steps == 80000
    assert base.model.vocab_size == 0


def test_typed_sections_equal_the_configdict_values():
    rc = run_config.resolve(config_with(**{"train.steps": 50, "train.global_batch": 8, "data.packing": False,
                                       "mesh.fsdp": 4, "model.n_layer": 2}), data_vocab_size=260, data_parallel=4)
    c = rc.cfg
    assert dataclasses.asdict(rc.data) == c.data.to_dict()
    assert dataclasses.asdict(rc.mesh) == c.mesh.to_dict()
    assert dataclasses.asdict(rc.train) == c.train.to_dict() and dataclasses.asdict(rc.optim) == c.optim.to_dict()
    assert rc.model.model_dict() == {k: v for k, v in c.model.to_dict().items() if k != "vocab_multiple"}
    assert dataclasses.asdict(rc.model.impl) == c.impl.to_dict()
    # the derived fields are filled in the typed sections too
    assert (rc.train.steps, rc.train.eval_batch_size, rc.optim.decay_steps, rc.data.seq_len, rc.mesh.fsdp,
            rc.model.vocab_size) == (50, 8, 50, rc.model.block_size, 4, 320)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rc.train.steps = 3


def test_a_command_line_override_reaches_the_typed_sections():
    cfg = _parse("--config=tiny_cpu", "--config.optim.lr=0.01", "--config.optim.b2=0.99", "--config.train.steps=7",
                 "--config.mesh.fsdp=2", "--config.data.seq_len=64")
    rc = run_config.resolve(cfg, data_vocab_size=4096, data_parallel=2)
    assert rc.optim.lr == 0.01 and rc.optim.b2 == 0.99 and rc.train.steps == 7 and rc.optim.decay_steps == 7
    assert rc.optim.warmup_steps == 50 and rc.optim.min_lr == 1e-4   # the preset's, untouched
    assert rc.mesh.fsdp == 2 and rc.data.seq_len == 64
    assert "lr" not in rc.cfg.train and rc.to_dict()["optim"]["lr"] == 0.01   # what config.json records


@pytest.mark.parametrize("field", [f.name for f in describe(sections.OptimConfig)])
def test_the_old_train_spelling_of_an_optimizer_field_is_one_line_naming_the_new_one(field, capsys):
    with pytest.raises(SystemExit) as e:
        _parse("--config=tiny_cpu", f"--config.train.{field}=1")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"train: error: --config.train.{field}: moved to --config.optim.{field} ")


def test_a_config_file_with_the_old_spelling_names_the_new_one(tmp_path, capsys):
    old = tmp_path / "old.py"
    old.write_text("from mosaic_jax.training.run_config import base_config\n\n\ndef get_config():\n"
                   "    c = base_config()\n    c.train.update(steps=10, lr=1e-3)\n    return c\n")
    with pytest.raises(SystemExit) as e:
        _parse(f"--config={old}")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == ("train: error: --config: the config file sets train.lr: moved to optim.lr "
                                         "(write c.optim.lr = ...)")
    old.write_text(old.read_text().replace("c.train.update(steps=10, lr=1e-3)", "c.model.nlayer = 3"))
    with pytest.raises(SystemExit):
        _parse(f"--config={old}")
    err = capsys.readouterr().err.strip()
    assert err == "train: error: --config: the config file sets model.nlayer: no such config field"


def test_a_config_saved_by_the_old_layout_is_upgraded_and_resumes():
    """config.json / a checkpoint's config written before `optim` existed kept the optimizer under `train`."""
    new = run_config.resolve(config_with(), 260).to_dict()
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in new.items() if k != "optim"}
    old["train"].update(new["optim"])   # the old layout: one flat train section
    up = legacy_config.upgrade(old)
    assert up == new and "lr" in old["train"] and "optim" not in old   # a copy; the input is untouched
    assert legacy_config.upgrade(new) == new   # a current config is unchanged
    assert integrity.config_differences(old, new) == []   # same settings: resumes
    no_clip = {**new, "optim": {**new["optim"], "grad_clip": 0.0}}
    assert integrity.config_differences(old, no_clip) == [
        "optim.grad_clip: saved 1.0, requested 0.0 (clipping on/off changes the optimizer state)"]
    assert legacy_config.moved_to("--config.train.lr") == "optim.lr" and legacy_config.moved_to("train.steps") is None


def test_a_wrong_type_is_one_line_naming_the_field(capsys):
    with pytest.raises(SystemExit) as e:   # from the command line: absl/ml_collections refuse it, exit 2
        _parse("--config=tiny_cpu", "--config.train.steps=1.5")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--config.train.steps=1.5" in err
    # from a config file (unlocked dicts can hold anything): resolve() names section.field and the types
    for key, value, expect in (("train.steps", "100", "train.steps='100': expected int, got str"),
                               ("train.steps", True, "train.steps=True: expected int, got bool"),
                               ("optim.lr", "0.01", "optim.lr='0.01': expected float, got str"),
                               ("model.n_layer", 2.0, "model.n_layer=2.0: expected int, got float"),
                               ("data.packing", 1, "data.packing=1: expected bool, got int"),
                               ("mesh.fsdp", "4", "mesh.fsdp='4': expected int, got str")):
        c = config_with()
        c.unlock()
        section, field = key.split(".")
        del c[section][field]
        c[section][field] = value
        with pytest.raises(run_config.ConfigError) as err:
            run_config.resolve(c, data_vocab_size=260)
        assert str(err.value).startswith(expect) and "\n" not in str(err.value)
    c = config_with()
    c.unlock()
    c.train.stepz = 5
    with pytest.raises(run_config.ConfigError, match=r"^train\.stepz=5: no such config field"):
        run_config.resolve(c, data_vocab_size=260)
    c = config_with()
    c.unlock()
    c.optim.lr = 1   # an int where a float is declared is a float
    assert run_config.resolve(c, data_vocab_size=260).optim.lr == 1.0


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_resolved_impl_is_what_the_ops_choose(backend):
    """resolve() records, per backend, exactly what the ops pick at trace time for the training step's conditions
    (read dropout from train.dropout and model.ic_dropout, documents from data.packing and model.doc_masking)."""
    v1 = run_config.resolve(config_with(**{"model.ic_dropout": 0.1, "data.seq_len": 384}), 260, backend=backend)
    with platform.target(backend):
        expect_train = {"cmem_impl": memory.resolve_impl("auto", True, dropout=True),
                        "pmem_impl": memory.resolve_impl("auto", True, dropout=True)}
        expect_eval = {"cmem_impl": memory.resolve_impl("auto", True), "pmem_impl": memory.resolve_impl("auto", True)}
    assert v1.impl["backend"] == backend and v1.impl["seq_len"] == 384
    assert set(v1.impl["train"]) == {"leaky_impl", "cmem_impl", "pmem_impl", "proj_impl", "loss_impl"}
    assert {k: v1.impl["train"][k] for k in expect_train} == expect_train
    assert {k: v1.impl["eval"][k] for k in expect_eval} == expect_eval
    cpu = backend == "cpu"
    assert v1.impl["train"]["leaky_impl"] == ("scan" if cpu else "chunked")   # 384 > memory.MATRIX_MAX_T
    assert v1.impl["train"]["loss_impl"] == v1.impl["train"]["proj_impl"] == ("fused" if cpu else "dense")
    off = run_config.resolve(config_with(**{"model.ic_dropout": 0.1, "train.dropout": False}), 260, backend=backend)
    assert off.impl["train"] == off.impl["eval"]   # dropout off in training: the eval conditions

    v2 = run_config.resolve(config_with(**{"model.arch": "mosaic_v2", "model.block_size": 1024, "data.packing": True,
                                       "model.ic_dropout": 0.0}), 260, backend=backend)
    with platform.target(backend):
        docs = jnp.zeros((1, 1024), jnp.int32)
        assert v2.impl["train"]["v2_impl"] == memory_v2.choose_impl("auto", 1024, docs, False)
    assert set(v2.impl["train"]) == {"v2_impl", "v2_key_impl", "loss_impl"}
    assert v2.impl["train"]["v2_key_impl"] == "scan"   # 1024 > dispatch.V2_KEY_MATRIX_MAX_T, on every backend
    gpt2 = run_config.resolve(config_with(**{"model.arch": "gpt2"}), 260, backend=backend)
    assert set(gpt2.impl["train"]) == {"loss_impl"}


def test_an_impossible_explicit_choice_fails_at_resolve_time():
    with pytest.raises(run_config.ConfigError, match=r"^impl\.cmem_impl='flash'.*no dropout"):
        run_config.resolve(config_with(**{"impl.cmem_impl": "flash", "model.ic_dropout": 0.1}), 260)
    rc = run_config.resolve(config_with(**{"impl.cmem_impl": "flash", "model.ic_dropout": 0.1, "train.dropout": False}),
                            260)
    assert rc.impl["train"]["cmem_impl"] == "flash"


def test_resolved_impl_does_not_block_resuming_an_older_run():
    """Checkpoints written before `resolved_impl` existed hold the config without it: a resume compares only the
    fields it cannot change, so the new record is no difference; config.json readers use .get() on sections."""
    rc = run_config.resolve(config_with(), 260)
    old = {k: v for k, v in rc.to_dict().items() if k != "resolved_impl"}
    assert integrity.config_differences(old, rc.to_dict()) == []
    assert json.loads(json.dumps(rc.to_dict()))["resolved_impl"] == rc.impl


def test_print_config_without_data_path_says_vocab_is_unresolved(capsys):
    assert train.print_config(_parse("--config=tiny_cpu", "--config.data.path=")) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["model"]["vocab_size"] == 0 and "vocab_size is unresolved" in err and "data.path is unset" in err
    assert printed["resolved_impl"]["train"]["cmem_impl"] == "fused"


def test_help_lists_every_config_field_with_type_and_default(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    owners = sections.owners()   # a family's own model field is tagged with its family: "[mosaic_v2] "
    for s in sections.all_sections():
        for f in s.fields():
            tag = f"[{', '.join(owners[f.name])}] " if s.name == "model" and f.name in owners else ""
            line = f"--config.{s.name}.{f.name} ({f.type.__name__}, default {f.default!r}): {tag}{f.help}"
            assert line in out
    for name, cls in (("train", sections.TrainConfig), ("optim", sections.OptimConfig)):
        assert len(describe(cls)) == len([ln for ln in out.splitlines() if ln.strip().startswith(f"--config.{name}.")])
    assert "  --config.optim.lr (float, default 0.005): peak learning rate" in out


def test_print_config_cli_prints_json_and_writes_nothing(prepared_byte, tmp_path):
    """The CLI end to end (a subprocess: --print_config must exit before the workdir guard and the run)."""
    cwd, workdir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    before = {p: p.stat().st_mtime_ns for p in prepared_byte.rglob("*")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "mosaic_jax.train", "--config=tiny_cpu", "--print_config",
                          f"--workdir={workdir}", f"--config.data.path={prepared_byte}", "--config.optim.lr=0.01"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["model"]["vocab_size"] == 320 and printed["optim"]["lr"] == 0.01   # 256 bytes + specials -> 320
    assert printed["resolved_impl"]["backend"] == "cpu" and printed["resolved_impl"]["train"]["leaky_impl"] == "scan"
    assert "unresolved" not in res.stderr
    assert not workdir.exists() and list(cwd.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in prepared_byte.rglob("*")} == before
