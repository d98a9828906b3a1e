"""Science guard (issue 18): on a small fixed-seed RegBench, a 1-layer memory mosaic learns in context far better
than a 1-layer transformer of the same width. One contextual-memory layer can already read "what followed this
symbol earlier in the instance" through its look-ahead value; one attention layer cannot (no induction head).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mosaic_jax.models import lm as M
from mosaic_jax.tasks import regbench as rb
from mosaic_jax.models.config import ModelConfig

SEQ, STEPS, BATCH = 64, 100, 16


def _accuracy(arch: str, train: rb.Instances, test: rb.Instances, legal: np.ndarray, seed: int = 0) -> float:
    common = dict(vocab_size=rb.VOCAB_SIZE, n_layer=1, n_embd=64, n_head=4, block_size=SEQ, ic_dropout=0.0,
                  hd_dropout=0.0)
    cfg = ModelConfig(arch="mosaic", pmem_size=224, **common) if arch == "mosaic" else ModelConfig(arch="gpt2",
                                                                                                     **common)
    sched = optax.warmup_cosine_decay_schedule(0.0, 3e-3, STEPS // 10, STEPS, 3e-4)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1))
    params = M.init_params(cfg, jax.random.key(seed))
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(lambda q: M.loss_fn(cfg, q, x, y))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        idx = rng.integers(0, len(train), BATCH)
        params, state = step(params, state, jnp.asarray(train.inputs[idx]), jnp.asarray(train.labels[idx]))
    logits = np.asarray(jax.jit(lambda p, x: M.apply(cfg, p, x))(params, jnp.asarray(test.inputs)))
    return rb.dfa_metrics(logits, test, legal)["accuracy"]


def test_one_layer_mosaic_learns_in_context_far_better_than_a_transformer():
    """100 training automata, 100 held-out test automata, sequences cut to 64 tokens, 100 AdamW steps of 16.

    Measured: mosaic 0.767 / 0.726, transformer 0.477 / 0.474 with seeds 0 / 1 (gaps 0.29 / 0.25; in-context
    3-gram 0.814). With the mosaic's look-ahead removed (values ṽ_t instead of ṽ_{t+1}, through MemoryFns in a
    scratch run, seed 0) the mosaic falls to 0.321, below the transformer. The required margin 0.15 is 0.10
    below the smaller seed gap; the gaps in the other settings measured (2 layers here: 0.22;
    experiments/regbench.py at 100 automata: 0.39 and 0.25) are all above it.
    """
    train_dfas, test_dfas = rb.split_automata(100, 100, seed=0)
    train = rb.make_instances(train_dfas, seed=10, max_len=SEQ)
    test = rb.make_instances(test_dfas, seed=20, max_len=SEQ)
    legal = test.legal_mask()
    acc_mm = _accuracy("mosaic", train, test, legal)
    acc_tr = _accuracy("gpt2", train, test, legal)
    assert acc_mm > acc_tr + 0.15, (acc_mm, acc_tr)


def test_preregistered_study_rules():
    """experiments/regbench_prereg.py: the plan runs every (arch, N, seed) once with the grid first, the learning
    rate is the grid's lowest validation loss, and 'beats the 3-gram' needs the mean and every seed."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import regbench_prereg as rp

    p = {"archs": ["mosaic", "gpt2"], "sizes": [100, 1000], "seeds": [0, 1], "lr_grid": [1e-3, 3e-3],
         "grid_n": 1000, "grid_seed": 0}
    plan = rp.plan(p)
    assert plan[:2] == [("mosaic", 1000, 0, 1e-3, True), ("mosaic", 1000, 0, 3e-3, True)]
    cells = [(a, n, s) for a, n, s, _, grid in plan if not grid]
    assert len(cells) == len(set(cells)) == 2 * 2 * 2 - 2          # the grid's seed-0 run at grid_n is reused
    assert ("mosaic", 1000, 0) not in cells

    def run(arch, n, seed, lr, val, acc, tvd, grid=False):
        return {"arch": arch, "n": n, "seed": seed, "lr": lr, "val_loss": val, "accuracy": acc, "tvd": tvd,
                "test_loss": 1.0, "grid": grid}
    runs = [run("mosaic", 1000, 0, 1e-3, 1.2, 0.80, 0.5, True), run("mosaic", 1000, 0, 3e-3, 1.1, 0.90, 0.3, True),
            run("mosaic", 1000, 1, 3e-3, 1.1, 0.88, 0.4), run("mosaic", 1000, 1, 1e-3, 0.9, 0.1, 0.9)]
    assert rp.chosen_lr(p, runs, "mosaic") == 3e-3          # grid runs only: the seed-1 run at 1e-3 is no grid run
    assert rp.chosen_lr(p, runs, "gpt2") is None
    s = rp.summarise(p, runs, {"accuracy": 0.85, "tvd": 0.35})["by_arch_n"]["mosaic/1000"]
    assert s["seeds"] == [0, 1] and s["accuracy"] == [0.90, 0.88]
    assert s["beats_3gram"] == {"accuracy": True, "tvd": False}   # TVD mean 0.35 is not below 0.35; seed 1 above
