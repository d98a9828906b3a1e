"""Orbax checkpoints: the train state, the data position and the resolved config saved together, asynchronously.

Layout: `workdir/checkpoints/<step>/{state, config, data}` (Orbax CheckpointManager; only finalised steps are
listed, so a save interrupted by SIGKILL is never picked up, and its temporary folder is cleaned on the next
start). `data` holds the data position (= the step: batches are a pure function of (seed, step)), the data path,
seed and tokenizer hash, so a resume replays exactly the batches an uninterrupted run would have seen.

Restore targets are ShapeDtypeStructs carrying the CURRENT mesh's shardings (`train_state.with_shardings`):
Orbax reads each shard straight into the new layout, so a run can resume on another mesh shape. The sharding
metadata saved in the checkpoint is deliberately ignored (orbax #648, #2408).
`load_exported` without a target does the same with one device: shapes come from the export's metadata.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"   # workdir/tokenizer/: the run's own copy of its tokenizer (save_tokenizer)


class CheckpointError(RuntimeError):
    """No checkpoint could be restored, or a checkpoint does not match this run (one-line message)."""


class Checkpointer:
    """A CheckpointManager with items `state` (StandardSave), `config` and `data` (JSON)."""

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int, async_save: bool = True) -> None:
        self.directory = pathlib.Path(directory).absolute()
        # Only the fixed interval: Orbax's default also saves the very first step (InitialSavePolicy); SIGTERM is
        # handled by the training loop (a forced save), identically on one or many processes.
        policy = ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy, max_to_keep=max(int(keep), 1),
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
        self.mngr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config", "data"))
        self._pending: Optional[int] = None   # the step of the save started last, until it is known to be on disk

    def all_steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.mngr.latest_step()

    def should_save(self, step: int) -> bool:
        return self.mngr.should_save(step)

    def save(self, step: int, state: Any, config: Mapping[str, Any], data: Mapping[str, Any],
             force: bool = False) -> bool:
        """Start an (async) save of `state` at `step` if the interval says so (or `force`); True if started."""
        if step in self.mngr.all_steps():
            return False  # already saved (e.g. a forced save on SIGTERM right after a periodic one)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(dict(config)),
                                  data=ocp.args.JsonSave(dict(data)))
        try:   # saving first waits for the previous (async) save: its failure can surface here
            started = self.mngr.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 - disk full, read-only, a failed previous save...
            failed = self._pending if self._pending is not None and self._pending not in self.all_steps() else step
            raise self._failure(failed, e) from None
        self._pending = step if started else self._pending
        return started

    def _failure(self, step: int, e: BaseException) -> CheckpointError:
        from mosaic_jax.run_guard import os_reason
        self._pending = None
        return CheckpointError(f"checkpoint at step {step} failed: {os_reason(e)} (workdir {self.directory.parent})")

    def poll(self) -> Optional[CheckpointError]:
        """The failure of the last save once it has ended (None while it runs, or when it succeeded); never blocks,
        so the loop stops at the step after an async save failed instead of a whole interval later."""
        if self._pending is None or self.mngr.is_saving_in_progress():
            return None
        step = self._pending
        try:
            self.mngr.wait_until_finished()   # finished: returns at once, or raises the save's error
        except Exception as e:  # noqa: BLE001
            return self._failure(step, e)
        self._pending = None
        if step not in self.all_steps():
            return CheckpointError(f"checkpoint at step {step} failed: it was not finalised "
                                   f"(workdir {self.directory.parent}; --verbosity=0 shows Orbax's log)")
        return None

    def read_json(self, step: int, item: str) -> dict[str, Any]:
        """One JSON item (`config` or `data`) of a checkpoint, without touching the arrays."""
        out = self.mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
        return dict(out[item])

    def restore(self, target: Any, step: Optional[int] = None) -> Optional[tuple[int, Any, dict[str, Any]]]:
        """(step, state, data) from the newest checkpoint that restores, or None when there is none.

        `target` is the abstract state with the current mesh's shardings. A checkpoint that fails to restore
        (truncated, corrupted, wrong shapes) is reported, renamed `<step>.broken-<time>` so that later saves
        of that step are possible, and the previous one is tried.
        """
        steps = [step] if step is not None else sorted(self.mngr.all_steps(), reverse=True)
        for s in steps:
            try:
                out = self.mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    data=ocp.args.JsonRestore()))
                return s, out["state"], dict(out["data"])
            except Exception as e:  # noqa: BLE001 - any failure means "this checkpoint is unusable"
                msg = " ".join(str(e).split())[:300]
                log.error("checkpoint %s failed to restore (%s: %s); trying the previous one",
                          self.directory / str(s), type(e).__name__, msg)
                self._set_aside(s)
        if steps:
            raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be restored")
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.directory / str(step)
            if src.exists():
                src.rename(self.directory / f"{step}.broken-{int(time.time())}")
        self.mngr.reload()

    def wait(self) -> None:
        """Block until pending async saves are on disk (call before exiting); CheckpointError if one failed."""
        step = self._pending
        try:
            self.mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._failure(step if step is not None else -1, e) from None
        self._pending = None

    def close(self) -> None:
        self.wait()
        self.mngr.close()


def check_data_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], directory: str) -> None:
    """Refuse to resume on data tokenized differently (ids would mean other strings: silent garbage)."""
    old, new = saved.get("tokenizer_hash"), current.get("tokenizer_hash")
    if old and new and old != new:
        raise CheckpointError(f"cannot resume from {directory}: its tokenizer hash {old} differs from the data's "
                              f"{new} (data.path={current.get('path')}); use a new --workdir")
    changed = [f"{k} {saved[k]!r} -> {current[k]!r}" for k in ("path", "seed", "global_batch", "seq_len")
               if k in saved and k in current and saved[k] != current[k]]
    if changed:   # legal (e.g. a larger batch to finish a run), but the batches differ from an uninterrupted run
        log.warning("resuming %s with different data settings: %s", directory, "; ".join(changed))


def export_params(directory: str | pathlib.Path, params: Any, model_config: Mapping[str, Any]) -> pathlib.Path:
    """Params-only export (no optimizer state): `directory/params` (Orbax) + `directory/model_config.json`."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory / "params", params, force=True)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (directory / "model_config.json").write_text(json.dumps(dict(model_config), indent=1) + "\n")
    return directory


