"""End to end: `python -m mosaic_jax.train` on a tiny prepared TinyStories slice (byte tokenizer), in subprocesses
on the 8 simulated CPU devices (pure FSDP over 8).

* an uninterrupted run: falling loss, config/metrics/TensorBoard/export files, generated text;
* SIGTERM saves and exits 0, SIGKILL mid-run, resume twice: final params BITWISE equal to the uninterrupted run;
* bad input: one-line error naming the field or file, exit 1, nothing in the workdir touched.
* run integrity (issue 13): a resume on another architecture is refused with every file byte-identical; corrupt
  checkpoints are set aside and the replay from an earlier one is exact; a non-finite loss sets aside the
  checkpoint that computed it and the re-run trains on.

Subprocesses share a persistent XLA compilation cache, so only the first run pays for compilation.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

STEPS = 16
MODEL_ARGS = [
    "--config.model.n_layer=2", "--config.model.n_embd=32", "--config.model.n_head=4",
    "--config.model.pmem_size=64", "--config.model.block_size=32",
    "--config.model.ic_dropout=0.1", "--config.model.hd_dropout=0.1",   # dropout on: the rng must resume too
    f"--config.train.steps={STEPS}", "--config.train.global_batch=8", "--config.optim.lr=1e-2",
    "--config.optim.warmup_steps=2", "--config.train.log_every=1", "--config.train.checkpoint_every=4",
    "--config.train.keep_checkpoints=10", f"--config.train.eval_every={STEPS}", "--config.train.eval_batches=2",
    "--config.train.sample_tokens=24", "--config.train.sample_prompt=Once upon a time",
]


# ---- fast unit tests: config resolution, metric sinks, the NaN guard ---------------------------------------
def test_resolve_fills_derived_fields_and_names_bad_ones():
    from mosaic_jax.training import run_config
    c = run_config.base_config()
    c.data.path = "somewhere"
    c.model.update(n_layer=2, n_embd=32, n_head=4, block_size=64)
    c.train.update(steps=50, global_batch=8)
    rc = run_config.resolve(c, data_vocab_size=260, data_parallel=4)
    assert rc.model.vocab_size == 320 and rc.cfg.data.seq_len == 64
    assert rc.cfg.optim.decay_steps == 50 and rc.optim.decay_steps == 50 and rc.cfg.train.eval_batch_size == 8
    assert c.model.vocab_size == 0   # the caller's config is not modified
    bad = [({"train.microbatches": 3}, "train.microbatches=3"), ({"train.global_batch": 6}, "train.global_batch=6"),
           ({"model.vocab_size": 100}, "model.vocab_size=100"), ({"data.path": ""}, "data.path"),
           ({"impl.leaky_impl": "fast"}, "impl.leaky_impl"), ({"optim.lr": -1.0}, "optim.lr")]
    for change, msg in bad:
        (section, field), value = next(iter(change.items()))[0].split("."), next(iter(change.values()))
        c2 = run_config.base_config()
        c2.data.path = "somewhere"
        c2[section][field] = value
        with pytest.raises(run_config.ConfigError, match=msg.replace(".", r"\.")):
            run_config.resolve(c2, data_vocab_size=260, data_parallel=4)


def _load_preset(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_presets_resolve():
    """tiny_cpu resolves; the BabiStories presets carry the paper's recipe (spec §4.1) and equal FLOPs."""
    from mosaic_jax.models import flops
    from mosaic_jax.training import run_config
    run_config.resolve(_load_preset("tiny_cpu"), data_vocab_size=4096)
    mm, gpt = (run_config.resolve(_load_preset(n), data_vocab_size=50257, data_parallel=8)
               for n in ("babistories_mm", "babistories_gpt2"))
    m, t, o = mm.model, mm.cfg.train, mm.cfg.optim
    assert (m.n_layer, m.n_embd, m.n_head, m.pmem_size, m.block_size, m.vocab_size) == (12, 768, 12, 2688, 512, 50304)
    assert (t.global_batch, o.lr, o.min_lr, o.warmup_steps, o.decay_steps, t.steps) == (512, 5e-3, 1e-4, 2000,
                                                                                        80_000, 80_000)
    assert (o.weight_decay, o.grad_clip, o.b1, o.b2, m.ic_dropout, m.hd_dropout) == (0.1, 1.0, 0.9, 0.95, 0.05, 0.05)
    assert m.arch == "mosaic" and gpt.model.arch == "gpt2" and gpt.cfg.train.to_dict() == t.to_dict()
    assert gpt.optim == mm.optim
    assert flops.forward_flops_per_token(m, 512) == flops.forward_flops_per_token(gpt.model, 512)


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    from mosaic_jax.training import metrics
    w = metrics.MetricWriter(tmp_path, enabled=True)
    w.write_scalars(3, {"loss": 2.5, "mfu": None, "grad_norm": float("nan")})
    w.write_text(3, "sample", "Once upon a time")
    w.close()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["step"] == 3 and recs[0]["loss"] == 2.5 and recs[0]["grad_norm"] == "nan" and "mfu" not in recs[0]
    assert recs[1]["text"] == "Once upon a time"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert metrics.MetricWriter(tmp_path / "other", enabled=False).enabled is False
    assert not (tmp_path / "other").exists()   # non-zero processes write nothing


