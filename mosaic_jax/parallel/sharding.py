"""Device mesh and the ONE table that maps logical axis names onto mesh axes.

Mesh axes are ('data', 'fsdp', 'tensor'):
  data    pure data parallelism (replicated params; across slices / DCN at scale)
  fsdp    data parallelism with params and optimizer state sharded (ZeRO-3 style); XLA all-gathers a weight
          just before it is used and reduce-scatters its gradient
  tensor  tensor parallelism over heads (memory units are per head, so no communication inside a unit)

Every parameter dimension carries a logical name (`model.param_axes(cfg)`); `LOGICAL_RULES` turns names into
mesh axes. A dimension whose size is not divisible by its mesh axes falls back to replication, so any mesh
shape works with any model (at some memory cost), and a mesh axis is never used twice in one spec.
The mesh uses `AxisType.Auto` (GSPMD/Shardy propagation): FSDP shards the contracting (embed) dimension of
weights, which the Explicit mode (jax 0.10.2's default) would reject at every matmul.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple[str, ...]]

# logical axis name -> mesh axis (or axes, or None = replicated). The single source of truth for sharding.
LOGICAL_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),  # activations / data: every data-parallel replica takes distinct rows
    "seq": None,                # reserved for context parallelism later
    "layers": None,             # the stacked-layer axis is scanned over; sharding it would serialise devices
    "vocab": None,              # the (tied) embedding table is gathered by token id: sharding vocab makes the
                                # SPMD partitioner fully rematerialise the gather, so shard it on embed only
    "embed": "fsdp",            # the FSDP dimension of every projection
    "heads": "tensor",          # tensor parallelism: memory units / attention heads are independent
    "head_dim": None,
    "qkv": None,
    "mlp": "tensor",            # GPT-2 MLP hidden: Megatron-style column/row split, paired with heads
    "slots": "fsdp",            # P-mem slot tables (N,H,P,D) have no embed dim; P is their big dimension, so
                                # FSDP shards them here (else half the mosaic's params would stay replicated)
    "pmem_tables": None,
    "conv": None,
    "norm": None,               # LayerNorm weights: tiny, replicated
    "positions": None,          # GPT-2 learned positions (block_size, C): sharded by their embed dim
}


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: Optional[int] = None) -> tuple[int, int, int]:
    """Mesh shape with at most one -1 entry standing for 'the remaining devices'."""
    n = jax.device_count() if num_devices is None else num_devices
    shape = [int(data), int(fsdp), int(tensor)]
    names = dict(zip(MESH_AXES, shape))
    if shape.count(-1) > 1:
        raise ValueError(f"mesh: at most one of mesh.data/fsdp/tensor may be -1, got {names}")
    for name, s in names.items():
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{name}={s}: must be a positive device count or -1 (the remaining devices)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh: {n} devices are not divisible by the fixed axes {names}")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(shape)} but there are {n} devices ({names})")
    return tuple(shape)  # type: ignore[return-value]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ('data','fsdp','tensor') mesh with Auto axis types over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, MeshAxes] = LOGICAL_RULES) -> P:
    """PartitionSpec for an array whose dimensions carry `logical` names.

    A dimension is sharded only when its size divides by the product of its mesh axes and none of those
    axes is already used by an earlier dimension; otherwise it is replicated.
    """
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out: list[MeshAxes] = []
    for name, size in zip(logical, shape):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no entry in sharding.LOGICAL_RULES")
        axes = _as_tuple(rules[name]) if name is not None else ()
        n = math.prod(mesh.shape[a] for a in axes)
        if not axes or used.intersection(axes) or size % n:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    while out and out[-1] is None:  # P('fsdp', None) == P('fsdp'); keep specs short and comparable
        out.pop()
    return P(*out)


def _shape(x: Any) -> tuple[int, ...]:
    """Shape of an array, a ShapeDtypeStruct or a numpy value."""
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def tree_specs(axes_tree: Any, shapes_tree: Any, mesh: Mesh) -> Any:
    """PartitionSpecs for a pytree given its logical-axes pytree (`model.param_axes`) and its arrays/shapes."""
    return jax.tree.map(lambda ax, x: logical_to_spec(ax, _shape(x), mesh),
                        axes_tree, shapes_tree, is_leaf=_is_axes_leaf)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs(axes_tree, shapes_tree, mesh),
                        is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows over (data, fsdp); every other dimension replicated."""
    return NamedSharding(mesh, P(LOGICAL_RULES["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in _as_tuple(LOGICAL_RULES["batch"]))


def match_by_path_suffix(tree: Any, reference: Any, reference_values: Any, default: Any) -> Any:
    """For each leaf of `tree`, the value of the `reference` leaf whose key path is the longest suffix of its
    own path and whose shape matches; `default` when none does.

    This maps param shardings onto any optimizer state (adam's mu/nu mirror the params under a prefix like
    `[1][0].mu`), whatever optax chain built it, without optax's placeholder trick (which breaks masks).
    """
    ref_paths = {tuple(path): (_shape(x), v) for (path, x), v in
                 zip(jax.tree_util.tree_leaves_with_path(reference),
                     jax.tree_util.tree_leaves(reference_values, is_leaf=lambda s: isinstance(s, (P, NamedSharding))))}

    def pick(path: tuple[Any, ...], x: Any) -> Any:
        for start in range(len(path)):
            hit = ref_paths.get(tuple(path[start:]))
            if hit is not None and hit[0] == _shape(x):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, tree)


def describe(specs: Any) -> str:
    """One line per leaf, 'path: spec', for logs and docs."""
    lines = []
    for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, P)):
        lines.append(f"{jax.tree_util.keystr(path)}: {spec}")
    return "\n".join(lines)
