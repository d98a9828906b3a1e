"""Rows of `mosaic_jax.bench` turned into comparisons: same-run ratios, a markdown table and a PNG bar chart."""
from __future__ import annotations

import pathlib
from typing import Any


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """vs_torch_eager / vs_torch_compile / vs_gpt2: tokens/s over the same-shape row of that kind, same run."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["bench"], r["size"], r["T"], r["B"])
    for r in rows:
        if r["bench"] != "train" or r["impl"].startswith("torch"):
            continue
        for other in rows:
            if key(other) != key(r):
                continue
            if other["impl"].startswith("torch-"):
                r[f"vs_{other['impl'].replace('-', '_')}"] = r["tokens_per_s"] / other["tokens_per_s"]
            if r["arch"] == "mosaic" and other["arch"] == "gpt2" and (other["dtype"], other["impl"]) == (r["dtype"], r["impl"]):
                r["vs_gpt2"] = r["tokens_per_s"] / other["tokens_per_s"]


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| device | bench | arch | size | T | B | dtype | impl | tokens/s (median) | best | step ms | MFU | "
            "XLA mem GB | vs torch eager | vs torch compile | vs GPT-2 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(x: Any, fmt: str) -> str:
        return "" if x is None else format(x, fmt)
    for r in rows:
        lines.append(f"| {r['device']} | {r['bench']} | {r['arch']} | {r['size']} | {r['T']} | {r['B']} | {r['dtype']} | "
                     f"{r['impl']} | {r['tokens_per_s']:,.0f} | {f(r.get('tokens_per_s_best'), ',.0f')} | "
                     f"{f(r.get('step_ms'), '.0f')} | {f(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} | "
                     f"{f(r.get('xla_mem_gb'), '.2f')} | {f(r.get('vs_torch_eager'), '.2f')} | "
                     f"{f(r.get('vs_torch_compile'), '.2f')} | {f(r.get('vs_gpt2'), '.2f')} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> pathlib.Path:
    """Horizontal bars of training tokens/s (median, best as a tick), one bar per row, labelled with MFU."""
    import matplotlib   # noqa: PLC0415 (only when a plot is asked for)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # noqa: PLC0415

    train = [r for r in rows if r["bench"] == "train"]
    if not train:
        raise ValueError("--plot: no training rows to plot")
    labels = [f"PyTorch reference, {r['impl'][6:]} ({r['size']}, T {r['T']})" if r["impl"].startswith("torch-") else
              f"{r['arch']} {r['dtype']} {r['impl']} ({r['size']}, T {r['T']})" for r in train]
    tps = [r["tokens_per_s"] for r in train]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(train) + 1.5))
    colors = ["tab:gray" if r["impl"].startswith("torch") else "tab:blue" if r["arch"] == "mosaic" else "tab:orange"
              for r in train]
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
