"""What keeps a training run's failures to one line: the workdir lock of the job, the stop signals, I/O errors.

* `workdir_guard(workdir)`: the job's lock on the workdir (`workdir_lock`), taken by process 0 for the whole
  job (one job = one owner) and shared with the other processes through the coordination service, so every
  process of a refused job stops with the same line. Released on exit, also on errors and signals.
* `StopRequest`: SIGTERM (preemption) and SIGINT (Ctrl-C) set a flag; the loop saves at the next step boundary
  and stops (exit 0 after SIGTERM, 130 after SIGINT). A second Ctrl-C interrupts at once. A failed checkpoint
  save is agreed across processes with the same collective, so every process stops at the same step.
* `os_reason` / `io_error_line`: "No space left on device", "Read-only file system"... out of an OSError or of
  the text of a wrapped one (tensorstore reports ENOSPC as `ValueError: RESOURCE_EXHAUSTED: ...`).
* `quiet_orbax_errors`: Orbax (and asyncio, for Orbax's failed write tasks) logs every failure of a background
  save with tracebacks; the trainer reports it in one line, so those records are dropped (unless --verbosity).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from typing import Any, Iterator, Optional

import jax
import numpy as np
from absl import flags
from jax._src import distributed as _d
from jax.experimental import multihost_utils

from mosaic_jax.training import workdir_lock

_BREAK_LOCK = flags.DEFINE_bool(
    "break_lock", False, "Take over the workdir's lock even though its holder (on another host) cannot be checked; "
    "only when that run is known to be dead.")

SIGINT_EXIT = 130   # the shell's convention for a program ended by Ctrl-C (128 + SIGINT)
# In this order: a wrapped error's text can mention several (e.g. a path that does not exist because the disk is full).
_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR,
           errno.ENOENT)


def os_reason(e: BaseException) -> str:
    """The operating system's words for `e` ('No space left on device'), else its type and first 200 chars."""
    chain: list[BaseException] = []
    x: Optional[BaseException] = e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
    text = " ".join(str(x) for x in chain)
    for code in _ERRNOS:
        if os.strerror(code) in text:
            return os.strerror(code)
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def io_error_line(e: OSError, workdir: Optional[str]) -> str:
    """'No space left on device: /w/metrics.jsonl (workdir /w)' for an OSError the trainer did not expect."""
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    return f"{os_reason(e)}{where} (workdir {workdir if str(workdir).startswith('gs://') else os.path.abspath(workdir) if workdir else '?'})"


_ORBAX_DIR = f"{os.sep}orbax{os.sep}"


def _from_orbax(record: logging.LogRecord) -> bool:
    """An ERROR record that Orbax logged, or that asyncio logged for one of Orbax's write tasks ("Task exception
    was never retrieved" when a failed write's task is collected; the message names the coroutine's file)."""
    if record.levelno < logging.ERROR:
        return False
    if _ORBAX_DIR in (record.pathname or ""):
        return True
    if record.name != "asyncio":
        return False
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if _ORBAX_DIR in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return _ORBAX_DIR in record.getMessage()


class _OrbaxErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _from_orbax(record)


def quiet_orbax_errors() -> None:
    """Drop Orbax's ERROR records (absl logger) and asyncio's reports of its failed write tasks: the trainer turns
    the failures into its own one-line errors. Other asyncio errors still print."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxErrorFilter) for f in logger.filters):
            logger.addFilter(_OrbaxErrorFilter())


# ---- the workdir lock of the job ----------------------------------------------------------------------------

_rounds = 0


def _break_lock() -> bool:
    return bool(flags.FLAGS.is_parsed() and _BREAK_LOCK.value)


def lock_workdir(workdir: str) -> Optional[workdir_lock.WorkdirLock]:
    """Process 0 takes the lock for the job and tells the others (key-value store, no device collective) whether
    to go on; the others return None. Raises LockError (on every process) when the workdir is held."""
    if jax.process_count() == 1:
        return workdir_lock.acquire(workdir, break_lock=_break_lock())
    global _rounds
    client = _d.global_state.client
    _rounds += 1
    key = f"mosaic_jax/workdir_lock/{_rounds}"
    if jax.process_index() == 0:
        job = f"{jax.process_count()} processes, coordinator {_d.global_state.coordinator_address}"
        try:
            lock = workdir_lock.acquire(workdir, break_lock=_break_lock(), job=job)
        except workdir_lock.LockError as e:
            client.key_value_set(key, "error:" + str(e))
            raise
        client.key_value_set(key, "ok")
        return lock
    answer = client.blocking_key_value_get(key, 1800 * 1000)
    if answer.startswith("error:"):
        raise workdir_lock.LockError(answer[len("error:"):])
    return None


@contextlib.contextmanager
def workdir_guard(workdir: Optional[str]) -> Iterator[Optional[workdir_lock.WorkdirLock]]:
    """Hold the job's workdir lock for the block (nothing when `workdir` is empty: the trainer reports that)."""
    lock = lock_workdir(workdir) if workdir else None
    if lock is not None and lock.note:
        print(f"note: {lock.note}", flush=True)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


# ---- stop signals -------------------------------------------------------------------------------------------

class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary and stops (never mid-step)."""

    def __init__(self) -> None:
        self.signal_name = ""

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt   # Ctrl-C twice: the user does not want to wait for the save
        self.signal_name = self.signal_name or signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def agreed(self, save_failed: bool = False) -> tuple[bool, bool]:
        """(stop, a save failed) on ANY process: every process must stop at the same step (no-op with one)."""
        local = np.array([self.requested, save_failed])
        if jax.process_count() == 1:
            return bool(local[0]), bool(local[1])
        both = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2).any(axis=0)
        return bool(both[0]), bool(both[1])
