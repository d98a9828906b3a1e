r"""Ahead-of-time check: compile the real training step for a named mesh and report memory per device, before any
cluster time is spent.

    # simulated CPU devices (any machine): the shardings, shapes and a CPU-compiler memory estimate
    python -m mosaic_jax.tools.aot --config=babistories_mm --config.mesh.fsdp=8 \
        --num_devices=8 --config.model.vocab_size=50304 --device_memory_gb=80
    # a Cloud TPU slice, compiled by the TPU compiler without the TPU (needs libtpu: pip install "jax[tpu]")
    python -m mosaic_jax.tools.aot --config=babistories_mm --topology=v4-32 \
        --config.mesh.fsdp=16 --config.model.vocab_size=50304
    # per-device temporaries against the sequence length, dense vs Pallas memory reads (aot_scaling.py)
    python -m mosaic_jax.tools.aot --config=babistories_mm --config.model.vocab_size=50304 \
        --config.train.global_batch=1 --config.mesh.fsdp=1 --topology=v5e-1 --seq_lens=2048,8192,32768 \
        --impls=pallas,dense

With --topology the model is traced for a TPU (`platform.target("tpu")`): its `auto` switches pick the TPU
paths, the Pallas kernels included, which Mosaic compiles.

What is compiled is `training.setup.build(...).train_step`, the function `mosaic_jax.train` runs,
lowered on abstract inputs (`jax.ShapeDtypeStruct`s carrying the mesh's shardings): nothing is allocated, so a
123M-parameter model on a 64-device mesh checks on a laptop. The report gives, per device:

* parameters and optimizer state: exact, from each leaf's shard shape under `sharding.LOGICAL_RULES`;
* the batch shard;
* compiler temporaries (`Compiled.memory_analysis().temp_size_in_bytes`): activations kept for the backward
  pass, gradient buffers and workspace, for ONE microbatch (accumulation runs in a scan inside the step);
* a peak estimate = arguments + outputs − donated (aliased) buffers + temporaries + code.

With `--topology` (JAX's AOT topology API, `jax.experimental.topologies`) the numbers come from the TPU compiler
itself. With `--num_devices` they come from XLA:CPU, whose fusion and rematerialisation differ from the GPU and
TPU compilers: shapes and shardings are exact, temporaries an estimate (usually on the high side). Exit status 3
when the estimate exceeds `--device_memory_gb` (or the TPU's HBM), so scripts can gate a submission on it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage
from mosaic_jax.data import store
from mosaic_jax.data.errors import DataError
from mosaic_jax.kernels import platform
from mosaic_jax.models import flops as flops_mod
from mosaic_jax.parallel import sharding
from mosaic_jax.tools import aot_scaling
from mosaic_jax.training import run_config, setup
from mosaic_jax.training.run_config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
GIB = 1024 ** 3

# Accelerator type (as gcloud names it) -> libtpu topology settings (chips along each dimension, chip config,
# chips per host). TPU v4/v5p count TensorCores in the type name (2 per chip, one JAX device per chip in the
# default "megacore" mode); v5e/v6e count chips.
_TPU_HBM_GIB = {"v4": 32, "v5p": 95, "v5e": 16, "v6e": 32}
_TPU_3D = {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4), 256: (4, 4, 8),
           512: (4, 8, 8), 1024: (8, 8, 8), 2048: (8, 8, 16), 4096: (8, 16, 16)}       # by core count
_TPU_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


class AotError(ValueError):
    """Bad arguments or an unavailable topology (one-line message)."""


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    name: str                     # what the user typed, e.g. "v4-32"
    generation: str               # "v4" | "v5p" | "v5e" | "v6e"
    topology_name: str            # libtpu's, e.g. "v4:2x2x4"
    chip_config_name: str         # "megacore" (v4, v5p) | "default"
    chips_per_host_bounds: tuple[int, int, int]
    num_devices: int
    hbm_gib: float


def parse_topology(name: str) -> TopologySpec:
    """'v4-32', 'v5p-64', 'v5litepod-16' / 'v5e-16', 'v6e-32', or libtpu's own 'v4:2x2x4' form."""
    text = name.strip().lower().replace("v5litepod", "v5e")
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)[-:]?(\d+(?:x\d+)*)", text)
    if not m:
        raise AotError(f"--topology={name!r}: expected e.g. v4-32, v5p-64, v5e-16, v6e-32 or v4:2x2x4")
    gen, size = m.group(1), m.group(2)
    megacore = gen in ("v4", "v5p")
    if "x" in size:                                    # explicit chip grid
        dims = tuple(int(s) for s in size.split("x"))
    elif megacore:
        if int(size) not in _TPU_3D:
            raise AotError(f"--topology={name!r}: unknown {gen} size (known: {sorted(_TPU_3D)}; or give {gen}:AxBxC)")
        dims = _TPU_3D[int(size)]
    else:
        if int(size) not in _TPU_2D:
            raise AotError(f"--topology={name!r}: unknown {gen} size (known: {sorted(_TPU_2D)}; or give {gen}:AxB)")
        dims = _TPU_2D[int(size)]
    chips = math.prod(dims)
    if megacore:   # 2x2x1 chips per host, fewer on a smaller slice (v5p:1x1x1 is one chip)
        per_host = tuple(min(d, h) for d, h in zip(dims + (1,) * (3 - len(dims)), (2, 2, 1)))
    else:
        per_host = (2, 4, 1) if chips == 8 else (min(dims[0], 2), min(dims[1], 2), 1)
    return TopologySpec(name=name, generation=gen, topology_name=f"{gen}:{'x'.join(map(str, dims))}",
                        chip_config_name="megacore" if megacore else "default",
                        chips_per_host_bounds=per_host, num_devices=chips, hbm_gib=_TPU_HBM_GIB[gen])


