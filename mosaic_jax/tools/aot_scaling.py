"""Per-device temporaries of the training step against the sequence length, one row per memory-read path:
`python -m mosaic_jax.tools.aot ... --seq_lens=2048,8192,32768 --impls=dense,pallas` (see aot.py).

Each (T, path) compiles the real train step with data.seq_len = model.block_size = T and the memory reads
forced to one implementation; the temporaries are the compiler's (`memory_analysis().temp_size_in_bytes`, or
the figure of its RESOURCE_EXHAUSTED message when it refuses the program). The growth exponent between
consecutive lengths, log(temp₂/temp₁)/log(T₂/T₁), is 1 for memory linear in T and 2 for a T×T buffer.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from mosaic_jax.kernels import platform
from mosaic_jax.ops import memory_v2

# The memory-read implementation fields each path sets (ModelConfig names).
IMPLS: dict[str, dict[str, str]] = {
    "dense": dict(cmem_impl="dense", pmem_impl="dense", v2_impl="dense"),
    "xla_flash": dict(cmem_impl="flash", pmem_impl="flash", v2_impl="flash"),     # jax.nn.dot_product_attention
    "blockwise": dict(v2_impl="blockwise"),
    "pallas": dict(cmem_impl="pallas", pmem_impl="pallas", v2_impl="pallas"),
    "auto": {},
}


def parse_list(text: str, kind: Callable[[str], Any], name: str) -> list[Any]:
    try:
        items = [kind(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--{name}={text!r}: expected a comma-separated list") from None
    if not items:
        raise ValueError(f"--{name} is empty")
    return items


def with_path(config: Any, seq_len: int, impl: str) -> Any:
    """A copy of the experiment config at sequence length `seq_len` with the memory reads of path `impl`."""
    if impl not in IMPLS:
        raise ValueError(f"--impls: unknown path {impl!r} (known: {', '.join(IMPLS)})")
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.seq_len = seq_len
    c.model.block_size = seq_len
    c.impl.update(IMPLS[impl])   # a family ignores the switches it does not read (v2_impl outside v2)
    return c


def sweep(config: Any, seq_lens: Sequence[int], impls: Sequence[str], analyze: Callable[[Any], dict],
          progress: Callable[[str], None] = print) -> list[dict]:
    """analyze(config) for every (impl, T); rows with the report's per-device bytes, in order."""
    rows = []
    for impl in impls:
        for T in seq_lens:
            r = analyze(with_path(config, T, impl))
            b = r["per_device_bytes"]
            rows.append({"arch": r["arch"], "impl": impl, "seq_len": T, "temporaries": b["temporaries"],
                         "peak_estimate": b["peak_estimate"], "fits": r["fits"], "compile_s": r["compile_s"],
                         "refused": bool(r["compile_error"]), "device": r["device"],
                         "rows_per_device": r["rows_per_device_per_microbatch"]})
            progress(f"  {r['arch']} {impl:>9} T={T:>6}: temporaries {b['temporaries'] / 2**30:9.2f} GiB "
                     f"(compiled in {r['compile_s']:.0f} s{', refused: does not fit' if r['compile_error'] else ''})")
    return rows


def growth(rows: Sequence[dict], impl: str) -> list[float]:
    """Exponents between consecutive lengths of one path: 1 = linear in T, 2 = quadratic."""
    pts = sorted((r["seq_len"], r["temporaries"]) for r in rows if r["impl"] == impl)
    return [math.log(b[1] / a[1]) / math.log(b[0] / a[0]) for a, b in zip(pts, pts[1:]) if a[1] > 0 and b[1] > 0]


def increment_ratio(rows: Sequence[dict], impl: str, lens: tuple[int, int, int]) -> float:
    """(temp(T₃) − temp(T₂)) / (temp(T₂) − temp(T₁)) of one path: the growth with the T-independent part
    (parameters, gradients, optimizer workspace) taken out. For lengths in a geometric series of factor r
    (2k, 8k, 32k: r = 4) it is r for temporaries a + b·T and r² for a + c·T², and in between for a mix:
    r + (r² − r)·q with q the quadratic share of the first increment."""
    by_t = {r["seq_len"]: r["temporaries"] for r in rows if r["impl"] == impl}
    t1, t2, t3 = (by_t[t] for t in lens)
    return (t3 - t2) / (t2 - t1)


def read_temporaries(device: Any, kind: str, impl: str, seq_len: int, heads: int = 16, head_dim: int = 128,
                     look: int = 256) -> int:
    """Compiler temporaries (bytes) of value-and-grad of one v2 read (B = 1, bfloat16) compiled for `device`
    (a compile-only TPU device: aot.topology_devices), or the figure of the compiler's refusal. The read alone,
    so that a test compiles in seconds what the whole step takes minutes for."""

    sh = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((1, seq_len, heads, head_dim), jnp.bfloat16, sharding=sh)

    def loss(q, k, v):
        y = memory_v2.retrieve(q, k, v, kind, look=look, skip_B=jnp.full((1,), look, jnp.int32), impl=impl)
        return jnp.sum(y.astype(jnp.float32))

    with platform.target(device.platform):
        try:
            return int(jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes)
        except Exception as e:  # noqa: BLE001 - RESOURCE_EXHAUSTED: the program cannot fit; keep the figure
            m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", " ".join(str(e).split()))
            if not m:
                raise
            return int(float(m.group(1)) * 1024 ** ("KMGT".index(m.group(2)) + 1))


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table: temporaries per device (GiB) by path and T, with the growth exponents."""
    lens = sorted({r["seq_len"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    head = "| model | path | " + " | ".join(f"T={t:,}" for t in lens) + " | growth exponent |"
    lines = [head, "|" + "---|" * (len(lens) + 3)]
    for impl in impls:
        by_t = {r["seq_len"]: r for r in rows if r["impl"] == impl}
        cells = [f"{by_t[t]['temporaries'] / 2**30:,.2f}" + (" (refused)" if by_t[t]["refused"] else "")
                 if t in by_t else "" for t in lens]
        arch = next(r["arch"] for r in rows if r["impl"] == impl)
        lines.append(f"| {arch} | {impl} | " + " | ".join(cells) + " | "
                     + ", ".join(f"{e:.2f}" for e in growth(rows, impl)) + " |")
    return "\n".join(lines)
