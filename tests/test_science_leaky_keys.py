"""Science guard (issue 18): the leaky-average key is what lets one memory layer recall by a two-token context.

Task (in-context pair recall): each sequence draws a random table f: (a, b) -> c over 4 x 4 pairs and shows
triples (a, b, f(a, b)) with a, b uniform (a, b and c from disjoint 4-symbol alphabets, no positions). Predicting c
at the b token of a pair seen earlier needs a key that holds both a and b. With leaky keys k̄_t = a·k̄_{t−1} +
(1−a)·k̃_t the key at b still carries a; with keys from the current token only (`MemoryFns(keys=...)` below, the
ablation), a one-layer mosaic's query, and every stored key, depends on one token, so it can do little better than
the "b-only oracle" that knows the whole table but not a: predict the most frequent c among f(·, b).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mosaic_jax.models import lm as M
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import MemoryFns
from mosaic_jax.ops import memory

NA, TRIPLES, STEPS, BATCH = 4, 32, 100, 16


def _sequences(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    f_NAA = rng.integers(0, NA, (n, NA, NA))
    a, b = rng.integers(0, NA, (n, TRIPLES)), rng.integers(0, NA, (n, TRIPLES))
    c = f_NAA[np.arange(n)[:, None], a, b]
    return np.stack([a, NA + b, 2 * NA + c], -1).reshape(n, 3 * TRIPLES), f_NAA


def _repeats(seq: np.ndarray) -> list[tuple[int, int]]:
    """(row, triple) of every triple whose (a, b) already appeared earlier in its row: recallable in context."""
    out = []
    for r in range(seq.shape[0]):
        seen: set = set()
        for k in range(TRIPLES):
            ab = (seq[r, 3 * k], seq[r, 3 * k + 1])
            if ab in seen:
                out.append((r, k))
            seen.add(ab)
    return out


def _current_token_keys(kt_BTHD, raw_leak_H, scale_H, impl="auto"):
    """The ablation: keys from the current features only (no leaky average), normalised and scaled as usual."""
    return memory.l2_normalize(kt_BTHD) * scale_H[None, None, :, None].astype(kt_BTHD.dtype)


def _recall_accuracy(fns: MemoryFns, test: np.ndarray, where: list[tuple[int, int]], seed: int = 0) -> float:
    cfg = ModelConfig(arch="mosaic", vocab_size=3 * NA, n_layer=1, n_embd=64, n_head=4, block_size=3 * TRIPLES - 1,
                      pmem_size=32, ic_dropout=0.0, hd_dropout=0.0)
    sched = optax.warmup_cosine_decay_schedule(0.0, 3e-3, STEPS // 10, STEPS, 3e-4)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1))
    params = M.init_params(cfg, jax.random.key(seed), fns)
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(lambda q: M.loss_fn(cfg, q, x, y, fns=fns))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        seq, _ = _sequences(rng, BATCH)
        params, state = step(params, state, jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:]))
    pred = np.asarray(jax.jit(lambda p, x: M.apply(cfg, p, x, fns=fns).argmax(-1))(params, jnp.asarray(test[:, :-1])))
    return float(np.mean([pred[r, 3 * k + 1] == test[r, 3 * k + 2] for r, k in where]))


def _b_only_oracle(test: np.ndarray, f_NAA: np.ndarray, where: list[tuple[int, int]]) -> float:
    """Expected accuracy of predicting a most frequent c among f(·, b) (ties split evenly), on the same positions."""
    acc = []
    for r, k in where:
        b, c = test[r, 3 * k + 1] - NA, test[r, 3 * k + 2] - 2 * NA
        counts = np.bincount(f_NAA[r, :, b], minlength=NA)
        modes = np.flatnonzero(counts == counts.max())
        acc.append((c in modes) / len(modes))
    return float(np.mean(acc))


def test_leaky_keys_recall_by_two_tokens_and_current_token_keys_cannot():
    test, f_NAA = _sequences(np.random.default_rng(1000), 256)
    where = _repeats(test)
    oracle = _b_only_oracle(test, f_NAA, where)              # ≈ 0.53 for 4 draws from 4 symbols
    leaky = _recall_accuracy(MemoryFns(), test, where)
    ablated = _recall_accuracy(MemoryFns(keys=_current_token_keys), test, where)
    # Measured on an AMD EPYC Zen 3, training seeds 0/1/2: leaky 1.00/1.00/1.00, ablated 0.56/0.57/0.57, oracle
    # 0.52; seeds 3-7, leaky only: 1.00 each. A model that recalls by the pair is at 1 after 100 steps (at 60
    # steps one seed of three was still at 0.67, so 100 leaves room); one whose keys see one token sits near the
    # oracle (a reaches it only through which stored pair sits one slot back, a small effect). The thresholds sit
    # 0.10 and 0.09 from the worst seed, far more than rounding differences between CPUs move a trained model.
    assert leaky > 0.9, (leaky, ablated, oracle)
    assert ablated < oracle + 0.15, (leaky, ablated, oracle)
