r"""Read rate of `hf:` inputs (mosaic_jax/data/hf_source.py) against the same documents as text files.

    HF_DATASETS_OFFLINE=1 python benchmarks/hf_read_rate.py --input=../shared/data/tinystories

Builds a save_to_disk folder and a parquet folder from the documents of --input (in a temporary folder), then
times opening each source and iterating its documents (no tokenizer). Prints the CPU model and load average.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable, Iterable

import datasets

from mosaic_jax.data import hf_source, ingest


def _time(name: str, make: Callable[[], object], mb: float) -> None:
    t0 = time.perf_counter()
    reader = make()
    t1 = time.perf_counter()
    docs: Iterable[str] = reader.documents() if isinstance(reader, hf_source.HFReader) else reader  # type: ignore
    n = sum(1 for _ in docs)
    t2 = time.perf_counter()
    print(f"{name:30s} open {t1 - t0:5.2f} s, read {n} docs ({mb:.2f} MB) in {t2 - t1:5.2f} s = "
          f"{mb / (t2 - t1):6.1f} MB/s, {n / (t2 - t1):8.0f} docs/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default="../shared/data/tinystories")
    a = ap.parse_args()
    files = ingest.expand_inputs(a.input.split(","))
    docs = list(ingest.iter_documents(files))
    mb = sum(len(d.encode()) for d in docs) / 1e6
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"CPU {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as root:
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(os.path.join(root, "saved"))
        os.makedirs(os.path.join(root, "parquet"))
        datasets.Dataset.from_dict({"text": docs}).to_parquet(os.path.join(root, "parquet", "docs.parquet"))
        _time("text files (ingest)", lambda: ingest.iter_documents(files), mb)
        _time("hf: save_to_disk folder", lambda: hf_source.HFReader("hf:" + os.path.join(root, "saved")), mb)
        _time("hf: parquet folder (streamed)", lambda: hf_source.HFReader("hf:" + os.path.join(root, "parquet")), mb)


if __name__ == "__main__":
    main()
