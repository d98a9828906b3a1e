"""The trainer against hostile conditions, with real processes and real filesystems (issue 13, items 4 and 5):

* a second trainer on a workdir in use exits 1 in one line and writes nothing; SIGINT then saves and exits 130;
* SIGKILL with grain workers (data.num_workers=1): no worker outlives the trainer, and the next run takes over the
  stale lock and resumes;
* disk full (a small tmpfs): the failed async save stops the run in one line, earlier checkpoints restore;
* a workdir that is a file, or on a read-only filesystem: one line, exit 1.

Mounting needs root (CI runs as root); without it those tests skip. Every run shares one compilation cache.
"""
import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO

ARGS = [
    "--config=experiments/configs/tiny_cpu.py", "--config.model.n_layer=2", "--config.model.n_embd=32",
    "--config.model.n_head=4", "--config.model.pmem_size=64", "--config.model.block_size=32",
    "--config.train.global_batch=8", "--config.optim.lr=1e-2", "--config.optim.warmup_steps=2",
    "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.sample_tokens=0",
    "--config.train.peak_flops=1e9", "--config.train.keep_checkpoints=100", "--config.train.checkpoint_every=4",
    "--config.train.export_params=False",
]


@pytest.fixture(scope="module")
def io_data(tmp_path_factory, data_dir):
    """100 kB of TinyStories, byte tokenizer, no validation split."""
    from mosaic_jax.data import pipeline
    root = tmp_path_factory.mktemp("io_data")
    (root / "train.txt").write_bytes((data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:100_000])
    pipeline.prepare([str(root / "train.txt")], str(root / "prepared"), "byte", num_workers=1, progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def io_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _cmd(workdir, data, steps, *extra):
    return [sys.executable, "-m", "mosaic_jax.train", *ARGS, f"--config.data.path={data}",
            f"--config.train.steps={steps}", f"--workdir={workdir}", *extra]


def _run(cmd, env):
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _start(cmd, env):
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved(workdir):
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


# Bound on waiting for an event of a trainer subprocess (a checkpoint, its exit): only so that a hung trainer fails
# the test instead of hanging the suite, never a speed assumption. The old 300 s made the SIGINT test flaky: under
# `-n 2` on a loaded 2-core machine the first (cold) compile alone took nearly that long, and the run was at
# step 9, saving normally, when the wait gave up (reproduced at load 11).
HUNG_S = 1800


def _wait_for_checkpoint(proc, workdir, step):
    """Return once a complete checkpoint >= `step` exists; fail if the run exits first (or hangs: killed)."""
    deadline = time.monotonic() + HUNG_S
    while proc.poll() is None and time.monotonic() < deadline:
        if _saved(workdir) and max(_saved(workdir)) >= step:
            return
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()   # hung: do not leak it into the rest of the suite
    out, err = proc.communicate()
    pytest.fail(f"no checkpoint >= {step} (exit {proc.returncode}): {out[-1500:]} {err[-1500:]}")


def _wait_stopped(proc):
    """Block until every thread of `proc` is in the stopped state ('T' in /proc/PID/task/*/stat). SIGSTOP is
    asynchronous: kill() returns before the threads stop, and a thread inside a syscall (an async checkpoint write)
    finishes it first. Without /proc, poll nothing (the signal still lands, just later)."""
    tasks = pathlib.Path(f"/proc/{proc.pid}/task")
    if not tasks.is_dir():
        return
    deadline = time.monotonic() + HUNG_S
    while time.monotonic() < deadline:
        states = []
        for t in tasks.iterdir():
            try:
                stat = (t / "stat").read_text()
            except OSError:
                continue   # the thread exited meanwhile
            states.append(stat[stat.rfind(")") + 2:].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.01)
    pytest.fail(f"pid {proc.pid} did not stop after SIGSTOP: thread states {states}")


def _one_error_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train: error: "), stderr[-3000:]
    return lines[0]


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.stat().st_size) for p in workdir.rglob("*")}


def _restore_state(step_dir):
    """The arrays of a checkpoint's state item, restored by Orbax (8 CPU devices here, as when saved)."""
    import jax
    import orbax.checkpoint as ocp
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(step_dir / "state"))


