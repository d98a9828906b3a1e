"""Metric trackers behind `metrics.MetricWriter`: JSONL, TensorBoard and (optional) Weights & Biases.

`train.trackers` names them ("jsonl,tensorboard" by default). Each tracker takes already-converted scalars
(`{name: float}`) so all of them record the same values; only process 0 creates any (MetricWriter decides).
On a gs:// workdir, JSONL and TensorBoard write to a local staging folder that is appended to the bucket every
`SYNC_SECONDS` and on close (mosaic_jax/io/gcs_append.py: bounded buffering, never a half-written object).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import pathlib
import sys
from typing import Any, Mapping, Optional

from mosaic_jax.io import gcs_append, storage

KNOWN = ("jsonl", "tensorboard", "wandb")
DEFAULT = "jsonl,tensorboard"
WANDB_MISSING = "needs the wandb package: pip install 'mosaic_jax[wandb]'"
SYNC_SECONDS = 30.0   # gs:// workdirs: how often metrics reach the bucket (a SIGKILL loses at most this much)


def _staged(folder: Any) -> tuple[pathlib.Path, Optional[Any]]:
    """(local folder to write in, its StagedDir or None): `folder` itself when local, a staging folder for gs://."""
    if not storage.is_remote(folder):
        return pathlib.Path(folder), None
    stage = gcs_append.StagedDir(folder, every_s=SYNC_SECONDS)
    return stage.local, stage


def parse(spec: str) -> tuple[str, ...]:
    """`"jsonl,tensorboard"` -> ("jsonl", "tensorboard"); raises ValueError naming the bad entry (one line)."""
    names = tuple(dict.fromkeys(n.strip() for n in str(spec).split(",") if n.strip()))   # ordered, no repeats
    for name in names:
        if name not in KNOWN:
            raise ValueError(f"{name!r} is not a tracker (known: {', '.join(KNOWN)})")
    if "wandb" in names:
        try:
            spec = importlib.util.find_spec("wandb")
        except (ImportError, ValueError):   # ValueError: sys.modules["wandb"] is None (import blocked)
            spec = None
        if spec is None:
            raise ValueError(f"'wandb' {WANDB_MISSING}")
    return names


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


class Tracker:
    """A metric sink. `log_config` is called once per run start; trackers without a config view ignore it."""

    def log_scalars(self, step: int, split: str, scalars: Mapping[str, float], wall_time: float) -> None:
        raise NotImplementedError

    def log_text(self, step: int, tag: str, text: str) -> None:
        raise NotImplementedError

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlTracker(Tracker):
    """`workdir/metrics.jsonl`, one record a line. The run config is in `workdir/config.json` (not repeated here)."""

    def __init__(self, workdir: Any) -> None:
        local, self._stage = _staged(workdir)
        self._f = open(local / "metrics.jsonl", "a", buffering=1)  # line-buffered: survives a kill

    def log_scalars(self, step: int, split: str, scalars: Mapping[str, float], wall_time: float) -> None:
        record: dict[str, Any] = {"step": int(step), "split": split, "time": round(wall_time, 3)}
        for name, v in scalars.items():
            record[name] = v if math.isfinite(v) else str(v)   # JSON has no NaN/Inf literals
        self._f.write(json.dumps(record) + "\n")
        if self._stage is not None:
            self._stage.maybe_sync()

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._f.write(json.dumps({"step": int(step), "split": "text", "tag": tag, "text": text}) + "\n")

    def flush(self) -> None:
        self._f.flush()
        if self._stage is not None:
            self._stage.sync()

    def close(self) -> None:
        self._f.close()
        if self._stage is not None:
            self._stage.close()


class TensorBoardTracker(Tracker):
    """`workdir/tensorboard/` event files (tensorboardX: clu's default writer imports TensorFlow)."""

    def __init__(self, workdir: Any) -> None:
        local, self._stage = _staged(workdir / "tensorboard")
        self._tb = _summary_writer_class()(str(local), flush_secs=10)

    def log_scalars(self, step: int, split: str, scalars: Mapping[str, float], wall_time: float) -> None:
        for name, v in scalars.items():
            self._tb.add_scalar(f"{split}/{name}", v, int(step))
        if self._stage is not None and self._stage.due():
            self.flush()

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._tb.add_text(tag, text, int(step))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._tb.add_text("run_config", "```\n" + json.dumps(config, indent=1, sort_keys=True) + "\n```", 0)

    def flush(self) -> None:
        self._tb.flush()
        if self._stage is not None:
            self._stage.sync()

    def close(self) -> None:
        self._tb.close()
        if self._stage is not None:
            self._stage.close()


def wandb_run_id(workdir: pathlib.Path) -> str:
    """A stable id from the absolute workdir path, so re-running the same command continues the same W&B run."""
    return hashlib.sha256(str(workdir.absolute()).encode()).hexdigest()[:16]


class WandbTracker(Tracker):
    """Weights & Biases (`pip install 'mosaic_jax[wandb]'`); WANDB_MODE=offline/disabled is honoured by wandb.

    The run config is passed to `wandb.init` (the tracker is created once it is known), so `log_config` is a no-op.
    W&B drops records whose step is below the run's current step: after a resume, the steps run twice keep their
    first values there (JSONL keeps both)."""

    def __init__(self, workdir: pathlib.Path, project: str, config: Mapping[str, Any]) -> None:
        import wandb   # optional dependency, checked in run_config.resolve()
        self._run = wandb.init(project=project, name=workdir.name, dir=str(workdir), config=dict(config),
                               id=wandb_run_id(workdir), resume="allow")

    def log_scalars(self, step: int, split: str, scalars: Mapping[str, float], wall_time: float) -> None:
        self._run.log({f"{split}/{name}": v for name, v in scalars.items()}, step=int(step))

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._run.log({f"text/{tag}": text}, step=int(step))

    def close(self) -> None:
        self._run.finish()
