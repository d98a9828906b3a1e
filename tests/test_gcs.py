"""gs:// paths against a local GCS emulator (tests/gcs_emulator.py, fake-gcs-server on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mosaic_jax.io import storage
from mosaic_jax.training import workdir_lock


def test_emulator_serves_epath_tensorstore_and_preconditions(gcs):
    """What the trainer needs from one variable: epath (gcsfs) files and listings, tensorstore arrays, and
    create-if-absent / delete-if-unchanged objects (google-cloud-storage)."""
    root = gcs.make_bucket("basics")
    p = storage.path(f"{root}/a/b.txt")
    storage.write_text(p, "hello")
    assert p.read_text() == "hello" and p.exists()
    assert [q.name for q in storage.path(f"{root}/a").iterdir()] == ["b.txt"]
    import tensorstore as ts
    arr = ts.open({"driver": "zarr", "kvstore": f"{root}/ts/",
                   "metadata": {"shape": [5], "dtype": "<i4", "chunks": [2]}}, create=True).result()
    arr.write(np.arange(5, dtype=np.int32)).result()
    np.testing.assert_array_equal(arr.read().result(), np.arange(5))
    url = f"{root}/lockish.json"
    gen = storage.create_exclusive(url, b"{}")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(url, b"{}")
    assert not storage.delete_if_generation(url, gen + 1) and storage.read_with_generation(url)[1] == gen
    assert storage.delete_if_generation(url, gen)
    assert storage.read_with_generation(url) is None


def test_workdir_lock_on_gcs(gcs):
    """The lock is exclusive, released only by its owner, and a dead same-host holder is taken over."""
    workdir = gcs.make_bucket("locks") + "/run"
    lock = workdir_lock.acquire(workdir)
    with pytest.raises(workdir_lock.LockError, match="in use by pid"):
        workdir_lock.acquire(workdir)
    lock.release()
    assert storage.read_with_generation(f"{workdir}/lock.json") is None
    # a holder that died (SIGKILL): its record stays, the next run takes it over and says so
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {**workdir_lock.own_record(), "pid": int(dead.stdout), "proc_start": "0"}
    storage.create_exclusive(f"{workdir}/lock.json", json.dumps(record).encode())
    lock2 = workdir_lock.acquire(workdir)
    assert "that process is gone" in lock2.note and lock2.held()
    # a lock replaced behind our back (--break_lock elsewhere) is not removed by our release
    other = storage.read_with_generation(f"{workdir}/lock.json")
    storage.delete_if_generation(f"{workdir}/lock.json", other[1])
    storage.create_exclusive(f"{workdir}/lock.json", b'{"token": "someone else"}')
    assert not lock2.held()
    lock2.release()
    assert json.loads(storage.read_with_generation(f"{workdir}/lock.json")[0])["token"] == "someone else"
