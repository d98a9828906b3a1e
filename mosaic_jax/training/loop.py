"""The training loop as a library: dispatch steps, fetch their metrics one step late, and run hooks.

    loop = Loop(step_fn)                                  # (state, batch) -> (state, metrics): e.g. setup.build(...)
    loop.add_hook(lambda info: print(info.step, info.metrics()["loss"]), every=100)
    loop.add_hook(hooks.Checkpoint(...))                  # or any Hook object (built-ins: training/hooks.py)
    result = loop.run(state, batches, start=0, total=1000)

`mosaic_jax.train` is this loop with the default hooks (metrics/MFU, checkpoints + preemption, evaluation +
samples, profiler); a research script builds its own list, see docs/training.md ("Write your own loop").

Dispatch stays ahead of the device: the metrics of step s are read (`jax.device_get`) only after step s+1 has been
dispatched, so the host never waits for the step it has just queued. A hook that needs the current step's numbers
calls `info.metrics()`, which waits for them (do that every N steps, not every step). Every fetched metric is
checked: a NaN/Inf loss or gradient norm raises FloatingPointError naming the step.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Union

import jax

from mosaic_jax.training import metrics as metrics_lib

StepFn = Callable[[Any, Any], tuple[Any, dict[str, Any]]]


class StepClock:
    """Seconds per step over a window of fetched steps. Fetching step s's metrics waits for step s to finish, so
    (now - window start) / steps fetched since is the time per step while step s+1 already runs. The loop restarts
    it after the first (compiling) step; hooks that take time off the steps (evaluation) restart it too."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.start) / max(self.steps, 1)


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after a step: `step` steps are done (the state's step counter), `state` is the new state."""
    step: int
    state: Any
    total: int                 # the step the run ends at
    loop: "Loop"
    stop: bool = False         # set by a hook (an agreed preemption): the loop ends after this step's hooks

    @property
    def is_last(self) -> bool:
        return self.step == self.total

    def metrics(self) -> dict[str, float]:
        """This step's metrics as floats (waits for the step; every pending step is fetched and logged first)."""
        self.loop.fetch()
        return self.loop.last


class Hook:
    """Override what you need. `after_step` runs every `every` steps (and at the last step; see Loop.add_hook);
    `before_step` and `on_metrics` run at every step, `on_exit` once when `run` ends, also on an exception."""

    def before_step(self, step: int) -> None:
        """Before dispatching the step that takes the state from `step` to `step + 1`."""

    def on_metrics(self, step: int, metrics: dict[str, float], timed: bool) -> None:
        """Step `step`'s metrics, fetched (one step late, in order). `timed` is False for the compiling first
        step. Scalars a hook adds to `metrics` are seen by later hooks and kept in `Loop.last`."""

    def after_step(self, info: StepInfo) -> None:
        """After a step is dispatched (its metrics may not be fetched yet: `info.metrics()` waits for them)."""

    def on_exit(self) -> None:
        """End what must not stay open (a trace, an async save in flight)."""


class _FnHook(Hook):
    def __init__(self, fn: Callable[[StepInfo], Any]) -> None:
        self.fn = fn

    def after_step(self, info: StepInfo) -> None:
        self.fn(info)


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int                  # steps done when the loop ended
    stopped: bool              # True: a hook asked to stop (preemption) before `total`
    metrics: dict[str, float]  # the last fetched step's metrics (with what hooks added)


@dataclasses.dataclass
class _Registered:
    hook: Hook
    every: int
    at_last: bool


class Loop:
    """`add_hook` the hooks, then `run`. Hooks run in the order they were added."""

    def __init__(self, step_fn: StepFn, *, finite: tuple[str, ...] = ("loss", "grad_norm")) -> None:
        self.step_fn = step_fn
        self.finite = finite              # metrics that must stay finite (NaN/Inf: FloatingPointError)
        self.clock = StepClock()
        self.last: dict[str, float] = {}
        self._hooks: list[_Registered] = []
        self._pending: list[tuple[int, Any]] = []   # (step, device metrics) not yet fetched

    def add_hook(self, hook: Union[Hook, Callable[[StepInfo], Any]], every: int = 1, at_last: bool = True) -> Hook:
        """Register a Hook, or a function `fn(info)` run as its `after_step`: when `info.step % every == 0`, and at
        the last step if `at_last`. Returns the hook (a function comes back wrapped)."""
        if every < 1:
            raise ValueError(f"every={every}: must be >= 1")
        h = hook if isinstance(hook, Hook) else _FnHook(hook)
        self._hooks.append(_Registered(h, int(every), at_last))
        return h

    def fetch(self, keep: int = 0, timed: bool = True) -> None:
        """Read the pending metrics to the host, all but the newest `keep`, check them and hand them to hooks."""
        while len(self._pending) > keep:
            step, m = self._pending.pop(0)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            self.clock.tick()
            metrics_lib.check_finite(step, m, self.finite)
            self.last = m
            for r in self._hooks:
                r.hook.on_metrics(step, m, timed)

    def run(self, state: Any, batches: Iterator[Any], *, start: int, total: int) -> LoopResult:
        """Steps start..total-1 on `next(batches)` each; the state is donated to the step and comes back updated."""
        try:
            for step in range(start, total):
                batch = next(batches)
                for r in self._hooks:
                    r.hook.before_step(step)
                state, m = self.step_fn(state, batch)
                done = step + 1
                self._pending.append((done, m))
                if step == start:   # the first step compiles: keep it out of the clock (tokens/s, MFU)
                    self.fetch(timed=False)
                    self.clock.restart()
                else:
                    self.fetch(keep=1)
                info = StepInfo(done, state, total, self)
                for r in self._hooks:
                    if done % r.every == 0 or (r.at_last and done == total):
                        r.hook.after_step(info)
                if info.stop:
                    return LoopResult(state, done, True, self.last)
            self.fetch()
        finally:
            for r in self._hooks:
                r.hook.on_exit()
        return LoopResult(state, max(start, total), False, self.last)


def run(state: Any, step_fn: StepFn, batches: Iterator[Any], hooks: tuple[Any, ...] = (), *, start: int = 0,
        total: int) -> LoopResult:
    """One call: `Loop(step_fn)`, each of `hooks` added (a Hook or `(hook, every)`), then `run`."""
    loop = Loop(step_fn)
    for h in hooks:
        hook, n = h if isinstance(h, tuple) else (h, 1)
        loop.add_hook(hook, every=n)
    return loop.run(state, batches, start=start, total=total)
