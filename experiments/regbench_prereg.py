"""RegBench, pre-registered and closer to the recipe (issue 18 item 2): dropout 0.05, a learning-rate grid per
architecture chosen on validation, N ∈ {100, 1000, 2500} training automata, 3 seeds, the in-context 3-gram on the
same test set, mean ± std.

    python experiments/regbench_prereg.py register      # writes experiments/results/regbench_prereg/protocol.json
    python experiments/regbench_prereg.py run           # appends one line per finished run to runs.jsonl (resumes)
    python experiments/regbench_prereg.py report        # results.json, results.md, PNG from protocol + runs only
    python experiments/regbench_prereg.py smoke --out DIR   # seconds-long end-to-end version (CI)

`register` fixes everything below with a UTC timestamp before any run; `run` refuses to start without it and never
changes it. The learning rate of each architecture is chosen once, on the grid runs (seed 0, N = grid_n), by the
lowest validation loss of the checkpoint kept (validation automata only, never the test set); the grid run with
the chosen rate is that architecture's seed-0 run at grid_n. A seed changes the initialisation, batch order and
dropout; the automata (train/validation/test) and instances are fixed (data seed 0), so the 3-gram, which needs
no training, has one value. A run counts only once its line is written.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import Progress, RESULTS, amendments_line, command_line, md_table, out_dir, savefig, write_protocol

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import regbench as rbx  # noqa: E402  (experiments/regbench.py: predict, mean_loss, PAPER, NAMES)
from mosaic_jax.models import lm as M
from mosaic_jax.tasks import regbench as rb
from mosaic_jax.models.config import ModelConfig  # noqa: E402
from mosaic_jax.tools.hostinfo import cpu_info  # noqa: E402

OUT = RESULTS / "regbench_prereg"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(a: argparse.Namespace) -> None:
    p = {"registered_utc": now_utc(), "command": "python " + command_line(),
         "question": "Does the memory mosaic learn in-context languages from few automata better than a transformer "
                     "of the same size, and better than an untrained in-context 3-gram (Memory Mosaics v1 Fig. 9)?",
         "archs": ["mosaic", "gpt2"], "model": "C 128, 8 heads, 2 layers; mosaic P 448 (ICLL config); GPT-2 with "
                                                "learned positions", "dropout": a.dropout,
         "sizes": a.sizes, "seeds": a.seeds, "seq_len": a.seq_len, "steps": a.steps, "batch": a.batch,
         "test_automata": a.test, "val_automata": a.val, "data_seed": 0,
         "optimizer": "AdamW (0.9, 0.95), wd 0.1, clip 1.0, 10% warm-up, cosine to lr/10",
         "lr_grid": a.lrs, "grid_n": a.grid_n, "grid_seed": 0,
         "lr_rule": "per architecture, the grid lr whose kept checkpoint has the lowest validation loss",
         "checkpoint_rule": "of the checkpoints at steps/2, 3·steps/4 and steps, the one with the lowest "
                            "validation loss",
         "run_order": [f"{arch} N={n} seed={seed} " + (f"lr={lr:g} (grid)" if grid else "lr=chosen")
                      for arch, n, seed, lr, grid in plan({"archs": ["mosaic", "gpt2"], "sizes": a.sizes,
                                                           "seeds": a.seeds, "lr_grid": a.lrs, "grid_n": a.grid_n,
                                                           "grid_seed": 0})],
         "claim_rules": {"mosaic beats transformer": "mean accuracy higher and mean TVD lower, per N",
                         "mosaic beats 3-gram": "per N and metric, the mosaic's mean is better than the 3-gram and "
                                                "so is every seed's value"},
         "stopping_rule": f"no run starts after {a.deadline} UTC; runs not started are reported as not run",
         "deadline_utc": a.deadline}
    write_protocol(a.out, p)


def protocol(out: pathlib.Path) -> dict:
    f = out / "protocol.json"
    if not f.exists():
        raise SystemExit(f"{f}: no protocol; run `register` first")
    return json.loads(f.read_text())


def load_runs(out: pathlib.Path) -> list[dict]:
    f = out / "runs.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def data(p: dict) -> tuple[rb.Instances, rb.Instances, rb.Instances]:
    pool_train, held = rb.split_automata(max(p["sizes"]), p["test_automata"] + p["val_automata"], seed=0)
    train = rb.make_instances(pool_train, seed=10, max_len=p["seq_len"])
    test = rb.make_instances(held[:p["test_automata"]], seed=20, max_len=p["seq_len"])
    val = rb.make_instances(held[p["test_automata"]:], seed=30, max_len=p["seq_len"])
    return train, test, val


def model_config(p: dict, arch: str) -> ModelConfig:
    common = dict(vocab_size=rb.VOCAB_SIZE, n_layer=2, n_embd=128, n_head=8, block_size=p["seq_len"],
                  ic_dropout=p["dropout"], hd_dropout=p["dropout"])
    return ModelConfig(arch="mosaic", pmem_size=448, **common) if arch == "mosaic" else ModelConfig(arch="gpt2",
                                                                                                     **common)


_COMPILED: dict = {}


def compiled(p: dict, arch: str):
    """(cfg, opt, step, fwd) compiled once per architecture: the learning rate is an argument of `step`, so the
    grid and the seeds reuse one compilation. AdamW with a unit-peak schedule, its update scaled by lr, is
    exactly AdamW with the schedule lr·unit (weight decay included: both terms are multiplied by the rate)."""
    key = (arch, p["steps"], p["seq_len"], p["dropout"])
    if key not in _COMPILED:
        cfg = model_config(p, arch)
        steps = p["steps"]
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, max(steps // 10, 1), steps, 0.1)
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(unit, b1=0.9, b2=0.95, weight_decay=0.1))

        @jax.jit
        def step(prm, st, x, y, rng, lr):
            loss, g = jax.value_and_grad(lambda q: M.loss_fn(cfg, q, x, y, rng=rng))(prm)
            u, st = opt.update(g, st, prm)
            return optax.apply_updates(prm, jax.tree.map(lambda v: lr * v, u)), st, loss

        _COMPILED[key] = (cfg, opt, step, jax.jit(lambda prm, x: M.apply(cfg, prm, x)))
    return _COMPILED[key]


def train_one(p: dict, arch: str, n: int, seed: int, lr: float, train, test, val, legal) -> dict:
    cfg, opt, step, fwd = compiled(p, arch)
    steps, batch = p["steps"], p["batch"]
    params = M.init_params(cfg, jax.random.key(seed))
    state = opt.init(params)
    rng = np.random.default_rng(1000 * seed + n)
    key = jax.random.key(10_000 + seed)
    checkpoints = sorted({steps // 2, (3 * steps) // 4, steps})
    best, val_curve = (np.inf, params, 0), {}
    prog = Progress(f"{arch} N={n} seed={seed} lr={lr:g}", steps)
    t0, load0 = time.time(), os.getloadavg()
    for i in range(1, steps + 1):
        idx = rng.integers(0, n, batch)
        params, state, loss = step(params, state, jnp.asarray(train.inputs[idx]), jnp.asarray(train.labels[idx]),
                                   jax.random.fold_in(key, i), jnp.float32(lr))
        prog(i, loss=float(loss))
        if i in checkpoints:
            vl = rbx.mean_loss(rbx.predict(cfg, params, val.inputs, 100, fwd), val.labels)
            val_curve[i] = vl
            if vl < best[0]:
                best = (vl, params, i)
    t_train = time.time() - t0
    t0 = time.time()
    logits = rbx.predict(cfg, best[1], test.inputs, 100, fwd)
    m = rb.dfa_metrics(logits, test, legal)
    return {"arch": arch, "n": n, "seed": seed, "lr": lr, **m, "test_loss": rbx.mean_loss(logits, test.labels),
            "val_loss": best[0], "ckpt_step": best[2], "val_curve": val_curve, "params": M.count_params(params),
            "train_s": t_train, "eval_s": time.time() - t0, "epochs": steps * batch / n,
            "loadavg_start": load0, "loadavg_end": os.getloadavg(), "finished_utc": now_utc()}


def chosen_lr(p: dict, runs: list[dict], arch: str) -> float | None:
    grid = [r for r in runs if r["arch"] == arch and r["n"] == p["grid_n"] and r["seed"] == p["grid_seed"]
            and r.get("grid")]
    if len(grid) < len(p["lr_grid"]):
        return None
    return min(grid, key=lambda r: r["val_loss"])["lr"]


def plan(p: dict) -> list[tuple]:
    """(arch, n, seed, lr or None = chosen, grid?) in the registered order: architecture by architecture (the
    mosaic first: whether it beats the 3-gram is the open question); per architecture its grid, then the other
    seeds at grid_n, then the other sizes (largest first), every seed of a size before the next size."""
    out = []
    sizes = [p["grid_n"]] + sorted((n for n in p["sizes"] if n != p["grid_n"]), reverse=True)
    for arch in p["archs"]:
        out += [(arch, p["grid_n"], p["grid_seed"], lr, True) for lr in p["lr_grid"]]
        for n in sizes:
            out += [(arch, n, seed, None, False) for seed in p["seeds"]
                    if not (seed == p["grid_seed"] and n == p["grid_n"])]
    return out


def run(a: argparse.Namespace) -> None:
    p = protocol(a.out)
    train, test, val = data(p)
    legal = test.legal_mask()
    print(f"regbench_prereg: {len(plan(p))} runs registered; seq_len {p['seq_len']}, "
          f"{int((test.states >= 0).sum())} scored test positions; {cpu_info()['cpu_model']}", flush=True)
    for k, (arch, n, seed, lr, grid) in enumerate(plan(p)):
        runs = load_runs(a.out)
        lr = lr if grid else chosen_lr(p, runs, arch)
        if lr is None:
            print(f"  {arch} N={n} seed={seed}: no lr (grid incomplete), skipped", flush=True)
            continue
        if any(r["arch"] == arch and r["n"] == n and r["seed"] == seed and r["lr"] == lr for r in runs):
            continue
        if datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M") >= p["deadline_utc"]:
            print(f"  {arch} N={n} seed={seed}: not started (past {p['deadline_utc']} UTC)", flush=True)
            continue
        r = train_one(p, arch, n, seed, lr, train, test, val, legal) | {"grid": grid}
        with open(a.out / "runs.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"  run {k + 1}/{len(plan(p))} {arch} N={n} seed={seed} lr={lr:g}: acc {r['accuracy']:.3f} "
              f"TVD {r['tvd']:.3f} val {r['val_loss']:.3f} (ckpt {r['ckpt_step']}, train {r['train_s']:.0f}s, "
              f"load {r['loadavg_start'][0]:.1f})", flush=True)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else float("nan")


def summarise(p: dict, runs: list[dict], ngram: dict) -> dict:
    """Per (arch, N): the runs at the chosen lr, mean ± std (sample std, ddof 1) and the registered verdicts."""
    lrs = {arch: chosen_lr(p, runs, arch) for arch in p["archs"]}
    summary: dict = {}
    for n in p["sizes"]:
        for arch in p["archs"]:
            rs = sorted((r for r in runs if r["arch"] == arch and r["n"] == n and r["lr"] == lrs[arch]),
                        key=lambda r: r["seed"])
            if not rs:
                continue
            s = {"seeds": [r["seed"] for r in rs], "lr": lrs[arch]}
            for key in ("accuracy", "tvd", "test_loss"):
                s[key] = [r[key] for r in rs]
                s[key + "_mean"], s[key + "_std"] = mean_std(s[key])
            s["beats_3gram"] = {
                "accuracy": s["accuracy_mean"] > ngram["accuracy"] and all(v > ngram["accuracy"] for v in s["accuracy"]),
                "tvd": s["tvd_mean"] < ngram["tvd"] and all(v < ngram["tvd"] for v in s["tvd"])}
            summary[f"{arch}/{n}"] = s
        mm, tr = summary.get(f"mosaic/{n}"), summary.get(f"gpt2/{n}")
        if mm and tr:
            summary[f"mosaic_beats_gpt2/{n}"] = (mm["accuracy_mean"] > tr["accuracy_mean"]
                                                 and mm["tvd_mean"] < tr["tvd_mean"])
    return {"chosen_lr": lrs, "by_arch_n": summary}


def report(a: argparse.Namespace) -> dict:
    p = protocol(a.out)
    runs = load_runs(a.out)
    _, test, _ = data(p)
    t0 = time.time()
    ngram = rb.dfa_metrics(rb.ngram_logits(test, 3), test, test.legal_mask())
    ngram["seconds"] = time.time() - t0
    s = summarise(p, runs, ngram)
    missing = [f"{arch} N={n} seed={seed}" for arch, n, seed, lr, grid in plan(p) if not grid and not any(
        r["arch"] == arch and r["n"] == n and r["seed"] == seed and r["lr"] == s["chosen_lr"].get(arch)
        for r in runs)]
    info = cpu_info()
    res = {"experiment": "regbench_prereg", "protocol": p, "runs": runs, "ngram3": ngram, **s,
           "not_run": missing, "report_command": "python " + command_line(),
           "cpu_model": info["cpu_model"], "cpu_flags": info["cpu_flags"],
           "wall_s_total": float(sum(r["train_s"] + r["eval_s"] for r in runs))}
    (a.out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (a.out / "results.md").write_text(markdown(res))
    plot(res, a.out / "regbench.png")
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    p, ngram, by = res["protocol"], res["ngram3"], res["by_arch_n"]
    grid_rows = [[r["arch"], r["lr"], r["val_loss"], r["ckpt_step"], r["accuracy"], r["tvd"]]
                 for r in res["runs"] if r.get("grid")]
    rows, seed_rows = [], []
    for n in p["sizes"]:
        for arch in p["archs"]:
            s = by.get(f"{arch}/{n}")
            if s is None:
                rows.append([n, rbx.NAMES[arch], "not run", "", "", "", "", ""])
                continue
            rows.append([n, rbx.NAMES[arch], len(s["seeds"]), f"{s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}",
                         rbx.PAPER[arch]["accuracy"].get(n, "—"), f"{s['tvd_mean']:.3f} ± {s['tvd_std']:.3f}",
                         rbx.PAPER[arch]["tvd"].get(n, "—"),
                         ("yes" if s["beats_3gram"]["accuracy"] else "no") + " / " +
                         ("yes" if s["beats_3gram"]["tvd"] else "no")])
    for r in sorted(res["runs"], key=lambda r: (r["n"], r["arch"], r["seed"], r["lr"])):
        seed_rows.append([r["n"], r["arch"], r["seed"], r["lr"], "grid" if r.get("grid") else "", r["accuracy"],
                          r["tvd"], r["test_loss"], r["val_loss"], f"{r['ckpt_step']}/{p['steps']}",
                          f"{r['epochs']:.1f}", f"{r['train_s']:.0f}", f"{r['loadavg_start'][0]:.1f}"])
    verdict = [f"N={n}: mosaic beats transformer: {'yes' if by.get(f'mosaic_beats_gpt2/{n}') else 'no'}"
               for n in p["sizes"] if f"mosaic_beats_gpt2/{n}" in by]
    return f"""# RegBench, pre-registered (issue 18 item 2)

