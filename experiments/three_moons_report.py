"""Tables and plot for the pre-registered three-moons study, from protocol.json and runs_<optimizer>.jsonl only.

    python experiments/three_moons_report.py DIR      # writes DIR/results.json, DIR/results.md, DIR/*.png
"""
from __future__ import annotations

import json
import pathlib
import sys

import _util  # noqa: F401
from _util import md_table, savefig

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_runs(out: pathlib.Path) -> list[dict]:
    runs = []
    for f in sorted(out.glob("runs_*.jsonl")):
        runs += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return runs


def range_stat(run: dict, ev: str, lo: float, hi: float) -> float:
    """Median over (windows × contexts in [lo, hi]) of the per-window error (one blow-up cannot decide)."""
    ctx = np.asarray(run["contexts"])
    e = np.asarray(run["errors"][ev])[(ctx >= lo) & (ctx <= hi)]
    return float(np.median(e)) if e.size else float("nan")


def iqr(v: list[float]) -> tuple[float, float, float]:
    if not v:
        return (float("nan"),) * 3
    q = np.percentile(v, [25, 50, 75])
    return float(q[1]), float(q[0]), float(q[2])


def analyse(proto: dict, runs: list[dict]) -> dict:
    rng = proto["eval"]["ranges"]
    res = {"arms": {}, "runs": []}
    for r in runs:
        row = {k: r[k] for k in ("optimizer", "n_head", "seed", "final_loss", "w_phi_diagonality", "train_s",
                                 "eval_s", "loadavg_start", "loadavg_end", "finished_utc")}
        row["range_error"] = {ev: {name: range_stat(r, ev, *lohi) for name, lohi in rng.items()}
                              for ev in proto["evaluations"]}
        res["runs"].append(row)
    for opt in proto["optimizers"]:
        for ev in proto["evaluations"]:
            one = [x["range_error"][ev]["mid"] for x in res["runs"] if x["optimizer"] == opt and x["n_head"] == 1]
            thr = 0.5 * float(np.median(one)) if one else float("nan")
            three = [x for x in res["runs"] if x["optimizer"] == opt and x["n_head"] == 3]
            wins = [x["seed"] for x in three if x["range_error"][ev]["mid"] < thr]
            arm = {"threshold_mid": thr, "n_1head": len(one), "n_3head": len(three), "successes": len(wins),
                   "success_seeds": wins}
            for h in (1, 3):
                rs = [x for x in res["runs"] if x["optimizer"] == opt and x["n_head"] == h]
                arm[f"{h}head"] = {name: dict(zip(("median", "q25", "q75"),
                                                  iqr([x["range_error"][ev][name] for x in rs]))) for name in rng}
            res["arms"][f"{opt}/{ev}"] = arm
    for x in res["runs"]:
        x["success"] = ({ev: x["range_error"][ev]["mid"] < res["arms"][f"{x['optimizer']}/{ev}"]["threshold_mid"]
                         for ev in proto["evaluations"]} if x["n_head"] == 3 else None)
    return res


def arm_table(res: dict) -> str:
    """Success rate and range errors per optimiser/evaluation arm (also spliced into the README by claims.py)."""
    rng = res["protocol"]["eval"]["ranges"]
    lab = {k: f"{lo}–{hi}" if hi < 10 ** 5 else f"≥{lo}" for k, (lo, hi) in rng.items()}
    arm_rows = []
    for key, a in res["arms"].items():
        m1, m3 = a["1head"]["mid"], a["3head"]["mid"]
        arm_rows.append([key, f"{a['successes']} / {a['n_3head']}", a["threshold_mid"],
                         f"{m1['median']:.3f} [{m1['q25']:.3f}, {m1['q75']:.3f}]",
                         f"{m3['median']:.3f} [{m3['q25']:.3f}, {m3['q75']:.3f}]",
                         f"{a['1head']['late']['median']:.3f}", f"{a['3head']['late']['median']:.3f}"])
    arm_header = ["optimizer / evaluation", "3-head successes", f"threshold (½ × 1-head median, {lab['mid']})",
                  f"1-head err {lab['mid']}, median [IQR]", f"3-head err {lab['mid']}, median [IQR]",
                  f"1-head err {lab['late']}", f"3-head err {lab['late']}"]
    return md_table(arm_header, arm_rows)


