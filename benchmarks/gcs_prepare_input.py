"""Preparing from gs:// inputs (objects streamed through etils.epath, mosaic_jax/data/ingest.py) against preparing
from the same files on local disk, on the local GCS emulator the tests use (fake-gcs-server on 127.0.0.1;
tests/gcs_emulator.py). Same tokenizer (byte), one worker, alternating local / gs:// runs; each gs:// result must
have the local run's fingerprint.

    python benchmarks/gcs_prepare_input.py [--input=../shared/data/tinystories] [--repeat=2]

The emulator runs on the same cores as this script, so the gs:// rate is a lower bound for a real bucket.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mosaic_jax.tools import hostinfo  # noqa: E402
from tests import gcs_emulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "tinystories"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="gcs-prepare-bench-")
    src = pathlib.Path(args.input)
    files = [f for f in sorted(src.rglob("*")) if f.is_file()]
    print(f"cpu: {hostinfo.cpu_info()['cpu_model']}; load average {os.getloadavg()[0]:.1f}")
    for emu in gcs_emulator.start():
        from mosaic_jax.data import pipeline
        from mosaic_jax.io import storage
        emu.make_bucket("bench")
        for f in files:
            storage.write_bytes(f"gs://bench/in/{f.relative_to(src).as_posix()}", f.read_bytes())
        rows = []
        for r in range(args.repeat):
            for where, inp in (("local", str(src)), ("gs://", "gs://bench/in")):
                t0 = time.perf_counter()
                res = pipeline.prepare([inp], os.path.join(tmp.name, f"{r}-{where[:2]}"), "byte", num_workers=1,
                                       progress=False)
                dt = time.perf_counter() - t0
                rows.append((where, res.text_bytes / 1e6 / dt, res.manifest["fingerprint"]))
                print(f"run {r} {where:6s}: {res.text_bytes / 1e6:.2f} MB of text in {dt:.2f} s = "
                      f"{res.text_bytes / 1e6 / dt:.2f} MB/s", flush=True)
        same = len({fp for _, _, fp in rows}) == 1
        print(json.dumps({"same_fingerprint": same, "mb_per_s": {w: [round(x, 2) for ww, x, _ in rows if ww == w]
                                                                 for w in ("local", "gs://")}}))
        if not same:
            sys.exit("the gs:// preparation differs from the local one")


if __name__ == "__main__":
    main()
