"""Metric sinks: the trackers of `train.trackers` (JSONL, TensorBoard, W&B; process 0 only), and the console line.

Every JSONL record is one line `{"step": s, "split": "train"|"eval"|..., <name>: value, ...}` so the file can
be read with `pandas.read_json(path, lines=True)`. After a resume, steps between the last checkpoint and the
interruption appear twice; readers keep the last record per (split, step).
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from mosaic_jax.io import storage
from mosaic_jax.training import trackers


class MetricWriter:
    """Fans scalars and text out to the trackers named in `trackers` (no-op on processes other than 0).

    `run_config` (the resolved config, as in config.json, plus the tokenizer hash) is logged once to each tracker
    that has a place for it."""

    def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None,
                 trackers_spec: str = trackers.DEFAULT, run_config: Optional[Mapping[str, Any]] = None,
                 wandb_project: str = "mosaic_jax") -> None:
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._trackers: list[trackers.Tracker] = []
        if not self.enabled:
            return
        names = trackers.parse(trackers_spec)   # validated in run_config.resolve(); here for direct callers
        workdir = storage.path(workdir)
        if not storage.is_remote(workdir):   # gs:// has no folders to create
            workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name == "jsonl":
                self._trackers.append(trackers.JsonlTracker(workdir))
            elif name == "tensorboard":
                self._trackers.append(trackers.TensorBoardTracker(workdir))
            elif name == "wandb":
                self._trackers.append(trackers.WandbTracker(workdir, wandb_project, run_config or {}))
        if run_config is not None:
            for tr in self._trackers:
                tr.log_config(run_config)

    def write_scalars(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        now = time.time()
        values = {name: float(np.asarray(v)) for name, v in scalars.items() if v is not None}
        for tr in self._trackers:
            tr.log_scalars(int(step), split, values, now)

    def write_text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        for tr in self._trackers:
            tr.log_text(int(step), tag, text)

    def flush(self) -> None:
        if self.enabled:
            for tr in self._trackers:
                tr.flush()

    def close(self) -> None:
        if self.enabled:
            for tr in self._trackers:
                tr.close()
            self.enabled = False


def peak_memory_gb() -> Optional[float]:
    """The largest `peak_bytes_in_use` over this process's devices, in GB; None where the backend has no stats (CPU)."""
    peaks = []
    for dev in jax.local_devices():
        try:
            stats = dev.memory_stats()
        except Exception:   # some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / 1e9 if peaks else None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, total_steps: int, scalars: Mapping[str, Any]) -> str:
    """`step 120/2000 | loss 2.3456 | lr 1.20e-03 | 12,345 tok/s | MFU 12.3% | 0.081 s/step | ETA 2m31s`."""
    parts = [f"step {step}/{total_steps}", f"loss {scalars['loss']:.4f}"]
    if "lr" in scalars:
        parts.append(f"lr {scalars['lr']:.2e}")
    if scalars.get("tokens_per_s"):
        parts.append(f"{scalars['tokens_per_s']:,.0f} tok/s")
    if scalars.get("mfu") is not None:
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if scalars.get("step_time"):
        parts.append(f"{scalars['step_time']:.3f} s/step")
        parts.append(f"ETA {format_duration(scalars['step_time'] * (total_steps - step))}")
    return " | ".join(parts)


def check_finite(step: int, scalars: Mapping[str, Any], names: tuple[str, ...] = ("loss", "grad_norm")) -> None:
    """Raise FloatingPointError naming the step when a watched metric is NaN or Inf."""
    for name in names:
        if name in scalars and not math.isfinite(float(np.asarray(scalars[name]))):
            err = FloatingPointError(f"{name} is {float(np.asarray(scalars[name]))} at step {step}; "
                                     "stopping (the last good checkpoint is kept)")
            err.step = step   # type: ignore[attr-defined]  # train sets aside the checkpoint that computed it
            raise err
