"""TrainState: everything a step needs and a checkpoint stores (step, params, optimizer state, rng).

The state is a flax.struct dataclass (a pytree), so it goes through jit, sharding and Orbax unchanged.
`abstract_state` + `state_shardings` describe it without allocating, which is what a restore onto a new mesh
needs: Orbax reads each array straight into the CURRENT mesh's layout.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mosaic_jax.models import lm
from mosaic_jax.parallel import sharding
from mosaic_jax.models.config import ModelConfig

Params = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: number of updates applied = the next batch index (data position)
    params: Params           # float32 master weights
    opt_state: optax.OptState
    rng: jax.Array           # uint32[2] base key; step s uses fold_in(rng, s), so a resume replays it exactly


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state: params from `seed`, dropout base key from a separate stream of the same seed."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    params = lm.init_params(cfg, init_key)
    # Copy every leaf: init can alias one array into two leaves (same constant), which donation rejects.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=dropout_key)


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """Shapes and dtypes of the state, without computing anything."""
    return jax.eval_shape(lambda: init_state(cfg, tx, seed))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, *,
                    abstract: Optional[TrainState] = None, axes: Optional[Params] = None) -> TrainState:
    """NamedShardings for every leaf: params by the logical rules, optimizer moments like their params, and
    scalars (step, counts, rng) replicated. `abstract` (abstract_state) and `axes` (lm.param_axes) may be given
    by a caller that already has them: each costs a trace of the model's init."""
    abstract = abstract_state(cfg, tx) if abstract is None else abstract
    param_sh = sharding.tree_shardings(lm.param_axes(cfg) if axes is None else axes, abstract.params, mesh)
    rep = sharding.replicated(mesh)
    opt_sh = sharding.match_by_path_suffix(abstract.opt_state, abstract.params, param_sh, rep)
    return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for Orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def create_sharded_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
                         shardings: TrainState) -> TrainState:
    """Initialise directly into the sharded layout (no full copy on one device first)."""
    init: Callable[[], TrainState] = jax.jit(lambda: init_state(cfg, tx, seed), out_shardings=shardings)
    return init()


def count_params(state: TrainState) -> int:
    return int(sum(x.size for x in jax.tree.leaves(state.params)))
