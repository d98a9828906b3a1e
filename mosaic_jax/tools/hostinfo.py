"""What a benchmark row ran on: the CPU model and the instruction-set flags that decide its matmul speed
(AVX2, AVX-512, AVX512-BF16, AMX), or the accelerator's name. CPU figures are comparable only between rows with
the same model and flags: "AMD EPYC" alone names both a Zen 3 without AVX-512 and a Zen 5 with AVX512-BF16."""
from __future__ import annotations

import os
from typing import Any, Optional

import jax

# The flags (as /proc/cpuinfo spells them) that change XLA's / oneDNN's f32 and bf16 matmul rates.
MATMUL_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info(cpuinfo: Optional[str] = None) -> dict[str, Any]:
    """{"cpu_model": the first "model name", "cpu_flags": the MATMUL_FLAGS present, in MATMUL_FLAGS order}.
    `cpuinfo`: the text of /proc/cpuinfo (read from the file when None; unknown where it cannot be read)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model, "cpu_flags": [f for f in MATMUL_FLAGS if f in flags]}


def device_fields(cpuinfo: Optional[str] = None) -> dict[str, Any]:
    """The fields every benchmark row carries: `device` (one readable string: on CPU the model, cores in use and
    matmul flags; on an accelerator its kind and count) and the host CPU's `cpu_model` and `cpu_flags`."""
    info = cpu_info(cpuinfo)
    d = jax.devices()[0]
    if d.platform == "cpu":
        cores = f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores"
        device = f"cpu: {info['cpu_model']} ({cores}; {' '.join(info['cpu_flags']) or 'no AVX2'})"
    else:
        device = f"{d.platform}: {d.device_kind} x{jax.device_count()}"
    return {"device": device} | info
