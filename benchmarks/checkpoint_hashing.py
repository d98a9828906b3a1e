r"""Cost of the checkpoint integrity records (mosaic_jax/training/integrity.py), in seconds per GB of state.

    python benchmarks/checkpoint_hashing.py [--gb=0.5] [--repeats=3]

Prints one JSON line per measurement: the per-array value checksums (computed on the devices, synchronously in
every save and after every restore), the per-file sha256 record (computed by the primary process in Orbax's
background finalisation, before the step is committed), the file check done before a restore, and, for
reference, sha256 / blake2b / crc32 over the same bytes in memory. The state is float32 arrays of 16 M elements
(64 MB) laid out on all devices like FSDP params; the file figures read a freshly written checkpoint, so they
come from the page cache, as right after a save.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import tempfile
import time
import zlib

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mosaic_jax.training import checkpoint, integrity
from mosaic_jax.tools.bench import device_name  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=0.5, help="state size in GB (10^9 bytes)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    n_arrays = max(1, round(a.gb * 1e9 / (16 * 2**20 * 4)))
    mesh = jax.make_mesh((jax.device_count(),), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    make = jax.jit(lambda k: jax.random.normal(k, (4096, 4096)), out_shardings=sharding)
    state = {f"w{i}": make(jax.random.PRNGKey(i)) for i in range(n_arrays)}
    gb = sum(x.nbytes for x in state.values()) / 1e9
    common = {"device": device_name(), "devices": jax.device_count(), "gb": round(gb, 3)}

    def row(what: str, seconds: float) -> None:
        print(json.dumps({**common, "what": what, "s_per_gb": round(seconds / gb, 3)}), flush=True)

    integrity.state_report(state)   # compile
    row("value checksums (2 lanes, on device, every save and restore)",
        _best(lambda: integrity.state_report(state), a.repeats))

    with tempfile.TemporaryDirectory() as tmp:
        ck = checkpoint.Checkpointer(pathlib.Path(tmp) / "ckpt", every=1, keep=2, async_save=False)
        ck.save(1, state, {}, {})
        ck.close()
        step_dir = pathlib.Path(tmp) / "ckpt" / "1"
        row("file record: sha256 of every file (primary process, before commit)",
            _best(lambda: integrity.write_file_record(step_dir), a.repeats))
        row("file check before a restore (sha256 of every file)",
            _best(lambda: integrity.verify_file_record(step_dir), a.repeats))

    blob = np.asarray(jax.device_get(state["w0"])).tobytes()
    blob_gb = len(blob) / 1e9
    for name, fn in (("sha256", lambda: hashlib.sha256(blob).digest()),
                     ("blake2b", lambda: hashlib.blake2b(blob).digest()),
                     ("crc32", lambda: zlib.crc32(blob))):
        print(json.dumps({**common, "what": f"{name} over bytes in memory (one core)",
                          "s_per_gb": round(_best(fn, a.repeats) / blob_gb, 3)}), flush=True)


if __name__ == "__main__":
    main()
