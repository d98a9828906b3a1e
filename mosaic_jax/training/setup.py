"""The one training set-up that `train` runs and `aot` compiles: the optimizer, the state's shardings, the state's
abstract form (shapes and shardings: the restore target, the compile-only input) and the jitted train and eval
steps, from a resolved config and a mesh. Nothing is allocated or compiled here."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import optax
from jax.sharding import Mesh

from mosaic_jax.models import lm
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import DEFAULT_FNS, MemoryFns
from mosaic_jax.training import optim, train_state, train_step
from mosaic_jax.training.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    tx: optax.GradientTransformation
    shardings: TrainState                 # a TrainState of NamedShardings
    abstract_state: TrainState            # jax.ShapeDtypeStruct leaves carrying those shardings
    train_step: train_step.StepFn         # jitted: state donated, batch rows over (data, fsdp)
    eval_step: Callable[[Any, Any], Any]  # jitted: (params, batch) -> (loss sum, token count)


def build(cfg: ModelConfig, optim_cfg: optim.OptimConfig, mesh: Mesh, *, microbatches: int = 1,
          dropout: bool = True, fns: MemoryFns = DEFAULT_FNS, eval_cfg: Optional[ModelConfig] = None
          ) -> TrainSetup:
    """`cfg` runs the train step, `eval_cfg` (default `cfg`: the same model, with the implementation choices
    made for evaluation, run_config.Resolved.eval_model) the eval step."""
    axes = lm.param_axes(cfg, fns)          # traced once here, not again inside state_shardings
    tx = optim.make_optimizer(optim_cfg, optim.decay_mask(axes))
    abstract = train_state.abstract_state(cfg, tx)
    shardings = train_state.state_shardings(cfg, tx, mesh, abstract=abstract, axes=axes)
    abstract = train_state.with_shardings(abstract, shardings)
    step = train_step.make_train_step(cfg, tx, optim.lr_schedule(optim_cfg), microbatches=microbatches,
                                      dropout=dropout, mesh=mesh, param_shardings=shardings.params, fns=fns)
    return TrainSetup(tx, shardings, abstract, train_step.jit_train_step(step, shardings, mesh),
                      train_step.jit_eval_step(train_step.make_eval_step(eval_cfg or cfg, fns), shardings.params, mesh))