def report(out: pathlib.Path) -> dict:
    proto = json.loads((out / "protocol.json").read_text())
    runs = load_runs(out)
    res = analyse(proto, runs)
    planned = {(o, h, s) for o in proto["optimizers"] for h, key in ((1, "seeds_1head"), (3, "seeds_3head"))
               for s in proto[key]}
    have = {(r["optimizer"], r["n_head"], r["seed"]) for r in runs}
    res["not_run"] = sorted([list(k) for k in planned - have])
    res["protocol"] = proto
    res["wall_s_sum"] = float(sum(r["train_s"] + r["eval_s"] for r in runs))
    res["machine"] = runs[0]["machine"] if runs else ""
    res["commands"] = sorted({r["command"] for r in runs})
    (out / "results.json").write_text(json.dumps(res, indent=1))

    lab = {k: f"{lo}–{hi}" if hi < 10 ** 5 else f"≥{lo}" for k, (lo, hi) in proto["eval"]["ranges"].items()}
    rows = []
    for x in sorted(res["runs"], key=lambda x: (x["optimizer"], x["n_head"], x["seed"])):
        e = x["range_error"]
        rows.append([x["optimizer"], x["n_head"], x["seed"], x["final_loss"], x["w_phi_diagonality"],
                     e["exact"]["early"], e["exact"]["mid"], e["exact"]["late"], e["cached"]["mid"],
                     e["cached"]["late"],
                     "" if x["success"] is None else ("yes" if x["success"]["exact"] else "no"),
                     "" if x["success"] is None else ("yes" if x["success"]["cached"] else "no"),
                     f"{x['train_s']:.0f}", f"{x['loadavg_start'][0]:.1f}"])
    header = ["optimizer", "heads", "seed", "final train loss", "W_φ diagonality", f"exact err {lab['early']}",
              f"exact err {lab['mid']}", f"exact err {lab['late']}", f"cached err {lab['mid']}",
              f"cached err {lab['late']}", "success (exact)", "success (cached)", "train s", "load"]
    md = f"""# Three moons, pre-registered (issue 18)

Generated by `python experiments/three_moons_report.py {out}` from `protocol.json` (registered
{proto['registered_utc']}, before any run) and `runs_*.jsonl`. Machine: {res['machine']}.
Commands: {'; '.join(f'`{c}`' for c in res['commands'])}. Training + evaluation time, all runs: {res['wall_s_sum']:.0f} s.

**Protocol.** 1 head vs 3 heads, batch {proto['batch']}, {proto['steps']} steps, windows {proto['block']},
lr linear 1e-2 → 5e-6, betas (0.9, 0.999), wd 0; optimisers: `reference` = MLX AdamW without bias correction
(the official code's), `optax` = optax.adamw (bias-corrected). Evaluation on the held-out triple (1, 2, 3)
(dt = {proto['dt']}: single periods {', '.join(f'{q:.1f}' for q in proto['val_periods_steps'])} steps,
combined {proto['val_combined_period_steps']:.1f}): mean |generated − truth| over the next 25 steps, per window
({proto['eval']['windows']} windows), context lengths every {proto['eval']['ctx_stride']} steps; a seed's error
over a range is the **median** over windows × contexts. `exact` = exact free-run generation; `cached` = the
official cached generation (generated pairs stored with zero values). Success rule: {proto['success_rule']}.
Reductions: {proto['reductions_from_issue']}. Stopping rule: {proto['stopping_rule']}.
Not run (stopping rule): {', '.join(f'{o} {h}h seed {s}' for o, h, s in res['not_run']) or 'none'}.

## Success rate per optimiser and evaluation

{arm_table(res)}

## Every run

{md_table(header, rows)}

W_φ diagonality: share of |W_φ| (3×3 complex moduli) on its best permutation (1 = permuted diagonal, 1/3 = flat).

![generation error](generation_error.png)
"""
    (out / "results.md").write_text(md)
    plot(proto, runs, out)
    return res


def plot(proto: dict, runs: list[dict], out: pathlib.Path) -> None:
    fig, axs = plt.subplots(len(proto["optimizers"]), len(proto["evaluations"]), figsize=(11, 7), sharex=True,
                            sharey=True, squeeze=False)
    for i, opt in enumerate(proto["optimizers"]):
        for j, ev in enumerate(proto["evaluations"]):
            ax = axs[i, j]
            for r in runs:
                if r["optimizer"] != opt:
                    continue
                med = np.median(np.asarray(r["errors"][ev]), axis=1)
                ax.plot(r["contexts"], med, color="C0" if r["n_head"] == 1 else "C1", lw=1, alpha=0.7)
            for p in proto["val_periods_steps"]:
                ax.axvline(p, color="grey", lw=0.6)
            ax.axvline(proto["val_combined_period_steps"], color="red", lw=0.8)
            ax.set_ylim(-0.02, 1.0)
            ax.set_title(f"{opt} optimizer, {ev} generation (blue 1 head, orange 3 heads)", fontsize=9)
            ax.set_xlabel("context length (steps)")
        axs[i, 0].set_ylabel("median over windows of\nmean |gen − truth|, 25 steps")
    fig.suptitle(f"three moons, pre-registered: every seed (batch {proto['batch']}, {proto['steps']} steps)", fontsize=10)
    savefig(fig, out / "generation_error.png")
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/three_moons_report.py DIR")
    report(pathlib.Path(sys.argv[1]))
