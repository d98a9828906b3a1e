"""Rows of `mosaic_jax.tools.bench` turned into comparisons: same-run ratios, a markdown table and a PNG bar chart."""
from __future__ import annotations

import pathlib
from typing import Any, Optional

from mosaic_jax.models import registry


# A ratio pairs two rows only when all of these agree: same shape and step, same precision, same machine.
PAIR_KEY = ("bench", "device", "cpu_model", "cpu_flags", "size", "T", "B", "dropout", "dtype")


def _key(r: dict[str, Any]) -> tuple:
    return tuple(str(r.get(k)) for k in PAIR_KEY)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """vs_torch_eager / vs_torch_compile / vs_<baseline> (the family's equal-FLOPs baseline, `Family.baseline`:
    GPT-2 for the v1 mosaic): tokens/s over the row of that kind with the same PAIR_KEY
    (so a bfloat16 row is set against the reference's bf16-autocast step and never against its float32 step),
    same run. `ratio_rows` names the row each ratio was taken against."""
    for r in rows:
        if r["bench"] != "train" or r["impl"].startswith("torch"):
            continue
        basis = {}
        for other in rows:
            if other is r or _key(other) != _key(r):
                continue
            if other["impl"].startswith("torch-") and other["arch"] == r["arch"]:   # the reference's rows
                name = f"vs_{other['impl'].replace('-', '_')}"
            elif other["arch"] == registry.baseline_of(r["arch"]) and other["impl"] == r["impl"]:
                name = f"vs_{other['arch']}"
            else:
                continue
            r[name] = r["tokens_per_s"] / other["tokens_per_s"]
            basis[name] = f"{other['arch']} {other['dtype']} {other['impl']}"
        if basis:
            r["ratio_rows"] = basis


def label(r: dict[str, Any]) -> str:
    """A row's name in tables and charts; torch rows say their precision (autocast bf16 or float32)."""
    if r["impl"].startswith("torch-"):
        prec = "bf16 autocast" if r["dtype"] == "bfloat16" else "float32"
        return f"PyTorch reference, {r['impl'][6:]}, {prec}"
    return f"{r['arch']} {r['dtype']} {r['impl']}"


def markdown(rows: list[dict[str, Any]], peaks: Optional[dict[str, float]] = None) -> str:
    """One table per run; the ratio columns are same-precision (see add_ratios). Above it: the machine(s), the
    load average at the start and end of the timed rounds, and the measured matmul peaks MFU is taken against."""
    lines = [f"Device: {d}" for d in dict.fromkeys(r["device"] for r in rows)]
    loads = [r["load_avg"] for r in rows if isinstance(r.get("load_avg"), dict)]
    if loads:
        lines.append(f"Load average (1/5/15 min): {loads[0]['start']} at the start, {loads[0]['end']} at the end")
    if peaks:
        lines.append("Measured matmul peak: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items()))
    head = ("| device | bench | row | size | T | B | tokens/s (median) | best | step ms | MFU | XLA mem GB | "
            "vs torch eager (same dtype) | vs torch compile (same dtype) | vs GPT-2 (same dtype) |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]

    def f(x: Any, fmt: str) -> str:
        return "" if x is None else format(x, fmt)
    for r in rows:
        mfu = r.get("mfu")
        lines.append(f"| {r['device']} | {r['bench']} | {label(r)} | {r['size']} | {r['T']} | {r['B']} | "
                     f"{r['tokens_per_s']:,.0f} | {f(r.get('tokens_per_s_best'), ',.0f')} | "
                     f"{f(r.get('step_ms'), '.0f')} | {f(mfu and 100 * mfu, '.1f')}{'%' if mfu else ''} | "
                     f"{f(r.get('xla_mem_gb'), '.2f')} | {f(r.get('vs_torch_eager'), '.2f')} | "
                     f"{f(r.get('vs_torch_compile'), '.2f')} | {f(r.get('vs_gpt2'), '.2f')} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> pathlib.Path:
    """Horizontal bars of training tokens/s (median, best as a tick), one bar per row, labelled with MFU."""
    import matplotlib   # noqa: PLC0415 (here: Agg is chosen before pyplot loads, and only when plotting)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # noqa: PLC0415

    train = [r for r in rows if r["bench"] == "train"]
    if not train:
        raise ValueError("--plot: no training rows to plot")
    labels = [f"{label(r)} ({r['size']}, T {r['T']})" for r in train]
    tps = [r["tokens_per_s"] for r in train]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(train) + 1.5))
    palette = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["arch"] for r in train))}   # one colour per family
    colors = ["tab:gray" if r["impl"].startswith("torch") else palette[r["arch"]] for r in train]
    ax.barh(range(len(train)), tps, color=colors)
    for i, r in enumerate(train):
        if r.get("tokens_per_s_best"):
            ax.plot([r["tokens_per_s_best"]] * 2, [i - 0.4, i + 0.4], color="black", lw=1)
        if r.get("mfu"):
            ax.text(max(tps[i], r.get("tokens_per_s_best") or 0), i, f"  {100 * r['mfu']:.1f}% MFU", va="center",
                    fontsize=8)
    ax.set_yticks(range(len(train)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training tokens/s (median of rounds; tick: best)")
    ax.set_xlim(0, 1.15 * max(r.get("tokens_per_s_best") or r["tokens_per_s"] for r in train))   # room for labels
    ax.set_title(train[0]["device"], fontsize=9)
    fig.tight_layout()
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
