"""Three moons, pre-registered (issue 18 item 1): how often do 3 heads disentangle, per optimiser?

    python experiments/three_moons_prereg.py register --out DIR [--batch 8 ...]   # writes DIR/protocol.json
    python experiments/three_moons_prereg.py run --out DIR --optimizer reference|optax   # appends DIR/runs_<opt>.jsonl
    python experiments/three_moons_prereg.py report --out DIR        # results.json, results.md, PNG from the above
    python experiments/three_moons_prereg.py smoke --out DIR         # seconds-long end-to-end version (CI)

`register` fixes the protocol (seeds, arms, metrics, success rule, stopping rule) with a UTC timestamp BEFORE any
run; `run` refuses to start without it and never changes it; `report` reads only the protocol and the run lines.
Each run line holds one (optimiser, heads, seed): training-loss curve, per-window generation errors for both
evaluations, |W_φ| and timing. A run counts only once its line is written (a killed run leaves no line).

Optimisers: "reference" = MLX AdamW as the official code runs it (no bias correction,
`three_moons.reference_adamw`); "optax" = `optax.adamw` (bias-corrected). Both: lr linear 1e-2 → 5e-6 over the
steps, betas (0.9, 0.999), wd 0. Evaluations: "exact" free-run generation (`three_moons.generate`) and the
official "cached" generation (zero values for generated pairs, `generate(cached=True)`); both score the
generated step against the truth at the same position (the official plot compares with the truth one step
earlier, an index offset we do not copy).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import Progress, command_line, machine

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mosaic_jax.tasks import three_moons as tm

N_GEN = 25
OPTIMIZERS = ("reference", "optax")
EVALS = ("exact", "cached")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_optimizer(name: str, steps: int) -> optax.GradientTransformation:
    lr = optax.linear_schedule(1e-2, 5e-6, steps)
    if name == "reference":
        return tm.reference_adamw(lr, b1=0.9, b2=0.999, weight_decay=0.0)
    if name == "optax":
        return optax.adamw(lr, b1=0.9, b2=0.999, weight_decay=0.0)
    raise ValueError(f"--optimizer={name!r}: expected one of {OPTIMIZERS}")


def train(p: dict, opt_name: str, n_head: int, seed: int) -> tuple[dict, list[float], float]:
    params = tm.init_params(jax.random.key(seed))
    opt = make_optimizer(opt_name, p["steps"])
    state = opt.init(params)
    dt = tm.time_step(p["block"])

    @jax.jit
    def step(prm, st, x, y):
        loss, g = jax.value_and_grad(tm.loss_fn)(prm, x, y, n_head, 0.5, p["chunk"])
        u, st = opt.update(g, st, prm)
        return optax.apply_updates(prm, u), st, loss

    rng = np.random.default_rng(seed)
    prog = Progress(f"{opt_name} {n_head}h seed {seed}", p["steps"], every=60)
    losses, t0 = [], time.time()
    for i in range(1, p["steps"] + 1):
        b = tm.sample_batch(rng, tm.TRAIN_TRIPLES, p["batch"], p["block"], dt)
        params, state, loss = step(params, state, jnp.asarray(b.x), jnp.asarray(b.y))
        losses.append(float(loss))
        prog(i, loss=losses[-1])
    return params, losses, time.time() - t0


def window_errors(params: dict, x_BTC: np.ndarray, ctx: np.ndarray, n_head: int, cached: bool,
                  chunk: int = 8) -> np.ndarray:
    """(n_ctx, B) mean |generated − truth| over the next N_GEN steps and 6 coordinates, per window."""
    x = jnp.asarray(x_BTC)

    @jax.jit
    def err(ctx_n):
        gen = jax.vmap(lambda c: tm.generate(params, x, c, N_GEN, n_head, cached=cached))(ctx_n)   # n,B,S,C
        truth = jnp.take(x, ctx_n[:, None] + jnp.arange(N_GEN)[None, :], axis=1).transpose(1, 0, 2, 3)
        return jnp.mean(jnp.abs(gen - truth), axis=(2, 3))

    pad = (-len(ctx)) % chunk
    c = np.concatenate([ctx, np.full(pad, ctx[-1])]).astype(np.int32)
    out = np.concatenate([np.asarray(err(jnp.asarray(c[i:i + chunk]))) for i in range(0, len(c), chunk)])
    return out[:len(ctx)]


def w_phi_diagonality(params: dict) -> float:
    """Share of |W_φ|'s mass (3×3 complex moduli) on its best permutation: 1 = a permuted diagonal, 1/3 = flat."""
    import itertools
    m = np.asarray(tm.complex_modulus(params["wk"]))
    return float(max(sum(m[i, s[i]] for i in range(3)) for s in itertools.permutations(range(3))) / m.sum())


