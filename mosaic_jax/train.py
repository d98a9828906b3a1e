r"""Train a memory mosaic (or the GPT-2 baseline) on a prepared data folder.

    python -m mosaic_jax.train --config=tiny_cpu --workdir=runs/tiny_cpu \
        [--config.data.path=DIR] [--config.train.steps=2000] [--config.mesh.fsdp=-1] ...   (or mosaic-train)

Re-running the same command resumes from the newest complete checkpoint in the workdir. SIGTERM (preemption)
saves a checkpoint and exits 0; SIGINT (Ctrl-C) saves and exits 130. A bad flag exits 2; bad input, a workdir held
by another run (`workdir/lock.json`) and I/O failures (disk full, read-only) exit 1, each with a one-line error
naming the field or file; bad input before anything is written. See docs/training.md.

    python -m mosaic_jax.train --config=tiny_cpu --print_config    # the resolved config as JSON; writes nothing
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from typing import Any, Callable, Optional, Sequence

import jax
from absl import flags, logging
from ml_collections import config_flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage             # first: maps STORAGE_EMULATOR_HOST before gcsfs/tensorstore load
from mosaic_jax.data import loader, store, tokenizers
from mosaic_jax.data.errors import DataError
from mosaic_jax.models import flops
from mosaic_jax.parallel import distributed   # defines --coordinator_address, --num_processes, --process_id, ...
from mosaic_jax.parallel import sharding
from mosaic_jax.training import (checkpoint, hooks, loop, metrics, run_config, run_guard,  # run_guard: --break_lock
                                 setup, train_state, train_step)
from mosaic_jax.training.checkpoint import CheckpointError
from mosaic_jax.training.run_config import ConfigError

config_flags.DEFINE_config_file("config", None, "A preset name (tiny_cpu, babistories_mm, ...: mosaic_jax/presets/) "
                                "or an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, TensorBoard, config.json.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (what config.json would hold: "
                                  "the typed sections and `resolved_impl`) as JSON and exit; writes nothing.")


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


@dataclasses.dataclass
class _Run:
    """A validated run: the resolved config, the mesh, the data sources and the workdir's paths."""
    rc: Any
    mesh: Any
    train_src: Any
    val_src: Any
    data_meta: dict[str, Any]
    workdir: Any                 # storage.path: every path the run writes is under it (config.json, checkpoints/, ...)
    ckpt_dir: Any
    data_local: str              # the prepared data's local folder (the cached copy of gs:// data)


def _validate(config: Any, workdir: str) -> _Run:
    """Check every input and open the data; nothing is written (a ConfigError/DataError names the field or file)."""

    if config is None:
        raise run_config.ConfigError("--config is required (e.g. --config=tiny_cpu)")
    if not workdir:
        raise run_config.ConfigError("--workdir is required")
    if config.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
    ds = store.open_prepared(config.data.path, "train")
    try:
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as e:
        raise run_config.ConfigError(str(e)) from None
    rc = run_config.resolve(config, ds.vocab_size, sharding.data_parallel_size(mesh), jax.process_count())
    t, d = rc.train, rc.data
    try:   # every process must feed its devices from its own rows (loader.process_batch_at)
        layouts = {distributed.check_batch_layout(mesh, rows) for rows in (t.global_batch, t.eval_batch_size)}
    except distributed.DistributedError as e:
        raise run_config.ConfigError(str(e)) from None
    if "permuted" in layouts:
        _say(f"note: {distributed.mesh_summary(mesh)} interleaves processes along the batch; each process "
             "still feeds only its own rows (same rows per step, another order within the batch)")
    try:
        val = store.open_prepared(d.path, "validation") if t.eval_every else None
    except DataError:
        val = None
        _say(f"note: {d.path} has no validation split; evaluation is off")
    train_src = loader.BatchSource(ds, d.seq_len, t.global_batch, t.seed, packing=d.packing)
    val_src = loader.BatchSource(val, d.seq_len, t.eval_batch_size, d.eval_seed, packing=d.packing) if val else None
    data_meta = {"path": storage.display(d.path), "seed": int(t.seed), "tokenizer_hash": ds.tokenizer_hash,
                 "global_batch": int(t.global_batch), "seq_len": int(d.seq_len)}
    workdir_p = storage.path(workdir)   # a local folder or gs://bucket/prefix (mosaic_jax/io/storage.py)
    return _Run(rc, mesh, train_src, val_src, data_meta, workdir_p, workdir_p / "checkpoints", ds.path)


def _restore_or_init(r: _Run, su: Any, ckpt: Any) -> Any:
    """The newest checkpoint that restores (checkpoint.Checkpointer.restore), else a fresh sharded state."""

    restored = ckpt.restore(su.abstract_state, say=_say) if ckpt.latest_step() is not None else None
    if restored is None:
        return train_state.create_sharded_state(r.rc.model, su.tx, r.rc.train.seed, su.shardings)
    step0, state, _ = restored
    _say(f"resumed from {r.ckpt_dir / str(step0)} (step {step0})")
    return state


