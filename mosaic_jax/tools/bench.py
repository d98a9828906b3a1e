r"""Benchmark harness: training-step tokens/s, MFU and memory of the memory mosaic and the GPT-2 baseline, and
decode speed. One JSON line per row on stdout (the device named in every row), a markdown table on request.

    python -m mosaic_jax.tools.bench --smoke                                   # CI: tiny model, 2 timed steps
    python -m mosaic_jax.tools.bench --size=cpu --dtype=float32,bfloat16 --impl=fast,plain \
        --torch=compile,compile-bf16 --markdown                          # the CPU comparison of issues 9 and 17
    python -m mosaic_jax.tools.bench --size=gpt2-small --seq=512 --batch=8 --dtype=bfloat16     # GPU, one card

Timing: every variant is compiled and warmed up first (warm-up excluded), then the variants run INTERLEAVED,
one step each per round, for --rounds rounds, so that all rows see the same machine load; a row reports the
median (and best) step time. On a shared machine compare rows of one run only. `--torch` adds the PyTorch
reference (benchmarks/torch_reference.py, needs torch) to the same rounds: `eager`/`compile` in float32,
`eager-bf16`/`compile-bf16` under torch.autocast(bfloat16) (the reference's mixed precision), rows of dtype
bfloat16. Ratios (vs_torch_*, vs_gpt2) only ever pair rows of the same dtype, shape, dropout and device
(bench_report.add_ratios). Every row names the CPU model and its matmul flags (AVX2/AVX-512/AVX512-BF16/AMX,
hostinfo.py) and the load average (1/5/15 min) at the start and end of the timed rounds.

MFU = train_flops_per_token (flops.py: 3 × forward matmul FLOPs, full T×T, remat excluded) × tokens/s ÷ peak.
The peak is the table value on accelerators, and on CPU the best matmul rate (1024³) measured in every round of
this run in the row's compute dtype (bfloat16 operands with float32 accumulation for bfloat16), unless
--peak_flops is given.
Profile: --profile=DIR writes a jax.profiler trace of every JAX row's step to DIR/<row name>/ (training.profiling,
as train.profile_steps): after the timed rounds, so that the profiler's overhead stays out of the reported times,
each row runs --profile_steps more steps of the same compiled step under the trace; the row records their median
as `profiled_step_ms` and the folder as `profile_dir`. Open it with `tensorboard --logdir DIR` or xprof.
Memory: per row, XLA's compiled footprint of the step (arguments + outputs + temporaries − aliased); per run,
`device_peak_gb`, the device's peak bytes in use over all variants together where the backend reports it
(GPU, TPU): run one variant per call to read it as that variant's peak.

This module is the timing loop, the flags and the rows; what each row times (the training step, the decode loop,
the PyTorch worker) is built in `bench_variants`, the ratios and the table in `bench_report`.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import sys
import time
import types
from typing import Any, Optional, Sequence

import jax
from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.models import flops, registry
from mosaic_jax.tools import bench_report, hostinfo
from mosaic_jax.tools.bench_variants import (PLAIN, REFERENCE_SCRIPT, SIZES, TORCH_MODES,  # noqa: F401 (public)
                                             Variant, decode_variant, device_name, device_peak_gb, model_config,
                                             torch_variant, train_variant, xla_memory_bytes)
from mosaic_jax.training import profiling


def peak_for(dtype: str, override: float, cpu_peaks: dict[str, float]) -> tuple[Optional[float], str]:
    if override > 0:
        return override * jax.device_count(), "--peak_flops"
    if jax.devices()[0].platform != "cpu":
        peak = flops.device_peak_flops()
        return (None, "unknown device") if peak is None else (peak * jax.device_count(), "table (dense bf16)")
    return cpu_peaks[dtype], f"measured CPU {dtype} matmul peak (1024³, best over the rounds)"


def interleave(variants: Sequence[Variant], rounds: int, pause: float, cpu_peaks: dict[str, float]) -> None:
    """One step of every variant per round; on CPU the matmul peak of each dtype is measured in every round
    too (its best is kept), so that MFU is taken against the same machine state as the steps."""
    t_start = time.perf_counter()
    for i in range(rounds):
        if i:
            spent = time.perf_counter() - t_start
            print(f"[bench] round {i + 1}/{rounds}  {spent:.0f}s elapsed, ETA {spent / i * (rounds - i):.0f}s",
                  file=sys.stderr, flush=True)
        for v in variants:
            time.sleep(pause)   # let the previous variant's worker threads stop spinning (not timed)
            t0 = time.perf_counter()
            own = v.run()
            v.times.append(time.perf_counter() - t0 if own is None else own)
        for dtype in cpu_peaks:
            time.sleep(pause)
            cpu_peaks[dtype] = max(cpu_peaks[dtype], flops.measure_cpu_peak(dtype, repeats=5))


def row_name(row: dict[str, Any]) -> str:
    """A row's folder name under --profile: bench, arch, size, T, B, dtype, impl (what varies between rows)."""
    name = f"{row['bench']}_{row['arch']}_{row['size']}_T{row['T']}_B{row['B']}_{row['dtype']}_{row['impl']}"
    return re.sub(r"[^\w.+=-]", "_", name)


