"""The built-in hooks of the training loop (training/loop.py), the ones `mosaic_jax.train` adds:

* LogMetrics: tokens/s, step time, MFU and peak memory every `log_every` steps, to the trackers and the console;
* Checkpoint: every step, polls the async save in flight and agrees with the other processes on stopping
  (SIGTERM/SIGINT) and on a failed save, in one collective; saves at the interval, at the last step and on a
  stop, only after every pending metric was checked finite; asks the loop to stop on an agreed preemption;
* EvalAndSample: held-out loss and a sampled text (skipped on a stop: a preempted run hurries);
* Profile: a jax.profiler trace of `train.profile_steps`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping, Optional

import jax
from jax.sharding import Mesh

from mosaic_jax.models import flops
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.training import checkpoint, heldout, metrics, profiling, run_guard
from mosaic_jax.training.loop import Hook, StepClock, StepInfo

Say = Callable[[str], None]


class LogMetrics(Hook):
    """Write the fetched train metrics every `log_every` steps (and at `total`), with the timing of the window since
    the last line: step_time, tokens_per_s, mfu (not for the compiling first step), peak_memory_gb (where the
    backend reports it)."""

    def __init__(self, writer: metrics.MetricWriter, say: Say, clock: StepClock, *, log_every: int, total: int,
                 tokens_per_step: int, flops_per_token: float, peak_flops: Optional[float]) -> None:
        self.writer, self.say, self.clock = writer, say, clock
        self.log_every, self.total, self.tokens_per_step = log_every, total, tokens_per_step
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops

    def on_metrics(self, step: int, m: dict[str, float], timed: bool) -> None:
        if step % self.log_every and step != self.total:
            return
        if timed:
            dt = self.clock.seconds_per_step()
            tps = self.tokens_per_step / dt
            m.update(step_time=dt, tokens_per_s=tps, mfu=flops.mfu(tps, self.flops_per_token, self.peak_flops))
        mem_gb = metrics.peak_memory_gb()   # None where the backend has no memory stats (CPU): not logged
        if mem_gb is not None:
            m["peak_memory_gb"] = mem_gb
        self.writer.write_scalars(step, m)
        self.say(metrics.console_line(step, self.total, m))
        self.clock.restart()


class Checkpoint(Hook):
    """Register with every=1 (it polls and agrees every step; the save interval is the Checkpointer's)."""

    def __init__(self, ckpt: checkpoint.Checkpointer, stop: run_guard.StopRequest, config: Mapping[str, Any],
                 data: Mapping[str, Any], writer: Optional[metrics.MetricWriter] = None) -> None:
        self.ckpt, self.stop, self.config, self.data, self.writer = ckpt, stop, config, data, writer

    def after_step(self, info: StepInfo) -> None:
        save_error = self.ckpt.poll()   # an async save that failed stops the run now, not an interval later
        stop, save_failed = self.stop.agreed(save_error is not None)
        if save_failed:
            raise save_error or checkpoint.CheckpointError(
                f"a checkpoint save failed on another process (workdir {self.ckpt.directory.parent}); "
                "see that process's log")
        info.stop = info.stop or stop
        if self.ckpt.should_save(info.step) or info.is_last or stop:
            info.loop.fetch()   # never save a state whose loss or gradient is not finite
            self.ckpt.save(info.step, info.state, self.config, {**self.data, "position": info.step}, force=True)
            if self.writer is not None:   # gs://: the metrics up to a checkpoint reach the bucket with it
                self.writer.flush()

    def on_exit(self) -> None:
        self.ckpt.wait()   # keep every save already started (the last good checkpoint stays on errors)


class EvalAndSample(Hook):
    """Held-out loss over `batches` fixed batches of `source` (None: no evaluation) and `sample_tokens` of text
    after `prompt` (0: no sample). `run(step, params)` is also called by train() outside the loop."""

    def __init__(self, writer: metrics.MetricWriter, say: Say, *, eval_fn: Any, source: Any, batches: int,
                 mesh: Mesh, cfg: ModelConfig, tokenizer: Any, prompt: str, sample_tokens: int,
                 temperature: float) -> None:
        self.writer, self.say, self.eval_fn, self.source, self.batches = writer, say, eval_fn, source, batches
        self.mesh, self.cfg, self.tokenizer, self.prompt = mesh, cfg, tokenizer, prompt
        self.sample_tokens, self.temperature = sample_tokens, temperature
        self.last: dict[str, Any] = {}

    def run(self, step: int, params: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source is not None and self.batches:
            out = heldout.evaluate(self.eval_fn, params, self.source, self.batches, self.mesh,
                                   jax.process_index(), jax.process_count())
            self.writer.write_scalars(step, out, split="eval")
            self.say(f"eval step {step} | loss {out['loss']:.4f} | perplexity {out['perplexity']:.2f}")
        if self.sample_tokens:
            text = heldout.sample_text(self.cfg, params, self.tokenizer, self.prompt, self.sample_tokens,
                                       temperature=self.temperature, seed=step)
            self.writer.write_text(step, "sample", text)
            out["sample"] = text
            self.say(f"sample step {step}: {text!r}")
        self.last = out
        return out

    def after_step(self, info: StepInfo) -> None:
        if info.stop:   # preempted: hurry
            return
        info.loop.fetch()
        self.run(info.step, info.state.params)
        info.loop.clock.restart()   # evaluation is not step time


class Profile(Hook):
    """A jax.profiler trace of steps [first, end) under `workdir/profile/` (profiling.StepProfiler)."""

    def __init__(self, steps: Optional[tuple[int, int]], workdir: pathlib.Path) -> None:
        self.profiler = profiling.StepProfiler(steps, workdir, jax.process_index(), jax.process_count())

    def before_step(self, step: int) -> None:
        self.profiler.before(step)

    def after_step(self, info: StepInfo) -> None:
        self.profiler.after(info.step - 1, info.state)

    def on_exit(self) -> None:
        self.profiler.stop()
