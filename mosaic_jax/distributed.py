"""Multi-process start-up: `jax.distributed` when the job spans processes (TPU pod workers, SLURM tasks, MPI ranks,
or N processes on one machine), and the checks that keep every process feeding its own rows of the batch.

    from mosaic_jax import distributed
    distributed.maybe_initialize()   # before anything touches a JAX device; a no-op for a single process

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

A rendezvous that times out is a hard abort inside XLA's coordination client (SIGABRT with a C++ stack and no
Python exception), so a watchdog thread prints one line naming the coordinator address, this process and what
was reachable, and exits 1 just before JAX's own deadline.

On CPU, collectives between processes use gloo (`jax_cpu_collectives_implementation`; the default in jax 0.10.2,
set here explicitly when it is off), so `launch/local_multiprocess.sh` runs real multi-process training on one
machine for development and tests.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
from typing import Any, Callable, Mapping, Optional

from absl import flags

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
DEFAULT_TIMEOUT_S = 300
_GRACE_S = 15   # JAX's own deadline is this much later than ours, so our message comes first

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


# ---- starting it ------------------------------------------------------------------------------------------------

def _resolve_with_jax(plan: Plan) -> Plan:
    """Fill the fields JAX would auto-detect, so that logs and errors can name the coordinator."""
    if None not in (plan.coordinator_address, plan.num_processes, plan.process_id):
        return plan
    try:
        from jax._src import clusters
        address, n, pid, ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            plan.coordinator_address, plan.num_processes, plan.process_id,
            list(plan.local_device_ids) if plan.local_device_ids is not None else None, None, plan.timeout_s)
    except Exception as e:  # noqa: BLE001 - private API: leave the rest to jax.distributed.initialize
        log.info("could not pre-resolve cluster settings (%s); JAX will auto-detect them", e)
        return plan
    return dataclasses.replace(plan, coordinator_address=address, num_processes=n, process_id=pid,
                               local_device_ids=tuple(ids) if ids is not None else None)


def _probe(address: Optional[str], seconds: float = 2.0) -> str:
    """'accepting connections' / 'not accepting connections (...)' / 'not resolvable (...)' for HOST:PORT."""
    if not address:
        return "unknown"
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            return "accepting connections"
    except socket.gaierror as e:
        return f"not resolvable from this host ({e.strerror or e})"
    except OSError as e:
        return f"not accepting connections ({e.strerror or type(e).__name__})"


def timeout_message(plan: Plan, probe: str) -> str:
    """The one line printed when the start-up rendezvous does not complete in time."""
    coord = plan.coordinator_address or "(auto-detected)"
    n = plan.num_processes if plan.num_processes is not None else "?"
    head = (f"distributed: jax.distributed did not start within {plan.timeout_s} s: coordinator {coord} "
            f"(process {plan.process_id if plan.process_id is not None else '?'} of {n}, settings: {plan.source})")
    if plan.process_id == 0:
        why = (f"this process runs the coordinator and not all {n} processes joined it: start the same command "
               f"on every process/worker, with the same --num_processes and this host:port reachable from them")
    elif probe == "accepting connections":
        why = (f"the coordinator is accepting connections but the job did not assemble: check that all {n} "
               "processes run with the same --num_processes and distinct --process_id")
    else:
        why = f"the coordinator is {probe}: is process 0 running, and is the address reachable from this host?"
    return f"{head}; {why} (wait longer with --distributed_timeout / MOSAIC_DISTRIBUTED_TIMEOUT)"


def initialize(plan: Plan) -> Plan:
    """`jax.distributed.initialize` for `plan`, with a watchdog that turns a rendezvous timeout into one clear
    line naming the coordinator (exit status 1) instead of XLA's abort. Returns the resolved plan."""
    import jax

    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes need real collectives
    plan = _resolve_with_jax(plan)
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(plan.timeout_s):
            return
        message = timeout_message(plan, _probe(plan.coordinator_address) if plan.process_id != 0 else "")
        try:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        finally:
            os._exit(1)   # the main thread is blocked inside XLA's connect(): only a hard exit ends it

    threading.Thread(target=watchdog, name="distributed-watchdog", daemon=True).start()
    log.info("starting jax.distributed: %s", plan.describe())
    try:
        jax.distributed.initialize(
            coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
            process_id=plan.process_id,
            local_device_ids=list(plan.local_device_ids) if plan.local_device_ids is not None else None,
            initialization_timeout=plan.timeout_s + _GRACE_S)
    except Exception as e:  # noqa: BLE001 - e.g. a second initialize, a bad address: name the coordinator
        raise DistributedError(f"jax.distributed.initialize failed ({plan.describe()}): "
                               f"{' '.join(str(e).split())[:400]}") from None
    finally:
        done.set()
    return dataclasses.replace(plan, num_processes=jax.process_count(), process_id=jax.process_index())


