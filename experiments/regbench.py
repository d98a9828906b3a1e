"""RegBench in-context language learning (Akyürek et al. 2024; Memory Mosaics v1 Fig. 9; shared/spec/regbench.md).

    python experiments/regbench.py                      # full CPU run → experiments/results/regbench/
    python experiments/regbench.py --smoke --out /tmp/rb   # seconds-long CI version

A memory mosaic (library model, arch "mosaic": C=128, 8 heads, 2 layers, P=448, the ICLL config) and a GPT-2
transformer of matched parameter count (arch "gpt2": C=128, 8 heads, 2 layers) are trained on instances of
N ∈ {100, 500, 1000, 2500} random training automata (one instance per automaton, as seq_icl) and evaluated on
1000 held-out automata (disjoint up to isomorphism) with the RegBench accuracy and TVD (½·L1; L1 = 2·TVD is what
the seq_icl code accumulates). The training sets are nested (the first N of one list of 2500).

CPU reductions (all stated in results.md): sequences cut to `--seq-len` tokens (reference: 4096 characters,
≈ 2048 tokens, median instance ≈ 360 tokens); `--steps` AdamW steps of batch `--batch` (reference: 200 epochs
of batch 32); no dropout (reference 0.05); lr `--lr` with 10% warm-up and cosine decay (reference 5e-4 for 200
epochs); one seed; no per-architecture hyper-parameter search. As in the reference, the checkpoint is chosen by
validation loss (on `--val` further held-out automata, evaluated at 1/2, 3/4 and the end of training).
"""
from __future__ import annotations

import argparse
import sys
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import Progress, command_line, machine, md_table, out_dir, savefig, RESULTS

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mosaic_jax.models import lm as M
from mosaic_jax.tasks import regbench as rb
from mosaic_jax.models.config import ModelConfig  # noqa: E402

# Read off the Memory Mosaics ICLL figure (regbench.md §4, ±0.02): number of training automata -> value.
PAPER = {
    "mosaic": {"accuracy": {100: 0.925, 500: 0.93, 1000: 0.935, 2500: 0.94}, "tvd": {100: 0.57, 500: 0.255,
                                                                                      1000: 0.215, 2500: 0.185}},
    "gpt2": {"accuracy": {100: 0.52, 500: 0.545, 1000: 0.53, 2500: 0.925}, "tvd": {100: 0.685, 500: 0.64,
                                                                                  1000: 0.63, 2500: 0.23}},
}
NAMES = {"mosaic": "memory mosaic", "gpt2": "transformer (GPT-2)"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="seconds-long version for CI")
    p.add_argument("--out", default=str(RESULTS / "regbench"))
    p.add_argument("--sizes", default="100,500,1000,2500", help="numbers of training automata")
    p.add_argument("--test", type=int, default=1000, help="held-out test automata")
    p.add_argument("--val", type=int, default=100, help="held-out validation automata (checkpoint selection)")
    p.add_argument("--archs", default="mosaic,gpt2")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batch", type=int, default=200)
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.test, a.val, a.seq_len, a.steps, a.batch, a.eval_batch = "8,16", 8, 4, 32, 4, 4, 8
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.archs = a.archs.split(",")
    return a


def model_config(arch: str, seq_len: int) -> ModelConfig:
    common = dict(vocab_size=rb.VOCAB_SIZE, n_layer=2, n_embd=128, n_head=8, block_size=seq_len,
                  ic_dropout=0.0, hd_dropout=0.0)
    if arch == "mosaic":
        return ModelConfig(arch="mosaic", pmem_size=448, **common)
    return ModelConfig(arch="gpt2", **common)


def predict(cfg: ModelConfig, params, inputs: np.ndarray, batch: int, fwd) -> np.ndarray:
    """Logits in batches of a fixed shape (the last one padded) so that `fwd` compiles once."""
    n = len(inputs)
    padded = np.concatenate([inputs, np.full(((-n) % batch, inputs.shape[1]), rb.PAD_ID, inputs.dtype)])
    return np.concatenate([np.asarray(fwd(params, jnp.asarray(padded[i:i + batch])))
                           for i in range(0, len(padded), batch)])[:n]


def mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    total, count = M.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    return float(total / jnp.maximum(count, 1))


def main(argv=None) -> dict:
    a = parse(argv)
    out = out_dir(a.out)
    t_start = time.time()
    n_max = max(a.sizes)
    pool_train, held = rb.split_automata(n_max, a.test + a.val, seed=a.seed)
    test_dfas, val_dfas = held[:a.test], held[a.test:]
    train_all = rb.make_instances(pool_train, seed=a.seed + 10, max_len=a.seq_len)
    test = rb.make_instances(test_dfas, seed=a.seed + 20, max_len=a.seq_len)
    val = rb.make_instances(val_dfas, seed=a.seed + 30, max_len=a.seq_len)
    legal = test.legal_mask()
    ngram = rb.dfa_metrics(rb.ngram_logits(test, 3), test, legal)
    print(f"regbench: {n_max} train / {a.test} test / {a.val} val automata, seq_len {a.seq_len}, "
          f"{int((test.states >= 0).sum())} scored test positions; in-context 3-gram: {ngram}; {machine()}",
          flush=True)

    results: dict = {}
    n_params: dict = {}
    for arch in a.archs:
        cfg = model_config(arch, a.seq_len)
        sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, max(a.steps // 10, 1), a.steps, a.lr / 10)
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1))

        @jax.jit
        def step(p, s, x, y, cfg=cfg, opt=opt):
            loss, g = jax.value_and_grad(lambda q: M.loss_fn(cfg, q, x, y))(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        fwd = jax.jit(lambda p, x, cfg=cfg: M.apply(cfg, p, x))
        for n in a.sizes:
            params = M.init_params(cfg, jax.random.key(a.seed))
            n_params[arch] = M.count_params(params)
            state = opt.init(params)
            rng = np.random.default_rng(a.seed + n)
            prog = Progress(f"{arch} N={n}", a.steps)
            checkpoints = sorted({a.steps // 2, (3 * a.steps) // 4, a.steps})
            best = (np.inf, params, 0)
            t0 = time.time()
            for i in range(1, a.steps + 1):
                idx = rng.integers(0, n, a.batch)
                params, state, loss = step(params, state, jnp.asarray(train_all.inputs[idx]),
                                           jnp.asarray(train_all.labels[idx]))
                prog(i, loss=float(loss))
                if i in checkpoints:
                    vl = mean_loss(predict(cfg, params, val.inputs, a.eval_batch, fwd), val.labels)
                    if vl < best[0]:
                        best = (vl, params, i)
            t_train = time.time() - t0
            t0 = time.time()
            logits = predict(cfg, best[1], test.inputs, a.eval_batch, fwd)
            m = rb.dfa_metrics(logits, test, legal)
            m.update(test_loss=mean_loss(logits, test.labels), val_loss=best[0], step=best[2], train_s=t_train,
                     eval_s=time.time() - t0, epochs=a.steps * a.batch / n)
            results[(arch, n)] = m
            print(f"  {arch} N={n}: acc {m['accuracy']:.3f} TVD {m['tvd']:.3f} test loss {m['test_loss']:.3f} "
                  f"(checkpoint step {best[2]}, train {t_train:.0f}s, eval {m['eval_s']:.0f}s)", flush=True)

    # --- table ---
    rows = []
    for n in a.sizes:
        for arch in a.archs:
            m = results[(arch, n)]
            pa, pt = PAPER[arch]["accuracy"].get(n, float("nan")), PAPER[arch]["tvd"].get(n, float("nan"))
            rows.append([n, NAMES[arch], f"{n_params[arch]:,}", m["accuracy"], pa, m["tvd"], pt, m["l1"],
                         m["test_loss"], f"{m['step']}/{a.steps}", f"{m['epochs']:.1f}", f"{m['train_s']:.0f}"])
    header = ["train automata", "model", "params", "accuracy", "paper acc.", "TVD (½·L1)", "paper TVD",
              "L1 = 2·TVD", "test loss", "ckpt step", "epochs", "train s"]

    # --- plot ---
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (key, label) in enumerate((("accuracy", "accuracy ↑"), ("tvd", "TVD = ½·L1 ↓"))):
        ax = axs[k]
        for arch, color in zip(a.archs, ("C1", "C0")):
            ax.plot(a.sizes, [results[(arch, n)][key] for n in a.sizes], "o-", color=color,
                    label=f"{NAMES[arch]} (ours, CPU)")
            pn = sorted(PAPER[arch][key])
            ax.plot(pn, [PAPER[arch][key][n] for n in pn], "s--", color=color, alpha=0.5,
                    label=f"{NAMES[arch]} (paper, read off Fig.)")
        ax.axhline(ngram[key], color="grey", ls=":", label="in-context 3-gram")
        ax.set_xscale("log")
        ax.set_xlabel("number of training automata")
        ax.set_ylabel(label)
    axs[0].legend(fontsize=7)
    fig.suptitle(f"RegBench, {a.test} held-out automata (sequences cut to {a.seq_len} tokens, {a.steps} steps)",
                 fontsize=10)
    savefig(fig, out / "regbench.png")
    plt.close(fig)

    wall = time.time() - t_start
    md = f"""# RegBench: in-context language learning, memory mosaic vs transformer

Command: `{command_line(['python', 'experiments/regbench.py'] + list(sys.argv[1:] if argv is None else argv))}`
Wall time: {wall:.0f} s on {machine()}{' — SMOKE RUN, numbers meaningless' if a.smoke else ''}.

Data (`mosaic_jax/tasks/regbench.py`, seed {a.seed}): {n_max} training automata (nested subsets of the first N),
{a.test} test and {a.val} validation automata, all distinct up to isomorphism; one instance (10–19 strings)
per automaton, cut to {a.seq_len} tokens. Metrics over every scored position ({int((test.states >= 0).sum()):,}
test positions): accuracy = the argmax is a legal next symbol; TVD = ½·Σ|p_model − p_DFA| over the 20 tokens
(p_DFA uniform over the legal symbols); the seq_icl code accumulates Σ|p − q| (= L1 = 2·TVD) — both are given.
The paper's values are read off its figure (±0.02); we do not know which of the two conventions it plots.

Models (library `mosaic_jax.models.lm`): memory mosaic C=128, 8 heads, 2 layers, P=448 (the ICLL config,
{n_params.get('mosaic', 0):,} parameters) and GPT-2 C=128, 8 heads, 2 layers with learned positions
({n_params.get('gpt2', 0):,} parameters). Training: AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, lr {a.lr} with
10% warm-up and cosine decay to lr/10, batch {a.batch}, {a.steps} steps, checkpoint chosen by validation loss.

**Reductions for CPU** (reference in brackets): sequences ≤ {a.seq_len} tokens [≤ 4096 characters ≈ 2048
tokens]; {a.steps} steps × batch {a.batch} [200 epochs × batch 32, i.e. 625 steps at N=100 and 15,625 at
N=2500]; dropout 0 [0.05]; lr {a.lr} cosine [5e-4]; one seed and no per-architecture hyper-parameter search
[a grid per architecture, selected by validation loss].

In-context 3-gram baseline (counts over the instance's own prefix, no training): accuracy {ngram['accuracy']:.3f},
TVD {ngram['tvd']:.3f}.

{md_table(header, rows)}

Plot: `regbench.png` (ours solid, the paper's figure values dashed, the in-context 3-gram dotted).
"""
    (out / "results.md").write_text(md)
    print(md, flush=True)
    return {"results": results, "ngram": ngram, "n_params": n_params, "wall_s": wall}


if __name__ == "__main__":
    main()