def profile_rows(variants: Sequence[Variant], root: str, steps: int) -> None:
    """Trace `steps` further steps of every JAX row into root/<row name>/ (torch rows run in another process)."""
    for v in variants:
        if "torch" in v.row:
            continue
        directory = pathlib.Path(root) / row_name(v.row)
        profiler = profiling.StepProfiler((0, steps), directory, 0, 1, directory=directory)
        times = []
        for i in range(steps):
            profiler.before(i)
            t0 = time.perf_counter()
            own = v.run()   # blocks until the step is done
            times.append(time.perf_counter() - t0 if own is None else own)
            profiler.after(i, None)
        v.row |= {"profile_dir": str(directory), "profiled_step_ms": statistics.median(times) * 1e3}
        print(f"[bench] profile of {row_name(v.row)}: {directory}", file=sys.stderr, flush=True)


def finish(v: Variant, peak: tuple[Optional[float], str], load: dict[str, list[float]]) -> dict[str, Any]:
    r = dict(v.row)
    med, best = statistics.median(v.times), min(v.times)
    if r["bench"] == "decode":
        toks = r["B"] * r["new_tokens"]
        r.update(decode_ms_per_token=med / r["new_tokens"] * 1e3, tokens_per_s=toks / med)
        return r | {"rounds": len(v.times), "load_avg": load}
    toks = r["B"] * r["T"]
    tps = toks / med
    r.update(step_ms=med * 1e3, step_ms_best=best * 1e3, tokens_per_s=tps, tokens_per_s_best=toks / best,
             rounds=len(v.times), peak_flops=peak[0], peak_source=peak[1],
             mfu=flops.mfu(tps, r["flops_per_token"], peak[0]), load_avg=load)
    return r


FLAGS = flags.FlagValues()
flags.DEFINE_bool("smoke", False, "CI smoke test: tiny model, 2 rounds, train + decode.", flag_values=FLAGS)
flags.DEFINE_string("arch", "mosaic,gpt2", "Comma list of model families: mosaic, gpt2, mosaic_v2, or a plug-in's "
                    "(with --family_module).", flag_values=FLAGS)
flags.DEFINE_string("family_module", "", "Module that registers a plug-in family named in --arch "
                    "(docs/extending.md).", flag_values=FLAGS)