def topology_devices(spec: TopologySpec) -> list[Any]:
    """Compile-only TPU devices for `spec` (JAX's AOT topology API; needs libtpu)."""
    try:
        import libtpu  # noqa: F401 - optional: extra [tpu]
    except ImportError:
        raise AotError(f"--topology={spec.name} needs libtpu to compile for TPU without one "
                       "(pip install 'jax[tpu]'); use --num_devices=N to check on simulated CPU devices") from None
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")   # libtpu probes the (absent) TPU VM metadata
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")    # compile-only: no chip to guard with the lockfile
    try:
        topo = topologies.get_topology_desc(
            spec.topology_name, "tpu", chip_config_name=spec.chip_config_name,
            chips_per_host_bounds=spec.chips_per_host_bounds, num_slices=1, wrap=(False, False, False))
    except Exception as e:  # noqa: BLE001 - libtpu errors are long C++ statuses
        raise AotError(f"--topology={spec.name} ({spec.topology_name}): libtpu could not describe it: "
                       f"{' '.join(str(e).split())[:300]}") from None
    return list(topo.devices)


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _per_device_bytes(tree: Any) -> tuple[int, int]:
    """(bytes one device holds, bytes of the whole tree) for a tree of ShapeDtypeStructs with shardings."""
    local = total = 0
    for x in jax.tree.leaves(tree):
        total += _nbytes(x.shape, x.dtype)
        local += _nbytes(x.sharding.shard_shape(x.shape), x.dtype)
    return local, total


def _replicated_leaves(tree: Any, min_bytes: int = 1 << 20) -> list[str]:
    """Parameters of at least `min_bytes` that every device holds whole (a dimension did not divide)."""
    out = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if all(p is None for p in x.sharding.spec) and _nbytes(x.shape, x.dtype) >= min_bytes:
            out.append(f"{jax.tree_util.keystr(path)} {tuple(x.shape)}")
    return out


