"""Run integrity: checksums of saved states, the resume compatibility check, and the "trusted checkpoint" rule.

* **Checksums** (`state_report`): per array, two 32-bit position-weighted sums of the raw bits,
  sum_i w_k(i) * bits(x_i) mod 2^32 with w_k(i) an odd hash of the element index i (k = 0, 1). Why this and not
  sha256 over files: it is computed on the devices from the very arrays handed to Orbax (so it describes the
  data actually written, async saves included), each device sums its own shards and the partial sums add up
  exactly (addition mod 2^32 is associative: any mesh, any process count, any reduction order gives the same
  number), and a restore onto ANOTHER mesh can be checked against it. Strength: any change confined to one
  element (every single-bit flip) changes a lane with certainty (w odd, so w * d = 0 mod 2^32 only for d = 0),
  and so does moving a value to another position (the weights depend on the index); other random damage
  escapes one lane with probability about 2^-32, and the two lanes use unrelated weights. It is an
  error-detecting code, not a defence against a deliberate forger.
* **File record** (`write_file_record`, `verify_file_record`): sha256 of every file of a step (hardware-accelerated
  on x86 and ARMv8, about 1 s/GB on one core here: benchmarks/checkpoint_hashing.py). Written by the primary
  process in Orbax's post-finalisation callback, i.e. after every process's data is on disk and BEFORE the step
  directory is committed (renamed into place), so a listed step always has its record. It catches damage to bytes
  that a restore would not read back as different values (unreferenced index nodes, metadata).
* **Compatibility** (`config_differences`): fields that fix the architecture, the parameter shapes, the
  vocabulary or the optimizer's state structure must match the saved run; a difference is refused before
  anything is written.
* **Trust**: a checkpoint is trusted only when its state is finite and the loss computed from it was finite.
  `checkpoint.Checkpointer.after_nonfinite` moves the checkpoint whose state computed a non-finite loss out of
  the way (never deleting it), so that the next run resumes from an earlier one.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax.io import storage
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.parallel import distributed
from mosaic_jax.training import legacy_config

ALGORITHM = "u32-weighted-sum-x2"
_SEEDS = (0x9E3779B9, 0x7F4A7C15)

# `model` fields a resume may change: regularisation, where the family is found, and block_size where the family
# has no position table (checked below). Every other model field defines the function or the parameter shapes;
# the `impl` section (dtype, kernels, scan, remat) may change too.
RESUMABLE_MODEL_FIELDS = frozenset({"ic_dropout", "hd_dropout", "family_module", "block_size", "vocab_multiple"})


# ---- checksums ----------------------------------------------------------------------------------------------
def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a cheap bijection that spreads the index bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits_u32(x: jax.Array) -> jax.Array:
    """The raw bits of every element as uint32 (64-bit elements become two words along a new last axis)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_report(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    bits = _bits_u32(x)
    index = jnp.zeros(bits.shape, jnp.uint32)   # row-major element index, built per axis so it shards like x
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= bits.shape[axis]
    lanes = [jnp.sum((_mix(index ^ jnp.uint32(seed)) | jnp.uint32(1)) * bits, dtype=jnp.uint32) for seed in _SEEDS]
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return jnp.stack(lanes), finite


@jax.jit
def _tree_report(tree: Any) -> list[tuple[jax.Array, jax.Array]]:
    return [_leaf_report(x) for x in jax.tree.leaves(tree)]


_aligned_report: Any = None


def state_report(tree: Any) -> tuple[dict[str, list[int]], list[str]]:
    """({leaf path: [lane0, lane1]}, [paths of leaves holding NaN/Inf]) for a pytree of (sharded) arrays.

    Every process must call it (a collective over global arrays); the result is the same on all of them."""
    global _aligned_report
    if _aligned_report is None:   # several processes: compile, meet at a barrier, then run (distributed.py)
        _aligned_report = distributed.compile_then_align(_tree_report, "integrity checksums")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    reports = jax.device_get(_aligned_report(tree))
    sums, nonfinite = {}, []
    for path, (lanes, finite) in zip(paths, reports, strict=True):
        sums[path] = [int(v) for v in np.asarray(lanes)]
        if not bool(finite):
            nonfinite.append(path)
    return sums, nonfinite


def json_digest(item: Mapping[str, Any]) -> str:
    """sha256 of a JSON item as it reads back (json round trip, sorted keys)."""
    text = json.dumps(json.loads(json.dumps(dict(item))), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def make_record(sums: Mapping[str, list[int]], config: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    return {"algorithm": ALGORITHM, "arrays": dict(sums), "config_sha256": json_digest(config),
            "data_sha256": json_digest(data)}


def verify(record: Mapping[str, Any], sums: Mapping[str, list[int]], config: Optional[Mapping[str, Any]],
           data: Mapping[str, Any]) -> Optional[str]:
    """None if the restored items match the record, else the first difference (a short phrase)."""
    if record.get("algorithm") != ALGORITHM:
        return f"integrity record has unknown algorithm {record.get('algorithm')!r}"
    saved = record.get("arrays", {})
    if set(saved) != set(sums):
        return f"integrity record lists other arrays ({len(saved)} saved, {len(sums)} restored)"
    for path, lanes in sums.items():
        if list(saved[path]) != list(lanes):
            return f"checksum mismatch in state{path}"
    if json_digest(data) != record.get("data_sha256"):
        return "checksum mismatch in the data item"
    if config is not None and json_digest(config) != record.get("config_sha256"):
        return "checksum mismatch in the config item"
    return None


FILES_RECORD = "integrity_files.json"
_UNHASHED = {FILES_RECORD, "_CHECKPOINT_METADATA"}   # Orbax rewrites its step metadata after the commit


def _sha256(path: Any) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def _hashed_files(step_dir: Any) -> dict[str, int]:
    """{relative path: bytes} of the files of a step (local or gs://), less those Orbax rewrites after the commit."""
    return {rel: n for rel, n in sorted(storage.list_files(step_dir).items())
            if rel.rsplit("/", 1)[-1] not in _UNHASHED}


def _size(path: Any) -> int:
    """Bytes of a local file or a gs:// object (epath's stat has `length`, not `st_size`)."""
    return os.path.getsize(path) if not storage.is_remote(path) else int(path.stat().length)


def write_file_record(step_dir: str | pathlib.Path) -> None:
    """`step_dir/integrity_files.json`: {relative path: [size, sha256]} for every file of the step."""
    step_dir = storage.path(step_dir)
    files = {rel: [n, _sha256(step_dir / rel)] for rel, n in _hashed_files(step_dir).items()}
    storage.write_text(step_dir / FILES_RECORD, json.dumps({"algorithm": "sha256", "files": files}, indent=0) + "\n")


def verify_file_record(step_dir: str | pathlib.Path) -> Optional[str]:
    """None if every recorded file is there, of its size and hash (or there is no record), else the first fault."""
    step_dir = storage.path(step_dir)
    path = step_dir / FILES_RECORD
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{FILES_RECORD} is unreadable ({type(e).__name__})"
    for rel, (size, digest) in sorted(files.items()):
        f = step_dir / rel
        if not f.is_file():
            return f"file {rel} is missing"
        if _size(f) != size:
            return f"file {rel} has {_size(f)} bytes, {size} recorded"
        if _sha256(f) != digest:
            return f"file {rel} fails its sha256"
    return None


# ---- resume compatibility -----------------------------------------------------------------------------------
def config_differences(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """['model.n_layer: saved 4, requested 2', ...] for the fields a resume cannot change (resolved configs; one
    saved by an older version is read in the current layout first, legacy_config.upgrade)."""
    saved, requested = legacy_config.upgrade(saved), legacy_config.upgrade(requested)
    out = []
    sm, rm = saved.get("model", {}), requested.get("model", {})
    for name in sorted(set(sm) & set(rm) - RESUMABLE_MODEL_FIELDS):
        if sm[name] != rm[name]:
            out.append(f"model.{name}: saved {sm[name]!r}, requested {rm[name]!r}")
    if sm.get("arch") == rm.get("arch") and sm.get("block_size") != rm.get("block_size") and _has_positions(rm):
        out.append(f"model.block_size: saved {sm.get('block_size')!r}, requested {rm.get('block_size')!r} "
                   "(learned positions)")
    so, ro = saved.get("optim", {}), requested.get("optim", {})
    if "grad_clip" in so and "grad_clip" in ro and (so["grad_clip"] > 0) != (ro["grad_clip"] > 0):
        out.append(f"optim.grad_clip: saved {so['grad_clip']!r}, requested {ro['grad_clip']!r} "
                   "(clipping on/off changes the optimizer state)")
    return out


def _has_positions(model: Mapping[str, Any]) -> bool:
    """Whether the family of a resolved model config has a learned position table (sized by block_size)."""
    try:
        cfg = ModelConfig.from_dict(model)
        return registry.of(cfg).max_positions(cfg) is not None
    except (TypeError, ValueError):
        return False


def _path(keys: tuple) -> str:
    """'params/blocks/wq' for a tree path, whatever the container types (Orbax metadata uses dicts)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def shape_differences(saved_tree: Any, target: Any) -> list[str]:
    """Arrays whose presence, shape or dtype differ between a checkpoint's metadata and the restore target."""
    def flat(tree: Any) -> dict[str, tuple]:
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {_path(p): (tuple(getattr(x, "shape", ()) or ()), str(getattr(x, "dtype", ""))) for p, x in leaves}
    old, new = flat(saved_tree), flat(target)
    out = [f"state {k}: saved {old[k][0]} {old[k][1]}, requested {new[k][0]} {new[k][1]}"
           for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    out += [f"state {k}: only in the checkpoint" for k in sorted(set(old) - set(new))]
    out += [f"state {k}: not in the checkpoint" for k in sorted(set(new) - set(old))]
    return out


def refuse_message(step_dir: str, differences: list[str], workdir: str) -> str:
    shown = "; ".join(differences[:6]) + (f"; ... ({len(differences)} differences)" if len(differences) > 6 else "")
    return (f"cannot resume {step_dir}: this request differs from the saved run: {shown}. Nothing was changed; "
            f"to start a fresh run use another --workdir (or move {workdir}/checkpoints and "
            f"{workdir}/config.json aside yourself)")
