"""Attention analysis (Memory Mosaics v1 §7 and v2 Fig. 1): attention maps and their consistency across positions.

    python experiments/attention_consistency.py          # uses the runs of experiments/lm_by_depth.py
    python experiments/attention_consistency.py --smoke --out /tmp/att   # CI: trains its own tiny runs first

Input: the trained memory-mosaic and GPT-2 runs of `experiments/lm_by_depth.py` (runs/lm_by_depth/<arch>_L<depth>).
For each run, on `--windows` TinyStories-validation windows of the training context length:

* the read weights A[t, j] of every layer and head (`mosaic_jax.tasks.analysis.attention_maps`): the C-mem kernel
  regression weights softmax_{j ≤ t−1}(k_t·k_j) for the mosaic, the causal softmax(q·k/√D) for GPT-2;
* the pre-softmax scores S[t, j] (k_t·k_j for the mosaic, q_t·k_j/√D for GPT-2; keys from
  `mosaic_jax.inference.decode.forward_with_internals`).

Consistency (v2 Fig. 1: "how much the attention score to a token at distance d varies with the query's
position"): with s̄(t, d) = the mean over windows of S[t, t − d], the inconsistency at distance d is
std over query positions t of s̄(t, d), divided by the standard deviation of all the head's scores (so that heads and
architectures with different score scales compare). 0 means the score to a token d back does not depend on where
the query is. We report it per distance, averaged over heads and layers, for near (d < 8) and far (d ≥ 32)
tokens, and plot s̄(t, ·) against d for several query positions t.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
import warnings

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import REPO, RESULTS, SHARED, command_line, machine, md_table, out_dir, savefig

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"mosaic": "memory mosaic", "gpt2": "GPT-2"}
NEAR, FAR = 8, 32


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="seconds-long version for CI (trains tiny runs first)")
    p.add_argument("--out", default=str(RESULTS / "attention_consistency"))
    p.add_argument("--runs", default=None, help="experiments/lm_by_depth.py workdirs (default runs/lm_by_depth; "
                   "with --smoke and no --runs, tiny runs are trained first)")
    p.add_argument("--depths", default="1,4")
    p.add_argument("--raw-scores", action="store_true", help="do not centre the scores per query row (the first "
                   "version's metric, which counts per-row offsets that softmax ignores)")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--suffix", default="", help="appended to the run folder names (<arch>_L<depth><suffix>)")
    p.add_argument("--seeds", default="", help="e.g. 0,1,2: one analysis per seed of runs <arch>_L<depth>_s<seed> "
                   "(experiments/lm_calibrated.py), each into <out>/seed<seed>/, and a mean ± std table in <out>")
    p.add_argument("--text", default=str(SHARED / "data" / "tinystories" / "valid_v1_prefix.txt"))
    a = p.parse_args(argv)
    a.depths = [int(d) for d in a.depths.split(",")]
    if a.smoke:
        a.depths, a.windows = [1], 2
    return a


def centre_rows(s_TT: np.ndarray, allowed_TT: np.ndarray) -> np.ndarray:
    """Scores minus their mean over each query row's readable keys (issue 18): softmax ignores a per-row offset,
    so only centred scores (or the probabilities) say what the attention does. Unreadable entries become 0."""
    n = np.maximum(allowed_TT.sum(-1, keepdims=True), 1)
    mean = np.where(allowed_TT, s_TT, 0.0).sum(-1, keepdims=True) / n
    return np.where(allowed_TT, s_TT - mean, 0.0)


def score_statistics(cfg, params, tokens_BT: np.ndarray, centre: bool = True) -> dict:
    """Window-averaged pre-softmax scores and read weights (L, H, T, T), the per-head std of all readable scores
    (L, H), the read weights of the first window (L, H, T, T) and the readable mask (T, T). With `centre` the
    scores are centred per query row first (softmax-invariant); the committed table predates this switch."""
    from mosaic_jax.inference import decode
    from mosaic_jax.ops import memory
    from mosaic_jax.tasks.analysis import attention_maps

    @jax.jit
    def scores(params, tokens):
        _, internals = decode.forward_with_internals(cfg, params, tokens)
        out = []
        for st in internals:
            if cfg.arch == "mosaic":
                out.append(memory.dot_kernel(st["keys"], st["keys"]))
            else:
                q, k = st["q"], st["k"]
                out.append(jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
                           / math.sqrt(q.shape[-1]))
        return jnp.stack(out)

    T = tokens_BT.shape[1]
    allowed = np.asarray(memory.strict_causal_mask(T, shift=1 if cfg.arch == "mosaic" else 0))
    s_sum = s2_sum = w_sum = first = None
    m1 = m2 = 0.0
    for i in range(0, len(tokens_BT), 8):
        chunk = jnp.asarray(tokens_BT[i:i + 8])
        s = np.asarray(scores(params, chunk), np.float64)                 # (L, B, H, T, T)
        if centre:
            s = centre_rows(s, allowed)
        w = np.asarray(attention_maps(cfg, params, chunk), np.float64)
        s_sum = s.sum(1) if s_sum is None else s_sum + s.sum(1)
        s2_sum = (s * s).sum(1) if s2_sum is None else s2_sum + (s * s).sum(1)
        w_sum = w.sum(1) if w_sum is None else w_sum + w.sum(1)
        first = w[:, 0] if first is None else first
        sa = np.where(allowed, s, 0.0)
        m1 = m1 + sa.sum(axis=(1, 3, 4))
        m2 = m2 + (sa * sa).sum(axis=(1, 3, 4))
    n = len(tokens_BT)
    count = n * allowed.sum()
    std = np.sqrt(np.maximum(m2 / count - (m1 / count) ** 2, 0.0))
    s_mean = s_sum / n
    # sampling variance of each window-mean s̄(t, j): the across-window variance / (n − 1)
    noise = np.maximum(s2_sum / n - s_mean ** 2, 0.0) / max(n - 1, 1)
    return dict(s_mean=s_mean, s_noise=noise, w_mean=w_sum / n, s_std=std, first=first, allowed=allowed)


def by_distance(x_LHTT: np.ndarray, min_t: int) -> np.ndarray:
    """x(t, t − d) re-indexed as [t, d], per layer and head: (L, H, T, T); NaN where j = t − d < 0 or t < min_t."""
    T = x_LHTT.shape[-1]
    t = np.arange(T)[:, None]
    j = t - np.arange(T)[None, :]
    out = np.where(j >= 0, x_LHTT[:, :, t, np.clip(j, 0, T - 1)], np.nan)
    out[:, :, :min_t] = np.nan
    return out


def inconsistency(s_mean_LHTT: np.ndarray, s_std_LH: np.ndarray, allowed_TT: np.ndarray, min_t: int,
                  noise_LHTT: np.ndarray | None = None) -> np.ndarray:
    """(L, H, T): std over query positions t ≥ min_t of s̄(t, t − d), over the head's score std, per distance d
    (NaN for distances with fewer than 8 query positions). With `noise_LHTT` (the sampling variance of each
    window mean), that variance is subtracted first: what remains is the spread due to position alone."""
    sbar = by_distance(s_mean_LHTT, min_t)
    T = sbar.shape[-1]
    t = np.arange(T)[:, None]
    j = t - np.arange(T)[None, :]
    d_allowed = (j >= 0) & allowed_TT[t, np.clip(j, 0, T - 1)]      # [t, d]: is key t − d readable from t
    sbar = np.where(d_allowed[None, None], sbar, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cnt = np.sum(~np.isnan(sbar), axis=2)
        var = np.nanvar(sbar, axis=2)
        if noise_LHTT is not None:
            nz = np.where(np.isnan(sbar), np.nan, by_distance(noise_LHTT, min_t))
            var = np.maximum(var - np.nanmean(nz, axis=2), 0.0)
        sd = np.sqrt(var)
    sd = np.where(cnt >= 8, sd, np.nan)
    return sd / np.maximum(s_std_LH, 1e-12)[:, :, None]


def main(argv=None) -> dict:
    a = parse(argv)
    if a.seeds:
        return main_seeds(a, list(sys.argv[1:] if argv is None else argv))
    out = out_dir(a.out)
    t_start = time.time()
    runs_root = pathlib.Path(a.runs or REPO / "runs" / "lm_by_depth")
    if a.smoke and a.runs is None:
        import lm_by_depth
        res = lm_by_depth.main(["--smoke", "--out", str(out / "lm_smoke")])
        runs_root = pathlib.Path(res["runs_root"])

    from mosaic_jax.evaluate import corpus_windows
    from mosaic_jax.generate import load_for_inference

    runs = [(arch, d) for d in a.depths for arch in ("mosaic", "gpt2")]
    results, maps_to_plot = {}, {}
    for arch, depth in runs:
        t0 = time.time()
        cfg, params, tok = load_for_inference(str(runs_root / f"{arch}_L{depth}{a.suffix}"))
        T = cfg.block_size
        ids = tok.encode(pathlib.Path(a.text).read_text(encoding="utf-8"))
        w = corpus_windows(ids, T)
        w = w[np.linspace(0, len(w) - 1, min(a.windows, len(w))).astype(int), :T]
        st = score_statistics(cfg, params, w, centre=not a.raw_scores)
        inc_raw = inconsistency(st["s_mean"], st["s_std"], st["allowed"], min(16, T // 4))     # (L, H, T)
        inc = inconsistency(st["s_mean"], st["s_std"], st["allowed"], min(16, T // 4), st["s_noise"])
        results[(arch, depth)] = dict(inc=inc, inc_raw=inc_raw, sbar=by_distance(st["s_mean"], 0), wbar=by_distance(st["w_mean"], 0),
                                      T=T, n_layer=cfg.n_layer, n_head=cfg.n_head)
        maps_to_plot[(arch, depth)] = st["first"]               # (L, H, T, T) of the first window
        print(f"  {arch} L{depth}: {len(w)} windows of {T}, {time.time() - t0:.0f}s", flush=True)

    # --- table ---
    rows = []
    for arch, depth in runs:
        r = results[(arch, depth)]
        inc = r["inc"]
        T = r["T"]
        d0 = 1 if arch == "mosaic" else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            near = np.nanmean(inc[:, :, d0:NEAR])
            far = np.nanmean(inc[:, :, FAR:]) if T > FAR else float("nan")
            raw_near = np.nanmean(r["inc_raw"][:, :, d0:NEAR])
            raw_far = np.nanmean(r["inc_raw"][:, :, FAR:]) if T > FAR else float("nan")
            per_layer = [f"{np.nanmean(inc[l, :, FAR:]):.3f}" if T > FAR else "—" for l in range(inc.shape[0])]
        rows.append([NAMES[arch], depth, float(near), float(far), ", ".join(per_layer), float(raw_near),
                     float(raw_far)])
    header = ["model", "depth", f"inconsistency, near (d < {NEAR})", f"inconsistency, far (d ≥ {FAR})",
              "far, per layer", "raw near (with sampling noise)", "raw far"]

    # --- plots: inconsistency vs distance ---
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for (arch, depth), r in results.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = np.nanmean(r["inc"], axis=(0, 1))
        ax.plot(np.arange(len(curve)), curve, "-" if depth != 1 else "--",
                color="C1" if arch == "mosaic" else "C0", label=f"{NAMES[arch]}, depth {depth}")
    ax.set_xscale("symlog", linthresh=4)
    ax.set_xlabel("distance d = t − j (tokens)")
    ax.set_ylabel("std over query positions t of mean score(t, t−d)\n/ std of the head's scores")
    ax.legend(fontsize=7)
    ax.set_title("attention-score inconsistency across query positions (lower = more consistent)", fontsize=9)
    savefig(fig, out / "inconsistency_vs_distance.png")
    plt.close(fig)

    # --- plots: v2 Fig. 1 style, mean score vs distance for several query positions (deepest run) ---
    depth = max(a.depths)
    fig, axs = plt.subplots(2, 2, figsize=(10, 6.4))
    for col, arch in enumerate(("mosaic", "gpt2")):
        r = results[(arch, depth)]
        T = r["T"]
        qs = sorted({min(T - 1, q) for q in (16, 32, 64, 128, 255) if q < T} | {T - 1})
        for row, (key, label) in enumerate((("sbar", "pre-softmax score"), ("wbar", "read weight"))):
            ax = axs[row, col]
            x = r[key].mean(axis=(0, 1))                          # average over layers and heads: (T, T) [t, d]
            for i, q in enumerate(qs):
                d0 = 1 if arch == "mosaic" else 0
                d = np.arange(d0, q + 1)
                ax.plot(d, x[q, d], color=plt.cm.viridis(i / max(len(qs) - 1, 1)), lw=1, label=f"query t = {q}")
            ax.set_xscale("log")
            if key == "wbar":
                ax.set_yscale("log")
            ax.set_title(f"{NAMES[arch]}, depth {depth}: {label}", fontsize=9)
            ax.set_xlabel("distance d = t − j")
            ax.set_ylabel(f"mean {label} to token t − d")
        axs[0, col].legend(fontsize=7)
    fig.suptitle("mean attention score to the token d back, for several query positions (layers and heads "
                 "averaged; v2 Fig. 1 analogue)", fontsize=9)
    fig.tight_layout()
    savefig(fig, out / "score_vs_distance.png")
    plt.close(fig)

    # --- plots: attention maps of the first window ---
    n_show = min(64, results[runs[0]]["T"])
    for depth in a.depths:
        L = results[("mosaic", depth)]["n_layer"]
        layers = sorted({0, L - 1})
        H = min(4, results[("mosaic", depth)]["n_head"])
        fig, axs = plt.subplots(2 * len(layers), H, figsize=(2.6 * H, 2.7 * 2 * len(layers)), squeeze=False)
        for r_i, (arch, layer) in enumerate((arch, l) for arch in ("mosaic", "gpt2") for l in layers):
            m = maps_to_plot[(arch, depth)]
            for h in range(H):
                ax = axs[r_i, h]
                ax.imshow(m[layer, h, :n_show, :n_show] ** 0.5, cmap="viridis")
                ax.set_title(f"{NAMES[arch]} L{layer} H{h}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"read weights (square root), first {n_show} tokens of a TinyStories validation window, "
                     f"depth {depth}", fontsize=9)
        savefig(fig, out / f"attention_maps_depth{depth}.png", dpi=70)
        plt.close(fig)

    wall = time.time() - t_start
    score_kind = ("raw (NOT centred: per-row offsets, which softmax ignores, count)" if a.raw_scores else
                  "centred per query row over its readable keys (softmax-invariant)")
    md = f"""# Attention analysis: consistency of attention scores across positions, memory mosaic vs GPT-2

