"""Run a Pallas read per device under `jax.shard_map` when a multi-device mesh is traced.

Mosaic kernels cannot be partitioned by XLA's SPMD partitioner ("Mosaic kernels cannot be automatically
partitioned"), so under a mesh each device runs the kernel on its own rows (batch axes of
`sharding.LOGICAL_RULES`) and heads (its tensor axis). The reads are independent per (batch row, head); the
slot tables of the persistent read enter replicated over the batch axes, and shard_map's transpose sums
their gradients over those axes. The mesh comes from the tracing context (`jax.sharding.use_abstract_mesh`,
which `train_step.jit_train_step` / `jit_eval_step` set); without one, or on one device, the read runs as is.

Dropout: each shard folds its index into the seed, so shards draw independent masks (another stream than
the single-device read, the same distribution).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mosaic_jax.parallel import sharding

Array = jax.Array


def _axes(mesh, logical: str, size: int) -> Optional[tuple[str, ...]]:
    """The mesh axes (size > 1) of a logical dimension, or None when there are none or they do not divide it."""
    rule = sharding.LOGICAL_RULES[logical]
    names = tuple(a for a in ((rule,) if isinstance(rule, str) else (rule or ())) if mesh.shape.get(a, 1) > 1)
    if not names or size % math.prod(mesh.shape[a] for a in names):
        return None
    return names


def run(fn: Callable[..., Array], args: Sequence[Array], dims: Sequence[tuple[Optional[str], ...]],
        seed: Optional[Array], batch: int, heads: int) -> Array:
    """fn(*args, seed) per device. dims[i] names each axis of args[i] ("batch", "heads" or None); the output
    has the layout of args[0]."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*args, seed)
    axes = {"batch": _axes(mesh, "batch", batch), "heads": _axes(mesh, "heads", heads), None: None}
    used = tuple(a for names in (axes["batch"], axes["heads"]) if names for a in names)
    if not used:
        return fn(*args, seed)
    specs = tuple(P(*(axes[d] for d in dim)) for dim in dims)

    def local(*xs: Array) -> Array:
        if seed is None:
            return fn(*xs, None)
        shard = jnp.uint32(0)
        for a in used:
            shard = shard * jnp.uint32(mesh.shape[a]) + jax.lax.axis_index(a).astype(jnp.uint32)
        return fn(*xs[:-1], xs[-1] + shard * jnp.uint32(0x9E3779B1))

    ins, in_specs = (tuple(args), specs) if seed is None else ((*args, seed), (*specs, P()))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=specs[0], check_vma=False)(*ins)
