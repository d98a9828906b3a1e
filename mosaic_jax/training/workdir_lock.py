"""One run per workdir: a lock file `workdir/lock.json` held for the whole run, by one owner per job.

    lock = workdir_lock.acquire("runs/mine")      # raises LockError (one line) when another run holds it
    ...
    lock.release()                               # only removes the file if it is still ours

The file records who holds it: host, pid, the process's start time (kernel ticks since boot, so a reused pid is
not mistaken for the holder), the boot id, the job (e.g. "2 processes, coordinator h:1234") and a random token.
It is created atomically (written to a temporary name, then hard-linked into place: `link` fails if the name
exists, also on NFS), so a reader never sees half a record.

A lock left by a crash (SIGKILL, a dead node) is stale:
* same host: the holder is dead (no such pid, a zombie, another start time, or the machine rebooted) → the new
  run takes the lock over and says so;
* another host (a shared filesystem): liveness cannot be checked from here → refused, naming `--break_lock`,
  unless the holder was an earlier run of this same SLURM job (a requeue: SLURM runs a job id once at a time).
Taking over renames the stale file aside and checks it is still the record judged stale before deleting it, so
two runs that find the same stale lock cannot both win.

On a `gs://` workdir the lock is an object created with the precondition "generation 0" (exists: refused,
atomically, by GCS itself), and it is deleted (on release or takeover) with the precondition "still the generation
read", so a lock re-created by another run in between is never removed. Same-host liveness checks apply; a holder
on another host needs `--break_lock` (or a SLURM requeue), as on a shared filesystem.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import socket
import time
import uuid
from typing import Any, Optional

from mosaic_jax.io import storage

LOCK_FILE = "lock.json"
BREAK_FLAG = "--break_lock"


class LockError(RuntimeError):
    """The workdir is held by another run, or cannot be locked (one-line message)."""


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19]); None if unknown."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _boot_id() -> str:
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def own_record(job: str = "") -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": stat[19] if stat else None,
            "boot_id": _boot_id(), "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
            "job": job or "1 process", "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""), "token": uuid.uuid4().hex}


def holder_state(record: dict[str, Any]) -> str:
    """'alive' (this host, the holder runs), 'dead' (this host, it does not) or 'other-host'."""
    if record.get("host") != socket.gethostname():
        return "other-host"
    if record.get("boot_id") and _boot_id() and record["boot_id"] != _boot_id():
        return "dead"   # the machine rebooted since: every process of that boot is gone
    try:
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return "dead"
    except PermissionError:
        pass   # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return "alive"   # no /proc (not Linux): the pid exists, trust it
    if stat[0] in ("Z", "X") or (record.get("proc_start") is not None and stat[19] != record["proc_start"]):
        return "dead"    # a zombie, or the pid now belongs to another process
    return "alive"


def describe(record: dict[str, Any]) -> str:
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('since', '?')} "
            f"({record.get('job', '?')})")


@dataclasses.dataclass
class WorkdirLock:
    path: pathlib.Path
    record: dict[str, Any]
    note: str = ""                 # e.g. the stale lock that was taken over (the caller prints it)
    created_dir: bool = False      # the workdir did not exist: removed on release if still empty
    generation: Optional[int] = None   # gs://: the lock object's generation (deleted only while it is still ours)

    def held(self) -> bool:
        if self.generation is not None:
            got = storage.read_with_generation(self.path)
            return got is not None and got[1] == self.generation
        return (_read(self.path) or {}).get("token") == self.record["token"]

    def release(self) -> None:
        """Remove the lock file if it is still ours (a `--break_lock` elsewhere may have replaced it)."""
        if self.generation is not None:
            storage.delete_if_generation(self.path, self.generation)
            return
        try:
            if self.held():
                self.path.unlink()
            if self.created_dir:
                self.path.parent.rmdir()   # only succeeds when the run wrote nothing else
        except OSError:
            pass


def _read(path: pathlib.Path) -> Optional[dict[str, Any]]:
    """The record in `path`; None when there is no file, {} when it is not a lock record."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _create(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Write `record` to `path` atomically; FileExistsError if `path` exists."""
    tmp = path.with_name(f".{path.name}.{record['token']}")
    tmp.write_text(json.dumps(record) + "\n")
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink()