def test_nan_guard_names_the_step():
    from mosaic_jax.training import metrics
    metrics.check_finite(5, {"loss": 1.0, "grad_norm": 2.0})
    with pytest.raises(FloatingPointError, match="loss is nan at step 7"):
        metrics.check_finite(7, {"loss": float("nan")})
    with pytest.raises(FloatingPointError, match="grad_norm is inf at step 9"):
        metrics.check_finite(9, {"loss": 1.0, "grad_norm": float("inf")})


def test_console_line():
    from mosaic_jax.training import metrics
    line = metrics.console_line(120, 2000, {"loss": 2.34567, "lr": 1.2e-3, "tokens_per_s": 12345.0, "mfu": 0.123,
                                            "step_time": 0.081})
    assert line == "step 120/2000 | loss 2.3457 | lr 1.20e-03 | 12,345 tok/s | MFU 12.3% | 0.081 s/step | ETA 2m32s"


# ---- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, data_dir):
    """A prepared slice of ../shared/data/tinystories (150 kB train, 30 kB validation), byte tokenizer."""
    from mosaic_jax.data import pipeline
    root = tmp_path_factory.mktemp("tiny_data")
    src = data_dir / "tinystories"
    (root / "train.txt").write_bytes((src / "train_v1_prefix_a.txt").read_bytes()[:150_000])
    (root / "valid.txt").write_bytes((src / "valid_v1_prefix.txt").read_bytes()[:30_000])
    out = root / "prepared"
    pipeline.prepare([str(root / "train.txt")], str(out), "byte", validation_inputs=[str(root / "valid.txt")],
                     num_workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def _cmd(workdir, data, *extra):
    return [sys.executable, "-m", "mosaic_jax.train", "--config=experiments/configs/tiny_cpu.py",
            f"--workdir={workdir}", f"--config.data.path={data}", *MODEL_ARGS, *extra]


def _run(cmd, env, timeout=1800):   # a bound on a hung run only: a cold compile at load 12 took > 300 s
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _start_and_signal(cmd, env, ckpt_dir, after_step, sig):
    """Start a run, send `sig` once a checkpoint at step >= after_step is complete, return (proc, out, err)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # a bound on a hung run only (a cold compile on a loaded 2-core machine can take ~300 s), not a speed check
    deadline = time.monotonic() + 1800
    while proc.poll() is None:
        done = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
        if done and max(done) >= after_step:
            proc.send_signal(sig)
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint >= {after_step} after 1800 s: {proc.communicate()[0][-2000:]}")
        time.sleep(0.02)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode is not None
    return proc, out, err


def _records(workdir, split):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == split]


def _exported(workdir):
    from mosaic_jax.training import checkpoint
    _, params = checkpoint.load_exported(workdir / "export")
    return params


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_data, env):
    workdir = tmp_path_factory.mktemp("full") / "run"
    res = _run(_cmd(workdir, tiny_data), env)
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir, res


@pytest.mark.slow
def test_uninterrupted_run(full_run, tiny_data):
    workdir, res = full_run
    train = _records(workdir, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert train[-1]["loss"] < train[0]["loss"] - 0.5          # the loss falls
    assert all(k in train[-1] for k in ("lr", "grad_norm", "tokens_per_s", "mfu", "step_time"))
    ev = _records(workdir, "eval")
    assert ev and ev[-1]["step"] == STEPS and ev[-1]["perplexity"] == pytest.approx(np.exp(ev[-1]["loss"]))
    assert _records(workdir, "text")[-1]["text"].startswith("Once upon a time")
    assert "=== generated text ===" in res.stdout and "MFU" in res.stdout and "tok/s" in res.stdout
    cfg = json.loads((workdir / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == 320 and cfg["optim"]["decay_steps"] == STEPS   # resolved fields
    assert cfg["data"]["path"] == str(tiny_data)
    cpu = {"leaky_impl": "scan", "cmem_impl": "fused", "pmem_impl": "fused", "proj_impl": "fused", "loss_impl": "fused"}
    assert {k: v for k, v in cfg["resolved_impl"].items() if k != "requested"} == {
        "backend": "cpu", "seq_len": 32, "train": cpu, "eval": cpu}   # what ran
    assert {k: cfg["impl"][k] for k in cpu} == cpu                     # substituted in the impl section
    assert {k: cfg["resolved_impl"]["requested"][k] for k in cpu} == dict.fromkeys(cpu, "auto")   # as asked
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8, 12, 16]
    assert (workdir / "export" / "model_config.json").exists()


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bitwise_identical(full_run, tiny_data, env, tmp_path):
    workdir = tmp_path / "run"
    ckpt = workdir / "checkpoints"
    cmd = _cmd(workdir, tiny_data)

    proc, out, err = _start_and_signal(cmd, env, ckpt, 4, signal.SIGTERM)   # preemption: save and exit 0
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved" in out
    stopped = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert 4 < stopped < STEPS or stopped == 4 and "SIGTERM" in out

    proc, out, err = _start_and_signal(cmd, env, ckpt, stopped + 4, signal.SIGKILL)   # a hard kill mid-run
    assert proc.returncode == -signal.SIGKILL, (out[-2000:], err[-2000:])
    assert f"resumed from {ckpt / str(stopped)}" in out
    assert not (workdir / "export").exists()   # it really died before the end

    res = _run(cmd, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    full_params, resumed_params = _exported(full_run[0]), _exported(workdir)
    import jax
    for a, b in zip(jax.tree.leaves(full_params), jax.tree.leaves(resumed_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the replayed steps log the same losses as the uninterrupted run
    full = {r["step"]: r["loss"] for r in _records(full_run[0], "train")}
    resumed = {r["step"]: r["loss"] for r in _records(workdir, "train")}
    assert resumed == full


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in workdir.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("extra,expect", [
    (["--config.train.steps=0"], "train.steps=0"),
    (["--config.train.no_such_field=1"], "--config.train.no_such_field"),
    (["--config.model.n_head=5"], "model.n_embd=32 is not divisible by n_head=5"),
    (["--config.data.path=/nonexistent/prepared"], "/nonexistent/prepared"),
])
def test_bad_input_is_one_line_and_writes_nothing(full_run, tiny_data, env, tmp_path, extra, expect):
    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    before = _snapshot(workdir)
    res = _run(_cmd(workdir, tiny_data, *extra), env)
    assert res.returncode == (2 if "no_such_field" in expect else 1)   # a bad flag is a usage error
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("train: error:") and expect in err_lines[0], res.stderr
    assert _snapshot(workdir) == before


@pytest.mark.slow
def test_resume_with_another_tokenizer_is_refused(full_run, tiny_data, env, tmp_path):
    """The same text prepared with another tokenizer (sentencepiece) must not resume a byte-level run."""
    from mosaic_jax.data import pipeline
    other = tmp_path / "sp_prepared"
    src = pathlib.Path(tiny_data).parent
    pipeline.prepare([str(src / "train.txt")], str(other), "sp:512", validation_inputs=[str(src / "valid.txt")],
                     num_workers=1, progress=False)
    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    before = _snapshot(workdir)
    res = _run(_cmd(workdir, other), env)
    assert res.returncode == 1
    assert "tokenizer hash" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _snapshot(workdir) == before


def _file_hashes(workdir):
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in workdir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_resume_with_another_architecture_is_refused_and_the_run_survives(full_run, tiny_data, env, tmp_path):
    """Issue 13.1: n_layer 2 -> 1 on a finished run: one line naming the field, every file byte-identical, and
    the original command still resumes from the newest checkpoint (main renamed them all *.broken)."""
    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    before = _file_hashes(workdir)
    res = _run(_cmd(workdir, tiny_data, "--config.model.n_layer=1"), env)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train: error: cannot resume"), res.stderr
    assert "model.n_layer: saved 2, requested 1" in lines[0] and "another --workdir" in lines[0], lines[0]
    assert _file_hashes(workdir) == before
    res = _run(_cmd(workdir, tiny_data), env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {workdir / 'checkpoints' / str(STEPS)} (step {STEPS})" in res.stdout


@pytest.mark.slow
def test_corrupt_checkpoints_are_set_aside_and_the_replay_is_exact(full_run, tiny_data, env, tmp_path):
    """Issue 13.2: a bit flipped in checkpoint 16's array data and a damaged data item in 12: both are set aside
    (one line each, naming the next one tried), the run resumes from 8 and ends bitwise equal to the original."""
    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    shutil.rmtree(workdir / "export")
    ckpt = workdir / "checkpoints"
    f = max((p for p in (ckpt / "16" / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
            key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    (ckpt / "12" / "data" / "metadata").write_text("{not json")
    res = _run(_cmd(workdir, tiny_data), env)
    assert res.returncode == 0, res.stderr[-3000:]
    for bad, nxt in ((16, 12), (12, 8)):
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(f"checkpoint {ckpt / str(bad)} "))
        assert "failed its integrity check" in line and f"set aside as {ckpt / f'{bad}.broken-'}" in line, line
        assert line.endswith(f"trying {ckpt / str(nxt)}"), line
    assert f"resumed from {ckpt / '8'} (step 8)" in res.stdout
    assert sorted(p.name.split("-")[0] for p in ckpt.iterdir() if "broken" in p.name) == ["12.broken", "16.broken"]
    import jax
    for a, b in zip(jax.tree.leaves(_exported(full_run[0])), jax.tree.leaves(_exported(workdir)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_nonfinite_stop_sets_aside_the_poisoned_checkpoint_and_the_resume_trains_on(full_run, tiny_data, env,
                                                                                    tmp_path):
    """Issue 13.3: from checkpoint 16, lr=1e10 (min_lr too: steps 17-20 lie past decay_steps=16) saves a finite but
    blown-up state at 17, and the next loss is not finite. That checkpoint is not trusted: it is set aside (never
    deleted), the message names the step the next run resumes from, and a re-run with the original lr trains on
    from there (main resumed from 17: NaN forever)."""
    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    shutil.rmtree(workdir / "export")
    ckpt = workdir / "checkpoints"
    longer = ["--config.train.steps=20", f"--config.optim.decay_steps={STEPS}"]   # the same schedule as full_run
    res = _run(_cmd(workdir, tiny_data, *longer, "--config.optim.lr=1e10", "--config.optim.min_lr=1e10",
                    "--config.optim.warmup_steps=0", "--config.train.checkpoint_every=1"), env)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("train: error:") and " at step " in line and ("nan" in line or "inf" in line), res.stderr
    assert line.endswith(f"Re-running resumes from checkpoint {ckpt / str(STEPS)} (step {STEPS})"), line
    if "computed it" in line:   # a saved checkpoint gave the non-finite loss: set aside, not deleted
        assert (next(ckpt.glob("*.nonfinite-*")) / "state").is_dir()
    assert max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == STEPS
    assert not (workdir / "export").exists()
    res = _run(_cmd(workdir, tiny_data, *longer), env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {ckpt / str(STEPS)} (step {STEPS})" in res.stdout and "step 20/20 | loss" in res.stdout