Protocol (`protocol.json`, registered {p['registered_utc']} before any run): {p['model']}; dropout {p['dropout']};
instances cut to **{p['seq_len']} tokens** (the reference: ≤ 4096 characters ≈ 2048 tokens; the median instance
is ≈ 360 tokens: the longest our CPU budget allowed for {len(plan(p))} runs by 03:30 UTC, on one core shared with
other jobs); {p['steps']} AdamW steps of batch {p['batch']} (reference: 200 epochs of batch 32); N ∈ {p['sizes']};
seeds {p['seeds']}; {p['test_automata']} test and {p['val_automata']} validation automata. Learning rate per
architecture from the grid {p['lr_grid']} at N = {p['grid_n']}, seed 0, by validation loss: chosen
{res['chosen_lr']}. {p['checkpoint_rule'].capitalize()}.

Run: `python experiments/regbench_prereg.py run` (then `report`), one core: `nice -n 10 taskset -c 1 ...`;
{res['cpu_model']}; training + evaluation {res['wall_s_total']:.0f} s in all. Load averages at each run's start
are in the per-seed table (2 cores shared with other engineers: rates vary).
Not run (stopping rule: {p['stopping_rule']}): {', '.join(res['not_run']) or 'none'}.
Amendments to the protocol: {amendments_line(p)}.
The first run of each architecture's "train s" includes its compilation.

