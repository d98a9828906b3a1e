"""Multi-process start-up: `jax.distributed` when the job spans processes (TPU pod workers, SLURM tasks, MPI ranks,
or N processes on one machine), and the checks that keep every process feeding its own rows of the batch.

    from mosaic_jax.parallel import distributed
    distributed.maybe_initialize()   # before anything touches a JAX device; a no-op for a single process

Which settings apply and how they add up to a `Plan` (flags, environment, SLURM/MPI/TPU detection) is
`mosaic_jax.parallel.cluster`; its public names are re-exported here so `distributed.make_plan` etc. keep working.

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

import jax
from jax._src import distributed as _d

# Re-exported: importing this module still defines the absl flags (--coordinator_address, ...) and callers that
# use `distributed.Plan`, `distributed.make_plan`, ... keep working.
from mosaic_jax.parallel.cluster import (DEFAULT_TIMEOUT_S, ENV_VARS, FLAG_NAMES, MODES, DistributedError,  # noqa: F401
                                Plan, detect_cluster, flag_settings, make_plan, read_settings)
from mosaic_jax.parallel import sharding as sh

log = logging.getLogger(__name__)

_GRACE_S = 15   # JAX's own deadline is this much later than ours, so our message comes first


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
    if jax.process_count() == 1:
        return
    _barriers += 1
    _d.global_state.client.wait_at_barrier(f"mosaic_jax:{_barriers}:{name}", timeout_in_ms=int(timeout_s * 1000))


def compile_then_align(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A jitted `fn` whose first call (per argument signature) compiles ahead of time, waits for every process at
    a barrier, and only then runs; later calls run the compiled program directly. `fn` itself with one process.

    Why: on CPU (gloo), XLA gives the processes a fixed 30 s to meet at a new program's first collective, and one
    process can finish compiling much later than another (a loaded machine, a compilation-cache hit on one
    side only): without the barrier the early process fails with "Gloo context initialization failed".
    Harmless on GPU/TPU, where the same barrier just aligns the start."""
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
    devices = list(mesh.devices.flat)
    procs = sorted({d.process_index for d in devices})
    return (f"mesh {dict(mesh.shape)} over {len(procs)} process(es) x {len(devices) // max(len(procs), 1)} "
            f"{devices[0].platform} device(s)")
