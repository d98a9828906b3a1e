"""Prepared data on gs://: a local cache folder filled on first use, and the upload of a prepared folder.

Design (docs/data.md): the trainer memory-maps shards, so a gs:// data path is copied whole into
`--data_cache_dir/<name>-<hash of the URL>/` the first time a process on the host opens it (all files, the manifest
last), then opened like a local folder. The batch is still a pure function of (seed, step): the copy is
byte-identical (sizes checked here, sha256 with `prepare_data --verify`). A cached copy is reused while its
manifest equals the bucket's; copies of other data sets are evicted, least recently used first, to keep the cache
under `--data_cache_gb`; a data set larger than the limit is refused in one line. Several processes on one host
may fill the cache at once: each downloads into its own temporary folder and the first rename wins.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
import uuid

from absl import flags

from mosaic_jax.data.errors import DataError
from mosaic_jax.io import storage

MANIFEST = "manifest.json"
_CACHE_DIR = flags.DEFINE_string(
    "data_cache_dir", None, "Local folder caching gs:// prepared data (default $MOSAIC_DATA_CACHE or "
    "~/.cache/mosaic_jax/data).")
_CACHE_GB = flags.DEFINE_float("data_cache_gb", 200.0, "Size limit of --data_cache_dir in GB (least recently used "
                               "data sets are evicted).", lower_bound=0.0)


def cache_dir() -> pathlib.Path:
    if flags.FLAGS.is_parsed() and _CACHE_DIR.value:
        return pathlib.Path(_CACHE_DIR.value)
    return pathlib.Path(os.environ.get("MOSAIC_DATA_CACHE") or pathlib.Path.home() / ".cache" / "mosaic_jax" / "data")


def cache_limit_bytes() -> float:
    gb = _CACHE_GB.value if flags.FLAGS.is_parsed() else float(os.environ.get("MOSAIC_DATA_CACHE_GB", _CACHE_GB.default))
    return gb * 1e9


def _remote_files(url: str) -> dict[str, int]:
    """{relative path: bytes} of every object under the gs:// folder."""
    return storage.list_files(url)


def _folder_bytes(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _complete(folder: pathlib.Path, files: dict[str, int]) -> bool:
    return all((folder / rel).is_file() and (folder / rel).stat().st_size == n for rel, n in files.items())


def _evict(root: pathlib.Path, need: int, keep: pathlib.Path, limit: float) -> None:
    """Delete cached data sets (least recently used first, never `keep`) until `need` more bytes fit."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
                     key=lambda p: p.stat().st_mtime)
    used = sum(_folder_bytes(p) for p in entries)
    for p in entries:
        if used + need <= limit:
            break
        used -= _folder_bytes(p)
        shutil.rmtree(p, ignore_errors=True)


def local_copy(url: str) -> str:
    """The local folder holding the prepared data at `url` (downloaded on first use); local paths pass through."""
    if not storage.is_remote(url):
        return url
    url = str(url).rstrip("/")
    try:
        manifest = (storage.path(url) / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{url}: not a prepared-data folder (no {MANIFEST}; run python -m mosaic_jax.prepare_data "
                        f"--output={url})") from None
    except Exception as e:  # noqa: BLE001 - no bucket, no permission, no network: one line
        raise DataError(f"{url}: cannot read {MANIFEST} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    root = cache_dir()
    dest = root / f"{url.rsplit('/', 1)[-1]}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == manifest:
        files = _remote_files(url)
        if _complete(dest, files):
            os.utime(dest)   # recently used
            return str(dest)
    files = _remote_files(url)
    total, limit = sum(files.values()), cache_limit_bytes()
    if total > limit:
        raise DataError(f"{url}: {total / 1e9:.2f} GB does not fit --data_cache_gb={limit / 1e9:g} "
                        f"(cache {root})")
    root.mkdir(parents=True, exist_ok=True)
    _evict(root, total, dest, limit)
    tmp = root / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        for rel in sorted(files, key=lambda r: r == MANIFEST):   # the manifest last: it marks the copy complete
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with (storage.path(url) / rel).open("rb") as src, open(tmp / rel, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 23)
        if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == manifest and _complete(dest, files):
            return str(dest)   # another process on this host filled it meanwhile (it may be reading it: keep it)
        shutil.rmtree(dest, ignore_errors=True)   # an older or partial copy
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _complete(dest, files):   # another process's copy won the race: use it, unless it is bad
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    print(f"cached {url} in {dest}: {total / 1e6:.1f} MB in {seconds:.1f} s ({total / 1e6 / max(seconds, 1e-9):.1f} "
          "MB/s)", file=sys.stderr, flush=True)
    return str(dest)


def upload(local: str | os.PathLike, url: str, last: str = MANIFEST) -> int:
    """Copy a prepared folder to gs://: every file, then the manifest, or the file named `last` (readers treat a
    folder without a manifest as not prepared, so an interrupted upload is never read as data). Returns the bytes
    uploaded."""
    local = pathlib.Path(local)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == last)
    total = 0
    for f in files:
        rel = f.relative_to(local).as_posix()
        with open(f, "rb") as src, (storage.path(url) / rel).open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 23)
        total += f.stat().st_size
    return total


def publish(local: str | os.PathLike, url: str) -> bool:
    """Upload a freshly prepared folder to `url` unless the bucket already holds the same preparation (False);
    DataError when it holds another one (never overwritten, as for a local --output). "The same" is the same
    fingerprint (inputs' contents, options, tokenizer), as for a local --output: the manifest's bytes also hold
    its creation time, so a re-run's manifest never equals the uploaded one byte for byte."""
    url = str(url).rstrip("/")
    new = json.loads((pathlib.Path(local) / MANIFEST).read_bytes())
    remote = storage.path(url) / MANIFEST
    if remote.exists():
        if json.loads(remote.read_bytes()).get("fingerprint") == new["fingerprint"]:
            return False
        raise DataError(f"{url} holds a different preparation ({MANIFEST} differs); choose another --output")
    upload(local, url)
    return True
