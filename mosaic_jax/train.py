r"""Train a memory mosaic (or the GPT-2 baseline) on a prepared data folder.

    python -m mosaic_jax.train --config=tiny_cpu --workdir=runs/tiny_cpu \
        [--config.data.path=DIR] [--config.train.steps=2000] [--config.mesh.fsdp=-1] ...   (or mosaic-train)

Re-running the same command resumes from the newest complete checkpoint in the workdir. SIGTERM (preemption)
saves a checkpoint and exits 0; SIGINT (Ctrl-C) saves and exits 130. A bad flag exits 2; bad input, a workdir held
by another run (`workdir/lock.json`) and I/O failures (disk full, read-only) exit 1, each with a one-line error
naming the field or file; bad input before anything is written. See docs/training.md.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, Sequence

from absl import flags, logging
from ml_collections import config_flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage             # first: maps STORAGE_EMULATOR_HOST before gcsfs/tensorstore load
from mosaic_jax.parallel import distributed   # defines --coordinator_address, --num_processes, --process_id, ...
from mosaic_jax.training import run_guard     # defines --break_lock

config_flags.DEFINE_config_file("config", None, "A preset name (tiny_cpu, babistories_mm, ...: mosaic_jax/presets/) "
                                "or an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, TensorBoard, config.json.")


def _say(message: str) -> None:
    import jax
    if jax.process_index() == 0:
        print(message, flush=True)


def train(config: Any, workdir: str) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last train/eval metrics, last sample)."""
    import jax

    from mosaic_jax.models import flops
    from mosaic_jax.parallel import sharding
    from mosaic_jax.training import checkpoint, heldout, metrics, profiling, run_config, setup
    from mosaic_jax.training import train_state, train_step
    from mosaic_jax.data import loader, store, tokenizers
    from mosaic_jax.data.errors import DataError

    preempt = run_guard.StopRequest()
    preempt.install()   # first thing: a SIGTERM/SIGINT during set-up or compilation must not kill the run uncleanly
    # ---- validate every input before writing anything --------------------------------------------------------
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
    pi, pc = jax.process_index(), jax.process_count()
    rc = run_config.resolve(config, ds.vocab_size, sharding.data_parallel_size(mesh), pc)
    cfg, t, d = rc.model, rc.cfg.train, rc.cfg.data
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
    ckpt_dir = workdir_p / "checkpoints"
    su = setup.build(cfg, rc.optim, mesh, microbatches=t.microbatches, dropout=t.dropout)
    target = su.abstract_state
    # refuse a resume on another architecture, shape or tokenizer before creating or changing anything
    checkpoint.check_resume(ckpt_dir, rc.to_dict(), data_meta, target)

    # ---- set up: workdir, state (restored or fresh), compiled steps --------------------------------------------
    workdir_p.mkdir(parents=True, exist_ok=True)
    if pi == 0:
        storage.write_text(workdir_p / "config.json", rc.cfg.to_json_best_effort(indent=1) + "\n")
        checkpoint.save_tokenizer(ds.path, workdir_p)   # workdir/tokenizer/: inference works if the data moves
    ckpt = checkpoint.Checkpointer(ckpt_dir, every=t.checkpoint_every, keep=t.keep_checkpoints,
                                   async_save=t.async_checkpoint)
    restored = ckpt.restore(target, say=_say) if ckpt.latest_step() is not None else None
    if restored is not None:
        step0, state, _ = restored
        _say(f"resumed from {ckpt_dir / str(step0)} (step {step0})")
    else:
        state = train_state.create_sharded_state(cfg, su.tx, t.seed, su.shardings)
    start = int(jax.device_get(state.step))
    n_params = train_state.count_params(state)
    _say(f"{cfg.arch}: {n_params:,} params | mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform}"
         f" device(s) | batch {t.global_batch}x{d.seq_len} ({t.microbatches} microbatch(es)) | steps {start}->{t.steps}")

    # several processes: compile, wait for all, then run (gloo on CPU gives a first collective only 30 s)
    step_fn = distributed.compile_then_align(su.train_step, "train step")
    eval_fn = distributed.compile_then_align(su.eval_step, "eval step")
    tokenizer = tokenizers.load_tokenizer(ds.path)   # ds.path: the local copy of gs:// data
    writer = metrics.MetricWriter(workdir_p, trackers_spec=t.trackers, wandb_project=t.wandb_project,
                                  run_config={**rc.to_dict(), "tokenizer_hash": ds.tokenizer_hash})
    profiler = profiling.StepProfiler(run_config.parse_profile_steps(t.profile_steps, t.steps), workdir_p, pi, pc)
    flops_per_token = flops.train_flops_per_token(cfg, d.seq_len)
    peak, peak_src = flops.total_peak_flops(workdir_p, cfg.dtype, t.peak_flops)
    _say(f"MFU: {flops_per_token / 1e6:.2f} MFLOP/token ({flops.FORMULA_VERSION}); peak "
         f"{(peak or 0) / 1e9:,.0f} GFLOP/s ({peak_src})")
    ckpt_cfg = rc.to_dict()

    def run_eval(step: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if val_src is not None and t.eval_batches:
            out = heldout.evaluate(eval_fn, state.params, val_src, t.eval_batches, mesh, pi, pc)
            writer.write_scalars(step, out, split="eval")
            _say(f"eval step {step} | loss {out['loss']:.4f} | perplexity {out['perplexity']:.2f}")
        if t.sample_tokens:
            text = heldout.sample_text(cfg, state.params, tokenizer, t.sample_prompt, t.sample_tokens,
                                           temperature=t.sample_temperature, seed=step)
            writer.write_text(step, "sample", text)
            out["sample"] = text
            _say(f"sample step {step}: {text!r}")
        return out

    # ---- the loop -------------------------------------------------------------------------------------------
    it = loader.make_iterator(train_src, start, pi, pc, d.num_workers, num_steps=max(t.steps - start, 1))
    pending: list[tuple[int, Any]] = []   # (step, device metrics), read one step late so dispatch runs ahead
    last: dict[str, Any] = {}
    window_start, window_steps = time.perf_counter(), 0   # the clock for tokens/s

    def drain(upto: int = 0, timed: bool = True) -> None:
        """Fetch pending metrics (all but the newest `upto`), stop on NaN/Inf, log every log_every steps.

        Fetching step s's metrics waits for step s to finish, so (now - window_start) / steps fetched since
        is the time per step, while step s+1 already runs on the device."""
        nonlocal window_start, window_steps, last
        while len(pending) > upto:
            step, m = pending.pop(0)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            window_steps += 1
            metrics.check_finite(step, m)
            last = m
            if step % t.log_every == 0 or step == t.steps:
                if timed:
                    dt = (time.perf_counter() - window_start) / window_steps
                    tps = t.global_batch * d.seq_len / dt
                    m.update(step_time=dt, tokens_per_s=tps, mfu=flops.mfu(tps, flops_per_token, peak))
                mem_gb = metrics.peak_memory_gb()   # None where the backend has no memory stats (CPU): not logged
                if mem_gb is not None:
                    m["peak_memory_gb"] = mem_gb
                writer.write_scalars(step, m)
                _say(metrics.console_line(step, t.steps, m))
                window_start, window_steps = time.perf_counter(), 0

    def restart_clock() -> None:
        """Compilation and evaluation are not step time."""
        nonlocal window_start, window_steps
        window_start, window_steps = time.perf_counter(), 0

    eval_out: dict[str, Any] = {}
    try:
        for step in range(start, t.steps):
            batch = train_step.global_batch(next(it), mesh, t.global_batch)
            profiler.before(step)
            state, m = step_fn(state, batch)
            profiler.after(step, state)
            done = step + 1
            pending.append((done, m))
            if step == start:  # the first step compiles: keep it out of tokens/s and MFU
                drain(timed=False)
                restart_clock()
            else:
                drain(upto=1)
            save_error = ckpt.poll()   # an async save that failed stops the run now, not an interval later
            stop, save_failed = preempt.agreed(save_error is not None)
            if save_failed:
                raise save_error or checkpoint.CheckpointError(
                    f"a checkpoint save failed on another process (workdir {workdir_p}); see that process's log")
            if ckpt.should_save(done) or done == t.steps or stop:
                drain()   # never save a state whose loss or gradient is not finite
                ckpt.save(done, state, ckpt_cfg, {**data_meta, "position": done}, force=True)
                writer.flush()   # gs://: the metrics up to a checkpoint reach the bucket with it (a resume re-logs the rest)
            if t.eval_every and (done % t.eval_every == 0 or done == t.steps) and not stop:  # preempted: hurry
                drain()
                eval_out = run_eval(done)
                restart_clock()
            if stop:
                ckpt.wait()
                _say(f"{preempt.signal_name or 'SIGTERM'}: saved {ckpt_dir / str(done)}; exiting (re-run the same "
                     "command to resume)")
                writer.close()
                return {"step": done, "train": last, "eval": eval_out, "preempted": True,
                        "signal": preempt.signal_name}
        drain()
    except FloatingPointError as e:   # the checkpoint whose state gave the non-finite loss is not trusted
        raise FloatingPointError(ckpt.after_nonfinite(e)) from None
    finally:
        profiler.stop()
        ckpt.wait()   # keep every save already started (the last good checkpoint stays on errors)
    final = int(jax.device_get(state.step))
    if final == start or not t.eval_every:
        eval_out = run_eval(final)   # nothing trained this time (already done) or evaluation off: still show text
    if t.export_params:
        path = checkpoint.export_params(workdir_p / "export", state.params, cfg.to_dict())
        _say(f"exported params to {path}")
    ckpt.close()
    writer.close()
    return {"step": final, "train": last, "eval": eval_out, "preempted": False}


def _body(rest: list[str]) -> int:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # Orbax logs every save at INFO; --verbosity=0 shows them
        run_guard.quiet_orbax_errors()           # and a failed save with tracebacks: reported below in one line
    from mosaic_jax.training.checkpoint import CheckpointError
    from mosaic_jax.training.run_config import ConfigError
    from mosaic_jax.data.errors import DataError
    config = cli_util.load_config(flags.FLAGS)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI (absl flags on the global FLAGS, which also hold distributed.py's); returns the exit status."""
    return cli_util.run("train", flags.FLAGS, _body, argv, doc=__doc__)


def cli() -> None:
    """The console-script entry point (`mosaic-train`), also run by `python -m mosaic_jax.train`."""
    code = main()
    if code:
        # After a failed save, Orbax's background threads may still print "Event loop is closed" tracebacks while
        # the interpreter tears down. The one-line error is out and the lock released: skip the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
