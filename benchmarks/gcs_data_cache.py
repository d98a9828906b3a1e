"""Throughput of prepared data on gs:// through the local cache (mosaic_jax/io/data_cache.py), against the local
GCS emulator the tests use (fake-gcs-server on 127.0.0.1; tests/gcs_emulator.py): upload (prepare_data
--output=gs://), cold cache fill (first open), warm open (manifest compare + one listing), and the loader's
batches from the cached copy.

    python benchmarks/gcs_data_cache.py [--prepared=DIR] [--repeat=3]

Without --prepared it prepares all of ../shared/data (byte tokenizer) into a temporary folder first. The emulator
runs on the same cores as this script, so these are lower bounds for a real bucket's per-host bandwidth, which
is limited by the network instead.
"""
from __future__ import annotations

import argparse
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
    ap.add_argument("--prepared", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="gcs-bench-")
    prepared = args.prepared
    if prepared is None:
        from mosaic_jax.data import pipeline
        prepared = os.path.join(tmp.name, "prepared")
        pipeline.prepare([str(REPO.parent / "shared" / "data")], prepared, "byte", num_workers=1, progress=False)
    print(f"cpu: {hostinfo.cpu_info()['cpu_model']}; load average {os.getloadavg()[0]:.1f}")
    for emu in gcs_emulator.start():
        from mosaic_jax.data import loader, store
        from mosaic_jax.io import data_cache, storage
        emu.make_bucket("bench")
        t0 = time.perf_counter()
        nbytes = data_cache.upload(prepared, "gs://bench/data")
        up = time.perf_counter() - t0
        print(f"upload {nbytes / 1e6:.1f} MB ({len(storage.list_files('gs://bench/data'))} files): "
              f"{nbytes / 1e6 / up:.1f} MB/s")
        for r in range(args.repeat):
            os.environ["MOSAIC_DATA_CACHE"] = os.path.join(tmp.name, f"cache{r}")
            t0 = time.perf_counter()
            local = data_cache.local_copy("gs://bench/data")
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            data_cache.local_copy("gs://bench/data")
            warm = time.perf_counter() - t0
            print(f"run {r}: cold fill {nbytes / 1e6 / cold:.1f} MB/s ({cold:.2f} s); warm open {warm * 1e3:.0f} ms")
        ds = store.open_prepared("gs://bench/data", "train")
        src = loader.BatchSource(ds, 512, 64, 0)
        t0 = time.perf_counter()
        for step in range(50):
            src.global_batch_at(step)
        dt = time.perf_counter() - t0
        print(f"loader from the cached copy (T=512, 64 rows, in-process): {50 * 64 * 512 / dt / 1e6:.1f} M tokens/s "
              f"(local: {local})")


if __name__ == "__main__":
    main()
