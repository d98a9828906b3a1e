"""Orbax checkpoints: the train state, the data position and the resolved config saved together, asynchronously.

Layout: `workdir/checkpoints/<step>/{state, config, data, integrity}` (Orbax CheckpointManager; only finalised steps are
listed, so a save interrupted by SIGKILL is never picked up, and its temporary folder is cleaned on the next
start). `data` holds the data position (= the step: batches are a pure function of (seed, step)), the data path,
seed and tokenizer hash, so a resume replays exactly the batches an uninterrupted run would have seen.

Restore targets are ShapeDtypeStructs carrying the CURRENT mesh's shardings (`train_state.with_shardings`):
Orbax reads each shard straight into the new layout, so a run can resume on another mesh shape. The sharding
metadata saved in the checkpoint is deliberately ignored (orbax #648, #2408).
`load_exported` without a target does the same with one device: shapes come from the export's metadata.

`integrity` holds checksums of every array and of the JSON items (mosaic_jax/training/integrity.py), computed from the
arrays handed to Orbax and committed by the same finalisation as the data; a restore verifies them. A checkpoint
that is unreadable, fails that check or holds NaN/Inf is moved aside (`<step>.broken-<time>` or
`<step>.nonfinite-<time>`, never deleted) and the previous one is tried.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mosaic_jax.data.tokenizers import MANIFEST_FILE
from mosaic_jax.io import storage
from mosaic_jax.parallel import distributed
from mosaic_jax.training import integrity
from mosaic_jax.training.run_guard import os_reason

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"   # workdir/tokenizer/: the run's own copy of its tokenizer (save_tokenizer)


class CheckpointError(RuntimeError):
    """No checkpoint could be restored, or a checkpoint does not match this run (one-line message)."""


class Checkpointer:
    """A CheckpointManager with items `state` (StandardSave), `config`, `data` and `integrity` (JSON)."""

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int, async_save: bool = True) -> None:
        self.directory = storage.path(directory)
        # Only the fixed interval: Orbax's default also saves the very first step (InitialSavePolicy); SIGTERM is
        # handled by the training loop (a forced save), identically on one or many processes.
        policy = ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1))
        # Always Orbax's async path: its post-finalisation callback (the file record) runs after all data is
        # written and before the step is committed; a synchronous Checkpointer waits right after each save.
        self.async_save, self._saving = async_save, None
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy, max_to_keep=max(int(keep), 1),
            enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True,
            async_options=ocp.options.AsyncOptions(post_finalization_callback=self._record_files))
        self.mngr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "config", "data", "integrity"))
        self._pending: Optional[int] = None   # the step of the save started last, until it is known to be on disk

    def all_steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.mngr.latest_step()

    def should_save(self, step: int) -> bool:
        return self.mngr.should_save(step)

    def save(self, step: int, state: Any, config: Mapping[str, Any], data: Mapping[str, Any],
             force: bool = False) -> bool:
        """Start an (async) save of `state` at `step` if the interval says so (or `force`); True if started.

        The integrity record is computed here, synchronously, from the same arrays Orbax copies out (so it
        describes the data written even when the write finishes later), and saved as one more item of the same
        step: Orbax finalises all items together, so a step is listed with its record or not at all. A state
        holding NaN/Inf is never saved (FloatingPointError)."""
        if step in self.mngr.all_steps() or not (force or self.mngr.should_save(step)):
            return False  # already saved (e.g. a forced save on SIGTERM right after a periodic one), or not due
        sums, nonfinite = integrity.state_report(state)
        if nonfinite:
            err = FloatingPointError(f"the state after step {step} holds NaN/Inf in {nonfinite[0]} "
                                     f"({len(nonfinite)} array(s)); not saved")
            err.step = step + 1   # type: ignore[attr-defined]  # the first loss this state would compute
            raise err
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(dict(config)),
                                  data=ocp.args.JsonSave(dict(data)),
                                  integrity=ocp.args.JsonSave(integrity.make_record(sums, config, data)))
        try:   # one save in flight at a time (_record_files knows which step); the previous one's failure shows here
            self.mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - disk full, read-only...
            raise self._failure(self._pending if self._pending is not None else step, e) from None
        self._saving = step
        try:
            started = self.mngr.save(step, args=args, force=force)
            self._pending = step if started else None
            if not self.async_save:
                self.mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._failure(step, e) from None
        return started

    def _record_files(self) -> None:
        """Orbax callback (primary process, before the commit): hash the step's files into its folder. Locally the
        step is still `<step>.orbax-checkpoint-tmp-*`; on object stores it is written in place."""
        if self._saving is not None:
            tmp = sorted(self.directory.glob(f"{self._saving}.orbax-checkpoint-tmp*"))
            integrity.write_file_record(tmp[-1] if tmp else self.directory / str(self._saving))

    def _failure(self, step: int, e: BaseException) -> CheckpointError:
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

    def restore(self, target: Any, step: Optional[int] = None,
                say: Callable[[str], None] = log.warning) -> Optional[tuple[int, Any, dict[str, Any]]]:
        """(step, state, data) from the newest checkpoint that restores AND passes its checks, or None.

        `target` is the abstract state with the current mesh's shardings (its shapes must match: see
        `check_resume`). A checkpoint that is unreadable or fails its integrity record is set aside as
        `<step>.broken-<time>`, one holding NaN/Inf as `<step>.nonfinite-<time>` (so that later saves of that step
        are possible); `say` gets one line naming it, where it went and the checkpoint tried next."""
        steps = [step] if step is not None else sorted(self.mngr.all_steps(), reverse=True)
        for i, s in enumerate(steps):
            path = self.directory / str(s)
            has_record = (path / "integrity").is_dir()
            items = dict(state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore(),
                         data=ocp.args.JsonRestore(), **({"integrity": ocp.args.JsonRestore()} if has_record else {}))
            kind, problem = "broken", _agreed(integrity.verify_file_record(path) if jax.process_index() == 0 else None)
            if problem:
                problem = f"failed its integrity check ({problem})"
            else:
                try:
                    out = self.mngr.restore(s, args=ocp.args.Composite(**items))
                except Exception as e:  # noqa: BLE001 - any failure reading it means "this checkpoint is unusable"
                    text = " ".join(str(e).split())
                    if "RESOURCE_EXHAUSTED" in text or isinstance(e, MemoryError):   # not the checkpoint's fault
                        raise CheckpointError(f"restoring {path} ran out of memory: {text[:200]}") from None
                    problem = f"is unreadable ({type(e).__name__}: {text[:200]})"
                else:
                    sums, nonfinite = integrity.state_report(out["state"])
                    bad = integrity.verify(out["integrity"], sums, out["config"], out["data"]) if has_record else None
                    if bad:
                        problem = f"failed its integrity check ({bad})"
                    elif nonfinite:
                        kind, problem = "nonfinite", f"holds NaN/Inf in {nonfinite[0]} (an untrusted state)"
            if problem is None:
                if not has_record:
                    say(f"note: {path} has no integrity record (saved before records existed); restored unverified")
                return s, out["state"], dict(out["data"])
            moved = self.set_aside(s, kind)
            nxt = f"trying {self.directory / str(steps[i + 1])}" if i + 1 < len(steps) else "no earlier checkpoint"
            say(f"checkpoint {path} {problem}; set aside as {moved}; {nxt}")
        if steps:
            raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be restored (each was "
                                  "set aside, nothing deleted); re-running starts from step 0")
        return None

    def set_aside(self, step: int, kind: str) -> pathlib.Path:
        """Rename `<step>` to `<step>.<kind>-<time>` (never delete); every process must call it."""
        dest = self.directory / f"{step}.{kind}-{int(time.time())}"
        if jax.process_index() == 0:
            src = self.directory / str(step)
            if src.exists():
                src.rename(dest)
        distributed.barrier(f"set aside {step}")   # nobody lists (or re-saves) the step before it has moved
        self.mngr.reload()
        return dest

    def after_nonfinite(self, error: FloatingPointError) -> str:
        """The one-line message for a non-finite loss at step N (`error.step`): checkpoint N-1, whose state
        computed that loss, is not trusted and is set aside, so the next run resumes from one that trains on."""
        self.wait()   # checkpoint N-1 may still be in flight
        bad = getattr(error, "step", None)
        head = str(error).split(";")[0]
        note = ""
        if bad is not None and bad - 1 in self.mngr.all_steps():
            note = f"; checkpoint {bad - 1} computed it and is set aside as {self.set_aside(bad - 1, 'nonfinite')}"
        left = self.all_steps()
        nxt = f"checkpoint {self.directory / str(left[-1])} (step {left[-1]})" if left else "step 0 (no checkpoint left)"
        return f"{head}{note}; stopping. Re-running resumes from {nxt}"

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


def _agreed(problem: Optional[str]) -> Optional[str]:
    """Process 0's verdict for every process (only it hashes the files: one read of the checkpoint, not N)."""
    if jax.process_count() == 1:
        return problem

    distributed.barrier("file record checked")   # process 0 may hash for long: no device collective waits on it
    failed = multihost_utils.broadcast_one_to_all(np.int32(problem is not None))
    return (problem or "file record check failed on process 0") if int(failed) else None