def _default_loop(r: _Run, su: Any, ckpt: Any, writer: Any, preempt: run_guard.StopRequest) -> tuple[Any, Any]:
    """train's loop and hooks, in this order each step: Profile, LogMetrics (as metrics are fetched), Checkpoint
    (poll, stop agreement, save), EvalAndSample (every eval_every). Returns (loop, the evaluation hook)."""

    cfg, t, d = r.rc.model, r.rc.train, r.rc.data
    flops_per_token = flops.train_flops_per_token(cfg, d.seq_len)
    peak, peak_src = flops.total_peak_flops(r.workdir, cfg.dtype, t.peak_flops)
    _say(f"MFU: {flops_per_token / 1e6:.2f} MFLOP/token ({flops.FORMULA_VERSION}); peak "
         f"{(peak or 0) / 1e9:,.0f} GFLOP/s ({peak_src})")
    # several processes: compile, wait for all, then run (gloo on CPU gives a first collective only 30 s)
    lp = loop.Loop(distributed.compile_then_align(su.train_step, "train step"))
    evaluation = hooks.EvalAndSample(
        writer, _say, eval_fn=distributed.compile_then_align(su.eval_step, "eval step"), source=r.val_src,
        batches=t.eval_batches, mesh=r.mesh, cfg=r.rc.requested_model,   # sampling chooses for its own lengths
        tokenizer=tokenizers.load_tokenizer(r.data_local),
        prompt=t.sample_prompt, sample_tokens=t.sample_tokens, temperature=t.sample_temperature)
    lp.add_hook(hooks.Profile(run_config.parse_profile_steps(t.profile_steps, t.steps), r.workdir))
    lp.add_hook(hooks.LogMetrics(writer, _say, lp.clock, log_every=t.log_every, total=t.steps,
                                 tokens_per_step=t.global_batch * d.seq_len, flops_per_token=flops_per_token,
                                 peak_flops=peak))
    lp.add_hook(hooks.Checkpoint(ckpt, preempt, r.rc.to_dict(), r.data_meta, writer))
    if t.eval_every:
        lp.add_hook(evaluation, every=t.eval_every)
    return lp, evaluation


