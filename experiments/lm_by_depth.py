"""Language modelling by depth (Memory Mosaics v1 Fig. 7 and Fig. 8): memory mosaic vs GPT-2 at equal size.

    python experiments/lm_by_depth.py                  # full CPU run → experiments/results/lm_by_depth/
    python experiments/lm_by_depth.py --smoke --out /tmp/lm    # seconds-long CI version (byte tokens, tiny)

1. Prepares the TinyStories sample (../shared/data/tinystories, sentencepiece 4k, the same folder as
   scripts/quickstart.sh; a no-op when it exists).
2. Trains four runs with the training CLI (`python -m mosaic_jax.train`, preset lm_by_depth):
   memory mosaic and GPT-2, depths 1 and 4, identical recipe, data order and token budget. Re-running resumes
   (or skips) finished runs; `--fresh` deletes the run folders first.
3. Plots train and validation loss against tokens (Fig. 7) from each run's metrics.jsonl.
4. Scores per-position loss (Fig. 8) with `mosaic_jax.evaluate`/`mosaic_jax.tasks.analysis` on TinyStories validation (in
   distribution) and WikiText-2 validation and Project Gutenberg books (out of distribution).

The trained runs are also the input of experiments/attention_consistency.py.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import REPO, RESULTS, SHARED, command_line, machine, md_table, out_dir, savefig

import matplotlib
import numpy as np

from mosaic_jax.training import legacy_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIG = REPO / "experiments" / "configs" / "lm_by_depth.py"
TS = SHARED / "data" / "tinystories"
GUTENBERG_BOOKS = ("carroll-alice.txt", "grimm.txt", "dickens-christmas-carol.txt", "austen-emma.txt",
                   "doyle-holmes.txt", "melville-moby_dick.txt")
CORPORA = {   # name -> (files, in distribution?)
    "TinyStories valid": ([TS / "valid_v1_prefix.txt"], True),
    "WikiText-2 valid": ([SHARED / "data" / "wikitext2" / "valid.txt"], False),
    "Gutenberg (6 books)": ([SHARED / "data" / "gutenberg" / b for b in GUTENBERG_BOOKS], False),
}
NAMES = {"mosaic": "memory mosaic", "gpt2": "GPT-2"}
POSITION_BINS = ((0, 8), (8, 32), (32, 64), (64, 128), (128, 256))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="seconds-long version for CI")
    p.add_argument("--out", default=str(RESULTS / "lm_by_depth"))
    p.add_argument("--runs", default=str(REPO / "runs" / "lm_by_depth"), help="training workdirs go here")
    p.add_argument("--data", default=str(REPO / "runs" / "data" / "tinystories_sp4k"))
    p.add_argument("--depths", default="1,4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-windows", type=int, default=64, help="windows per corpus for the per-position loss")
    p.add_argument("--fresh", action="store_true", help="delete the run folders first (else resume/skip)")
    p.add_argument("--extra", action="append", default=[], help="more --config.* overrides for every run")
    a = p.parse_args(argv)
    if a.smoke:
        a.depths, a.steps, a.eval_windows = "1", 3, 2
    a.depths = [int(d) for d in a.depths.split(",")]
    return a


def child_env() -> dict:
    """The training CLI runs on this process's platform, without the test suite's simulated 8 CPU devices."""
    env = dict(os.environ)
    flags_ = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = flags_
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=child_env())
    return time.time() - t0


def prepare(a: argparse.Namespace, smoke_dir: pathlib.Path | None) -> str:
    if smoke_dir is not None:     # tiny byte-level corpus: no tokenizer training, a few KB
        src = smoke_dir / "src"
        src.mkdir(parents=True, exist_ok=True)
        text = (TS / "train_v1_prefix_a.txt").read_text(encoding="utf-8")[:40_000]
        (src / "train.txt").write_text(text)
        (src / "valid.txt").write_text((TS / "valid_v1_prefix.txt").read_text(encoding="utf-8")[:8_000])
        data = smoke_dir / "data"
        run([sys.executable, "-m", "mosaic_jax.prepare_data", f"--input={src / 'train.txt'}",
             f"--validation_input={src / 'valid.txt'}", f"--out={data}", "--tokenizer=byte", "--progress=false"])
        return str(data)
    run([sys.executable, "-m", "mosaic_jax.prepare_data",
         f"--input={TS / 'train_v1_prefix_a.txt'},{TS / 'train_v2gpt4_prefix.txt'}",
         f"--validation_input={TS / 'valid_v1_prefix.txt'}", f"--out={a.data}", "--tokenizer=sp:4096",
         "--progress=false"])
    return a.data


def read_metrics(workdir: pathlib.Path) -> dict[str, dict[int, dict]]:
    """Last record per (split, step) of metrics.jsonl (a resumed run may repeat steps)."""
    out: dict[str, dict[int, dict]] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r.get("split", "train"), {})[int(r["step"])] = r
    return out


def per_position(workdir: pathlib.Path, n_windows: int) -> dict[str, np.ndarray]:
    """Per-token losses (N, T) of the run's last checkpoint on each corpus (evenly spaced windows)."""
    from mosaic_jax.evaluate import corpus_windows, score_windows
    from mosaic_jax.generate import load_for_inference

    cfg, params, tok = load_for_inference(str(workdir))
    out = {}
    for name, (files, _) in CORPORA.items():
        ids: list[int] = []
        for f in files:
            ids += tok.encode(pathlib.Path(f).read_text(encoding="utf-8")) + [tok.eos_id]
        w = corpus_windows(ids, cfg.block_size)
        w = w[np.linspace(0, len(w) - 1, min(n_windows, len(w))).astype(int)]
        out[name] = score_windows(cfg, params, w, batch_size=8)
    return out


