"""Three moons (Memory Mosaics v1 §3 "predictive disentanglement"; shared/spec/memory_mosaics.md §4.3).

Data: three moons circle a sun at periods (p1, p2, p3); an observer on the sun sees, at each time step, the
6-vector (sin θ1, cos θ1, sin θ2, cos θ2, sin θ3, cos θ3) with θi(t) = 2π t/p_i + 0.3. The task is next-step
prediction. Each sequence uses one period triple and a random start time.

Model: ONE contextual-memory layer, built from the library's pure functions (`memory.strict_causal_mask`,
`memory.masked_softmax`):
    k_t = W_φ x_t,   v_t = W_ψ x_{t+1}  (look-ahead value),   y_t = W_z Σ_{j ≤ t−1} softmax_j(β k_t·k_j) v_j
with a fixed β = 50, no normalisation, no leaky average, and every linear map "complex": each 2×2 block is
[[a, b], [−b, a]] (a rotation and scaling of a (sin, cos) pair). H heads split the 3 complex key/value
coordinates: 1 head × d_h=6 or 3 heads × d_h=2.

Everything here is a pure function of a params dict {"wk", "wv", "wz"} (raw 6×6 matrices, out × in, projected
onto the complex structure at use, as the reference does).
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mosaic_jax.ops import memory

Array = jax.Array

# The 9 period triples with the smallest combined period (LCM), in the order the reference obtains them with
# numpy's default argsort over all 35 3-subsets of {0.5, 1, ..., 3.5}; the last one, [1, 2, 3], is held out for
# validation. (A *stable* argsort picks a different set among the three LCM-6 ties, so the list is fixed here.)
PERIOD_TRIPLES: tuple[tuple[float, float, float], ...] = (
    (0.5, 1.0, 2.0), (0.5, 1.0, 1.5), (0.5, 1.0, 3.0), (0.5, 1.5, 3.0), (1.0, 1.5, 3.0),
    (0.5, 1.0, 2.5), (1.0, 1.5, 2.0), (0.5, 1.5, 2.0), (1.0, 2.0, 3.0))
TRAIN_TRIPLES = PERIOD_TRIPLES[:-1]
VAL_TRIPLE = PERIOD_TRIPLES[-1]          # (1, 2, 3): combined period 6
PHASE_OFFSET = 0.3
BETA = 50.0                               # fixed attention scale (`attn_scale`)
DIM = 6                                   # three (sin, cos) pairs


def combined_period(periods: Sequence[float]) -> float:
    """LCM of half-integer periods (computed on tenths, as the reference does)."""
    ints = [int(round(p * 10)) for p in periods]
    return math.lcm(*ints) / 10


def time_step(block_size: int = 800, min_periods_in_block: int = 3) -> float:
    """dt such that the longest combined period (6) fits `min_periods_in_block` times in the block."""
    max_period = max(combined_period(p) for p in PERIOD_TRIPLES)
    return max_period * min_periods_in_block / block_size


def period_in_steps(period: float, dt: float) -> float:
    return period / dt


def moons(periods: Sequence[float], t: np.ndarray) -> np.ndarray:
    """(…, 6) observations (sin θ1, cos θ1, sin θ2, cos θ2, sin θ3, cos θ3) at times t (heliocentric)."""
    theta = 2 * np.pi * t[..., None] / np.asarray(periods, np.float64) + PHASE_OFFSET    # (..., 3)
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1).reshape(*t.shape, DIM).astype(np.float32)


class MoonsBatch(NamedTuple):
    x: np.ndarray        # (B, T, 6) inputs
    y: np.ndarray        # (B, T, 6) targets: x shifted by one step
    triple_idx: np.ndarray  # (B,) index into the triples it was drawn from


def sample_batch(rng: np.random.Generator, triples: Sequence[Sequence[float]], batch_size: int,
                 block_size: int = 800, dt: float | None = None, extra: int = 0,
                 max_start_steps: int = 10_000 - 1601) -> MoonsBatch:
    """A batch of windows: a random triple and a random integer start step per row.

    `extra` appends that many more target steps (for generation-error evaluation). Start steps are uniform in
    [0, max_start_steps) as in the reference (a 10,000-step time line minus two blocks).
    """
    dt = time_step(block_size) if dt is None else dt
    idx = rng.integers(0, len(triples), size=batch_size)
    start = rng.integers(0, max_start_steps, size=batch_size)
    t = (start[:, None] + np.arange(block_size + 1 + extra)[None, :]) * dt
    data = np.stack([moons(triples[i], t[b]) for b, i in enumerate(idx)])
    return MoonsBatch(data[:, :block_size + extra], data[:, 1:], idx)


def batches(seed: int, triples: Sequence[Sequence[float]], batch_size: int, block_size: int = 800,
            dt: float | None = None) -> Iterator[MoonsBatch]:
    """Endless batches; dt defaults to time_step(block_size) (the reference ties dt to the block size)."""
    rng = np.random.default_rng(seed)
    while True:
        yield sample_batch(rng, triples, batch_size, block_size, dt)


# ---------------------------------------------------------------------------------------------------------------
# Model: one contextual-memory layer with rotation-constrained ("complex") linear maps
# ---------------------------------------------------------------------------------------------------------------
def complexify(w: Array) -> Array:
    """Project a real (2m × 2n) matrix onto 2×2 blocks [[a, b], [−b, a]] (a = mean of the diagonal pair,
    b = half the difference of the off-diagonal pair); idempotent."""
    a = 0.5 * (w[0::2, 0::2] + w[1::2, 1::2])
    b = 0.5 * (w[0::2, 1::2] - w[1::2, 0::2])
    blocks = jnp.stack([jnp.stack([a, b], -1), jnp.stack([-b, a], -1)], -2)   # (m, n, 2, 2)
    m, n = a.shape
    return blocks.transpose(0, 2, 1, 3).reshape(2 * m, 2 * n)


def complex_modulus(w: Array) -> Array:
    """|W| per complex entry: sqrt(a² + b²) of each projected 2×2 block, shape (m, n)."""
    w = complexify(w)
    return jnp.sqrt(w[0::2, 0::2] ** 2 + w[0::2, 1::2] ** 2)


def init_params(rng: Array, dim: int = DIM) -> dict[str, Array]:
    """Raw (out, in) matrices, U(±1/√in) like a default linear layer, projected onto the complex structure."""
    bound = 1 / math.sqrt(dim)
    keys = jax.random.split(rng, 3)
    return {name: complexify(jax.random.uniform(k, (dim, dim), jnp.float32, -bound, bound))
            for name, k in zip(("wk", "wv", "wz"), keys)}


def keys_values(params: dict[str, Array], x_BTC: Array, n_head: int) -> tuple[Array, Array]:
    """k_t = W_φ x_t and v_t = W_ψ x_{t+1} (zero at the last step, never read), split into heads (B,T,H,D)."""
    B, T, C = x_BTC.shape
    k = x_BTC @ complexify(params["wk"]).T
    nxt = jnp.pad(x_BTC[:, 1:], ((0, 0), (0, 1), (0, 0)))
    v = nxt @ complexify(params["wv"]).T
    return k.reshape(B, T, n_head, C // n_head), v.reshape(B, T, n_head, C // n_head)


def attention(params: dict[str, Array], x_BTC: Array, n_head: int, beta: float = BETA) -> Array:
    """Read weights (B, H, T, T): softmax over j ≤ t−1 of β k_t·k_j; row 0 is exactly 0."""
    k, _ = keys_values(params, x_BTC, n_head)
    scores = beta * jnp.einsum("bthd,bshd->bhts", k, k)
    return memory.masked_softmax(scores, memory.strict_causal_mask(x_BTC.shape[1]))


def apply(params: dict[str, Array], x_BTC: Array, n_head: int, beta: float = BETA) -> Array:
    """Next-step predictions (B, T, 6): the prediction at t is the model's estimate of x_{t+1}."""
    _, v = keys_values(params, x_BTC, n_head)
    w = attention(params, x_BTC, n_head, beta)
    y = jnp.einsum("bhts,bshd->bthd", w, v).reshape(x_BTC.shape)
    return y @ complexify(params["wz"]).T