def register(a: argparse.Namespace) -> None:
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / "protocol.json"
    if f.exists():
        sys.exit(f"{f}: a protocol is already registered; register a new run in a new folder")
    scale = a.block / 800                         # ranges scale with the geometry (3 combined periods per window)
    proto = {
        "registered_utc": now_utc(),
        "question": "Rate at which 3-head models disentangle (paper §3), per optimiser: reference-style AdamW "
                    "(MLX, no bias correction) vs optax.adamw (bias-corrected).",
        "optimizers": list(OPTIMIZERS), "evaluations": list(EVALS), "primary_evaluation": "exact",
        "seeds_1head": list(range(a.first_seed, a.first_seed + a.seeds_1head)),
        "seeds_3head": list(range(a.first_seed, a.first_seed + a.seeds_3head)),
        "run_order": "per optimiser process: " + ", ".join(f"{h}h-{s}" for h, s in interleaved(
            list(range(a.first_seed, a.first_seed + a.seeds_1head)),
            list(range(a.first_seed, a.first_seed + a.seeds_3head)))),
        "stopping_rule": f"no run starts after {a.deadline} UTC; a run killed mid-way has no line and is reported "
                         "as not run; 3-head seeds count for an optimiser only if completed",
        "deadline_utc": a.deadline,
        "steps": a.steps, "batch": a.batch, "block": a.block, "chunk": a.chunk, "dt": tm.time_step(a.block),
        "val_periods_steps": [tm.period_in_steps(q, tm.time_step(a.block)) for q in tm.VAL_TRIPLE],
        "val_combined_period_steps": tm.period_in_steps(tm.combined_period(tm.VAL_TRIPLE), tm.time_step(a.block)),
        "lr": "linear 1e-2 -> 5e-6 over steps", "betas": [0.9, 0.999], "weight_decay": 0.0, "beta_attn": tm.BETA,
        "eval": {"triple": list(tm.VAL_TRIPLE), "windows": a.eval_batch, "window_seed": 0, "n_gen": N_GEN,
                 "ctx_stride": a.ctx_stride, "eval_block": a.block,
                 "per_seed_statistic": "median over (windows x contexts in range) of the per-window error",
                 "ranges": {"early": [round(10 * scale), round(39 * scale)],
                            "mid": [round(143 * scale), round(257 * scale)],
                            "late": [round(287 * scale), 10 ** 6]}},
        "success_rule": "a 3-head seed succeeds if its mid-range error (contexts 143-257 at the paper's "
                        "geometry, scaled by block/800: single periods covered, combined not) < 0.5 x the median "
                        "over 1-head seeds of their mid-range error, same optimiser and same evaluation",
        "summaries": "per arm: median and IQR (25-75 %) over seeds; success count / seeds completed",
        "reductions_from_issue": a.reductions,
    }
    f.write_text(json.dumps(proto, indent=1))
    print(f"registered {f} at {proto['registered_utc']}", flush=True)


def interleaved(seeds_1head: list[int], seeds_3head: list[int]) -> list[tuple[int, int]]:
    """Run order: 1h s0, 3h s0, 1h s1, 3h s1, ... then the remaining 3-head seeds (balanced if stopped early)."""
    order = []
    for i in range(max(len(seeds_1head), len(seeds_3head))):
        order += [(1, seeds_1head[i])] if i < len(seeds_1head) else []
        order += [(3, seeds_3head[i])] if i < len(seeds_3head) else []
    return order