def check_resume(directory: str | pathlib.Path, requested: Mapping[str, Any], data: Mapping[str, Any],
                 target: Any) -> None:
    """Refuse (CheckpointError, one line) a resume whose config, state shapes or tokenizer differ from the saved
    run, before anything is written. Reads only the newest checkpoint whose JSON items and array metadata are
    readable; an unreadable one is left to `restore`, which sets it aside."""
    directory = storage.path(directory)
    # Every process must take the same branch: the probe's CheckpointManager meets the others at a collective.
    # Without the barriers a slow process could see the folder that a faster one's Checkpointer just created,
    # open one more manager than the others and wait forever (seen with 2 processes on a loaded CPU).
    distributed.barrier("resume check: look")
    present = directory.is_dir()
    distributed.barrier("resume check: decided")   # nobody creates the folder before every process has looked
    if not present:
        return
    probe = Checkpointer(directory, every=1, keep=2**30, async_save=False)
    try:
        for s in reversed(probe.all_steps()):
            try:
                saved_cfg, saved_data = probe.read_json(s, "config"), probe.read_json(s, "data")
                saved_tree = ocp.StandardCheckpointHandler().metadata(directory / str(s) / "state").tree
            except Exception:  # noqa: BLE001 - unreadable: restore() reports it and tries the previous one
                continue
            check_data_compatible(saved_data, data, str(directory))
            diffs = integrity.config_differences(saved_cfg, requested) or integrity.shape_differences(
                saved_tree, target)
            if diffs:
                raise CheckpointError(integrity.refuse_message(str(directory / str(s)), diffs,
                                                               str(directory.parent)))
            return
    finally:
        probe.close()


