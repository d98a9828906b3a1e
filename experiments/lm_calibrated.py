"""LM by depth, calibrated (issue 18 item 3): 3 seeds per model at depth 1, temperature-calibrated OOD loss by position.

    python experiments/lm_calibrated.py register     # writes experiments/results/lm_calibrated/protocol.json
    python experiments/lm_calibrated.py amend --deadline=HH:MM --why=...   # move the stopping time, on record
    python experiments/lm_calibrated.py train        # the 6 training runs (python -m mosaic_jax.train), in order
    python experiments/lm_calibrated.py train_unregistered --depths=1,4 --seeds=0,1   # same recipe, outside the
                                                     # study: inputs of experiments/attention_consistency.py
    python experiments/lm_calibrated.py score        # per-token losses on a temperature grid → scores_<run>.npz
    python experiments/lm_calibrated.py report       # results.json, results.md, PNG (protocol + scores; runs
                                                     # whose scores were not kept: the last results.json)
    python experiments/lm_calibrated.py smoke --out DIR   # seconds-long end-to-end version (CI)

`register` fixes the protocol (seeds, token budget, calibration rule, metrics, stopping rule) with a UTC timestamp
BEFORE any run; `train`/`score` refuse to start without it. Calibration: one scalar temperature T per trained
model, the T of a fixed grid that minimises the mean NLL on in-distribution validation windows (TinyStories valid,
even-numbered windows); every other number is scored at that T on the other windows. The out-of-distribution
claim of the paper (Fig. 8) is about the loss's slope with position past ~50 tokens, so the report gives the
least-squares slope of the mean per-position loss over positions 50-255 (nats per 100 tokens) per model and seed.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import subprocess
import sys
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import REPO, RESULTS, SHARED, amend_protocol, amendments_line, command_line, write_protocol

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax.models.lm import apply

OUT = RESULTS / "lm_calibrated"
TS = SHARED / "data" / "tinystories"
GUTENBERG_BOOKS = ("carroll-alice.txt", "grimm.txt", "dickens-christmas-carol.txt", "austen-emma.txt",
                   "doyle-holmes.txt", "melville-moby_dick.txt")
CORPORA = {   # name -> files (TinyStories valid is in distribution; its even windows calibrate, odd ones score)
    "TinyStories valid": [TS / "valid_v1_prefix.txt"],
    "WikiText-2 valid": [SHARED / "data" / "wikitext2" / "valid.txt"],
    "Gutenberg (6 books)": [SHARED / "data" / "gutenberg" / b for b in GUTENBERG_BOOKS],
}
T_GRID = [round(x, 3) for x in np.concatenate([np.arange(0.5, 1.0, 0.05), np.arange(1.0, 3.01, 0.1)])]


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def protocol(out: pathlib.Path) -> dict:
    f = out / "protocol.json"
    if not f.exists():
        raise SystemExit(f"{f}: no protocol; run `register` first")
    return json.loads(f.read_text())


def run_name(arch: str, seed: int) -> str:
    return f"{arch}_L1_s{seed}"


def register(a: argparse.Namespace) -> None:
    p = {"registered_utc": now_utc(), "command": command_line(),
         "question": "At depth 1 and equal size, does the memory mosaic beat GPT-2 in distribution, and after "
                     "temperature calibration does its out-of-distribution loss fall faster with position past 50 "
                     "tokens (Memory Mosaics v1 Fig. 7/8)?",
         "archs": ["mosaic", "gpt2"], "depth": 1, "seeds": a.seeds, "steps": a.steps, "global_batch": 8,
         "block_size": 256, "tokens_per_run": a.steps * 8 * 256,
         "train_tokens_in_corpus": 599957, "max_tokens_rule": "≤ 2 × the training split (1,199,914 tokens)",
         "recipe": "preset lm_by_depth (C 128, 4 heads, P 448, lr 5e-3 cosine to 1e-4, 30 warm-up steps, wd 0.1, "
                   "clip 1.0, no dropout); train.seed = seed (initialisation and data order)",
         "run_order": [run_name(arch, s) for s in a.seeds for arch in ("mosaic", "gpt2")],
         "eval_windows": a.windows, "temperature_grid": T_GRID,
         "calibration": "per run, the T of the grid minimising mean NLL over the even-numbered TinyStories-valid "
                        "windows; all reported numbers use the odd-numbered TinyStories windows and every OOD window",
         "metrics": ["in-distribution loss at T=1 and at T*", "OOD mean loss at T=1 and T*",
                     "OOD loss by position at T*", "slope of the mean per-position loss over positions 50-255 "
                     "(least squares, nats per 100 tokens)", "gap GPT-2 − mosaic at positions < 50 and ≥ 50"],
         "claim_rules": {"in distribution": "the mosaic wins if its mean calibrated ID loss over seeds is lower",
                         "OOD slope": "the paper's claim holds if the mosaic's calibrated slope past 50 is more "
                                      "negative than GPT-2's in every seed pairing (mean and all 3 seeds)"},
         "stopping_rule": f"no training run starts after {a.deadline} UTC; a run not finished is reported as not run",
         "deadline_utc": a.deadline}
    write_protocol(a.out, p)


def amend(a: argparse.Namespace) -> None:
    """Move the stopping time (the only registered field an amendment may change here), recorded with its reason."""
    if not a.why:
        raise SystemExit("amend: --why is required (it is printed in every report)")
    done = sum((a.out / f"train_{n}.json").exists() for n in protocol(a.out)["run_order"])
    amend_protocol(a.out, {"deadline_utc": a.deadline}, a.why, after_runs=done)


def child_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def past_deadline(deadline: str) -> bool:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M") >= deadline


def train_one(a: argparse.Namespace, arch: str, seed: int, depth: int, steps: int, record: pathlib.Path,
              overrides: tuple[str, ...] = ()) -> None:
    """One run of the registered recipe (python -m mosaic_jax.train), with its command, wall time and load."""
    name = record.stem.removeprefix("train_")
    cmd = [sys.executable, "-m", "mosaic_jax.train", "--config=lm_by_depth", f"--workdir={a.runs / name}",
           f"--config.data.path={a.data}", f"--config.model.arch={arch}", f"--config.model.n_layer={depth}",
           f"--config.train.steps={steps}", f"--config.train.seed={seed}",
           f"--config.train.checkpoint_every={steps}", *overrides]
    print("$ " + " ".join(cmd), flush=True)
    t0, load0 = time.time(), os.getloadavg()
    subprocess.run(cmd, check=True, cwd=REPO, env=child_env())
    rec = {"run": name, "command": command_line(cmd), "wall_s": time.time() - t0,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "finished_utc": now_utc()}
    record.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{name}: {rec['wall_s']:.0f} s", flush=True)


def train(a: argparse.Namespace, overrides: tuple[str, ...] = ()) -> None:
    p = protocol(a.out)
    for arch, seed in [(n.split("_")[0], int(n.split("_s")[1])) for n in p["run_order"]]:
        if (a.out / f"train_{run_name(arch, seed)}.json").exists():
            continue
        if past_deadline(p["deadline_utc"]):
            print(f"{run_name(arch, seed)}: not started (past the registered deadline {p['deadline_utc']} UTC)")
            continue
        train_one(a, arch, seed, 1, p["steps"], a.out / f"train_{run_name(arch, seed)}.json", overrides)


def train_unregistered(a: argparse.Namespace) -> None:
    """The same recipe at other depths/seeds, outside the registered study (attention_consistency.py's inputs):
    runs <arch>_L<depth>_s<seed> under --runs, each with its train_*.json beside the run folder."""
    for depth in a.depths:
        for seed in a.seeds:
            for arch in ("mosaic", "gpt2"):
                record = a.runs / f"train_{arch}_L{depth}_s{seed}.json"
                if not record.exists():
                    train_one(a, arch, seed, depth, a.steps, record)


def windows_for(ids: list[int], block: int, n: int) -> np.ndarray:
    from mosaic_jax.evaluate import corpus_windows
    w = corpus_windows(ids, block)
    return w[np.linspace(0, len(w) - 1, min(n, len(w))).astype(int)]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _tempered(cfg, params, w_BT1: jax.Array, temps_K: jax.Array) -> jax.Array:
    """(B, K, T) NLL of softmax(logits / τ_k) for the next token of each window."""
    logits = apply(cfg, params, w_BT1[:, :-1]).astype(jnp.float32)
    picked = jnp.take_along_axis(logits, w_BT1[:, 1:, None], axis=-1)[..., 0]
    tau = temps_K[:, None, None, None]
    return jnp.moveaxis(jax.nn.logsumexp(logits[None] / tau, axis=-1) - picked[None] / tau[..., 0], 0, 1)


def tempered_losses(cfg, params, windows_NT1: np.ndarray, temps: list[float], batch: int = 8) -> np.ndarray:
    """(N, len(temps), T) next-token NLL at every temperature: one forward pass per batch of windows (fixed batch
    shape, the last one padded, so one compilation per model config and number of temperatures)."""
    out = []
    for s in range(0, len(windows_NT1), batch):
        chunk = windows_NT1[s:s + batch]
        pad = batch - len(chunk)
        full = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        out.append(np.asarray(_tempered(cfg, params, jnp.asarray(full), jnp.asarray(temps, jnp.float32)))[:len(chunk)])
    return np.concatenate(out)


def score(a: argparse.Namespace) -> None:
    from mosaic_jax.generate import load_for_inference

    p = protocol(a.out)
    ids_cache: dict = {}
    for name in p["run_order"]:
        if not (a.out / f"train_{name}.json").exists() or (a.out / f"scores_{name}.npz").exists():
            continue
        if not (a.runs / name).exists():
            print(f"{name}: its run folder {a.runs / name} is gone; `report` keeps its earlier analysis", flush=True)
            continue
        t0 = time.time()
        cfg, params, tok = load_for_inference(str(a.runs / name))
        for corpus, files in CORPORA.items():
            if corpus not in ids_cache:
                ids: list[int] = []
                for f in files:
                    ids += tok.encode(pathlib.Path(f).read_text(encoding="utf-8")) + [tok.eos_id]
                ids_cache[corpus] = ids
        # calibration first (the full grid on the even TinyStories windows), then T=1 and T* everywhere else
        ts = windows_for(ids_cache["TinyStories valid"], cfg.block_size, 2 * p["eval_windows"])
        calib = tempered_losses(cfg, params, ts[0::2], p["temperature_grid"])
        t_star = float(p["temperature_grid"][int(np.argmin(calib.mean(axis=(0, 2))))])
        arrays = {"TinyStories valid": tempered_losses(cfg, params, ts[1::2], [1.0, t_star])}
        for corpus in list(CORPORA)[1:]:
            arrays[corpus] = tempered_losses(cfg, params, windows_for(ids_cache[corpus], cfg.block_size,
                                                                      p["eval_windows"]), [1.0, t_star])
        np.savez_compressed(a.out / f"scores_{name}.npz", temps=np.asarray(p["temperature_grid"]), calib=calib,
                            t_star=t_star, **{k.replace(" ", "_"): v for k, v in arrays.items()})
        print(f"scored {name}: {time.time() - t0:.0f} s", flush=True)


def slope_per_100(curve_T: np.ndarray, start: int = 50) -> float:
    """Least-squares slope of a per-position loss curve over positions ≥ start, in nats per 100 tokens."""
    x = np.arange(start, len(curve_T))
    return float(100 * np.polyfit(x, curve_T[start:], 1)[0])


def analyse_run(z: dict, temps: np.ndarray, calib: np.ndarray) -> dict:
    """T* from the calibration windows' grid; every number on the scored windows (axis 1: T=1, T*)."""
    k_star = int(np.argmin(calib.mean(axis=(0, 2))))
    out = {"T_star": float(temps[k_star]), "T_star_at_grid_edge": k_star in (0, len(temps) - 1),
           "calibration_nll_by_T": [round(float(v), 4) for v in calib.mean(axis=(0, 2))]}
    for corpus, L in z.items():
        c = {}
        for tag, k in (("T1", 0), ("Tstar", 1)):
            curve = L[:, k].mean(0)
            c[tag] = {"mean": float(curve.mean()), "pos_lt_50": float(curve[:50].mean()),
                      "pos_ge_50": float(curve[50:].mean()), "slope_ge_50_per_100": slope_per_100(curve),
                      "curve": [round(float(v), 4) for v in curve]}
        out[corpus] = c
    return out


def report(a: argparse.Namespace) -> dict:
    import lm_by_depth
    from mosaic_jax.tools.hostinfo import cpu_info

    p = protocol(a.out)
    earlier = json.loads((a.out / "results.json").read_text())["runs"] if (a.out / "results.json").exists() else {}
    runs, missing = {}, []
    for name in p["run_order"]:
        f = a.out / f"scores_{name}.npz"
        if not f.exists():
            if name in earlier:   # analysed by an earlier report; its per-token scores were not kept (10 MB)
                runs[name] = dict(earlier[name], analysed_from="an earlier report's results.json")
            else:
                missing.append(name)
            continue
        npz = np.load(f)
        z = {c: npz[c.replace(" ", "_")] for c in CORPORA}
        r = analyse_run(z, npz["temps"], npz["calib"])
        r["train"] = json.loads((a.out / f"train_{name}.json").read_text())
        ev = sorted(lm_by_depth.read_metrics(a.runs / name).get("eval", {}).items()) if (a.runs / name).exists() \
            else []
        r["train"]["val_loss_cli"] = ev[-1][1]["loss"] if ev else None
        r["analysed_from"] = "scores (this run)"
        runs[name] = r
    info = cpu_info()
    res = {"experiment": "lm_calibrated", "protocol": p, "runs": runs, "not_run": missing,
           "report_command": "python " + command_line(), "cpu_model": info["cpu_model"],
           "cpu_flags": info["cpu_flags"], "wall_s_train_total": sum(r["train"]["wall_s"] for r in runs.values())}
    res["summary"] = summarise(p, runs)
    (a.out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (a.out / "results.md").write_text(markdown(res))
    plot(res, a.out / "per_position_calibrated.png")
    print(markdown(res))
    return res


def ms(xs: list[float]) -> list[float]:
    return [float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else float("nan")]


def summarise(p: dict, runs: dict) -> dict:
    """Mean ± std per model; per seed pairing (same seed, GPT-2 − mosaic) the calibrated gaps and slopes."""
    out: dict = {"by_model": {}, "pairs": {}, "verdicts": {}}
    for arch in p["archs"]:
        rs = [runs[run_name(arch, s)] for s in p["seeds"] if run_name(arch, s) in runs]
        if not rs:
            continue
        m = {"seeds": len(rs), "T_star": [r["T_star"] for r in rs]}
        for corpus in CORPORA:
            for tag in ("T1", "Tstar"):
                m[f"{corpus}/{tag}/mean"] = ms([r[corpus][tag]["mean"] for r in rs])
                m[f"{corpus}/{tag}/slope"] = ms([r[corpus][tag]["slope_ge_50_per_100"] for r in rs])
        out["by_model"][arch] = m
    seeds = [s for s in p["seeds"] if run_name("mosaic", s) in runs and run_name("gpt2", s) in runs]
    for corpus in CORPORA:
        for tag in ("T1", "Tstar"):
            g = {"lt_50": [], "ge_50": [], "slope_diff": []}
            for s in seeds:
                mm, gp = runs[run_name("mosaic", s)][corpus][tag], runs[run_name("gpt2", s)][corpus][tag]
                g["lt_50"].append(gp["pos_lt_50"] - mm["pos_lt_50"])
                g["ge_50"].append(gp["pos_ge_50"] - mm["pos_ge_50"])
                g["slope_diff"].append(gp["slope_ge_50_per_100"] - mm["slope_ge_50_per_100"])
            out["pairs"][f"{corpus}/{tag}"] = {"seeds": seeds, **g}
    out["verdict_pairs"] = seeds
    if len(seeds) >= 2:   # registered over 3 pairings; with a run missing, over the pairings that exist (stated)
        bm = out["by_model"]
        out["verdicts"]["mosaic better in distribution (calibrated)"] = \
            bm["mosaic"]["TinyStories valid/Tstar/mean"][0] < bm["gpt2"]["TinyStories valid/Tstar/mean"][0]
        for corpus in list(CORPORA)[1:]:
            d = out["pairs"][f"{corpus}/Tstar"]["slope_diff"]   # > 0: the mosaic's loss falls faster
            out["verdicts"][f"{corpus}: mosaic's calibrated loss falls faster past 50"] = \
                bool(np.mean(d) > 0 and all(v > 0 for v in d))
    return out


def pm(v: list[float], f: str = "{:.3f}") -> str:
    return (f + " ± " + f).format(*v)


def markdown(res: dict) -> str:
    from _util import md_table

    p, runs, sm = res["protocol"], res["runs"], res["summary"]
    run_rows = []
    for name, r in runs.items():
        t = r["train"]
        run_rows.append([name, f"{t['wall_s']:.0f}", f"{t['loadavg_start'][0]:.1f}",
                         t["val_loss_cli"] if t["val_loss_cli"] is not None else "—",
                         f"{r['T_star']:.2f}" + (" (grid edge)" if r["T_star_at_grid_edge"] else "")] +
                        [r[c][tag]["mean"] for c in CORPORA for tag in ("T1", "Tstar")])
    run_header = ["run", "train wall s", "load at start", "val loss (training CLI)", "T*"] + \
        [f"{c}, {tag}" for c in CORPORA for tag in ("T=1", "T*")]
    model_rows = []
    for arch, m in sm["by_model"].items():
        model_rows.append([arch, m["seeds"], pm(ms(m["T_star"]), "{:.2f}")] +
                          [pm(m[f"{c}/Tstar/mean"]) for c in CORPORA] +
                          [pm(m[f"{c}/Tstar/slope"]) for c in CORPORA])
    model_header = ["model", "seeds", "T*"] + [f"{c} loss at T*" for c in CORPORA] + \
        [f"{c} slope past 50 (nats/100 tok)" for c in CORPORA]
    gap_rows = []
    for c in CORPORA:
        for tag, label in (("T1", "uncalibrated (T=1)"), ("Tstar", "calibrated (T*)")):
            g = sm["pairs"][f"{c}/{tag}"]
            if g["seeds"]:
                gap_rows.append([c, label, pm(ms(g["lt_50"])), pm(ms(g["ge_50"])), pm(ms(g["slope_diff"]))])
    verdicts = "\n".join(f"- {k}: **{'yes' if v else 'no'}**" for k, v in sm["verdicts"].items()) or "- (incomplete)"
    return f"""# LM at depth 1, temperature-calibrated (issue 18 item 3)

Protocol (`protocol.json`, registered {p['registered_utc']} before any run; an earlier 150-step registration was
abandoned before any scoring, see `abandoned.md`): memory mosaic and GPT-2 at depth 1, seeds {p['seeds']}, {p['recipe']}.
**Token budget: {p['tokens_per_run']:,} tokens per run** ({p['steps']} steps × {p['global_batch']} × {p['block_size']}),
{p['tokens_per_run'] / p['train_tokens_in_corpus']:.2f} passes over the {p['train_tokens_in_corpus']:,}-token TinyStories training split (sentencepiece 4k). The
local corpora allow up to 2 passes ({2 * p['train_tokens_in_corpus']:,} tokens) under the issue's rule; we used one
pass because 6 runs of 2 passes did not fit the CPU time left (one core shared with two other engineers, load ≈ 8–10;
{res['cpu_model']}). Paper: 21B tokens.

Commands: `python experiments/lm_calibrated.py train`, `score`, `report` (one core: `nice -n 10 taskset -c 1 ...`).
Not run: {', '.join(res['not_run']) or 'none'}.
Amendments to the protocol: {amendments_line(p)}.

Calibration: {p['calibration']}; grid {p['temperature_grid'][0]}–{p['temperature_grid'][-1]}. Windows: {p['eval_windows']}
of 256 tokens per corpus (TinyStories: {p['eval_windows']} scored + {p['eval_windows']} for calibration). Slope: least
squares of the mean per-position loss over positions 50–255, nats per 100 tokens (negative = loss falls with context).

## Every run

{md_table(run_header, run_rows)}

## Mean ± std over seeds (sample std), calibrated

{md_table(model_header, model_rows)}

## GPT-2 − mosaic, per seed pairing (mean ± std; positive = the mosaic is better / its loss falls faster)

{md_table(['corpus', 'scoring', 'gap at positions < 50', 'gap at positions ≥ 50', 'slope difference (GPT-2 − mosaic)'], gap_rows)}

## Registered verdicts

Over the seed pairings {sm.get('verdict_pairs')} (registered: all of {p['seeds']}; a pairing counts only when both
runs finished).

{verdicts}

Plot: `per_position_calibrated.png` (mean over seeds at T*, 9-position moving average). `results.json` holds every run's numbers and mean per-position curves; the raw per-token losses (`scores_<run>.npz`, 10 MB) are not committed.
"""


def plot(res: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from _util import savefig
    from lm_by_depth import smooth

    fig, axs = plt.subplots(1, len(CORPORA), figsize=(5 * len(CORPORA), 3.6))
    for ax, c in zip(axs, CORPORA):
        for arch, color in (("mosaic", "C1"), ("gpt2", "C0")):
            curves = [r[c]["Tstar"]["curve"] for n, r in res["runs"].items() if n.startswith(arch + "_")]
            if curves:
                ax.plot(smooth(np.mean(curves, 0)), color=color, label=f"{arch} (T*, {len(curves)} seeds)")
        ax.axvline(50, color="grey", ls=":")
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("position (tokens of context)")
    axs[0].set_ylabel("calibrated loss (nats/token)")
    axs[0].legend(fontsize=7)
    fig.suptitle(f"depth 1, temperature-calibrated per-position loss ({res['cpu_model']})", fontsize=9)
    savefig(fig, path)
    plt.close(fig)


def smoke(a: argparse.Namespace) -> None:
    """Every code path at toy sizes (byte tokens, C 32, 3 steps) into a fresh folder."""
    import shutil

    import lm_by_depth

    shutil.rmtree(a.out, ignore_errors=True)
    data = lm_by_depth.prepare(a, a.out / "smoke_data")
    b = parse(["register", "--out", str(a.out), "--runs", str(a.out / "runs"), "--data", data, "--seeds", "0",
               "--steps", "3", "--windows", "2", "--deadline", "23:59"])
    register(b)
    train(b, ("--config.model.n_embd=32", "--config.model.n_head=2", "--config.model.pmem_size=112",
              "--config.model.block_size=64", "--config.train.global_batch=2", "--config.train.eval_every=2",
              "--config.train.eval_batches=1", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
              "--config.train.async_checkpoint=False"))
    score(b)
    report(b)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=("register", "amend", "train", "train_unregistered", "score", "report", "smoke"))
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    p.add_argument("--runs", type=pathlib.Path, default=REPO / "runs" / "lm_calibrated")
    p.add_argument("--data", default=str(REPO / "runs" / "data" / "tinystories_sp4k"))
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                   help="train_unregistered: depths to train")
    p.add_argument("--windows", type=int, default=64, help="scored windows per corpus (TinyStories: 2× this)")
    p.add_argument("--deadline", default="02:50", help="HH:MM UTC after which no training run starts")
    p.add_argument("--why", default="", help="amend: the reason, recorded in the protocol and every report")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse(argv)
    if a.cmd == "register":
        register(a)
    elif a.cmd == "amend":
        amend(a)
    elif a.cmd == "train":
        train(a)
    elif a.cmd == "train_unregistered":
        train_unregistered(a)
    elif a.cmd == "score":
        score(a)
    elif a.cmd == "report":
        report(a)
    else:
        smoke(a)


if __name__ == "__main__":
    main()
