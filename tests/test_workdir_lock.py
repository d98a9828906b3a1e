"""The workdir lock (mosaic_jax.training.workdir_lock), in-process with real processes as holders: one holder at a time,
stale locks of dead processes on this host taken over, locks from another host only with --break_lock, a file or
read-only workdir refused in one line. The trainer-level tests are in tests/test_train_io.py."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mosaic_jax.training import run_guard, workdir_lock
from mosaic_jax.training.workdir_lock import LOCK_FILE, LockError


def _holder(tmp_path, **change):
    """A lock record held by a live child process (a real pid with a real start time)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stat = workdir_lock._proc_stat(proc.pid)
    record = {**workdir_lock.own_record("1 process"), "pid": proc.pid, "proc_start": stat[19] if stat else None,
              **change}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    return proc, record


def test_second_acquire_is_refused_and_release_frees_it(tmp_path):
    lock = workdir_lock.acquire(tmp_path / "run")
    with pytest.raises(LockError, match=f"is in use by pid {os.getpid()} on host {socket.gethostname()}"):
        workdir_lock.acquire(tmp_path / "run")   # our own pid is alive: held
    assert lock.held()
    lock.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    workdir_lock.acquire(tmp_path / "run").release()


def test_live_holder_refused_dead_holder_taken_over(tmp_path):
    proc, record = _holder(tmp_path)
    try:
        with pytest.raises(LockError, match=f"in use by pid {proc.pid}"):
            workdir_lock.acquire(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    lock = workdir_lock.acquire(tmp_path)   # the holder is dead now: stale
    assert f"stale lock of pid {proc.pid}" in lock.note and "that process is gone" in lock.note
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.record["token"]
    lock.release()


def test_reused_pid_and_zombie_are_not_the_holder(tmp_path):
    # the pid exists but started at another time: it was reused by an unrelated process
    proc, record = _holder(tmp_path, proc_start="1")
    try:
        if workdir_lock._proc_stat(proc.pid) is None:
            pytest.skip("no /proc: start times are not checked")
        assert workdir_lock.holder_state(record) == "dead"
        record["proc_start"] = workdir_lock._proc_stat(proc.pid)[19]
        assert workdir_lock.holder_state(record) == "alive"
        proc.kill()   # not reaped: a zombie (once the kernel has delivered the signal) is dead too
        deadline = time.monotonic() + 10
        while workdir_lock._proc_stat(proc.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert workdir_lock.holder_state(record) == "dead"
    finally:
        proc.kill()
        proc.wait()


def test_other_host_needs_break_lock_named_in_the_message(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({**workdir_lock.own_record("2 processes"), "host": "node-17"}))
    with pytest.raises(LockError) as e:
        workdir_lock.acquire(tmp_path)
    assert "node-17" in str(e.value) and "--break_lock" in str(e.value) and "\n" not in str(e.value)
    lock = workdir_lock.acquire(tmp_path, break_lock=True)
    assert "node-17" in lock.note and lock.held()
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / LOCK_FILE).write_text(json.dumps({**workdir_lock.own_record(), "host": "gpu017"}))
    lock = workdir_lock.acquire(tmp_path)   # same job id, another node: the earlier run of this job is over
    assert "earlier run of this SLURM job" in lock.note
    lock.release()
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    (tmp_path / LOCK_FILE).write_text(json.dumps({**workdir_lock.own_record(), "host": "gpu017",
                                                  "slurm_job_id": "4242"}))
    with pytest.raises(LockError, match="--break_lock"):   # another job: refused
        workdir_lock.acquire(tmp_path)


def test_foreign_lock_file_is_not_overwritten_without_break_lock(tmp_path):
    (tmp_path / LOCK_FILE).write_text("not json")
    with pytest.raises(LockError, match="not a lock record"):
        workdir_lock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == "not json"
    workdir_lock.acquire(tmp_path, break_lock=True).release()


def test_release_keeps_a_lock_that_is_no_longer_ours(tmp_path):
    lock = workdir_lock.acquire(tmp_path)
    (tmp_path / LOCK_FILE).write_text(json.dumps({**workdir_lock.own_record(), "host": "elsewhere"}))
    lock.release()   # someone broke our lock: theirs stays
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_created_workdir_is_removed_when_nothing_was_written(tmp_path):
    workdir_lock.acquire(tmp_path / "new").release()
    assert not (tmp_path / "new").exists()


def test_file_as_workdir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LockError, match="is a file, not a folder"):
        workdir_lock.acquire(tmp_path / "f")
    with pytest.raises(LockError, match="Not a directory"):
        workdir_lock.acquire(tmp_path / "f" / "run")


def test_os_reason_finds_the_errno_in_wrapped_errors():
    wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "x": Failed to write 60619 bytes to file 9: '
                         "No space left on device [os_error_code='28']")
    assert run_guard.os_reason(wrapped) == "No space left on device"
    try:
        try:
            raise OSError(30, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as e:
        assert run_guard.os_reason(e) == "Read-only file system"
    assert run_guard.os_reason(KeyError("k")) == "KeyError: 'k'"


def _unretrieved_task_failure(filename: str) -> None:
    """A real asyncio task whose coroutine (compiled as if it lived in `filename`) fails and is collected without
    anyone retrieving the exception: asyncio then logs "Task exception was never retrieved", as it does for an
    Orbax write task when the disk is full (CI log of stop 20)."""
    import asyncio
    import gc
    scope: dict = {}
    exec(compile("async def write_fragment():\n    raise ValueError('RESOURCE_EXHAUSTED: No space left on device')\n",
                 filename, "exec"), scope)
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(scope["write_fragment"]())
        loop.run_until_complete(asyncio.sleep(0))
        assert task.done()
        del task
        gc.collect()
    finally:
        loop.close()


def test_quiet_orbax_errors_drops_orbax_write_tasks_only(caplog):
    import logging
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        run_guard.quiet_orbax_errors()
        run_guard.quiet_orbax_errors()   # idempotent: one filter per logger
        assert sum(isinstance(f, run_guard._OrbaxErrorFilter) for f in logger.filters) == 1
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            _unretrieved_task_failure(os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "ser.py"))
            assert not [r for r in caplog.records if r.name == "asyncio"]
            _unretrieved_task_failure(os.path.join(os.sep, "site-packages", "mine", "user_code.py"))
            (record,) = [r for r in caplog.records if r.name == "asyncio"]
            assert "never retrieved" in record.getMessage()
    finally:
        logger.filters[:] = before