def export_params(directory: str | pathlib.Path, params: Any, model_config: Mapping[str, Any]) -> pathlib.Path:
    """Params-only export (no optimizer state): `directory/params` (Orbax) + `directory/model_config.json`."""
    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory / "params", params, force=True)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        storage.write_text(directory / "model_config.json", json.dumps(dict(model_config), indent=1) + "\n")
    return directory


def single_device_target(params_dir: str | pathlib.Path) -> Any:
    """Abstract params (ShapeDtypeStructs on this process's first device) read from a saved tree's metadata.

    Why: restoring without a target reuses the SAVED shardings, which name devices that need not exist here
    (an export written on 8 devices, loaded on 1 fails with "Topology mismatch")."""
    params_dir = storage.path(params_dir)
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
    directory = storage.path(directory)
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

    src, dest = storage.path(data_path), storage.path(workdir) / TOKENIZER_DIR
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
    if storage.is_remote(dest):   # no renames on GCS: the manifest, written last in one upload, completes the copy
        try:
            if info.get("file"):
                name = pathlib.Path(str(info["file"])).name
                storage.write_bytes(dest / name, (src / str(info["file"])).read_bytes())
                info = {**info, "file": name}
            storage.write_text(dest / MANIFEST_FILE, json.dumps({"tokenizer": info, "copied_from": str(src)},
                                                                indent=1) + "\n")
        except Exception as e:  # noqa: BLE001 - a failed copy must not stop training
            log.warning("could not copy the tokenizer of %s to %s (%s)", src, dest, e)
            return None
        return dest
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