def apply_chunked(params: dict[str, Array], x_BTC: Array, n_head: int, chunk: int = 100,
                  beta: float = BETA) -> Array:
    """`apply` computed over blocks of `chunk` queries, each reading only the keys before the block's end and
    rematerialised in the backward pass: the same numbers (up to float rounding), about 25 % less CPU time at
    T = 800 because the masked upper triangle is skipped and no (B, H, T, T) tensor is kept."""
    k, v = keys_values(params, x_BTC, n_head)
    T = x_BTC.shape[1]

    @jax.checkpoint
    def block(kq_BQHD: Array, k_BSHD: Array, v_BSHD: Array, t0: int) -> Array:
        scores = beta * jnp.einsum("bthd,bshd->bhts", kq_BQHD, k_BSHD)
        allowed = jnp.arange(k_BSHD.shape[1])[None, :] <= t0 + jnp.arange(kq_BQHD.shape[1])[:, None] - 1
        return jnp.einsum("bhts,bshd->bthd", memory.masked_softmax(scores, allowed), v_BSHD)

    ys = [block(k[:, t0:min(t0 + chunk, T)], k[:, :min(t0 + chunk, T)], v[:, :min(t0 + chunk, T)], t0)
          for t0 in range(0, T, chunk)]
    return jnp.concatenate(ys, axis=1).reshape(x_BTC.shape) @ complexify(params["wz"]).T