def _remove_if_same(path: pathlib.Path, judged: dict[str, Any]) -> None:
    """Delete the stale lock `judged`, but never a lock another run created since we read it."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return   # someone else removed it first
    if _read(aside) == judged:
        aside.unlink()
        return
    try:
        os.link(aside, path)   # it was a fresh lock: put it back (unless yet another one appeared)
    except FileExistsError:
        pass
    aside.unlink()


def _judge(held: Optional[dict[str, Any]], record: dict[str, Any], workdir: Any, path: Any,
           break_lock: bool) -> str:
    """Why the lock `held` may be taken over (the note's reason), or LockError naming its live holder."""
    if held.get("token"):
        state = holder_state(held)
    elif break_lock:
        state = "other-host"
    else:
        raise LockError(f"{path} is not a lock record (unreadable or foreign); if no run uses {workdir}, "
                        f"re-run with {BREAK_FLAG}")
    if state == "alive":
        raise LockError(f"--workdir={workdir} is in use by {describe(held)}; wait for that run to end or use "
                        "another --workdir")
    requeued = state == "other-host" and bool(held.get("slurm_job_id")) and \
        held.get("slurm_job_id") == record["slurm_job_id"]
    if state == "other-host" and not break_lock and not requeued:
        raise LockError(f"--workdir={workdir} is locked by {describe(held)}, which cannot be checked from "
                        f"{socket.gethostname()}; if that run is dead, re-run with {BREAK_FLAG}")
    return ("an earlier run of this SLURM job" if requeued else "broken with " + BREAK_FLAG
            if state == "other-host" else "that process is gone")


def acquire(workdir: str | os.PathLike[str], *, break_lock: bool = False, job: str = "") -> WorkdirLock:
    """Create the workdir if needed and take its lock, or raise LockError naming the holder."""
    if storage.is_remote(workdir):
        return _acquire_remote(str(workdir).rstrip("/"), break_lock, job)
    workdir = pathlib.Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise LockError(f"--workdir={workdir} is a file, not a folder")
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"cannot create --workdir={workdir}: {e.strerror or e}") from None
    path = workdir / LOCK_FILE
    record, note = own_record(job), ""
    for _ in range(5):
        try:
            _create(path, record)
            return WorkdirLock(path, record, note, created)
        except FileExistsError:
            pass
        except OSError as e:
            raise LockError(f"cannot write to --workdir={workdir}: {e.strerror or e}") from None
        held = _read(path)
        if held is None:
            continue   # released meanwhile: try again
        why = _judge(held, record, workdir, path, break_lock)
        _remove_if_same(path, held)
        note = f"took over the stale lock of {describe(held)} in {workdir} ({why})"
        time.sleep(0.01)
    raise LockError(f"could not take the lock {path}: other runs keep taking it")


def _acquire_remote(workdir: str, break_lock: bool, job: str) -> WorkdirLock:
    """`acquire` for gs://: create-if-absent and delete-if-unchanged through generation preconditions."""
    path = storage.path(f"{workdir}/{LOCK_FILE}")
    record, note = own_record(job), ""
    for _ in range(5):
        try:
            generation = storage.create_exclusive(path, (json.dumps(record) + "\n").encode())
            return WorkdirLock(path, record, note, generation=generation)
        except FileExistsError:
            pass
        except Exception as e:  # noqa: BLE001 - no bucket, no permission, no network: one line
            raise LockError(f"cannot write to --workdir={workdir}: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}") from None
        got = storage.read_with_generation(path)
        if got is None:
            continue   # released meanwhile: try again
        try:
            held = json.loads(got[0])
        except ValueError:
            held = {}
        why = _judge(held if isinstance(held, dict) else {}, record, workdir, path, break_lock)
        storage.delete_if_generation(path, got[1])   # a lock created since we read it stays
        note = f"took over the stale lock of {describe(held)} in {workdir} ({why})"
        time.sleep(0.01)
    raise LockError(f"could not take the lock {path}: other runs keep taking it")