@contextlib.contextmanager
def _tmpfs(path, size):
    """A tmpfs of `size` at `path`, unmounted afterwards; skips the test where mounting is not permitted."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- item 4: one run per workdir; item 5: SIGINT ------------------------------------------------------------

@pytest.mark.slow
def test_second_trainer_is_refused_and_sigint_saves_and_exits_130(io_data, io_env, tmp_path):
    workdir = tmp_path / "run"
    first = _start(_cmd(workdir, io_data, 400), io_env)
    try:
        _wait_for_checkpoint(first, workdir, 4)
        first.send_signal(signal.SIGSTOP)   # frozen mid-run: nothing it does can change the workdir meanwhile
        _wait_stopped(first)                # ... once every thread has actually stopped (an async save may write)
        before = _snapshot(workdir)
        second = _run(_cmd(workdir, io_data, 400), io_env)
        assert second.returncode == 1
        line = _one_error_line(second.stderr)
        assert f"is in use by pid {first.pid} on host" in line and str(workdir) in line, line
        assert _snapshot(workdir) == before and second.stdout == ""
    finally:
        first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGINT)   # Ctrl-C: save at the next step boundary, exit 130
    out, err = first.communicate(timeout=HUNG_S)
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    saved = re.findall(r"^SIGINT: saved (\S+); exiting", out, re.M)
    assert len(saved) == 1 and pathlib.Path(saved[0]).parent == workdir / "checkpoints", out[-2000:]
    stopped = int(pathlib.Path(saved[0]).name)
    assert 4 <= stopped < 400 and max(_saved(workdir)) == stopped
    assert all(np.isfinite(np.asarray(x)).all() for x in _restore_state(workdir / "checkpoints" / str(stopped)))
    assert not (workdir / "lock.json").exists()   # released on exit


# ---- item 5: SIGKILL with grain workers; item 4: the stale lock it leaves ----------------------------------

def _descendants(pid):
    """(pid, start time) of every live descendant of `pid`, from /proc."""
    children = {}
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = p.joinpath("stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append((int(p.name), fields[19]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _running(pid, start):
    """The process still exists (not a zombie) and is the same one (same start time)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0] not in ("Z", "X") and fields[19] == start


@pytest.mark.slow
def test_sigkill_takes_grain_workers_along_and_the_stale_lock_is_recovered(io_data, io_env, tmp_path):
    if not pathlib.Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    workdir = tmp_path / "run"
    cmd = _cmd(workdir, io_data, 16, "--config.data.num_workers=1")
    proc = _start(cmd, io_env)
    _wait_for_checkpoint(proc, workdir, 4)   # batches are flowing: the grain worker runs
    workers = _descendants(proc.pid)
    assert workers, "data.num_workers=1 should run a grain worker process"
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 20   # a bound, not a speed check: workers poll for their parent every 0.2 s
    while any(_running(*w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _running(*w)]
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)   # do not leak them into the rest of the suite
    assert not left, f"processes outlived the SIGKILLed trainer: {left}"
    assert (workdir / "lock.json").exists()   # the dead trainer's lock stays behind ...

    res = _run(cmd, io_env)   # ... and the same command takes it over and resumes
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"note: took over the stale lock of pid {proc.pid}" in res.stdout, res.stdout[-2000:]
    assert "resumed from" in res.stdout and max(_saved(workdir)) == 16
    assert not (workdir / "lock.json").exists()


# ---- item 5: disk full, a file or a read-only filesystem as workdir -----------------------------------------

