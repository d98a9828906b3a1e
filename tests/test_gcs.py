"""gs:// paths against a local GCS emulator (tests/gcs_emulator.py, fake-gcs-server on 127.0.0.1)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from mosaic_jax.io import data_cache, storage
from mosaic_jax.training import integrity, workdir_lock
from tests.conftest import REPO


def test_emulator_serves_epath_tensorstore_and_preconditions(gcs):
    """What the trainer needs from one variable: epath (gcsfs) files and listings, tensorstore arrays, and
    create-if-absent / delete-if-unchanged objects (google-cloud-storage)."""
    root = gcs.make_bucket("basics")
    p = storage.path(f"{root}/a/b.txt")
    storage.write_text(p, "hello")
    assert p.read_text() == "hello" and p.exists()
    assert [q.name for q in storage.path(f"{root}/a").iterdir()] == ["b.txt"]
    import tensorstore as ts
    arr = ts.open({"driver": "zarr", "kvstore": f"{root}/ts/",
                   "metadata": {"shape": [5], "dtype": "<i4", "chunks": [2]}}, create=True).result()
    arr.write(np.arange(5, dtype=np.int32)).result()
    np.testing.assert_array_equal(arr.read().result(), np.arange(5))
    url = f"{root}/lockish.json"
    gen = storage.create_exclusive(url, b"{}")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(url, b"{}")
    assert not storage.delete_if_generation(url, gen + 1) and storage.read_with_generation(url)[1] == gen
    assert storage.delete_if_generation(url, gen)
    assert storage.read_with_generation(url) is None


def test_workdir_lock_on_gcs(gcs):
    """The lock is exclusive, released only by its owner, and a dead same-host holder is taken over."""
    workdir = gcs.make_bucket("locks") + "/run"
    lock = workdir_lock.acquire(workdir)
    with pytest.raises(workdir_lock.LockError, match="in use by pid"):
        workdir_lock.acquire(workdir)
    lock.release()
    assert storage.read_with_generation(f"{workdir}/lock.json") is None
    # a holder that died (SIGKILL): its record stays, the next run takes it over and says so
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {**workdir_lock.own_record(), "pid": int(dead.stdout), "proc_start": "0"}
    storage.create_exclusive(f"{workdir}/lock.json", json.dumps(record).encode())
    lock2 = workdir_lock.acquire(workdir)
    assert "that process is gone" in lock2.note and lock2.held()
    # a lock replaced behind our back (--break_lock elsewhere) is not removed by our release
    other = storage.read_with_generation(f"{workdir}/lock.json")
    storage.delete_if_generation(f"{workdir}/lock.json", other[1])
    storage.create_exclusive(f"{workdir}/lock.json", b'{"token": "someone else"}')
    assert not lock2.held()
    lock2.release()
    assert json.loads(storage.read_with_generation(f"{workdir}/lock.json")[0])["token"] == "someone else"


# ---- end to end: prepare -> train on gs:// -> SIGKILL during an async save -> resume, bitwise ----------------------
STEPS = 12


@pytest.fixture(scope="module")
def gcs_runs(gcs, tmp_path_factory, data_dir):
    """prepare_data --output=gs://; an uninterrupted local run; a gs:// run killed (SIGKILL) while its step-8 save is
    being written, then resumed. Shared by the tests below (one set of training runs for the module)."""
    from tests.test_train_io import _cmd, _run, _start
    root = tmp_path_factory.mktemp("gcs_e2e")
    (root / "train.txt").write_bytes((data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:100_000])
    gcs.make_bucket("data")
    runs = gcs.make_bucket("runs")
    env = gcs.env()
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               MOSAIC_DATA_CACHE=str(root / "cache"), JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    prep = subprocess.run([sys.executable, "-m", "mosaic_jax.prepare_data", f"--input={root / 'train.txt'}",
                           "--output=gs://data/ts", "--tokenizer=byte", "--num_workers=1", "--noprogress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-2000:]
    os.environ["MOSAIC_DATA_CACHE"] = str(root / "cache_test")
    local_data = data_cache.local_copy("gs://data/ts")   # the same bytes, read back through the cache
    ref = _run(_cmd(root / "ref", local_data, STEPS), env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    workdir = f"{runs}/tiny"
    proc = _start(_cmd(workdir, "gs://data/ts", STEPS), env)
    mid_save = False
    while proc.poll() is None:   # kill once objects of step 8 exist but the step is not committed yet
        files = storage.list_files(f"{workdir}/checkpoints")
        if any(f.startswith("8/") for f in files):
            mid_save = "8/commit_success.txt" not in files
            proc.kill()
            break
        time.sleep(0.05)
    proc.communicate(timeout=600)
    print(f"SIGKILL {'while step 8 was being written' if mid_save else 'after step 8 was committed'}")
    assert proc.returncode == -9, "the run ended before its step-8 save started"
    resumed = _run(_cmd(workdir, "gs://data/ts", STEPS), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"root": root, "ref": root / "ref", "workdir": workdir, "env": env, "mid_save": mid_save,
            "resumed": resumed, "data": local_data}


def _params(step_dir):
    import jax
    import orbax.checkpoint as ocp
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(storage.path(step_dir) / "state"))


@pytest.mark.slow
def test_gcs_run_resumes_bitwise_after_sigkill_mid_save(gcs_runs):
    """The SIGKILLed-then-resumed gs:// run ends with exactly the state of the uninterrupted local run."""
    out = gcs_runs["resumed"].stdout
    assert "resumed from gs://runs/tiny/checkpoints/4 (step 4)" in out, out[-2000:]
    assert storage.list_files(gcs_runs["workdir"] + "/checkpoints/12")   # the final checkpoint is in the bucket
    for a, b in zip(_params(gcs_runs["ref"] / "checkpoints" / str(STEPS)),
                    _params(f"{gcs_runs['workdir']}/checkpoints/{STEPS}"), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_gcs_run_leaves_metrics_events_config_and_no_lock(gcs_runs):
    """Metrics JSONL (both runs' records, appended), TensorBoard events readable by TensorBoard's loader,
    config.json, the tokenizer copy and every file record in the bucket; the lock is released."""
    wd = gcs_runs["workdir"]
    files = storage.list_files(wd)
    assert "lock.json" not in files and "config.json" in files and "tokenizer/manifest.json" in files
    records = [json.loads(line) for line in storage.path(f"{wd}/metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    # the killed run's records up to its last checkpoint (4) were synced with it; the resumed run logs 5..12
    assert steps[-1] == STEPS and set(range(1, STEPS + 1)) <= set(steps)
    events = sorted(f for f in files if f.startswith("tensorboard/events.out.tfevents"))
    assert len(events) == 2   # one per run start
    loss_steps = [step for f in events for tag, step in _scalar_events(storage.path(f"{wd}/{f}").read_bytes())
                  if tag == "train/loss"]
    assert max(loss_steps) == STEPS and set(range(1, STEPS + 1)) <= set(loss_steps)
    for step in (4, STEPS):
        assert integrity.verify_file_record(f"{wd}/checkpoints/{step}") is None
        assert f"checkpoints/{step}/integrity_files.json" in files


def _scalar_events(data: bytes) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in a TensorBoard event file; asserts the TFRecord framing is whole (a file cut
    mid-record, i.e. half-written, fails)."""
    import struct

    from tensorboardX.proto import event_pb2
    out, pos = [], 0
    while pos < len(data):
        assert pos + 12 <= len(data), "event file ends inside a record header"
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        assert pos + 12 + length + 4 <= len(data), "event file ends inside a record"
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        out += [(v.tag, event.step) for v in event.summary.value if v.HasField("simple_value")]
        pos += 12 + length + 4
    return out


@pytest.mark.slow
def test_generate_and_evaluate_from_the_gcs_run(gcs_runs, data_dir):
    """generate reads the newest committed step and the run's tokenizer copy from the bucket (same greedy text as
    from the local run with the same final state); evaluate scores a gs:// corpus and writes eval.json etc. into
    gs://.../eval."""
    env, wd = gcs_runs["env"], gcs_runs["workdir"]

    def gen(workdir):
        r = subprocess.run([sys.executable, "-m", "mosaic_jax.generate", f"--workdir={workdir}", "--prompt=Once",
                            "--max_new_tokens=12", "--greedy", "--no_stream"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout
    assert gen(wd) == gen(gcs_runs["ref"])   # bitwise-equal params: the same greedy continuation
    corpus = "gs://data/corpus/valid.txt"   # --input on gs:// too (streamed by ingest.SourceReader)
    storage.write_bytes(corpus, (data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[100_000:110_000])
    r = subprocess.run([sys.executable, "-m", "mosaic_jax.evaluate", f"--workdir={wd}", f"--input={corpus}",
                        "--max_windows=4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(storage.path(f"{wd}/eval/eval.json").read_text())
    assert summary["windows"] == 4 and np.isfinite(summary["loss"])
    assert storage.path(f"{wd}/eval/per_position_loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_process_launcher_on_a_gcs_workdir(gcs_runs):
    """launch/local_multiprocess.sh (2 processes x 4 CPU devices, gloo over loopback) on a gs:// workdir and gs://
    data: process 0 holds the lock and writes the metrics, both write their shards of checkpoint 4; the losses match
    the 1-process x 8-device local run to RTOL (tests/test_distributed.py: only the summation order differs)."""
    from tests.test_distributed import RTOL
    from tests.test_train_io import ARGS
    wd, env = f"{gcs_runs['workdir']}-2p", {**gcs_runs["env"], "PYTHON": sys.executable}
    logs = gcs_runs["root"] / "logs_2p"
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "4", "-l", str(logs), "--", *ARGS,
                        "--config.data.path=gs://data/ts", "--config.train.steps=4", f"--workdir={wd}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = storage.list_files(wd)
    assert "checkpoints/4/commit_success.txt" in files and "lock.json" not in files
    assert {"checkpoints/4/state/array_metadatas/process_0", "checkpoints/4/state/array_metadatas/process_1"} <= set(files)

    def losses(text):
        return {r["step"]: r["loss"] for r in map(json.loads, text.splitlines()) if r["split"] == "train"}
    two = losses(storage.path(f"{wd}/metrics.jsonl").read_text())
    ref = losses((gcs_runs["ref"] / "metrics.jsonl").read_text())
    assert sorted(two) == [1, 2, 3, 4]
    assert max(abs(two[s] - ref[s]) / abs(ref[s]) for s in two) <= RTOL


# ---- every CLI that takes a path: prepare_data --input, export, sweep, aot ----------------------------------------
def test_prepare_data_streams_gcs_inputs(gcs, tmp_path, data_dir, capsys):
    """--input/--validation_input=gs://: a folder (walked for --include, dot-names skipped), one object and a glob
    give the same preparation (fingerprint, shard hashes) as the local copies; the manifest names the URLs. A URL
    that names nothing is a one-line error naming it, exit 1, and no output."""
    from mosaic_jax import prepare_data
    text = (data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()
    local = tmp_path / "corpus"
    (local / "sub").mkdir(parents=True)
    (local / "b.txt").write_bytes(text[:30_000])
    (local / "sub" / "a.txt.gz").write_bytes(gzip.compress(text[30_000:50_000]))
    (local / "skip.bin").write_bytes(b"\x00\x01 not taken: no --include pattern matches")
    (local / ".hidden.txt").write_bytes(b"not taken: dot-names are skipped")
    (tmp_path / "valid.txt").write_bytes(text[50_000:56_000])
    root = gcs.make_bucket("corpora")
    for f in [*local.rglob("*"), tmp_path / "valid.txt"]:
        if f.is_file():
            storage.write_bytes(f"{root}/{f.relative_to(tmp_path).as_posix()}", f.read_bytes())

    def prepare(out, *inputs):
        *train, valid = inputs
        argv = [f"--input={','.join(train)}", f"--validation_input={valid}", f"--out={tmp_path / out}",
                "--tokenizer=byte", "--num_workers=1", "--noprogress"]
        assert prepare_data.main(argv) == 0, capsys.readouterr().err
        return json.loads((tmp_path / out / "manifest.json").read_text())
    ref = prepare("ref", str(local), str(tmp_path / "valid.txt"))
    got = prepare("got", f"{root}/corpus/", f"{root}/valid.txt")
    assert [s["path"] for s in got["sources"]] == [f"{root}/corpus/b.txt", f"{root}/corpus/sub/a.txt.gz",
                                                   f"{root}/valid.txt"]
    assert got["fingerprint"] == ref["fingerprint"] and got["splits"] == ref["splits"]   # shards' sha256 included
    globbed = prepare("glob", f"{root}/corpus/sub/*.gz", f"{root}/corpus/b.txt")
    assert [s["path"] for s in globbed["sources"]] == [f"{root}/corpus/sub/a.txt.gz", f"{root}/corpus/b.txt"]
    capsys.readouterr()
    for missing in (f"{root}/nothing-here", "gs://no-such-bucket/corpus"):
        assert prepare_data.main([f"--input={missing}", f"--out={tmp_path / 'bad'}", "--tokenizer=byte"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"prepare_data: error: {missing}: input not found"), err
        assert not (tmp_path / "bad").exists()


def test_prepare_data_rerun_to_gcs_is_a_no_op(gcs, tmp_path, data_dir, capsys):
    """gs:// in and out: re-running the same preparation finds its fingerprint in the bucket and uploads nothing (the
    manifest, which records its creation time, stays the first run's); other options are refused, exit 1."""
    from mosaic_jax import prepare_data
    root = gcs.make_bucket("rerun")
    storage.write_bytes(f"{root}/in/t.txt", (data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:8000])
    argv = [f"--input={root}/in", f"--out={root}/prep", "--tokenizer=byte", "--num_workers=1", "--noprogress"]
    assert prepare_data.main(argv) == 0 and f"{root}/prep: uploaded" in capsys.readouterr().out
    first = storage.path(f"{root}/prep/manifest.json").read_bytes()
    assert prepare_data.main(argv) == 0
    assert f"{root}/prep: already holds this preparation; nothing uploaded" in capsys.readouterr().out
    assert storage.path(f"{root}/prep/manifest.json").read_bytes() == first
    assert prepare_data.main([*argv, "--add_bos"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]   # after the progress log
    assert len(err) == 1 and err[0].startswith(f"prepare_data: error: {root}/prep holds a different preparation"), err
    assert storage.path(f"{root}/prep/manifest.json").read_bytes() == first


@pytest.mark.slow
def test_export_reads_and_writes_gcs(gcs, gcs_runs, tmp_path, capsys):
    """export --workdir=gs://... --out=gs://...: the same Hugging Face files as an export of the bitwise-equal local
    run (the card names the gs:// run and its final loss, read from the bucket's metrics); a second export to the
    same URL is refused and leaves the objects as they were; a missing gs:// run is a one-line error."""
    from mosaic_jax import export
    from mosaic_jax.hf.export import ExportError, export_hf
    out = gcs.make_bucket("exports") + "/tiny"
    assert export.main([f"--workdir={gcs_runs['workdir']}", f"--out={out}"]) == 0, capsys.readouterr().err
    export_hf(str(gcs_runs["ref"]), str(tmp_path / "ref"))
    files = storage.list_files(out)
    assert sorted(files) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    for name in files:
        if name != "README.md":   # the card names the run it came from
            assert storage.path(f"{out}/{name}").read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    last = [json.loads(x) for x in storage.path(f"{gcs_runs['workdir']}/metrics.jsonl").read_text().splitlines()]
    last = [r for r in last if r["split"] == "train"][-1]
    card = storage.path(f"{out}/README.md").read_text()
    assert f"`{gcs_runs['workdir']}`" in card and f"final train loss: {last['loss']:.4f} (step {STEPS})" in card
    before = {name: storage.path(f"{out}/{name}").read_bytes() for name in files}
    with pytest.raises(ExportError, match="already exists"):
        export_hf(gcs_runs["workdir"], out)
    assert {name: storage.path(f"{out}/{name}").read_bytes() for name in storage.list_files(out)} == before
    capsys.readouterr()
    assert export.main(["--workdir=gs://runs/no-such-run", f"--out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gs://runs/no-such-run" in err[0] and err[0].startswith("export: error:"), err


@pytest.mark.slow
def test_sweep_on_a_gcs_root(gcs_runs, capsys):
    """sweep run --root=gs://...: the run's workdir, sweep.json, sweep_status.json and results.md/.csv are objects in
    the bucket (one run of the real trainer: the module's model and steps on the module's gs:// data, so its step
    comes from the module's XLA cache); re-running the sweep reads the run's metrics back from gs:// and skips it as
    done; `gather` of a gs:// folder that is not a sweep is a one-line error naming it."""
    import csv
    import io

    from mosaic_jax.tools import sweep
    from tests.test_train_io import ARGS
    root, name = "gs://runs/sweeps", "ckpt"
    argv = ["run", f"--name={name}", f"--root={root}", f"--run=train.checkpoint_every={STEPS}", "--", *ARGS,
            "--config.data.path=gs://data/ts", f"--config.train.steps={STEPS}"]
    r = subprocess.run([sys.executable, "-m", "mosaic_jax.tools.sweep", *argv], cwd=REPO, env=gcs_runs["env"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = f"000_checkpoint_every={STEPS}"
    run_dir = f"{root}/{name}/{run}"
    files = storage.list_files(f"{root}/{name}")
    assert {"sweep.json", "results.md", "results.csv", f"{run}/sweep_status.json", f"{run}/metrics.jsonl",
            f"{run}/checkpoints/{STEPS}/commit_success.txt"} <= set(files), sorted(files)
    assert json.loads(storage.path(f"{root}/{name}/sweep.json").read_text())["runs"][0]["dir"] == run_dir
    records = map(json.loads, storage.path(f"{run_dir}/metrics.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in records if r["split"] == "train"]
    [row] = csv.DictReader(io.StringIO(storage.path(f"{root}/{name}/results.csv").read_text()))
    assert (row["run"], row["status"], row["step"]) == (run, "done", str(STEPS))
    assert float(row["train_loss"]) == losses[-1]   # the CSV keeps the full float
    capsys.readouterr()
    assert sweep.main(argv) == 0   # in-process: the finished run is recognised from its gs:// metrics, not re-run
    assert f"{run}: already done, skipped" in capsys.readouterr().out
    assert sweep.main(["gather", "gs://runs/no-such-sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gs://runs/no-such-sweep/sweep.json not found" in err[0], err


@pytest.mark.slow
def test_aot_writes_its_report_to_gcs(gcs):
    """aot --out=gs://...: the JSON report is one object in the bucket (a 1-layer model on 1 device: the compile is
    the cost); a bucket that does not exist is a one-line error naming the URL (the CLI prints the report first and
    exits 1 through cli_util)."""
    env = {k: v for k, v in gcs.env().items() if k != "XLA_FLAGS"}   # the tool sets its own device count
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    url = gcs.make_bucket("reports") + "/aot/tiny.json"
    tiny = ["--config=tiny_cpu", "--config.model.vocab_size=64", "--config.model.n_layer=1", "--config.model.n_embd=16",
            "--config.model.n_head=2", "--config.model.pmem_size=16", "--config.model.block_size=16",
            "--config.train.global_batch=2", "--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
    r = subprocess.run([sys.executable, "-m", "mosaic_jax.tools.aot", *tiny, "--num_devices=1", f"--out={url}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(storage.path(url).read_text())
    assert report["num_devices"] == 1 and report["per_device_bytes"]["params"] > 0 and report["fits"] is not False
    # the write itself, in-process (no second compile): the same function the CLI calls after printing the report
    from mosaic_jax import cli_util
    from mosaic_jax.tools import aot
    cli_util.parse("aot", aot.FLAGS, ["--out=gs://no-such-bucket/r.json"])
    try:
        with pytest.raises(cli_util.CommandError, match=r"^--out=gs://no-such-bucket/r.json: cannot write \(") as e:
            aot._write_out(report)
    finally:
        aot.FLAGS.unparse_flags()   # leave the module's flags as other tests expect them
    assert "\n" not in str(e.value)
