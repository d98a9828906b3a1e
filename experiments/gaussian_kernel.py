"""A functional research extension: a Gaussian kernel on un-normalised keys, without editing the library.

The reference retrieves with log K(q, k) = q·k on L2-normalised, scaled keys. Here the key extractor keeps the
leaky average's norm (only the learned scale is applied) and the kernel is log K(q, k) = −‖q − k‖²/2. Both are
plain functions passed through `MemoryFns`; parameters, sharding and checkpoints are unchanged.

    python experiments/gaussian_kernel.py --steps=200     # trains both variants on tiny shakespeare (bytes)

On normalised keys of equal norm the Gaussian kernel equals the dot kernel up to a per-query constant, so it
gives the same model; tests/test_gaussian_kernel.py checks that and that the un-normalised variant trains.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mosaic_jax as mj
from mosaic_jax.ops import memory
from mosaic_jax.models.config import ModelConfig

Array = jax.Array


def gaussian_kernel(q_BTHD: Array, k_BSHD: Array) -> Array:
    """log K(q, k) = −‖q − k‖²/2 = q·k − ‖q‖²/2 − ‖k‖²/2, in float32."""
    q, k = q_BTHD.astype(jnp.float32), k_BSHD.astype(jnp.float32)
    dot = jnp.einsum("bthd,bshd->bhts", q, k)
    qq = jnp.einsum("bthd,bthd->bht", q, q)[..., None]
    kk = jnp.einsum("bshd,bshd->bhs", k, k)[:, :, None, :]
    return dot - 0.5 * qq - 0.5 * kk


def unnormalised_keys(kt_BTHD: Array, raw_leak_H: Array, scale_H: Array, impl: str = "auto") -> Array:
    """Leaky average times the learned per-head scale, without the L2 normalisation."""
    kbar = memory.leaky_average(kt_BTHD, memory.leak_rate(raw_leak_H), impl)
    return kbar * scale_H[None, None, :, None].astype(kbar.dtype)


def gaussian_fns(normalise_keys: bool = False) -> mj.MemoryFns:
    keys = memory.memory_keys if normalise_keys else unnormalised_keys
    # The persistent memory keeps the default (normalised) queries: only the contextual memory changes.
    return mj.MemoryFns(keys=keys, kernel=gaussian_kernel)


def train(cfg: ModelConfig, fns: mj.MemoryFns, data: np.ndarray, steps: int, batch: int, seed: int = 0,
          log_every: int = 50) -> list[float]:
    """A plain AdamW loop on random windows of `data` (uint8 bytes); returns the loss per step."""
    params = mj.init_params(cfg, jax.random.key(seed), fns)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b1=0.9, b2=0.95, weight_decay=0.1))
    opt = tx.init(params)
    T = cfg.block_size

    @jax.jit
    def step(params, opt, x, y, rng):
        loss, g = jax.value_and_grad(lambda p: mj.loss_fn(cfg, p, x, y, rng=rng, fns=fns))(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    rng = np.random.default_rng(seed)
    losses, t0 = [], time.time()
    for s in range(steps):
        starts = rng.integers(0, len(data) - T - 1, batch)
        win = np.stack([data[i:i + T + 1] for i in starts]).astype(np.int32)
        params, opt, loss = step(params, opt, win[:, :-1], win[:, 1:], jax.random.key(s))
        losses.append(float(loss))
        if log_every and (s + 1) % log_every == 0:
            rate = (s + 1) / (time.time() - t0)
            print(f"  step {s + 1}/{steps} loss {losses[-1]:.3f} ({rate:.1f} steps/s, eta {(steps - s - 1) / rate:.0f}s)")
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input", default=str(pathlib.Path(__file__).resolve().parents[1].parent
                                           / "shared/data/tinyshakespeare/input.txt"))
    args = ap.parse_args()
    data = np.frombuffer(pathlib.Path(args.input).read_bytes(), np.uint8)
    cfg = ModelConfig(vocab_size=256, n_layer=2, n_embd=128, n_head=4, pmem_size=448, block_size=128,
                      ic_dropout=0.0, hd_dropout=0.0)
    for name, fns in (("dot kernel, normalised keys (reference)", mj.MemoryFns()),
                      ("gaussian kernel, un-normalised keys", gaussian_fns())):
        print(name)
        losses = train(cfg, fns, data, args.steps, args.batch)
        print(f"  final loss (mean of last 20 steps): {np.mean(losses[-20:]):.3f}")


if __name__ == "__main__":
    main()