Command: `{command_line(['python', 'experiments/attention_consistency.py'] + list(sys.argv[1:] if argv is None else argv))}`
Wall time: {wall:.0f} s on {machine()}{' — SMOKE RUN, numbers meaningless' if a.smoke else ''} (analysis only; the
models are the runs in `{runs_root.relative_to(REPO) if runs_root.is_relative_to(REPO) else runs_root}`, made by
`experiments/lm_by_depth.py` or by `experiments/lm_calibrated.py`'s recipe; their train records say how).

Data: {a.windows} evenly spaced TinyStories-validation windows of the training context. Scores: mosaic C-mem
k_t·k_j (β inside the keys; strictly causal, j ≤ t − 1); GPT-2 q_t·k_j/√D (j ≤ t); {score_kind}. Inconsistency at distance d:
std over query positions t (t ≥ 16) of the window-averaged score s̄(t, t − d), divided by the std of all of that
head's scores; averaged over heads and layers. Lower = the score given to a token d back depends less on the
query's absolute position. The window mean carries sampling noise (about 1/√{a.windows} of the content spread);
its estimated variance (across-window variance / (n − 1), per entry) is subtracted before the std over t. The
"raw" columns keep it (their floor is about {1 / math.sqrt(max(a.windows, 1)):.2f}).

{md_table(header, rows)}

Plots: `inconsistency_vs_distance.png`, `score_vs_distance.png` (v2 Fig. 1 analogue: curves for several query
positions; overlapping curves = position-invariant), `attention_maps_depth*.png` (read weights of the first
and last layer, first 4 heads).
"""
    (out / "results.md").write_text(md)
    cmd = command_line(['python', 'experiments/attention_consistency.py'] + list(sys.argv[1:] if argv is None else argv))
    write_json(out, {"experiment": "attention_consistency", "command": cmd, "wall_s": wall, "metric": score_kind,
                     "tables": [{"header": header, "rows": rows}]})
    print(md, flush=True)
    return {"results": results, "rows": rows, "header": header, "wall_s": wall, "score_kind": score_kind}


def write_json(out: pathlib.Path, res: dict) -> None:
    from mosaic_jax.tools.hostinfo import cpu_info   # imports jax: after _util put the repo on sys.path

    info = cpu_info()
    res = res | {"loadavg": os.getloadavg(), "cpu_model": info["cpu_model"], "cpu_flags": info["cpu_flags"]}
    (out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")


def main_seeds(a: argparse.Namespace, argv: list[str]) -> dict:
    """One analysis per seed (runs <arch>_L<depth>_s<seed>), then mean ± std (sample std) over seeds."""
    out = out_dir(a.out)
    t0 = time.time()
    seeds = [int(x) for x in a.seeds.split(",")]
    base = [f"--depths={','.join(map(str, a.depths))}", f"--windows={a.windows}", f"--text={a.text}"] + \
        ([f"--runs={a.runs}"] if a.runs else []) + (["--raw-scores"] if a.raw_scores else [])
    per_seed = {s: main(base + [f"--out={out / f'seed{s}'}", f"--suffix=_s{s}"]) for s in seeds}
    header = per_seed[seeds[0]]["header"]
    num = [i for i, v in enumerate(per_seed[seeds[0]]["rows"][0]) if isinstance(v, float)]
    rows, seed_rows = [], []
    for k, row0 in enumerate(per_seed[seeds[0]]["rows"]):
        vals = {i: [per_seed[s]["rows"][k][i] for s in seeds] for i in num}
        rows.append([row0[0], row0[1]] + [f"{np.mean(vals[i]):.3f} ± {np.std(vals[i], ddof=1):.3f}" for i in num])
        seed_rows += [[row0[0], row0[1], s] + [per_seed[s]["rows"][k][i] for i in num] for s in seeds]
    h = [header[0], header[1]] + [header[i] for i in num]
    wall = time.time() - t0
    cmd = command_line(['python', 'experiments/attention_consistency.py'] + argv)
    kind = per_seed[seeds[0]]["score_kind"]
    depths = ", ".join(map(str, a.depths))
    md = f"""# Attention consistency at depth {depths}, {len(seeds)} seeds

Command: `{cmd}`
Wall time: {wall:.0f} s on {machine()}. Models: runs of the recipe of `experiments/lm_calibrated.py`
(`<arch>_L<depth>_s<seed>`, 614,400 tokens each; the runs at depths other than the registered study's are made
by `python experiments/lm_calibrated.py train_unregistered --depths=... --seeds=...`). Scores {kind}; the metric is described in each `seed*/results.md`
(inconsistency = std over query positions of the window-mean score to the token d back, over the std of the
head's scores; sampling noise subtracted; lower = more position-invariant). Mean ± std over seeds (sample std):

{md_table(h, rows)}

Every seed:

{md_table(h[:2] + ["seed"] + h[2:], seed_rows)}
"""
    (out / "results.md").write_text(md)
    write_json(out, {"experiment": "attention_consistency", "command": cmd, "wall_s": wall, "metric": kind,
                     "seeds": seeds, "tables": [{"header": h, "rows": rows},
                                                {"header": h[:2] + ["seed"] + h[2:], "rows": seed_rows}]})
    print(md, flush=True)
    return {"per_seed": per_seed, "rows": rows, "wall_s": wall}


if __name__ == "__main__":
    main()