_barriers = 0


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait until every process reaches this point (the coordination service's barrier: no device collective,
    any timeout). A no-op with one process. Call it at the same points, in the same order, on every process."""
    global _barriers
    import jax
    if jax.process_count() == 1:
        return
    from jax._src import distributed as _d
    _barriers += 1
    _d.global_state.client.wait_at_barrier(f"mosaic_jax:{_barriers}:{name}", timeout_in_ms=int(timeout_s * 1000))


def compile_then_align(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A jitted `fn` whose first call (per argument signature) compiles ahead of time, waits for every process at
    a barrier, and only then runs; later calls run the compiled program directly. `fn` itself with one process.

    Why: on CPU (gloo), XLA gives the processes a fixed 30 s to meet at a new program's first collective, and one
    process can finish compiling much later than another (a loaded machine, a compilation-cache hit on one
    side only): without the barrier the early process fails with "Gloo context initialization failed".
    Harmless on GPU/TPU, where the same barrier just aligns the start."""
    import jax
    if jax.process_count() == 1:
        return fn
    compiled: dict[Any, Any] = {}

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x)))) for x in leaves))
        exe = compiled.get(key)
        if exe is None:
            exe = compiled[key] = fn.lower(*args).compile()
            barrier(f"compiled {name}")
        return exe(*args)

    return call


def is_initialized() -> bool:
    try:
        from jax._src import distributed as _d
        return _d.global_state.client is not None
    except Exception:  # noqa: BLE001
        return False


def maybe_initialize(given: Optional[Mapping[str, Any]] = None,
                     environ: Optional[Mapping[str, str]] = None) -> Optional[Plan]:
    """Start jax.distributed if this process is one of several; None for a single process.

    `given` defaults to this module's absl flags (when parsed). Call it before anything touches a JAX device
    (jax.devices(), a jit, an array): JAX refuses to start the distributed runtime after its backends exist."""
    if is_initialized():
        return None
    plan = make_plan(flag_settings() if given is None else given, environ)
    if plan is None:
        return None
    return initialize(plan)


# ---- the batch layout: every process must feed exactly the rows its devices hold ------------------------------

def process_row_blocks(mesh: Any, global_rows: int,
                       process_of: Optional[Callable[[Any], int]] = None) -> dict[int, list[tuple[int, int]]]:
    """process index -> the sorted, merged [lo, hi) row ranges that its devices hold of a (rows, ...) batch
    sharded like `sharding.batch_sharding(mesh)`. `process_of(device)` defaults to `device.process_index`."""
    from mosaic_jax import sharding as sh

    process_of = process_of or (lambda d: d.process_index)
    batch = sh.batch_sharding(mesh)
    blocks: dict[int, set[tuple[int, int]]] = {}
    for device, index in batch.devices_indices_map((global_rows, 1)).items():
        lo, hi, _ = index[0].indices(global_rows)
        blocks.setdefault(process_of(device), set()).add((lo, hi))
    merged: dict[int, list[tuple[int, int]]] = {}
    for p, spans in blocks.items():
        out: list[tuple[int, int]] = []
        for lo, hi in sorted(spans):
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        merged[p] = out
    return merged


def check_batch_layout(mesh: Any, global_rows: int, process_count: Optional[int] = None,
                       process_of: Optional[Callable[[Any], int]] = None) -> str:
    """Check that every process can feed its devices from its own B/n rows (loader.process_batch_at).

    Returns "contiguous" when process i's devices hold exactly rows [i·B/n, (i+1)·B/n) (then the global
    batch is row-for-row the single-process one), "permuted" when each process holds B/n distinct rows in
    another arrangement (topology-aware TPU meshes interleave hosts: the step then sees the same rows in another
    order, equal up to floating-point summation order). Raises DistributedError when processes would have to
    hold the same rows (a mesh axis that replicates the batch, e.g. `tensor`, spans processes)."""
    import jax

    n = jax.process_count() if process_count is None else process_count
    if n == 1:
        return "contiguous"
    if global_rows % n:
        raise DistributedError(f"train.global_batch={global_rows} is not divisible by the {n} processes")
    per = global_rows // n
    blocks = process_row_blocks(mesh, global_rows, process_of)
    held = {p: sum(hi - lo for lo, hi in spans) for p, spans in blocks.items()}
    if any(h != per for h in held.values()) or len(held) != n:
        raise DistributedError(
            f"mesh {dict(mesh.shape)}: the {n} processes' devices hold {sorted(set(held.values()))} batch rows "
            f"each, not {per} distinct ones (global batch {global_rows}): an axis that replicates the batch "
            "spans processes; keep mesh.tensor within one host (tensor <= devices per process) and put the "
            "remaining devices on mesh.data / mesh.fsdp")
    if all(blocks[p] == [(p * per, (p + 1) * per)] for p in range(n)):
        return "contiguous"
    return "permuted"


def mesh_summary(mesh: Any) -> str:
    """'mesh {data: 1, fsdp: 8, tensor: 1} over 2 processes x 4 cpu devices'."""
    import jax
    devices = list(mesh.devices.flat)
    procs = sorted({d.process_index for d in devices})
    return (f"mesh {dict(mesh.shape)} over {len(procs)} process(es) x {len(devices) // max(len(procs), 1)} "
            f"{devices[0].platform} device(s)")
