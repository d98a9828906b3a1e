"""Metric sinks: a JSONL file and TensorBoard event files in the workdir (process 0 only), and the console line.

tensorboardX is used instead of clu's default writer, which imports TensorFlow.
Every JSONL record is one line `{"step": s, "split": "train"|"eval"|..., <name>: value, ...}` so the file can
be read with `pandas.read_json(path, lines=True)`. After a resume, steps between the last checkpoint and the
interruption appear twice; readers keep the last record per (split, step).
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np


def _summary_writer_class() -> Any:
    """tensorboardX.SummaryWriter, imported lazily (only process 0 needs it) and without PyTorch: tensorboardX's
    writer imports torch whenever it is installed, only to accept torch tensors (never passed here), which costs
    ~4 s of CPU in every training process. `import torch` fails while sys.modules["torch"] is None."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes scalars and text to `workdir/metrics.jsonl` and `workdir/tensorboard/` (no-op on other processes)."""

    def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None) -> None:
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)  # line-buffered: survives a kill
        self._tb = _summary_writer_class()(str(workdir / "tensorboard"), flush_secs=10)

    def write_scalars(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        for name, value in scalars.items():
            if value is None:
                continue
            v = float(np.asarray(value))
            record[name] = v if math.isfinite(v) else str(v)   # JSON has no NaN/Inf literals
            self._tb.add_scalar(f"{split}/{name}", v, int(step))
        self._jsonl.write(json.dumps(record) + "\n")

    def write_text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        self._tb.add_text(tag, text, int(step))
        self._jsonl.write(json.dumps({"step": int(step), "split": "text", "tag": tag, "text": text}) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.enabled = False


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