def train(config: Any, workdir: str) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last train/eval metrics, last sample)."""

    preempt = run_guard.StopRequest()
    preempt.install()   # first thing: a SIGTERM/SIGINT during set-up or compilation must not kill the run uncleanly
    r = _validate(config, workdir)
    rc, mesh, wd = r.rc, r.mesh, r.workdir
    cfg, t, d = rc.model, rc.train, rc.data
    su = setup.build(cfg, rc.optim, mesh, microbatches=t.microbatches, dropout=t.dropout,
                     eval_cfg=rc.eval_model)
    # refuse a resume on another architecture, shape or tokenizer before creating or changing anything
    checkpoint.check_resume(r.ckpt_dir, rc.to_dict(), r.data_meta, su.abstract_state)

    # ---- set up: workdir, state (restored or fresh), loop and hooks --------------------------------------------
    wd.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        storage.write_text(wd / "config.json", json.dumps(rc.to_dict(), indent=1) + "\n")   # with resolved_impl
        checkpoint.save_tokenizer(r.data_local, wd)   # workdir/tokenizer/: inference works if the data moves
    ckpt = checkpoint.Checkpointer(r.ckpt_dir, every=t.checkpoint_every, keep=t.keep_checkpoints,
                                   async_save=t.async_checkpoint)
    state = _restore_or_init(r, su, ckpt)
    start = int(jax.device_get(state.step))
    _say(f"{cfg.arch}: {train_state.count_params(state):,} params | mesh {dict(mesh.shape)} on {jax.device_count()} "
         f"{jax.devices()[0].platform} device(s) | batch {t.global_batch}x{d.seq_len} ({t.microbatches} "
         f"microbatch(es)) | steps {start}->{t.steps}")
    writer = metrics.MetricWriter(wd, trackers_spec=t.trackers, wandb_project=t.wandb_project,
                                  run_config={**rc.to_dict(), "tokenizer_hash": r.data_meta["tokenizer_hash"]})
    lp, evaluation = _default_loop(r, su, ckpt, writer, preempt)

    # ---- the loop -------------------------------------------------------------------------------------------
    it = loader.make_iterator(r.train_src, start, jax.process_index(), jax.process_count(), d.num_workers,
                              num_steps=max(t.steps - start, 1))
    batches = (train_step.global_batch(b, mesh, t.global_batch) for b in it)
    try:
        res = lp.run(state, batches, start=start, total=t.steps)
    except FloatingPointError as e:   # the checkpoint whose state gave the non-finite loss is not trusted
        raise FloatingPointError(ckpt.after_nonfinite(e)) from None
    if res.stopped:
        _say(f"{preempt.signal_name or 'SIGTERM'}: saved {r.ckpt_dir / str(res.step)}; exiting (re-run the same "
             "command to resume)")
        writer.close()
        return {"step": res.step, "train": res.metrics, "eval": evaluation.last, "preempted": True,
                "signal": preempt.signal_name}
    final = int(jax.device_get(res.state.step))
    if final == start or not t.eval_every:
        evaluation.run(final, res.state.params)   # nothing trained this time, or evaluation off: still show text
    if t.export_params:
        path = checkpoint.export_params(wd / "export", res.state.params, rc.requested_model.to_dict())
        _say(f"exported params to {path}")
    ckpt.close()
    writer.close()
    return {"step": final, "train": res.metrics, "eval": evaluation.last, "preempted": False}


def print_config(config: Any) -> int:
    """`--print_config`: the resolved config as JSON on stdout, exactly what a run would record in config.json.
    Nothing is written. The vocabulary comes from a local data.path's manifest; with data.path unset, missing or
    remote (not downloaded here) model.vocab_size stays unresolved (0) and a note on stderr says why."""

    if config is None:
        raise run_config.ConfigError("--config is required (e.g. --config=tiny_cpu)")
    vocab, why = None, "data.path is unset"
    if config.data.path and storage.is_remote(config.data.path):
        why = f"data.path={config.data.path} is remote (not downloaded by --print_config)"
    elif config.data.path:
        try:
            vocab = int(store.read_manifest(config.data.path)["tokenizer"]["vocab_size"])
        except (DataError, KeyError, TypeError) as e:
            why = f"cannot read data.path: {e}"
    try:
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as e:
        raise run_config.ConfigError(str(e)) from None
    rc = run_config.resolve(config, vocab, sharding.data_parallel_size(mesh), jax.process_count(),
                            require_data=False)
    print(json.dumps(rc.to_dict(), indent=1), flush=True)
    if vocab is None and rc.model.vocab_size == 0:
        print(f"note: model.vocab_size is unresolved (0): {why}", file=sys.stderr, flush=True)
    return 0


def _body(rest: list[str]) -> int:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # Orbax logs every save at INFO; --verbosity=0 shows them
        run_guard.quiet_orbax_errors()           # and a failed save with tracebacks: reported below in one line
    config = cli_util.load_config(flags.FLAGS)
    if _PRINT_CONFIG.value:
        try:
            return print_config(config)
        except (ConfigError, DataError) as e:
            raise cli_util.CommandError(str(e)) from None
    try:
        distributed.maybe_initialize()   # before any device is touched; no-op for a single process
        with run_guard.workdir_guard(_WORKDIR.value):   # one run per workdir, released on any exit
            summary = train(config, _WORKDIR.value)
    except (ConfigError, DataError, CheckpointError, FloatingPointError, distributed.DistributedError,
            run_guard.workdir_lock.LockError) as e:
        raise cli_util.CommandError(str(e)) from None
    except OSError as e:   # disk full or read-only while writing metrics, config.json, ...
        raise cli_util.CommandError(run_guard.io_error_line(e, _WORKDIR.value)) from None
    except KeyboardInterrupt:   # Ctrl-C twice, or during start-up
        return cli_util.report("train", "interrupted (SIGINT) before a checkpoint could be saved",
                               run_guard.SIGINT_EXIT)
    if summary.get("signal") == "SIGINT":
        return run_guard.SIGINT_EXIT
    if summary.get("eval", {}).get("sample"):
        _say("\n=== generated text ===\n" + summary["eval"]["sample"])
    return 0


def main(argv: Optional[Sequence[str]] = None, on_failure: Callable[[], None] = lambda: None) -> int:
    """The CLI (absl flags on the global FLAGS, which also hold distributed.py's); returns the exit status.
    `on_failure()` runs when the run fails, before the error line is written."""
    def body(args: list[str]) -> int:
        try:
            code = _body(args)
        except BaseException:
            on_failure()
            raise
        if code:
            on_failure()
        return code

    return cli_util.run("train", flags.FLAGS, body, argv, doc=__doc__)


class _QuietThreadsAfterFailure:
    """stderr of the `train` process: once `failed` is set, only the main thread writes. After a failed save,
    Orbax's background threads may print "Event loop is closed" tracebacks while the one-line error is written;
    seen in CI interleaved before it (the error must be the only line)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.failed = stream, threading.Event()

    def write(self, text: str) -> int:
        if self.failed.is_set() and threading.current_thread() is not threading.main_thread():
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def cli() -> None:
    """The console-script entry point (`mosaic-train`), also run by `python -m mosaic_jax.train`."""
    sys.stderr = quiet = _QuietThreadsAfterFailure(sys.stderr)
    code = main(on_failure=quiet.failed.set)
    if code:
        # After a failed save, Orbax's background threads may still print "Event loop is closed" tracebacks while
        # the interpreter tears down. The one-line error is out and the lock released: skip the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