flags.DEFINE_string("size", "cpu", f"Comma list of {sorted(SIZES)}.", flag_values=FLAGS)
flags.DEFINE_string("seq", "256", "Comma list of sequence lengths.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 8, "Rows per step.", flag_values=FLAGS)
flags.DEFINE_string("dtype", "float32", "Comma list: float32, bfloat16.", flag_values=FLAGS)
flags.DEFINE_string("impl", "fast", "Comma list: fast (config defaults: auto), plain (all dense), each optionally "
                    "+field=value.", flag_values=FLAGS)
flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "Rematerialisation.", flag_values=FLAGS)
flags.DEFINE_float("dropout", 0.0, "ic/hd dropout (0: the reference comparison).", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_integer("rounds", 10, "Timed interleaved rounds (one step per variant each).", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "Untimed steps per variant after compiling.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float("pause", 0.2, "Seconds of idle before each timed step.", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_bool("decode", False, "Also time decoding (prefill --seq/2, then new tokens).", flag_values=FLAGS)
flags.DEFINE_integer("decode_tokens", 64, "New tokens per decode timing.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("torch", "", "Comma list: eager, compile (float32), eager-bf16, compile-bf16 (autocast "
                    "bfloat16): PyTorch reference rows, CPU only.", flag_values=FLAGS)
flags.DEFINE_float("peak_flops", 0.0, "Per-device peak FLOP/s (0: table/measured).", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_bool("markdown", False, "Print a markdown table after the JSON lines.", flag_values=FLAGS)
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.", flag_values=FLAGS)
flags.DEFINE_string("plot", "", "Also write a PNG bar chart of training tokens/s to this path.", flag_values=FLAGS)
flags.DEFINE_string("profile", "", "Write a jax.profiler trace of every JAX row's step to DIR/<row name>/ (after "
                    "the timed rounds, which stay untraced).", flag_values=FLAGS)
flags.DEFINE_integer("profile_steps", 3, "Steps per row traced by --profile.", lower_bound=1, flag_values=FLAGS)


def parse(argv: Optional[Sequence[str]]) -> types.SimpleNamespace:
    """The flags (cli_util: --help exits 0; a bad flag or value is one line `bench: error: ...`, exit 2)."""
    rest = cli_util.parse("bench", FLAGS, sys.argv[1:] if argv is None else argv, __doc__)
    if rest:
        raise SystemExit(cli_util.report("bench", f"unexpected arguments: {' '.join(rest)}", cli_util.USAGE_EXIT))
    a = cli_util.namespace(FLAGS)
    if a.smoke:
        a.size, a.seq, a.batch, a.rounds, a.warmup, a.decode = "tiny", "32", 2, min(a.rounds, 2), 1, True
        a.decode_tokens = min(a.decode_tokens, 4)
    try:
        check_args(a)
        if a.out:   # appended to at the end: a missing folder would lose the whole run's rows
            cli_util.check_out_parent("out", a.out)
        if a.profile:
            cli_util.check_out_parent("profile", a.profile)
            if os.path.exists(a.profile) and not os.path.isdir(a.profile):
                raise cli_util.CommandError(f"--profile={a.profile}: exists and is not a folder")
    except ValueError as e:    # before anything is compiled
        raise SystemExit(cli_util.report("bench", e, cli_util.USAGE_EXIT))
    except cli_util.CommandError as e:
        raise SystemExit(cli_util.report("bench", e, cli_util.FAILURE_EXIT))
    return a


CHOICES = {"dtype": ("float32", "bfloat16"), "torch": tuple(TORCH_MODES)}


def check_args(a: Any) -> None:
    """Every comma-list value is one the harness knows, so a typo fails now, not after minutes of compiling."""
    for x in filter(None, a.arch.split(",")):
        try:
            registry.get(x, a.family_module)
        except ValueError:
            raise ValueError(f"--arch={x!r}: must be one of {', '.join(registry.names())} (or a plug-in family "
                             "registered by --family_module)") from None
    for name, allowed in CHOICES.items() | {("size", tuple(SIZES))}:
        for x in getattr(a, name).split(","):
            if x and x not in allowed:
                raise ValueError(f"--{name}={x!r}: must be one of {', '.join(allowed)}")
    for x in a.seq.split(","):
        if not x.isdigit() or int(x) < 2:
            raise ValueError(f"--seq={x!r}: must be an integer >= 2")
    for impl in filter(None, a.impl.split(",")):
        model_config("mosaic", "tiny", 32, "float32", impl, 0.0, "none")   # raises on a bad base or field
    if a.torch and not REFERENCE_SCRIPT.exists():
        raise ValueError(f"--torch needs {REFERENCE_SCRIPT} (a source checkout)")
    if a.rounds < 1 or a.batch < 1:
        raise ValueError(f"--rounds={a.rounds} and --batch={a.batch} must be >= 1")


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    a = parse(argv)

    lists = {k: [x for x in getattr(a, k).split(",") if x] for k in ("arch", "size", "seq", "dtype", "impl", "torch")}
    dev = hostinfo.device_fields()
    variants: list[Variant] = []
    for size in lists["size"]:
        for seq in map(int, lists["seq"]):
            for arch in lists["arch"]:
                for dtype in lists["dtype"]:
                    for impl in lists["impl"]:
                        cfg = model_config(arch, size, seq, dtype, impl, a.dropout, a.remat, a.family_module)
                        base = dev | {"arch": arch, "size": size, "T": seq, "B": a.batch, "dtype": dtype,
                                      "impl": impl, "remat": a.remat, "dropout": a.dropout,
                                      "L": cfg.n_layer, "C": cfg.n_embd, "H": cfg.n_head, "V": cfg.vocab_size,
                                      "P": None} | registry.of(cfg).describe(cfg)
                        t0 = time.perf_counter()
                        v = train_variant(cfg, a.batch, seq, a.warmup)
                        print(f"[bench] set up {arch} {size} T{seq} {dtype} {impl}: compiled and warmed in "
                              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
                        v.row = base | v.row
                        variants.append(v)
                        if a.decode:
                            d = decode_variant(cfg, a.batch, max(seq // 2, 1), a.decode_tokens, a.warmup)
                            d.row = base | d.row
                            variants.append(d)
            for mode in lists["torch"]:
                v = torch_variant(mode, size, a.batch, seq, a.warmup)
                L, C, H, P, V = SIZES[size]
                v.row = dev | {"arch": "mosaic", "size": size, "T": seq, "B": a.batch, "dtype": TORCH_MODES[mode],
                               "impl": f"torch-{mode.removesuffix('-bf16')}", "remat": "none", "dropout": 0.0,
                               "L": L, "C": C, "H": H, "V": V, "P": P} | v.row
                variants.append(v)
    load0 = [round(x, 2) for x in os.getloadavg()]
    cpu = jax.devices()[0].platform == "cpu" and a.peak_flops <= 0
    peaks = {v.row["dtype"]: 0.0 for v in variants} if cpu else {}
    interleave(variants, a.rounds, a.pause, peaks)
    load = {"start": load0, "end": [round(x, 2) for x in os.getloadavg()]}
    if a.profile:
        profile_rows(variants, a.profile, a.profile_steps)
    rows = [finish(v, peak_for(v.row["dtype"], a.peak_flops, peaks), load) for v in variants]
    bench_report.add_ratios(rows)
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "device_peak_gb": device_peak_gb(),
            "cmd": "python -m mosaic_jax.tools.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = open(a.out, "a") if a.out else None
    for r in rows:
        line = json.dumps(r | meta, default=float)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
    if out:
        out.close()
    if a.markdown:
        print(bench_report.markdown(rows, peaks))
    if a.plot:
        print(f"[bench] plot: {bench_report.plot(rows, a.plot)}", file=sys.stderr)
    return rows


def cli() -> None:
    """Console-script entry point (mosaic-bench)."""
    main()


if __name__ == "__main__":
    cli()