In-context 3-gram (no training, the same {ngram['positions']:,} test positions): accuracy {ngram['accuracy']:.3f},
TVD {ngram['tvd']:.3f}.

## Mean ± std over seeds (sample std)

{md_table(['train automata', 'model', 'seeds', 'accuracy', 'paper acc.', 'TVD (½·L1)', 'paper TVD',
           'beats 3-gram (acc. / TVD)'], rows)}

{'; '.join(verdict) or 'No transformer run finished: no mosaic-vs-transformer verdict'}. "Beats the 3-gram" (registered rule): the mean and every seed better than the 3-gram.

## Learning-rate grid (N = {p['grid_n']}, seed 0)

{md_table(['model', 'lr', 'val loss (kept ckpt)', 'ckpt step', 'test accuracy', 'test TVD'], grid_rows)}

## Every run

{md_table(['N', 'model', 'seed', 'lr', '', 'accuracy', 'TVD', 'test loss', 'val loss', 'ckpt', 'epochs',
           'train s', 'load'], seed_rows)}

Plot: `regbench.png` (mean ± std over seeds; the paper's figure values dashed; the 3-gram dotted).
"""


def plot(res: dict, path: pathlib.Path) -> None:
    p, by = res["protocol"], res["by_arch_n"]
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axs[0], "accuracy", "accuracy ↑"), (axs[1], "tvd", "TVD = ½·L1 ↓")):
        for arch, color in zip(p["archs"], ("C1", "C0")):
            ns = [n for n in p["sizes"] if f"{arch}/{n}" in by]
            ax.errorbar(ns, [by[f"{arch}/{n}"][key + "_mean"] for n in ns],
                        [np.nan_to_num(by[f"{arch}/{n}"][key + "_std"]) for n in ns], fmt="o-", color=color,
                        capsize=3, label=f"{rbx.NAMES[arch]} (ours)")
            pn = sorted(rbx.PAPER[arch][key])
            ax.plot(pn, [rbx.PAPER[arch][key][n] for n in pn], "s--", color=color, alpha=0.5,
                    label=f"{rbx.NAMES[arch]} (paper)")
        ax.axhline(res["ngram3"][key], color="grey", ls=":", label="in-context 3-gram")
        ax.set_xscale("log")
        ax.set_xlabel("number of training automata")
        ax.set_ylabel(label)
    axs[0].legend(fontsize=7)
    fig.suptitle(f"RegBench pre-registered: {p['seq_len']}-token instances, {p['steps']} steps, dropout "
                 f"{p['dropout']}, {res['cpu_model']}", fontsize=9)
    savefig(fig, path)
    plt.close(fig)


def parse(argv=None) -> argparse.Namespace:
    q = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("cmd", choices=("register", "run", "report", "smoke"))
    q.add_argument("--out", type=pathlib.Path, default=OUT)
    q.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 2500])
    q.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    q.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[1e-3, 3e-3])
    q.add_argument("--grid-n", type=int, default=1000)
    q.add_argument("--seq-len", type=int, default=128)
    q.add_argument("--steps", type=int, default=120)
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--dropout", type=float, default=0.05)
    q.add_argument("--test", type=int, default=1000)
    q.add_argument("--val", type=int, default=100)
    q.add_argument("--deadline", default="03:10", help="HH:MM UTC after which no run starts")
    return q.parse_args(argv)


def main(argv=None) -> None:
    a = parse(argv)
    if a.cmd == "smoke":   # every code path at toy sizes, into a fresh folder
        out_dir(a.out)
        for f in ("protocol.json", "runs.jsonl"):
            (a.out / f).unlink(missing_ok=True)
        a = parse(["register", "--out", str(a.out), "--sizes", "8,16", "--seeds", "0,1", "--lrs", "1e-3,3e-3",
                   "--grid-n", "8", "--seq-len", "32", "--steps", "4", "--batch", "4", "--test", "8", "--val", "4",
                   "--deadline", "23:59"])
        register(a)
        run(a)
        report(a)
        return
    {"register": register, "run": run, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