def smooth(x: np.ndarray, k: int = 9) -> np.ndarray:
    if len(x) < k:
        return x
    pad = k // 2
    xp = np.pad(x, pad, mode="edge")
    return np.convolve(xp, np.ones(k) / k, "valid")


def main(argv=None) -> dict:
    a = parse(argv)
    out = out_dir(a.out)
    t_start = time.time()
    runs_root = pathlib.Path(out / "runs" if a.smoke else a.runs)
    data = prepare(a, out / "smoke_data" if a.smoke else None)
    overrides = list(a.extra)
    if a.smoke:
        overrides += ["--config.model.n_embd=32", "--config.model.n_head=2", "--config.model.pmem_size=112",
                      "--config.model.block_size=32", "--config.train.global_batch=2", "--config.train.eval_every=2",
                      "--config.train.eval_batches=1", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
                      "--config.train.async_checkpoint=False"]
    train_s = {}
    runs = [(arch, d) for d in a.depths for arch in ("mosaic", "gpt2")]
    for arch, depth in runs:
        wd = runs_root / f"{arch}_L{depth}"
        if a.fresh and wd.exists():
            shutil.rmtree(wd)
        train_s[(arch, depth)] = run([sys.executable, "-m", "mosaic_jax.train", f"--config={CONFIG}",
                                      f"--workdir={wd}", f"--config.data.path={data}",
                                      f"--config.model.arch={arch}", f"--config.model.n_layer={depth}",
                                      f"--config.train.steps={a.steps}", *overrides])

    # --- Fig. 7: train/validation curves ---
    metrics, info = {}, {}
    for arch, depth in runs:
        wd = runs_root / f"{arch}_L{depth}"
        metrics[(arch, depth)] = read_metrics(wd)
        # a run trained before the `optim` section kept the optimizer under `train`: read both layouts
        info[(arch, depth)] = legacy_config.upgrade(json.loads((wd / "config.json").read_text()))
    fig, axs = plt.subplots(1, len(a.depths), figsize=(5.5 * len(a.depths), 3.8), squeeze=False)
    for ax, depth in zip(axs[0], a.depths):
        for arch, color in (("mosaic", "C1"), ("gpt2", "C0")):
            m = metrics[(arch, depth)]
            tr = sorted(m.get("train", {}).items())
            ev = sorted(m.get("eval", {}).items())
            tpb = info[(arch, depth)]["train"]["global_batch"] * info[(arch, depth)]["model"]["block_size"]
            if tr:
                ax.plot([s * tpb / 1e3 for s, _ in tr], [r["loss"] for _, r in tr], color=color, alpha=0.45, lw=1,
                        label=f"{NAMES[arch]} train")
            if ev:
                ax.plot([s * tpb / 1e3 for s, _ in ev], [r["loss"] for _, r in ev], "o-", color=color, ms=3,
                        label=f"{NAMES[arch]} validation")
        ax.set_title(f"depth {depth}", fontsize=10)
        ax.set_xlabel("training tokens (thousands)")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=7)
    fig.suptitle("TinyStories sample: training and validation loss (Fig. 7 analogue)", fontsize=10)
    savefig(fig, out / "loss_curves.png")
    plt.close(fig)

    # --- Fig. 8: per-position loss in and out of distribution ---
    pos = {}
    for arch, depth in runs:
        t0 = time.time()
        pos[(arch, depth)] = per_position(runs_root / f"{arch}_L{depth}", a.eval_windows)
        print(f"  per-position loss {arch} L{depth}: {time.time() - t0:.0f}s", flush=True)
    fig, axs = plt.subplots(1, len(CORPORA), figsize=(5 * len(CORPORA), 3.6))
    styles = {1: "--", 4: "-"}
    for ax, name in zip(axs, CORPORA):
        for arch, depth in runs:
            curve = pos[(arch, depth)][name].mean(0)
            ax.plot(np.arange(len(curve)), smooth(curve), styles.get(depth, "-"),
                    color="C1" if arch == "mosaic" else "C0", lw=1.2, label=f"{NAMES[arch]}, depth {depth}")
        ax.set_title(f"{name} ({'in' if CORPORA[name][1] else 'out of'} distribution)", fontsize=10)
        ax.set_xlabel("position in the window (tokens of context)")
        ax.set_xscale("symlog", linthresh=8)
    axs[0].set_ylabel("mean loss (nats/token, 9-position moving average)")
    axs[0].legend(fontsize=7)
    fig.suptitle("per-position loss (Fig. 8 analogue)", fontsize=10)
    savefig(fig, out / "per_position_loss.png")
    plt.close(fig)

    # --- tables ---
    rows_fit = []
    for arch, depth in runs:
        m = metrics[(arch, depth)]
        tr = sorted(m.get("train", {}).items())
        ev = sorted(m.get("eval", {}).items())
        last_train = float(np.mean([r["loss"] for _, r in tr[-5:]])) if tr else float("nan")
        cfg = info[(arch, depth)]
        toks = cfg["train"]["steps"] * cfg["train"]["global_batch"] * cfg["model"]["block_size"]
        tps = [r.get("tokens_per_s") for _, r in tr if r.get("tokens_per_s")]
        rows_fit.append([NAMES[arch], depth, f"{param_count(runs_root / f'{arch}_L{depth}'):,}", f"{toks:,}",
                         last_train, ev[-1][1]["loss"] if ev else float("nan"),
                         f"{np.median(tps):,.0f}" if tps else "—", f"{train_s[(arch, depth)]:.0f}"])
    header_fit = ["model", "depth", "params", "training tokens", "train loss (last 5 logs)", "validation loss",
                  "tokens/s (median)", "wall s (incl. compile, evals)"]
    rows_pos = []
    for name in CORPORA:
        for arch, depth in runs:
            L = pos[(arch, depth)][name]
            T = L.shape[1]
            rows_pos.append([name, NAMES[arch], depth, float(L.mean())] +
                            [float(L[:, lo:min(hi, T)].mean()) if lo < T else float("nan") for lo, hi in POSITION_BINS])
    header_pos = ["corpus", "model", "depth", "mean loss"] + [f"pos {lo}–{hi - 1}" for lo, hi in POSITION_BINS]

    gaps = []
    for name in CORPORA:
        for depth in a.depths:
            g = pos[("gpt2", depth)][name].mean(0) - pos[("mosaic", depth)][name].mean(0)
            T = len(g)
            gaps.append([name, depth, float(g[:min(50, T)].mean()), float(g[min(50, T - 1):].mean())])

    wall = time.time() - t_start
    cfg0 = info[runs[0]]
    md = f"""# Language modelling by depth: memory mosaic vs GPT-2 (TinyStories sample)

Command: `{command_line(['python', 'experiments/lm_by_depth.py'] + list(sys.argv[1:] if argv is None else argv))}`
Wall time: {wall:.0f} s on {machine()}{' — SMOKE RUN, numbers meaningless' if a.smoke else ''} (training runs that
already existed are resumed or skipped; `--fresh` retrains).

Recipe (both architectures, `experiments/configs/lm_by_depth.py` through `python -m mosaic_jax.train`): C =
{cfg0['model']['n_embd']}, {cfg0['model']['n_head']} heads, P = {cfg0['model']['pmem_size']} (= 3.5 C, so a mosaic
block and a GPT-2 block have the same parameters and FLOPs), context {cfg0['model']['block_size']}, batch
{cfg0['train']['global_batch']}, {cfg0['train']['steps']} steps, AdamW (0.9, 0.95), lr {cfg0['optim']['lr']} with
{cfg0['optim']['warmup_steps']} warm-up steps and cosine decay to {cfg0['optim']['min_lr']}, weight decay 0.1, clip
1.0, no dropout, seed 0 (same data order for every run). Data: the TinyStories sample (train v1 prefix + v2-GPT4
prefix, about 2.4 MB), sentencepiece 4,096-piece vocabulary. GPT-2's extra parameters are its position table.

**Reductions for CPU** (paper: BabiStories, 12-layer C=768 models, 21B tokens, context 512, dropout 0.05): the
runs see well under one epoch of a 2.4 MB sample, i.e. about 5 orders of magnitude fewer tokens; depths 1 and 4
instead of 1, 8, 12, 18; OOD sets are WikiText-2 and Gutenberg instead of Simple English Wikipedia, tokenised
with the TinyStories sentencepiece vocabulary.

## Training and validation loss (Fig. 7 analogue, `loss_curves.png`)

{md_table(header_fit, rows_fit)}

## Per-position loss (Fig. 8 analogue, `per_position_loss.png`)

{a.eval_windows} evenly spaced windows of {cfg0['model']['block_size']} tokens per corpus; position t predicts token
t+1 from t+1 tokens of context.

{md_table(header_pos, rows_pos)}

GPT-2 loss minus memory-mosaic loss (positive = the mosaic is better), averaged over the first 50 positions and
over the rest of the window:

{md_table(['corpus', 'depth', 'gap, positions < 50', 'gap, positions ≥ 50'], gaps)}
"""
    (out / "results.md").write_text(md)
    print(md, flush=True)
    return {"metrics": metrics, "per_position": pos, "gaps": gaps, "runs_root": str(runs_root), "wall_s": wall}


def param_count(workdir: pathlib.Path) -> int:
    """Parameters of the model a run trained (from its config, without loading weights)."""
    import jax

    from mosaic_jax.models import lm as M
    from mosaic_jax.training import run_config

    run = json.loads((workdir / "config.json").read_text())
    cfg, mc = run["model"], run_config.model_of(run)
    if cfg.get("vocab_size", 0) <= 0:
        raise ValueError(f"{workdir}/config.json: unresolved vocab_size")
    shapes = jax.eval_shape(lambda: M.init_params(mc, jax.random.key(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


if __name__ == "__main__":
    main()