def analyze(config: Any, mesh_shape: tuple[int, int, int], devices: Sequence[Any],
            vocab_size: Optional[int] = None, device_memory_gib: Optional[float] = None,
            device_label: str = "") -> dict[str, Any]:
    """Lower and compile the training step for `mesh_shape` over `devices`; the memory report as a dict."""

    try:
        mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    except ValueError as e:
        raise AotError(str(e)) from None
    rc = run_config.resolve(config, vocab_size, sharding.data_parallel_size(mesh), 1)
    cfg, t, d = rc.model, rc.train, rc.data
    su = setup.build(cfg, rc.optim, mesh, microbatches=t.microbatches, dropout=t.dropout,
                     eval_cfg=rc.eval_model)
    state = su.abstract_state
    rows_sh = sharding.batch_sharding(mesh)
    keys = ("inputs", "targets", "segment_ids") if d.packing else ("inputs", "targets")
    batch = {k: jax.ShapeDtypeStruct((t.global_batch, d.seq_len), jax.numpy.int32, sharding=rows_sh) for k in keys}
    step = su.train_step
    params_dev, params_all = _per_device_bytes(state.params)
    opt_dev, opt_all = _per_device_bytes(state.opt_state)
    batch_dev, _ = _per_device_bytes(batch)
    t0 = time.perf_counter()
    compile_error = None
    try:
        compiled = step.lower(state, batch).compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler refuses programs that cannot fit in HBM
        text = " ".join(str(e).split())
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        compiled, compile_error = None, text[:500]
    compile_s = time.perf_counter() - t0

    mem = compiled.memory_analysis() if compiled is not None else None
    get = (lambda name: int(getattr(mem, name, 0) or 0)) if mem is not None else (lambda name: 0)
    args_b, out_b, alias_b = get("argument_size_in_bytes"), get("output_size_in_bytes"), get("alias_size_in_bytes")
    temp_b, code_b = get("temp_size_in_bytes"), get("generated_code_size_in_bytes")
    if compile_error:   # "... HLO temporaries (299.57G) exceeds available HBM (30.75G)": keep the compiler's figure
        m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", compile_error)
        if m:
            temp_b = int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)
        args_b = params_dev + opt_dev + batch_dev
    peak_b = args_b + out_b - alias_b + temp_b + code_b
    model_flops = flops_mod.train_flops_per_token(cfg, d.seq_len) * t.global_batch * d.seq_len
    n_dev = len(devices)
    report = {
        "arch": cfg.arch, "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "mesh": dict(mesh.shape), "num_devices": n_dev, "device": device_label or devices[0].device_kind,
        "platform": devices[0].platform, "compile_s": round(compile_s, 2),
        "global_batch": int(t.global_batch), "seq_len": int(d.seq_len), "microbatches": int(t.microbatches),
        "rows_per_device_per_microbatch": int(t.global_batch // t.microbatches // sharding.data_parallel_size(mesh)),
        "dtype": cfg.dtype, "remat": cfg.remat,
        "per_device_bytes": {
            "params": params_dev, "optimizer": opt_dev, "batch": batch_dev, "temporaries": temp_b,
            "compiled_arguments": args_b, "compiled_outputs": out_b, "donated_aliases": alias_b,
            "generated_code": code_b, "peak_estimate": peak_b},
        "total_bytes": {"params": params_all, "optimizer": opt_all},
        "replicated_params": _replicated_leaves(state.params),
        "model_flops_per_step": model_flops,
        "device_memory_gib": device_memory_gib,
        "fits": False if compile_error else (None if not device_memory_gib else bool(peak_b <= device_memory_gib * GIB)),
        "compile_error": compile_error,
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    b = r["per_device_bytes"]
    mib = lambda n: f"{n / 2**20:12,.1f} MiB"   # noqa: E731
    lines = [
        f"{r['arch']}: {r['params']:,} params | mesh {r['mesh']} on {r['num_devices']} x {r['device']} "
        f"({r['platform']}) | batch {r['global_batch']}x{r['seq_len']}, {r['microbatches']} microbatch(es) of "
        f"{r['rows_per_device_per_microbatch']} row(s) per device | {r['dtype']} compute, remat {r['remat']} | "
        f"compiled in {r['compile_s']:.1f} s",
        "per device:",
        f"  parameters (float32)      {mib(b['params'])}   (all devices: {r['total_bytes']['params'] / 2**20:,.1f} MiB)",
        f"  optimizer state           {mib(b['optimizer'])}   (all devices: {r['total_bytes']['optimizer'] / 2**20:,.1f} MiB)",
        f"  batch                     {mib(b['batch'])}",
        f"  temporaries               {mib(b['temporaries'])}   (activations, gradients, workspace; one microbatch)",
        f"  peak estimate             {mib(b['peak_estimate'])}   (= arguments {b['compiled_arguments'] / 2**20:,.1f} "
        f"+ outputs {b['compiled_outputs'] / 2**20:,.1f} - donated {b['donated_aliases'] / 2**20:,.1f} "
        f"+ temporaries + code {b['generated_code'] / 2**20:,.1f})",
    ]
    lines.append(f"model FLOPs per step: {r['model_flops_per_step']:.3g} (3x forward matmuls, mosaic_jax.models.flops)")
    if r["replicated_params"]:
        lines.append("replicated on every device (a dimension does not divide its mesh axes): "
                     + "; ".join(r["replicated_params"][:8]))
    if r["platform"] == "cpu":
        lines.append("note: compiled by XLA:CPU on simulated devices: shapes and shardings are exact, temporaries "
                     "an estimate (GPU/TPU compilers fuse and rematerialise differently)")
    if r["compile_error"]:
        lines.append(f"the compiler refused the program (it cannot fit): {r['compile_error']}")
        lines.append("try: more train.microbatches, --config.impl.remat=full or dots, a larger mesh.fsdp")
    used = b["peak_estimate"] / GIB
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    if r["device_memory_gib"]:
        lines.append(f"device memory {r['device_memory_gib']:g} GiB: {verdict} ({used:.2f} GiB, "
                     f"{100 * used / r['device_memory_gib']:.0f}%)")
    elif r["fits"] is False:
        lines.append(f"{verdict} ({used:.2f} GiB)")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------------------

def _data_vocab(config: Any) -> Optional[int]:
    """The prepared data's vocabulary size when data.path exists (else None: lm.vocab_size must be set)."""
    try:
        return store.open_prepared(config.data.path, "train").vocab_size if config.data.path else None
    except (DataError, OSError):
        return None


FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "A preset name (babistories_mm, tiny_cpu, ...) or an ml_collections "
                                "config file; the mesh is --config.mesh.data/fsdp/tensor.", flag_values=FLAGS)
flags.DEFINE_integer("num_devices", None, "Simulated CPU devices (default: the mesh's product).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_string("topology", None, "TPU slice to compile for without a TPU (needs libtpu): v4-32, "
                    "v5p-64, v5e-16, v6e-32 or v4:2x2x4.", flag_values=FLAGS)
flags.DEFINE_float("device_memory_gb", None, "Memory per device in GiB for the fit verdict (H100 80, H200 141; "
                   "default with --topology: the chip's HBM). Exit status 3 when it does not fit.", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_string("out", None, "Also write the report as JSON to this file (local or gs://bucket/path).",
                    flag_values=FLAGS)
flags.DEFINE_string("seq_lens", None, "Compile at each of these sequence lengths (e.g. 2048,8192,32768) and print "
                    "the per-device temporaries of every --impls path as a table.", flag_values=FLAGS)
flags.DEFINE_string("impls", "dense,pallas", "Memory-read paths for --seq_lens: dense, xla_flash, blockwise, "
                    "pallas, auto (mosaic_jax.tools.aot_scaling.IMPLS).", flag_values=FLAGS)


def _aot(rest: list[str]) -> int:
    config = cli_util.load_config(FLAGS, example="babistories_mm")
    if FLAGS.out and not storage.is_remote(FLAGS.out):   # gs:// has no folders to check; a bad bucket fails the write
        cli_util.check_out_parent("out", FLAGS.out)

    try:
        mesh = (config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        memory = FLAGS.device_memory_gb
        if FLAGS.topology:
            if FLAGS.num_devices:
                raise cli_util.UsageError("give either --topology or --num_devices, not both")
            spec = parse_topology(FLAGS.topology)
            jax.config.update("jax_platforms", "cpu")   # the host backend; the TPU is compile-only
            devices = topology_devices(spec)
            label = f"{devices[0].device_kind} ({spec.name} = {spec.topology_name}, compile-only)"
            memory = memory or spec.hbm_gib
        else:
            n = FLAGS.num_devices or (math.prod(mesh) if min(mesh) > 0 else 0)
            if n <= 0:
                raise cli_util.UsageError("--num_devices is required when the mesh has a -1 axis")
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", n)
            devices = jax.devices()
            label = "simulated CPU device"
        vocab = _data_vocab(config) if not config.model.vocab_size else None
        target = platform.target("tpu") if FLAGS.topology else contextlib.nullcontext()
        with target:   # trace what a TPU runs (its `auto` paths, the Pallas kernels compiled by Mosaic)
            if FLAGS.seq_lens:
                return _scaling(config, mesh, devices, vocab, memory, label)
            report = analyze(config, mesh, devices, vocab, memory, label)
    except (AotError, ConfigError, ValueError) as e:
        raise cli_util.CommandError(str(e)) from None
    print(format_report(report), flush=True)
    _write_out(report)
    return 3 if report["fits"] is False else 0


def _scaling(config: Any, mesh: tuple[int, int, int], devices: Sequence[Any], vocab: Optional[int],
             memory: Optional[float], label: str) -> int:
    """--seq_lens: temporaries per device for each path and length, a markdown table (aot_scaling)."""
    lens = aot_scaling.parse_list(FLAGS.seq_lens, int, "seq_lens")
    impls = aot_scaling.parse_list(FLAGS.impls, str, "impls")
    print(f"temporaries per device on {len(devices)} x {label}:", flush=True)
    rows = aot_scaling.sweep(config, lens, impls, lambda c: analyze(c, mesh, devices, vocab, memory, label),
                             lambda line: print(line, flush=True))
    print(aot_scaling.format_table(rows), flush=True)
    _write_out(rows)
    return 0


def _write_out(obj: Any) -> None:
    """--out: the JSON as one atomic write (a local file renamed into place, or one gs:// upload)."""
    if not FLAGS.out:
        return
    try:
        storage.write_text(FLAGS.out, json.dumps(obj, indent=1))
    except Exception as e:  # noqa: BLE001 - gs://: no bucket, no permission, no network: one line naming the URL
        raise cli_util.CommandError(f"--out={FLAGS.out}: cannot write ({type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:200]})") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status (2: bad flags, 1: bad config or mesh, 3: does not fit)."""
    return cli_util.run("aot", FLAGS, _aot, argv, doc=__doc__)


cli = cli_util.exit_with(main)


if __name__ == "__main__":
    cli()