def test_failed_async_save_is_reported_without_blocking(tmp_path):
    """Checkpointer.poll (called by the loop after every step) returns the failure of an async save on a full disk
    as one line once the save has ended, without waiting for it; the previous checkpoint stays restorable."""
    import jax
    from mosaic_jax.training import checkpoint
    # random (incompressible) float32: 50k values fit in 600 kB, 300k (1.2 MB) do not
    small, big = (jax.random.normal(jax.random.key(0), (n,)) for n in (50_000, 300_000))
    with _tmpfs(tmp_path / "small", "600k") as fs:
        ckpt = checkpoint.Checkpointer(fs / "checkpoints", every=1, keep=10, async_save=True)
        ckpt.save(1, {"a": small}, {}, {"position": 1})
        ckpt.wait()
        assert ckpt.poll() is None and ckpt.all_steps() == [1]
        assert ckpt.save(2, {"a": big}, {}, {"position": 2})
        deadline, error = time.monotonic() + 120, None
        while error is None and time.monotonic() < deadline:   # None while the background write runs
            error = ckpt.poll()
            time.sleep(0.01)
        assert str(error) == f"checkpoint at step 2 failed: No space left on device (workdir {fs})"
        assert ckpt.all_steps() == [1] and ckpt.poll() is None   # reported once; step 1 is still listed
        (restored,) = _restore_state(fs / "checkpoints" / "1")
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(small))


@pytest.mark.slow
def test_disk_full_stops_at_the_failed_save_in_one_line(io_data, io_env, tmp_path):
    """4 MB holds a few checkpoints of this model but not the ten the run asks for, so one async save fails.

    A checkpoint takes 0.6-1.2 MB on disk: Orbax splits the OCDBT data into a varying number of files, and the
    same state measured 0.62 and 0.92 MB in one run. A 1.5 MB disk meant to hold exactly one checkpoint failed the
    first save in CI. With 4 MB, between 3 and 6 saves fit, whichever step fails first is checked below."""
    with _tmpfs(tmp_path / "small", "4m") as fs:
        workdir = fs / "run"
        res = _run(_cmd(workdir, io_data, 40), io_env)
        assert res.returncode == 1, res.stderr[-3000:]
        line = _one_error_line(res.stderr)
        m = re.fullmatch(rf"train: error: checkpoint at step (\d+) failed: No space left on device "
                         rf"\(workdir {re.escape(str(workdir))}\)", line)
        assert m, line
        failed = int(m.group(1))
        kept = _saved(workdir)
        assert kept and max(kept) < failed
        # stopped at the latest when the next save is due (it waits for the failed one); how soon before that
        # depends on when the background write fails (test_failed_async_save_is_reported_without_blocking)
        logged = [int(s) for s in re.findall(r"^step (\d+)/40 ", res.stdout, re.M)]
        assert failed <= max(logged) <= failed + 4, res.stdout[-2000:]
        for step in kept:   # the checkpoints before the failure stay restorable
            assert all(np.isfinite(np.asarray(x)).all() for x in _restore_state(workdir / "checkpoints" / str(step)))
        assert not (workdir / "lock.json").exists()


@pytest.mark.slow
def test_file_or_read_only_workdir_is_one_line(io_data, io_env, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = _run(_cmd(tmp_path / "file", io_data, 4), io_env)
    assert res.returncode == 1 and "is a file, not a folder" in _one_error_line(res.stderr)
    assert (tmp_path / "file").read_text() == "not a folder"
    with _tmpfs(tmp_path / "ro", "1m") as fs:
        (fs / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        for workdir, words in ((fs / "run", "cannot write to"), (fs / "new", "cannot create")):
            res = _run(_cmd(workdir, io_data, 4), io_env)
            assert res.returncode == 1
            line = _one_error_line(res.stderr)
            assert words in line and str(workdir) in line and "Read-only file system" in line, line


def test_after_a_failure_only_the_main_thread_writes_to_stderr():
    """`train`'s stderr guard (the disk-full test above once got an Orbax thread's "Event loop is closed" traceback
    interleaved before its one error line): other threads' writes pass until the run fails, then are dropped."""
    import io
    import threading

    from mosaic_jax import train
    buf = io.StringIO()
    quiet = train._QuietThreadsAfterFailure(buf)

    def from_thread(text):
        t = threading.Thread(target=quiet.write, args=(text,))
        t.start()
        t.join()

    from_thread("thread before\n")
    quiet.failed.set()
    from_thread("Traceback (most recent call last):\n")
    quiet.write("train: error: checkpoint at step 20 failed\n")
    assert buf.getvalue() == "thread before\ntrain: error: checkpoint at step 20 failed\n"
