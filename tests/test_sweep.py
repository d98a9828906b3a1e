"""The sweep tool: overrides -> run folders, dry runs (local and SLURM job array), the results table from the
runs' metrics, and a real two-run local sweep of the trainer."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mosaic_jax.tools import sweep
from tests.conftest import REPO


def test_expand_grid_and_list():
    runs = sweep.expand(grid=["optim.lr=1e-3,3e-3", "--config.model.n_embd=32,64"],
                        runs=["config.train.seed=5 model.arch=gpt2"])
    assert runs[0] == {"train.seed": "5", "model.arch": "gpt2"}
    assert runs[1:] == [{"optim.lr": "1e-3", "model.n_embd": "32"}, {"optim.lr": "1e-3", "model.n_embd": "64"},
                        {"optim.lr": "3e-3", "model.n_embd": "32"}, {"optim.lr": "3e-3", "model.n_embd": "64"}]
    assert sweep.expand(spec={"grid": {"optim.lr": [0.1, 0.2]}, "runs": [{"model.arch": "gpt2"}]}) == \
        [{"model.arch": "gpt2"}, {"optim.lr": "0.1"}, {"optim.lr": "0.2"}]
    for bad in (dict(grid=["lr=1"]), dict(grid=["optim.lr"]), dict(), dict(grid=["optim.lr=1", "optim.lr=2"])):
        with pytest.raises(sweep.SweepError):
            sweep.expand(**bad)
    assert sweep.run_name(3, {"optim.lr": "3e-3", "data.path": "/a b/c"}) == "003_lr=3e-3_path=-a-b-c"
    for old in (dict(grid=["train.lr=1e-3,3e-3"]), dict(runs=["--config.train.warmup_steps=5"]),
                dict(spec={"grid": {"train.grad_clip": [0.0]}})):   # the old spelling: refused before any run
        with pytest.raises(sweep.SweepError, match=r"'train\.(lr|warmup_steps|grad_clip)': moved to optim\."):
            sweep.expand(**old)


def _main(capsys, *argv):
    rc = sweep.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_local_dry_run(capsys, tmp_path):
    rc, out, _ = _main(capsys, "run", "--name=w", f"--root={tmp_path}", "--grid=model.n_embd=32,64", "--dry_run",
                       "--command=python -m mosaic_jax.train", "--", "--config=experiments/configs/tiny_cpu.py")
    assert rc == 0
    assert out.splitlines() == [
        f"python -m mosaic_jax.train --config=experiments/configs/tiny_cpu.py --config.model.n_embd={n} "
        f"--workdir={tmp_path}/w/00{i}_n_embd={n}" for i, n in enumerate((32, 64))]
    assert not (tmp_path / "w").exists()   # a dry run writes nothing


def test_slurm_dry_run_is_one_job_array(capsys, tmp_path):
    rc, out, _ = _main(capsys, "run", "--name=lr", f"--root={tmp_path}", "--grid=optim.lr=1e-3,3e-3,1e-2",
                       "--mode=slurm", "--max_parallel=2", "--sbatch_args=--nodes=2 --partition=gpu", "--dry_run",
                       "--", "--config=experiments/configs/babistories_mm.py")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == (f"sbatch --array=0-2%2 --job-name=lr --output={tmp_path}/lr/slurm-%A_%a.out "
                        f"--export=ALL,MOSAIC_SWEEP_DIR={tmp_path}/lr --nodes=2 --partition=gpu launch/slurm_gpu.sbatch")
    assert lines[3] == (f"# array task 2: --config=experiments/configs/babistories_mm.py --config.optim.lr=1e-2 "
                        f"--workdir={tmp_path}/lr/002_lr=1e-2")


def test_bad_sweeps_are_one_line_errors(capsys, tmp_path):
    rc, _, err = _main(capsys, "run", "--name=x", f"--root={tmp_path}", "--grid=optim.lr=1", "--",
                       "--config=c.py", "--workdir=w")
    assert rc == 2 and "--workdir is set per run" in err
    rc, _, err = _main(capsys, "gather", str(tmp_path / "nope"))
    assert rc == 2 and "sweep.json not found" in err


def _fake_run(run, steps_wanted, train_losses, eval_loss=None, returncode=None):
    d = pathlib.Path(run["dir"])
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"train": {"steps": steps_wanted}}))
    recs = [{"step": s, "split": "train", "loss": l, "tokens_per_s": 1000.0 * s} for s, l in train_losses]
    if eval_loss is not None:
        recs.append({"step": train_losses[-1][0], "split": "eval", "loss": eval_loss, "perplexity": 2.718281828 ** eval_loss})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"cut by a ki')
    if returncode is not None:
        (d / "sweep_status.json").write_text(json.dumps({"returncode": returncode}))


def test_gather_writes_markdown_and_csv(tmp_path):
    plan = sweep.plan_sweep(tmp_path, "g", ["--config=c.py"], sweep.expand(grid=["optim.lr=1e-3,3e-3,1e-2,3e-2"]))
    sweep.write_manifest(plan)
    r = plan["runs"]
    _fake_run(r[0], 3, [(1, 5.0), (2, 4.0), (3, 3.5), (2, 4.1)], eval_loss=3.25)   # resumed: step 2 twice
    _fake_run(r[1], 10, [(1, 5.0), (2, 4.5)])
    _fake_run(r[2], 10, [(1, 5.0)], returncode=1)
    text, rows = sweep.gather(plan["dir"])
    assert [row["status"] for row in rows] == ["done", "incomplete", "failed (exit 1)", "not started"]
    assert rows[0]["step"] == 3 and rows[0]["train_loss"] == 3.5 and rows[0]["eval_loss"] == 3.25
    assert rows[0]["tokens_per_s"] == 2000.0            # median over the last record of each step
    lines = text.splitlines()
    assert lines[2] == "| run | optim.lr | status | step | train_loss | eval_loss | eval_perplexity | tokens_per_s |"
    assert lines[4].startswith("| 000_lr=1e-3 | 1e-3 | done | 3 | 3.5 | 3.25 | 25.79 | 2,000 |")
    assert (tmp_path / "g" / "results.md").read_text() == text
    with open(tmp_path / "g" / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [t["optim.lr"] for t in table] == ["1e-3", "3e-3", "1e-2", "3e-2"] and table[3]["step"] == ""


@pytest.mark.slow
def test_local_sweep_end_to_end(tmp_path, data_dir):
    """Two runs of the real trainer (seed 0 and 1: same compiled step, so the second hits the XLA cache), then
    the table; re-running the sweep skips the finished runs."""
    from mosaic_jax.data import pipeline
    (tmp_path / "t.txt").write_bytes((data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:40_000])
    data = tmp_path / "prepared"
    pipeline.prepare([str(tmp_path / "t.txt")], str(data), "byte", num_workers=1, progress=False)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, "-m", "mosaic_jax.tools.sweep", "run", "--name=seeds", f"--root={tmp_path / 'sweeps'}",
           "--grid=train.seed=0,1", "--", "--config=tiny_cpu", f"--config.data.path={data}",
           "--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
           "--config.model.pmem_size=32", "--config.model.block_size=16", "--config.train.global_batch=4",
           "--config.train.steps=3", "--config.train.log_every=1", "--config.train.eval_every=0",
           "--config.train.sample_tokens=0", "--config.train.export_params=False", "--config.train.peak_flops=1e9"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "seeds"
    with open(sweep_dir / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(t["run"], t["status"], t["step"]) for t in table] == [("000_seed=0", "done", "3"), ("001_seed=1", "done", "3")]
    assert all(float(t["train_loss"]) > 0 for t in table) and table[0]["train_loss"] != table[1]["train_loss"]
    assert "| 000_seed=0 | 0 | done | 3 |" in res.stdout
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.count("already done, skipped") == 2
