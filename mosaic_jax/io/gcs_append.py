"""Append-only files (metrics JSONL, TensorBoard event files) on gs://, with bounded buffering.

GCS objects cannot be appended to. A `StagedDir` gives the writer a local folder; `sync()` uploads what each file
gained since the last sync as a temporary object and `compose`s it onto the end of the file's object (one atomic
server-side operation, guarded by a generation precondition), then deletes the temporary object. So

* the bucket always holds a prefix of each file (written by complete uploads: never a half-written object);
* memory holds nothing: the unsynced bytes are on local disk, read back in chunks of at most `CHUNK` bytes;
* a crash (SIGKILL) loses at most the last `every_s` seconds in the bucket (the run that resumes re-logs the steps
  after its checkpoint anyway); `close()` syncs everything.

Only the lead process writes metrics, so one writer per object; the preconditions just make a second one fail
loudly instead of interleaving.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time
import uuid

from mosaic_jax.io import storage

CHUNK = 64 << 20   # bytes per uploaded piece: bounds the memory of one sync


def append_object(url: str, data: bytes) -> None:
    """Append `data` to the object `url` (created if absent)."""
    from google.api_core import exceptions   # optional: extra [gcs]
    try:
        storage.create_exclusive(url, data)
        return
    except FileExistsError:
        pass
    dest = storage.blob(url)
    dest.reload()
    part = storage.blob(f"{url}.part-{uuid.uuid4().hex[:12]}")
    part.upload_from_string(data)
    try:
        dest.compose([dest, part], if_generation_match=int(dest.generation))
    except exceptions.PreconditionFailed:
        raise RuntimeError(f"{url} changed while appending to it: another writer?") from None
    finally:
        part.delete()


class StagedDir:
    """A local folder mirrored, file by file and append-only, to the gs:// folder `remote`."""

    def __init__(self, remote: str | os.PathLike, every_s: float = 30.0) -> None:
        self.remote = str(remote).rstrip("/")
        self.local = pathlib.Path(tempfile.mkdtemp(prefix="mosaic_jax-stage-"))
        self.every_s = every_s
        self._synced: dict[str, int] = {}   # relative path -> bytes already in the bucket
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def maybe_sync(self) -> None:
        """Sync if `every_s` seconds passed since the last sync (called on every write; cheap otherwise)."""
        if self.due():
            self.sync()

    def sync(self) -> None:
        self._last = time.monotonic()
        for f in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = f.relative_to(self.local).as_posix()
            done = self._synced.get(rel, 0)
            size = f.stat().st_size
            with open(f, "rb") as fh:
                fh.seek(done)
                while done < size:
                    chunk = fh.read(min(CHUNK, size - done))
                    if not chunk:
                        break
                    append_object(f"{self.remote}/{rel}", chunk)
                    done += len(chunk)
            self._synced[rel] = done

    def close(self) -> None:
        try:
            self.sync()
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