def deadline_passed(deadline: str) -> bool:
    hh, mm = map(int, deadline.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    limit = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if hh < 12 <= now.hour:          # a deadline just past midnight, read before midnight
        limit += datetime.timedelta(days=1)
    return now >= limit


def run(a: argparse.Namespace) -> None:
    out = pathlib.Path(a.out)
    f = out / "protocol.json"
    if not f.exists():
        sys.exit(f"{f}: no registered protocol; run `register` first")
    p = json.loads(f.read_text())
    make_optimizer(a.optimizer, 1)                # validates the name before any work
    dt = tm.time_step(p["block"])
    ev = p["eval"]
    val = tm.sample_batch(np.random.default_rng(ev["window_seed"]), [tm.VAL_TRIPLE], ev["windows"],
                          ev["eval_block"], dt, extra=N_GEN)
    ctx = np.arange(2, ev["eval_block"] - N_GEN + 1, ev["ctx_stride"])
    lines = out / f"runs_{a.optimizer}.jsonl"
    done = set()
    if lines.exists():
        done = {(r["n_head"], r["seed"]) for r in map(json.loads, lines.read_text().splitlines())}
    todo = interleaved(p["seeds_1head"], p["seeds_3head"])
    for n_head, seed in todo:
        if (n_head, seed) in done:
            continue
        if deadline_passed(p["deadline_utc"]):
            print(f"deadline {p['deadline_utc']} UTC passed: not starting {n_head}h seed {seed}", flush=True)
            break
        load0 = os.getloadavg()
        params, losses, t_train = train(p, a.optimizer, n_head, seed)
        t0 = time.time()
        errs = {e: window_errors(params, val.x, ctx, n_head, cached=(e == "cached")).tolist() for e in EVALS}
        rec = {"optimizer": a.optimizer, "n_head": n_head, "seed": seed, "final_loss": float(np.mean(losses[-50:])),
               "loss_every10": losses[::10], "contexts": ctx.tolist(), "errors": errs,
               "w_phi_modulus": np.asarray(tm.complex_modulus(params["wk"])).tolist(),
               "w_phi_diagonality": w_phi_diagonality(params), "train_s": t_train, "eval_s": time.time() - t0,
               "loadavg_start": load0, "loadavg_end": os.getloadavg(), "finished_utc": now_utc(),
               "command": command_line(), "machine": f"{machine()}; {cpu_model()}"}
        with open(lines, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"{a.optimizer} {n_head}h seed {seed}: loss {rec['final_loss']:.4f}, "
              f"diag {rec['w_phi_diagonality']:.2f}, "
              f"train {t_train:.0f}s eval {rec['eval_s']:.0f}s, load {load0[0]:.1f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("register", "run", "report", "smoke"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimizer", default="reference", help="run: " + " or ".join(OPTIMIZERS))
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--seeds-1head", type=int, default=3)
    ap.add_argument("--seeds-3head", type=int, default=10)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--block", type=int, default=800)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--ctx-stride", type=int, default=6)
    ap.add_argument("--deadline", default="23:59", help="HH:MM UTC after which no run starts")
    ap.add_argument("--reductions", default="none")
    a = ap.parse_args(argv)
    if a.cmd == "register":
        register(a)
    elif a.cmd == "run":
        run(a)
    elif a.cmd == "report":
        from three_moons_report import report
        report(pathlib.Path(a.out))
    else:   # smoke: tiny everything, both optimisers, then the report
        base = ["--out", a.out, "--seeds-1head", "1", "--seeds-3head", "2", "--steps", "4", "--batch", "2",
                "--block", "64", "--chunk", "16", "--eval-batch", "2", "--ctx-stride", "8",
                "--reductions", "smoke: numbers meaningless"]
        main(["register"] + base)
        for o in OPTIMIZERS:
            main(["run", "--optimizer", o] + base)
        main(["report"] + base)


if __name__ == "__main__":
    main()
