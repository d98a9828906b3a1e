"""One path layer for local folders and `gs://bucket/prefix` URLs (etils.epath; gcsfs and tensorstore underneath).

    from mosaic_jax.io import storage
    p = storage.path(flag_value)          # epath.Path: absolute local path, or the gs:// URL as given
    storage.write_text(p / "config.json", text)   # never a half-written file under the final name

Emulator: `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` is the one variable a user (or the test suite) sets.
google-cloud-storage and gcsfs read it themselves; tensorstore (Orbax's array writer) does not, so `configure()`
maps it to `TENSORSTORE_GCS_HTTP_URL` and gives tensorstore a dummy token (`GOOGLE_AUTH_TOKEN_FOR_TESTING`: an
emulator checks none), and turns off gcsfs's bucket-type probe (it calls the Storage Control gRPC API, which
emulators do not serve). Nothing is changed when the variable is unset (real GCS, application default credentials).

Atomicity on gs://: an object becomes visible only when its upload completes, so a single upload never leaves a
half-written object under its name (a crash mid-upload leaves nothing). Appends (metrics) use `compose`
(server-side, atomic): see `gcs_append.py`. The workdir lock uses a generation precondition (`create_exclusive`).
"""
from __future__ import annotations

import os
import uuid
from typing import Optional, Union

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
REMOTE_SCHEMES = ("gs://",)

PathLike = Union[str, os.PathLike]


def emulator_url() -> Optional[str]:
    """`http://host:port` of the GCS emulator named by STORAGE_EMULATOR_HOST (a bare host:port gets http://)."""
    host = os.environ.get(EMULATOR_ENV, "").strip().rstrip("/")
    if not host:
        return None
    return host if "://" in host else "http://" + host


def configure() -> None:
    """Point tensorstore and gcsfs at the emulator when STORAGE_EMULATOR_HOST is set (idempotent; explicit settings
    of the other variables win). Called on import, i.e. before gcsfs (which reads its switch at import) loads."""
    url = emulator_url()
    if url is None:
        return
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")   # tensorstore: skip credential discovery
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")    # no Storage Control API on emulators


configure()

from etils import epath  # noqa: E402  (after configure(): epath loads gcsfs lazily, but keep the order obvious)


def is_remote(p: PathLike) -> bool:
    return str(p).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
    """An epath.Path: a gs:// URL as given, a local path made absolute (so it survives a chdir)."""
    if isinstance(p, epath.Path) and is_remote(p):
        return p
    s = os.fspath(p)
    return epath.Path(s if is_remote(s) else os.path.abspath(s))


def display(p: PathLike) -> str:
    """The string a run records for a path (absolute local path or URL)."""
    return os.fspath(path(p))


def list_files(root: PathLike) -> dict[str, int]:
    """{path relative to `root` (with /): bytes} of every file under `root`; one listing request on gs://."""
    root = path(root)
    if not is_remote(root):
        out = {}
        for dirpath, _, names in os.walk(root):
            for n in names:
                f = os.path.join(dirpath, n)
                out[os.path.relpath(f, root).replace(os.sep, "/")] = os.path.getsize(f)
        return out
    import fsspec   # optional: extra [gcs] (gs:// listing)
    prefix = os.fspath(root)[len("gs://"):].rstrip("/") + "/"
    found = fsspec.filesystem("gs").find(prefix, detail=True)
    return {name[len(prefix):]: int(info["size"]) for name, info in found.items()
            if info.get("type") != "directory" and name.startswith(prefix)}


def write_bytes(p: PathLike, data: bytes) -> None:
    """Write a whole file so that readers see the old content, or the new, never a prefix of it.

    Local: a temporary name in the same folder, then os.replace. gs://: one upload (atomic by itself)."""
    p = path(p)
    if is_remote(p):
        p.write_bytes(data)
        return
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


# ---- gs:// objects with preconditions (google-cloud-storage honours STORAGE_EMULATOR_HOST itself) ---------------
_client = None


def gcs_client():   # -> google.cloud.storage.Client
    """A google-cloud-storage client: anonymous against the emulator, application default credentials otherwise."""
    global _client
    if _client is None:
        from google.cloud import storage as gcs   # optional dependency: pip install 'mosaic_jax[gcs]'
        if emulator_url() is not None:
            from google.auth.credentials import AnonymousCredentials   # optional: extra [gcs]
            _client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
                                 credentials=AnonymousCredentials())
        else:
            _client = gcs.Client()
    return _client


def blob(url: PathLike):   # -> google.cloud.storage.Blob
    bucket, _, name = os.fspath(url)[len("gs://"):].partition("/")
    return gcs_client().bucket(bucket).blob(name)


def create_exclusive(url: PathLike, data: bytes) -> int:
    """Create the object `url` only if it does not exist (generation precondition 0); its generation, or
    FileExistsError. GCS evaluates the precondition atomically: of two racing creators exactly one wins."""
    from google.api_core import exceptions   # optional: extra [gcs]
    b = blob(url)
    try:
        b.upload_from_string(data, content_type="application/json", if_generation_match=0)
    except exceptions.PreconditionFailed:
        raise FileExistsError(os.fspath(url)) from None
    return int(b.generation)


def read_with_generation(url: PathLike) -> Optional[tuple[bytes, int]]:
    """(content, generation) of the object, or None when it does not exist."""
    from google.api_core import exceptions   # optional: extra [gcs]
    b = blob(url)
    try:
        data = b.download_as_bytes()
    except exceptions.NotFound:
        return None
    return data, int(b.generation)


def delete_if_generation(url: PathLike, generation: int) -> bool:
    """Delete the object only if it is still at `generation` (never a newer one); True if deleted.

    The precondition makes this atomic on GCS. fake-gcs-server ignores preconditions on delete, so the generation
    is also compared first (a test emulator then still never deletes a newer lock, only without the atomicity)."""
    from google.api_core import exceptions   # optional: extra [gcs]
    b = blob(url)
    try:
        b.reload()
        if int(b.generation) != int(generation):
            return False
        b.delete(if_generation_match=int(generation))
    except (exceptions.PreconditionFailed, exceptions.NotFound):
        return False
    return True
