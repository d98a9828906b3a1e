"""`train.profile_steps = "START:END"`: a jax.profiler trace of steps START..END-1 under `workdir/profile/`.

The trace (`plugins/profile/<time>/<host>.xplane.pb`) opens in TensorBoard's profile plugin or xprof. With several
processes each writes its own `workdir/profile/process_<i>/`. A resumed run traces the part of the range it runs.
`bench --profile=DIR` uses the same class with `directory=DIR/<row name>`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax


class StepProfiler:
    """Call `before(step)` before dispatching loop step `step` and `after(step, state)` once it is dispatched."""

    def __init__(self, steps: Optional[tuple[int, int]], workdir: pathlib.Path, process_index: int,
                 process_count: int, *, directory: Optional[pathlib.Path] = None) -> None:
        """`directory` (bench --profile: one per row) replaces the default `workdir/profile[/process_<i>]`."""
        self._range = steps
        self._dir = directory if directory is not None else (
            workdir / "profile" / (f"process_{process_index}" if process_count > 1 else ""))
        self._active = False

    def before(self, step: int) -> None:
        if self._range and not self._active and self._range[0] <= step < self._range[1]:
            self._dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self._dir))
            self._active = True

    def after(self, step: int, state: Any) -> None:
        if self._active and step + 1 >= self._range[1]:
            jax.block_until_ready(state)   # the trace must hold the device work of the last step, not just its dispatch
            self.stop()

    def stop(self) -> None:
        """End an open trace (also on an early exit: preemption, NaN, an error)."""
        if self._active:
            self._active = False
            jax.profiler.stop_trace()