def loss_fn(params: dict[str, Array], x_BTC: Array, y_BTC: Array, n_head: int, clip: float = 0.5,
            chunk: int | None = None) -> Array:
    """Mean squared error with each error clipped to ±clip (the reference's loss); `chunk` uses apply_chunked."""
    pred = apply(params, x_BTC, n_head) if chunk is None else apply_chunked(params, x_BTC, n_head, chunk)
    d = jnp.clip(pred - y_BTC, -clip, clip)
    return jnp.mean(d * d)


def scale_by_adam_no_bias_correction(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                                     ) -> optax.GradientTransformation:
    """Adam's direction m / (√v + ε) WITHOUT bias correction: MLX's `optim.Adam(W)` default
    (`bias_correction=False`), which the official three-moons code uses. At step 1 the update is
    (1−b1)/√(1−b2) ≈ 3.16× optax's bias-corrected one (b1 0.9, b2 0.999); the ratio decays towards 1."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (zeros, jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        m, v = state
        m = jax.tree.map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, updates)
        v = jax.tree.map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, updates)
        return jax.tree.map(lambda m_, v_: m_ / (jnp.sqrt(v_) + eps), m, v), (m, v)

    return optax.GradientTransformation(init, update)


def reference_adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    weight_decay: float = 0.0) -> optax.GradientTransformation:
    """MLX `optim.AdamW` with its defaults: p ← p·(1 − lr·wd) − lr·m/(√v + ε), no bias correction; the
    schedule is read at the 0-based update count, as MLX reads it at `optimizer.step` before incrementing."""
    return optax.chain(scale_by_adam_no_bias_correction(b1, b2, eps), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))


def generate(params: dict[str, Array], x_BTC: Array, context: Array, n_steps: int, n_head: int,
             beta: float = BETA, cached: bool = False) -> Array:
    """Free-run generation: positions [context, context + n_steps) of x are replaced by the model's own
    predictions, one step at a time (position p is predicted by the query at p−1 over pairs j ≤ p−2, whose
    values x_{j+1} are either observed or already generated). Returns the (B, n_steps, 6) generated steps.

    `context` may be traced (so it can be vmapped); x must hold at least context + n_steps steps.

    cached=True reproduces the official code's cached `generate`: the cache keeps the values computed from the
    prompt, where the last prompt pair's value (x_context unknown then) is zero, and every generated pair is
    appended with a zero value. So only pairs j ≤ context − 2 carry values, while all pairs j ≤ p − 2 still take
    softmax weight.
    """
    B, T, C = x_BTC.shape
    wk, wv, wz = (complexify(params[n]) for n in ("wk", "wv", "wz"))
    D = C // n_head
    allowed_TT = memory.strict_causal_mask(T)

    def step(i, x):
        p = context + i
        k = (x @ wk.T).reshape(B, T, n_head, D)
        v = (jnp.pad(x[:, 1:], ((0, 0), (0, 1), (0, 0))) @ wv.T).reshape(B, T, n_head, D)
        if cached:
            v = jnp.where((jnp.arange(T) <= context - 2)[None, :, None, None], v, 0.0)
        q = jax.lax.dynamic_index_in_dim(k, p - 1, axis=1, keepdims=False)          # (B, H, D)
        scores = beta * jnp.einsum("bhd,bshd->bhs", q, k)
        allowed = jax.lax.dynamic_index_in_dim(allowed_TT, p - 1, axis=0, keepdims=False)   # j ≤ p−2
        w = memory.masked_softmax(scores, allowed[None, None])
        pred = jnp.einsum("bhs,bshd->bhd", w, v).reshape(B, C) @ wz.T
        return jax.lax.dynamic_update_index_in_dim(x, pred, p, axis=1)

    x = jax.lax.fori_loop(0, n_steps, step, x_BTC)
    return jax.lax.dynamic_slice_in_dim(x, context, n_steps, axis=1)


def generation_error(params: dict[str, Array], x_BTC: Array, contexts: Sequence[int], n_steps: int, n_head: int,
                     chunk: int = 16) -> np.ndarray:
    """Mean |generated − truth| over the next n_steps steps, for each context length (len(contexts),)."""
    x_BTC = jnp.asarray(x_BTC)

    @jax.jit
    def err(ctx_n):
        gen_nBSC = jax.vmap(lambda c: generate(params, x_BTC, c, n_steps, n_head))(ctx_n)
        idx_nS = ctx_n[:, None] + jnp.arange(n_steps)[None, :]
        truth_BnSC = jnp.take(x_BTC, idx_nS, axis=1)
        return jnp.mean(jnp.abs(gen_nBSC - truth_BnSC.transpose(1, 0, 2, 3)), axis=(1, 2, 3))

    contexts = np.asarray(contexts, np.int32)
    pad = (-len(contexts)) % chunk
    padded = np.concatenate([contexts, np.full(pad, contexts[-1], np.int32)])
    out = np.concatenate([np.asarray(err(jnp.asarray(padded[i:i + chunk]))) for i in range(0, len(padded), chunk)])
    return out[:len(contexts)]
