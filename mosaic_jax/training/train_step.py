"""The training and evaluation steps: pure functions `(state, batch) -> (state, metrics)`, jitted with explicit
in/out shardings and the state donated.

Gradient accumulation runs as a `lax.scan` over k DISTINCT microbatches inside the one jitted step (one
dispatch, gradients stay sharded like the params). The reference's loop re-used one batch k times; here the
global batch of B rows is split into k microbatches of B/k rows, row r going to microbatch r mod k, so every
device keeps its own rows (no data movement). Token losses are summed across microbatches and divided by the
total token count once, so k microbatches of b rows give the gradient of one batch of k·b rows.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mosaic_jax.data.batch import Batch
from mosaic_jax.models import lm
from mosaic_jax.parallel import sharding
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import DEFAULT_FNS, MemoryFns
from mosaic_jax.training.train_state import TrainState

Array = jax.Array
Metrics = dict[str, Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def split_microbatches(x_BT: Array, k: int, mesh: Optional[Mesh] = None) -> Array:
    """(B, ...) -> (k, B/k, ...): row r of the batch goes to microbatch r mod k (row r // k within it).

    Rows are sharded in contiguous blocks over (data, fsdp); with B/k divisible by that size, each device's
    block maps onto its own rows of every microbatch, so the split moves no data.
    """
    B = x_BT.shape[0]
    if B % k:
        raise ValueError(f"train.microbatches={k} does not divide the global batch {B}")
    x_bKT = x_BT.reshape(B // k, k, *x_BT.shape[1:])
    x_KbT = jnp.swapaxes(x_bKT, 0, 1)
    if mesh is not None:
        spec = P(None, sharding.LOGICAL_RULES["batch"], *([None] * (x_BT.ndim - 1)))
        x_KbT = jax.lax.with_sharding_constraint(x_KbT, NamedSharding(mesh, spec))
    return x_KbT


def _loss_sum(cfg: ModelConfig, fns: MemoryFns, params: Any, mb: Batch, rng: Optional[Array]) -> tuple[Array, Array]:
    """(sum of token cross-entropies, number of counted tokens) for one microbatch."""
    return lm.loss_sum(cfg, params, mb["inputs"], mb["targets"], rng=rng, fns=fns,
                          segment_ids_BT=mb.get("segment_ids"))


def make_train_step(cfg: ModelConfig, tx: optax.GradientTransformation, lr_fn: optax.Schedule, *,
                    microbatches: int = 1, dropout: bool = True, mesh: Optional[Mesh] = None,
                    param_shardings: Any = None, fns: MemoryFns = DEFAULT_FNS) -> StepFn:
    """The pure train step. `dropout=False` trains in eval mode (used by equivalence tests)."""
    grad_fn = jax.value_and_grad(lambda p, mb, r: _loss_sum(cfg, fns, p, mb, r), has_aux=True)

    def constrain(tree: Any) -> Any:
        # Keep accumulated gradients in the params' layout (reduce-scattered under FSDP, never replicated).
        return tree if param_shardings is None else jax.lax.with_sharding_constraint(tree, param_shardings)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(state.rng, state.step)  # a pure function of (seed, step): exact resume
        mbs = {name: split_microbatches(x, microbatches, mesh) for name, x in batch.items()}

        def accumulate(carry: tuple[Any, Array, Array], xs: tuple[Array, Batch]) -> tuple[tuple[Any, Array, Array], None]:
            g_acc, loss_acc, n_acc = carry
            j, mb = xs
            rng = jax.random.fold_in(step_rng, j) if dropout else None
            (loss_sum, n), g = grad_fn(state.params, mb, rng)
            g_acc = constrain(jax.tree.map(jnp.add, g_acc, g))
            return (g_acc, loss_acc + loss_sum, n_acc + n), None

        zeros = constrain(jax.tree.map(jnp.zeros_like, state.params))
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (g_sum, loss_sum, n_tok), _ = jax.lax.scan(accumulate, init, (jnp.arange(microbatches), mbs))
        denom = jnp.maximum(n_tok, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "lr": lr_fn(state.step),
                   "tokens": n_tok}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step


def traced_under(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """fn traced with `mesh` as the abstract mesh: kernels that run per device (the Pallas memory reads,
    pallas/sharded.py) wrap themselves in shard_map over it."""
    @functools.wraps(fn)
    def traced(*args: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def jit_train_step(step: StepFn, state_shardings: TrainState, mesh: Mesh) -> StepFn:
    """Compiled step: state in/out with its shardings (donated: updated in place), batch rows over (data, fsdp),
    metrics replicated (scalars)."""
    return jax.jit(traced_under(step, mesh), in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_step(cfg: ModelConfig, fns: MemoryFns = DEFAULT_FNS) -> Callable[[Any, Batch], tuple[Array, Array]]:
    """(params, batch) -> (sum of token losses, token count), eval mode (no dropout)."""
    def eval_step(params: Any, batch: Batch) -> tuple[Array, Array]:
        return _loss_sum(cfg, fns, params, batch, None)
    return eval_step


def jit_eval_step(eval_step: Callable[[Any, Batch], tuple[Array, Array]], param_shardings: Any,
                  mesh: Mesh) -> Callable[[Any, Batch], tuple[Array, Array]]:
    return jax.jit(traced_under(eval_step, mesh), in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def global_batch(local: Mapping[str, Any], mesh: Mesh, global_rows: int) -> dict[str, Array]:
    """Assemble this process's rows into global arrays sharded over (data, fsdp).

    Each process passes only its contiguous rows (`loader.process_batch_at`); with one process this is the
    whole batch. This is the multi-host entry point: nothing else changes when process_count > 1.
    """
    sh = sharding.batch_sharding(mesh)
    out = {}
    for name, x in local.items():
        x = np.asarray(x)
        out[name] = jax.make_array_from_process_local_data(sh, x, (global_rows, *x.shape[1:]))
    return out
