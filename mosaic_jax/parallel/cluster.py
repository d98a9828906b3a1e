"""Where a multi-process job's settings come from, and the launch plan they add up to (pure: no JAX device is
touched, so it runs before `jax.distributed` starts). `mosaic_jax.parallel.distributed` starts the job from the plan.

Where the settings come from, first match wins:

1. explicit: absl flags `--coordinator_address=HOST:PORT --num_processes=N --process_id=I [--local_device_ids=0,1]`,
   else the environment `MOSAIC_COORDINATOR_ADDRESS`, `MOSAIC_NUM_PROCESSES`, `MOSAIC_PROCESS_ID`,
   `MOSAIC_LOCAL_DEVICE_IDS` (or their `JAX_*` spellings, which JAX's own launchers use). A field left out is
   filled from the detected cluster below; `num_processes=1` means "one process: do nothing".
2. SLURM (`srun` with more than one task), Open MPI (`mpirun` with more than one rank), a Cloud TPU VM:
   JAX's own auto-detection (`jax._src.clusters`) supplies the coordinator, the process count and the rank.
3. otherwise a single process: nothing to do.

`--distributed=auto|on|off` (env `MOSAIC_DISTRIBUTED`) forces the choice: `on` fails when nothing says how to
join a job, `off` never starts it. `--distributed_timeout` (env `MOSAIC_DISTRIBUTED_TIMEOUT`, default 300 s)
bounds the start-up rendezvous; raise it for big gangs whose workers boot slowly.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

from absl import flags

MODES = ("auto", "on", "off")
DEFAULT_TIMEOUT_S = 300

# field -> environment variables, in order of precedence (the flag of the same name beats all of them)
ENV_VARS: dict[str, tuple[str, ...]] = {
    "coordinator_address": ("MOSAIC_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("MOSAIC_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("MOSAIC_PROCESS_ID", "JAX_PROCESS_ID"),
    "local_device_ids": ("MOSAIC_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS"),
    "distributed": ("MOSAIC_DISTRIBUTED",),
    "distributed_timeout": ("MOSAIC_DISTRIBUTED_TIMEOUT",),
}

flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process jobs). "
                    "Env: MOSAIC_COORDINATOR_ADDRESS or JAX_COORDINATOR_ADDRESS.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the job. Env: MOSAIC_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", None, "This process's rank in [0, num_processes). Env: MOSAIC_PROCESS_ID.")
flags.DEFINE_string("local_device_ids", None, "Comma-separated local accelerator ids this process uses "
                    "(default: all; one per task under SLURM/MPI). Env: MOSAIC_LOCAL_DEVICE_IDS.")
flags.DEFINE_enum("distributed", None, list(MODES), "auto (default): start jax.distributed when settings or a "
                  "SLURM/MPI/TPU-VM environment say the job spans processes; on: always; off: never. "
                  "Env: MOSAIC_DISTRIBUTED.")
flags.DEFINE_integer("distributed_timeout", None, "Seconds to wait for every process to join at start-up "
                     f"(default {DEFAULT_TIMEOUT_S}). Env: MOSAIC_DISTRIBUTED_TIMEOUT.")

FLAG_NAMES = tuple(ENV_VARS)


class DistributedError(RuntimeError):
    """Inconsistent or missing multi-process settings, or a failed start-up (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job. `None` fields are left to JAX's cluster auto-detection."""
    source: str                                   # "explicit", "slurm", "mpi", "tpu" (+ "+slurm" etc. when mixed)
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None
    timeout_s: int = DEFAULT_TIMEOUT_S

    def describe(self) -> str:
        who = "?" if self.process_id is None else str(self.process_id)
        n = "?" if self.num_processes is None else str(self.num_processes)
        coord = self.coordinator_address or "auto-detected"
        return f"process {who} of {n}, coordinator {coord} (settings: {self.source})"


# ---- reading the settings ---------------------------------------------------------------------------------------

def _from_env(field: str, environ: Mapping[str, str]) -> tuple[Optional[str], Optional[str]]:
    for var in ENV_VARS[field]:
        value = environ.get(var)
        if value is not None and value.strip() != "":
            return value.strip(), var
    return None, None


def _int(value: Any, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DistributedError(f"{name}={value!r}: not an integer") from None


def _device_ids(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(_int(v, name) for v in value)
    parts = [p for p in str(value).replace(" ", "").split(",") if p]
    if not parts:
        raise DistributedError(f"{name}={value!r}: expected comma-separated device ids like 0,1,2,3")
    return tuple(_int(p, name) for p in parts)


def flag_settings() -> dict[str, Any]:
    """The values of this module's absl flags (None for unset ones, or when flags are not parsed)."""
    if not flags.FLAGS.is_parsed():
        return {}
    return {name: flags.FLAGS[name].value for name in FLAG_NAMES}


def read_settings(given: Optional[Mapping[str, Any]] = None,
                  environ: Optional[Mapping[str, str]] = None) -> dict[str, tuple[Any, str]]:
    """field -> (value, where it came from) for every field that is set: `given` (flags) beat the environment."""
    environ = os.environ if environ is None else environ
    given = given or {}
    out: dict[str, tuple[Any, str]] = {}
    for field in FLAG_NAMES:
        if given.get(field) is not None:
            out[field] = (given[field], f"--{field}")
        else:
            value, var = _from_env(field, environ)
            if value is not None:
                out[field] = (value, var)
    return out


# ---- cluster environments (what JAX auto-detects), as pure functions of the environment -----------------------

def _slurm_tasks(environ: Mapping[str, str]) -> int:
    """Tasks of this job step (srun), else of the job: >1 means the step spans processes."""
    for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        if environ.get(var, "").strip().isdigit():
            return int(environ[var])
    return 0


def _slurm_tasks_on_this_node(environ: Mapping[str, str]) -> Optional[int]:
    """From SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ('2(x4)' or '8,4' style: this node's entry is
    SLURM_NODEID's); None when unknown."""
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not text:
        return None
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "(x" in part:
            n, rep = part.rstrip(")").split("(x")
            counts += [int(n)] * int(rep)
        elif part.isdigit():
            counts.append(int(part))
    node = int(environ.get("SLURM_NODEID", "0") or 0)
    return counts[node] if 0 <= node < len(counts) else None


def _slurm_gpus_on_node(environ: Mapping[str, str]) -> int:
    text = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    return int(text) if text.isdigit() else 0


def detect_cluster(environ: Mapping[str, str], on_tpu_vm: bool = False) -> Optional[str]:
    """'slurm' | 'mpi' | 'tpu' when the environment says this process is one of several; else None."""
    slurm_keys = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in environ for k in slurm_keys) and _slurm_tasks(environ) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "mpi"
    if on_tpu_vm:
        return "tpu"   # single-host TPU VMs join a job of one process: harmless, and the same code path as a pod
    return None


def _on_cloud_tpu_vm() -> bool:
    """True on a Cloud TPU VM with libtpu (JAX works this out at import; private, so guarded)."""
    try:
        import jax  # noqa: F401 - importing jax runs its Cloud TPU detection
        from jax._src import cloud_tpu_init
        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except Exception:  # noqa: BLE001 - an internal moved: fall back to explicit settings / SLURM
        return False


def make_plan(given: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None,
              on_tpu_vm: Optional[bool] = None) -> Optional[Plan]:
    """Decide how (and whether) this process joins a multi-process job. Pure apart from the TPU probe.

    Returns None for a single process. Raises DistributedError for contradictory or incomplete settings."""
    environ = dict(os.environ if environ is None else environ)
    s = read_settings(given, environ)
    mode = str(s.get("distributed", ("auto", ""))[0]).lower()
    if mode not in MODES:
        raise DistributedError(f"{s['distributed'][1]}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return None
    timeout = DEFAULT_TIMEOUT_S
    if "distributed_timeout" in s:
        timeout = _int(s["distributed_timeout"][0], s["distributed_timeout"][1])
        if timeout <= 0:
            raise DistributedError(f"{s['distributed_timeout'][1]}={timeout}: must be a positive number of seconds")
    address = s["coordinator_address"][0] if "coordinator_address" in s else None
    n = _int(*s["num_processes"]) if "num_processes" in s else None
    pid = _int(*s["process_id"]) if "process_id" in s else None
    ids = _device_ids(*s["local_device_ids"]) if "local_device_ids" in s else None

    if address is not None:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"{s['coordinator_address'][1]}={address!r}: expected HOST:PORT "
                                   "(e.g. 10.0.0.2:8476, or localhost:PORT for processes on one machine)")
    if n is not None and n < 1:
        raise DistributedError(f"{s['num_processes'][1]}={n}: must be >= 1")
    if n == 1 and mode != "on":
        return None   # explicitly one process
    if pid is not None and n is not None and not 0 <= pid < n:
        raise DistributedError(f"{s['process_id'][1]}={pid}: must be in [0, {n}) (num_processes={n})")

    complete = all(k in s for k in ("coordinator_address", "num_processes", "process_id"))
    if on_tpu_vm is None:
        on_tpu_vm = not complete and detect_cluster(environ) is None and _on_cloud_tpu_vm()
    cluster = detect_cluster(environ, on_tpu_vm)
    explicit = [k for k in ("coordinator_address", "num_processes", "process_id") if k in s]
    if not explicit and cluster is None:
        if mode == "on":
            raise DistributedError(
                "--distributed=on but nothing says how to join the job: set --coordinator_address, "
                "--num_processes and --process_id (or MOSAIC_COORDINATOR_ADDRESS, MOSAIC_NUM_PROCESSES, "
                "MOSAIC_PROCESS_ID), or run under srun / mpirun / on a Cloud TPU VM")
        return None
    if explicit and cluster is None:
        missing = [k for k in ("coordinator_address", "num_processes", "process_id") if k not in s]
        if missing:
            have = ", ".join(f"{s[k][1]}={s[k][0]}" for k in explicit)
            need = ", ".join(f"--{k} (or {ENV_VARS[k][0]})" for k in missing)
            raise DistributedError(f"multi-process settings are incomplete: {have} is set but {need} is "
                                   "missing, and no SLURM/MPI/TPU environment was detected to fill it")
    if cluster == "slurm" and ids is None:
        # One task driving all of a node's GPUs: JAX would pin it to GPU [SLURM_LOCALID] = [0] (jax #23452).
        if _slurm_tasks_on_this_node(environ) == 1 and _slurm_gpus_on_node(environ) > 1:
            ids = tuple(range(_slurm_gpus_on_node(environ)))
    source = "explicit" if explicit and cluster is None else (cluster if not explicit else f"explicit+{cluster}")
    return Plan(source=source, coordinator_address=address, num_processes=n, process_id=pid,
                local_device_ids=ids, timeout_s=timeout)