def single_device_target(params_dir: str | pathlib.Path) -> Any:
    """Abstract params (ShapeDtypeStructs on this process's first device) read from a saved tree's metadata.

    Why: restoring without a target reuses the SAVED shardings, which name devices that need not exist here
    (an export written on 8 devices, loaded on 1 fails with "Topology mismatch")."""
    params_dir = pathlib.Path(params_dir)
    try:
        tree = ocp.StandardCheckpointer().metadata(params_dir).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - missing folder, not an Orbax tree, unreadable metadata
        raise CheckpointError(f"{params_dir}: cannot read the saved params' metadata "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(m: Any) -> jax.ShapeDtypeStruct:
        if getattr(m, "shape", None) is None or getattr(m, "dtype", None) is None:
            raise CheckpointError(f"{params_dir}: saved leaf {m!r} is not an array")
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)

    return jax.tree.map(leaf, tree)


def load_exported(directory: str | pathlib.Path, target: Any = None) -> tuple[dict[str, Any], Any]:
    """(model config dict, params) from `export_params`. `target` (abstract params with shardings) lays them out
    on a mesh; without it they land on this process's first device, whatever mesh wrote them."""
    directory = pathlib.Path(directory).absolute()
    cfg = json.loads((directory / "model_config.json").read_text())
    if target is None:
        target = single_device_target(directory / "params")
    params = ocp.StandardCheckpointer().restore(directory / "params", target)
    return cfg, params


def save_tokenizer(data_path: str | pathlib.Path, workdir: str | pathlib.Path) -> Optional[pathlib.Path]:
    """Copy the prepared data folder's tokenizer into `workdir/tokenizer/` (its manifest's `tokenizer` section
    as `manifest.json`, plus the sentencepiece model file if any), so the run stays usable for inference when
    the data folder moves. `load_tokenizer(workdir/tokenizer)` loads it like the data folder itself.

    An existing copy of the same tokenizer (same hash) is kept; a different one is never overwritten (a warning,
    None). Returns the folder, or None when nothing usable was written (a failed copy must not stop training)."""
    from mosaic_jax.data.tokenizers import MANIFEST_FILE

    src, dest = pathlib.Path(data_path).absolute(), pathlib.Path(workdir).absolute() / TOKENIZER_DIR
    try:
        info = json.loads((src / MANIFEST_FILE).read_text())["tokenizer"]
        want = str(info["hash"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: cannot read field tokenizer.hash (%s); the run keeps no copy of its tokenizer",
                    src / MANIFEST_FILE, e)
        return None
    if dest.exists():
        try:
            have = str(json.loads((dest / MANIFEST_FILE).read_text())["tokenizer"]["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            have = "unreadable"
        if have == want:
            return dest
        log.warning("%s holds another tokenizer (hash %s, the data's is %s); left as it is", dest, have[:12], want[:12])
        return None
    tmp = dest.with_name(f".{TOKENIZER_DIR}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if info.get("file"):
            name = pathlib.Path(str(info["file"])).name   # a plain file name: never write outside the folder
            shutil.copy2(src / str(info["file"]), tmp / name)
            info = {**info, "file": name}
        manifest = {"tokenizer": info, "copied_from": str(src)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(dest)   # readers see the whole copy or none of it
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not copy the tokenizer of %s to %s (%s)", src, dest, e)
        return None
    return dest
