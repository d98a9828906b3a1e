"""Issue 15's "done when", run as written: the tiny_cpu preset on a gs:// workdir and gs:// data (sentencepiece 4k
TinyStories), against the local GCS emulator the tests use (tests/gcs_emulator.py, fake-gcs-server on 127.0.0.1).

    python benchmarks/gcs_end_to_end.py [--steps=20] [--every=5]

1. prepare_data --output=gs://data/ts_sp4k (../shared/data/tinystories, sp:4096);
2. an uninterrupted reference run on a local workdir (same data, read back through the cache);
3. STORAGE_EMULATOR_HOST=... python -m mosaic_jax.train --config=experiments/configs/tiny_cpu.py
   --workdir=gs://runs/tiny --config.data.path=gs://data/ts_sp4k, SIGKILLed while its second-to-last checkpoint is
   being written, then the same command again (resume);
4. the final state equal to the reference, bit for bit; checkpoints, metrics and TensorBoard events in the bucket;
5. the same on 2 processes (launch/local_multiprocess.sh, 2 x 4 CPU devices): losses within test_distributed's RTOL.
Prints each stage with its wall time; exits 1 on the first failed check.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEVICES = "--xla_force_host_platform_device_count=8"   # the runs' 8 CPU devices, here too (Orbax restores by topology)
os.environ["XLA_FLAGS"] = DEVICES
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from tests import gcs_emulator  # noqa: E402

CONFIG = "--config=experiments/configs/tiny_cpu.py"


def train_args(workdir: str, data: str, steps: int, every: int) -> list[str]:
    return [CONFIG, f"--workdir={workdir}", f"--config.data.path={data}", f"--config.train.steps={steps}",
            f"--config.train.checkpoint_every={every}", "--config.train.eval_every=0", "--config.train.sample_tokens=0",
            "--config.train.log_every=1"]


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5)
    a = ap.parse_args()
    kill_at = a.steps - a.every
    t_all = time.time()
    for emu in gcs_emulator.start():
        from mosaic_jax.io import data_cache, storage
        root = pathlib.Path(tempfile.mkdtemp(prefix="gcs_e2e_"))
        env = emu.env()
        env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=DEVICES,
                   MOSAIC_DATA_CACHE=str(root / "cache"), PYTHON=sys.executable)
        emu.make_bucket("data")
        emu.make_bucket("runs")

        def run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
            t0 = time.time()
            r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
            print(f"{what}: exit {r.returncode}, {time.time() - t0:.0f} s", flush=True)
            if r.returncode != 0:
                print(r.stdout[-2000:] + r.stderr[-2000:])
                sys.exit(1)
            return r

        ts = pathlib.Path(REPO.parent / "shared" / "data" / "tinystories")
        run([sys.executable, "-m", "mosaic_jax.prepare_data", "--output=gs://data/ts_sp4k", "--tokenizer=sp:4096",
             f"--input={ts / 'train_v1_prefix_a.txt'},{ts / 'train_v2gpt4_prefix.txt'}",
             f"--validation_input={ts / 'valid_v1_prefix.txt'}", "--noprogress"], "prepare_data --output=gs://data/ts_sp4k")
        os.environ["MOSAIC_DATA_CACHE"] = str(root / "cache_ref")
        local = data_cache.local_copy("gs://data/ts_sp4k")
        train = [sys.executable, "-m", "mosaic_jax.train"]
        run(train + train_args(str(root / "ref"), local, a.steps, a.every), f"reference run, local workdir, {a.steps} steps")

        t0 = time.time()
        proc = subprocess.Popen(train + train_args("gs://runs/tiny", "gs://data/ts_sp4k", a.steps, a.every), cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        mid_save = False
        while proc.poll() is None:   # SIGKILL once objects of step kill_at exist
            files = storage.list_files("gs://runs/tiny/checkpoints")
            if any(f.startswith(f"{kill_at}/") for f in files):
                mid_save = f"{kill_at}/commit_success.txt" not in files
                proc.kill()
                break
            time.sleep(0.05)
        proc.communicate(timeout=600)
        print(f"gs:// run SIGKILLed {'while step ' + str(kill_at) + ' was being written' if mid_save else 'after step ' + str(kill_at) + ' was committed'}"
              f" (exit {proc.returncode}, {time.time() - t0:.0f} s)", flush=True)
        check(proc.returncode == -9, "the run was killed before it finished")
        r = run(train + train_args("gs://runs/tiny", "gs://data/ts_sp4k", a.steps, a.every), "the same command again")
        check("resumed from gs://runs/tiny/checkpoints/" in r.stdout, "it resumed from a checkpoint in the bucket")

        import jax
        import orbax.checkpoint as ocp
        ref = jax.tree.leaves(ocp.StandardCheckpointer().restore(root / "ref" / "checkpoints" / str(a.steps) / "state"))
        got = jax.tree.leaves(ocp.StandardCheckpointer().restore(storage.path(f"gs://runs/tiny/checkpoints/{a.steps}") / "state"))
        check(len(ref) == len(got) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(ref, got)),
              f"final state (params + optimizer, {len(ref)} arrays) bitwise equal to the uninterrupted run")
        files = storage.list_files("gs://runs/tiny")
        check(f"checkpoints/{a.steps}/commit_success.txt" in files, "checkpoints in the bucket")
        steps = sorted(json.loads(x)["step"] for x in storage.path("gs://runs/tiny/metrics.jsonl").read_text().splitlines()
                       if json.loads(x)["split"] == "train")
        check(steps == list(range(1, a.steps + 1)), f"metrics.jsonl in the bucket, train steps 1..{a.steps} once each")
        check(any(f.startswith("tensorboard/") and "tfevents" in f for f in files), "TensorBoard events in the bucket")
        check("lock.json" not in files, "the workdir lock released")

        from tests.test_distributed import RTOL
        steps2 = min(a.steps, 2 * a.every)
        run(["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "4", "-l", str(root / "logs_2p"), "--",
             *train_args("gs://runs/tiny-2p", "gs://data/ts_sp4k", steps2, a.every)], f"2 processes x 4 devices, {steps2} steps")
        two = {r["step"]: r["loss"] for r in map(json.loads, storage.path("gs://runs/tiny-2p/metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"}
        one = {r["step"]: r["loss"] for r in map(json.loads, (root / "ref" / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"}
        worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in two)
        check(sorted(two) == list(range(1, steps2 + 1)) and worst <= RTOL,
              f"2-process losses match the 1-process run (max relative difference {worst:.2e} <= {RTOL})")
        files = storage.list_files("gs://runs/tiny-2p")
        check(f"checkpoints/{steps2}/commit_success.txt" in files and "lock.json" not in files,
              "2-process checkpoints in the bucket, lock released")
    print(f"all checks passed in {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
