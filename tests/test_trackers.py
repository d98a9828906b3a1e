"""Trackers (`train.trackers`) and profiles (`train.profile_steps`), issue 15 items 4 and 5.

One tiny CLI run with jsonl, tensorboard and wandb (W&B offline mode: no network) and a profile of steps 1..2:
the W&B transaction log records the resolved run config (as in config.json) plus the tokenizer hash and, as the
final summary, the same train loss as the last JSONL record; a `*.xplane.pb` trace lies under workdir/profile.
Bad tracker or profile values fail in resolve() with one line naming the field, before anything is written.
"""
import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

from mosaic_jax.data import store
from mosaic_jax.training import run_config, trackers

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=4",
        "--config.model.block_size=32", "--config.train.steps=3", "--config.train.global_batch=8",
        "--config.optim.warmup_steps=1", "--config.train.log_every=1", "--config.train.checkpoint_every=3",
        "--config.train.eval_every=0", "--config.train.sample_tokens=0", "--config.train.export_params=false",
        "--config.optim.decay_steps=4"]   # fixed, so the resumed run (steps=4) reuses the compiled step


def wandb_records(path: pathlib.Path):
    """The protobuf records of a W&B transaction log (`run-<id>.wandb`): the LevelDB log format, 32 KiB blocks of
    7-byte-header chunks (crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte file header (":W&B", magic,
    version). wandb 0.31 ships no Python reader, so the test reads the format itself."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(chunks)
            chunks = b""
            yield rec


def train_cli(prepared_byte, wd, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, "-m", "mosaic_jax.train", "--config=tiny_cpu", f"--workdir={wd}",
           f"--config.data.path={prepared_byte}", *TINY, "--config.train.trackers=jsonl,tensorboard,wandb",
           f"--config.train.compilation_cache_dir={wd.parent / 'xla_cache'}", *extra]   # the resume skips compiling
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def run(prepared_byte, tmp_path_factory):
    pytest.importorskip("wandb")
    wd = tmp_path_factory.mktemp("trackers") / "run"
    train_cli(prepared_byte, wd, "--config.train.profile_steps=1:3")
    return wd


def test_wandb_offline_run_records_config_tokenizer_and_final_loss(run, prepared_byte):
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run_id = trackers.wandb_run_id(run)   # derived from the workdir path: a resume continues this run
    log = runs[0] / f"run-{run_id}.wandb"
    assert log.is_file()
    records = list(wandb_records(log))
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert meta.run_id == run_id and meta.project == "mosaic_jax" and meta.display_name == run.name
    config = {u.key: json.loads(u.value_json) for u in meta.config.update if not u.key.startswith("_")}
    expected = json.loads((run / "config.json").read_text())
    expected["tokenizer_hash"] = store.open_prepared(str(prepared_byte), "train").tokenizer_hash
    assert config == expected
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    jsonl = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in jsonl if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    # the same float64 goes to every tracker and both write it with repr-exact JSON: equality is exact
    assert summary["train/loss"] == train[-1]["loss"] and summary["_step"] == 3
    assert "peak_memory_gb" not in train[-1]   # the CPU backend reports no memory stats: not logged


def test_tensorboard_holds_the_run_config(run):
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    assert b"run_config" in events.read_bytes() and b"tokenizer_hash" in events.read_bytes()


def test_a_resume_continues_the_same_wandb_run(run, prepared_byte):
    """Runs after the other tests of this module (file order): it adds a step to the same workdir."""
    first = {p.name for p in (run / "wandb").glob("offline-run-*")}
    train_cli(prepared_byte, run, "--config.train.steps=4")
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {p.name for p in runs} > first
    (resumed,) = [p for p in runs if p.name not in first]
    (meta,) = [r.run for r in wandb_records(resumed / f"run-{trackers.wandb_run_id(run)}.wandb")
               if r.WhichOneof("record_type") == "run"]
    assert meta.run_id == trackers.wandb_run_id(run)


def test_profile_trace_is_written(run):
    traces = list((run / "profile").rglob("*.xplane.pb"))
    assert traces and all(t.stat().st_size > 0 for t in traces)


@pytest.mark.parametrize("field, value, expect", [
    ("trackers", "jsonl,neptune", "train.trackers: 'neptune' is not a tracker (known: jsonl, tensorboard, wandb)"),
    ("profile_steps", "5", "train.profile_steps='5': expected START:END"),
    ("profile_steps", "3:2", "train.profile_steps='3:2': needs 0 <= START < END <= train.steps=10"),
    ("profile_steps", "0:11", "train.profile_steps='0:11': needs 0 <= START < END <= train.steps=10"),
])
def test_bad_values_are_one_line_errors_naming_the_field(field, value, expect):
    cfg = run_config.base_config()
    cfg.data.path = "unused"
    cfg.train.steps = 10
    cfg.train[field] = value
    with pytest.raises(run_config.ConfigError) as e:
        run_config.resolve(cfg, 256)
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


def test_missing_wandb_is_named_before_anything_is_written(prepared_byte, tmp_path, monkeypatch):
    from mosaic_jax import train
    monkeypatch.setitem(sys.modules, "wandb", None)   # how Python marks a package as not importable
    cfg = run_config.base_config()
    cfg.data.path = str(prepared_byte)
    cfg.train.trackers = "jsonl,wandb"
    with pytest.raises(run_config.ConfigError) as e:
        train.train(cfg, str(tmp_path / "run"))
    assert str(e.value) == "train.trackers: 'wandb' needs the wandb package: pip install 'mosaic_jax[wandb]'"
    assert not (tmp_path / "run").exists()


def test_default_trackers_keep_todays_files(tmp_path):
    from mosaic_jax.training import metrics
    assert run_config.base_config().train.trackers == "jsonl,tensorboard"
    w = metrics.MetricWriter(tmp_path, enabled=True, run_config={"model": {"arch": "mosaic"}})
    w.write_scalars(2, {"loss": 2.5, "grad_norm": float("inf")})
    w.close()
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert list(rec) == ["step", "split", "time", "loss", "grad_norm"] and rec["grad_norm"] == "inf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]
