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
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable, Optional, Sequence

from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.models import registry
from mosaic_jax.tools import bench_report
from mosaic_jax.models.config import ModelConfig

# jax, the model and the training step are imported in the functions that run them: --help and a bad flag answer
# in a fraction of a second instead of after jax's ~2 s import.

# name -> (n_layer, n_embd, n_head, pmem_size, vocab_size); P = 3.5·C gives the GPT-2 layer's FLOPs/params
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (2, 64, 4, 224, 512),
    "cpu": (4, 256, 8, 896, 8192),            # the CPU comparison against the PyTorch reference
    "gpt2-small": (12, 768, 12, 2688, 50304),  # the paper's size (BabiStories runs)
    "gpt2-medium": (24, 1024, 16, 3584, 50304),
}
PLAIN = dict(cmem_impl="dense", pmem_impl="dense", loss_impl="dense", proj_impl="dense")   # every fast path off
TORCH_MODES = {"eager": "float32", "compile": "float32", "eager-bf16": "bfloat16", "compile-bf16": "bfloat16"}
REFERENCE_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "torch_reference.py"


@dataclasses.dataclass
class Variant:
    row: dict[str, Any]            # the fixed fields of the output row
    run: Callable[[], Optional[float]]   # one step (blocks until done); may return its own timed seconds
    times: list[float] = dataclasses.field(default_factory=list)
    hlo: str = ""                  # the compiled step's HLO text (train rows; benchmarks/profile_step.py reads it)


def device_name() -> str:
    from mosaic_jax.tools import hostinfo
    return hostinfo.device_fields()["device"]


def model_config(arch: str, size: str, seq: int, dtype: str, impl: str, dropout: float, remat: str,
                 family_module: str = "") -> ModelConfig:
    """impl: "fast" (the config's defaults: every "auto" switch) or "plain" (all dense), optionally followed by
    config overrides "+field=value" (e.g. "fast+scan_layers=False+pmem_impl=dense")."""
    L, C, H, P, V = SIZES[size]
    cfg = ModelConfig(arch=arch, family_module=family_module, n_layer=L, n_embd=C, n_head=H, pmem_size=P,
                      vocab_size=V, block_size=seq, dtype=dtype, ic_dropout=dropout, hd_dropout=dropout, remat=remat)
    base, *overrides = impl.split("+")
    if base not in ("fast", "plain"):
        raise ValueError(f"--impl {impl!r}: must start with 'fast' or 'plain'")
    cfg = cfg.replace(**PLAIN) if base == "plain" else cfg
    for item in overrides:
        name, _, value = item.partition("=")
        if not hasattr(cfg, name) or not _:
            raise ValueError(f"--impl {impl!r}: {item!r} is not field=value for a ModelConfig field")
        default = getattr(cfg, name)
        try:
            cfg = cfg.replace(**{name: (value == "True") if isinstance(default, bool) else type(default)(value)})
        except ValueError as e:
            raise ValueError(f"--impl {impl!r}: {item!r}: {e}") from None
    return cfg


def device_peak_gb() -> Optional[float]:
    """Peak bytes in use on the first local device since the process started (None where not reported: CPU)."""
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2 ** 30 if "peak_bytes_in_use" in stats else None


def xla_memory_bytes(compiled: Any) -> Optional[int]:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 (not every backend reports it)
        return None


def train_variant(cfg: ModelConfig, batch: int, seq: int, warmup: int) -> Variant:
    """The training step `mosaic_jax.train` runs (training.setup.build: AdamW + clip, donated state, jitted with the
    state's shardings) on a one-device mesh, compiled and warmed."""
    import jax
    import jax.numpy as jnp

    from mosaic_jax.models import flops
    from mosaic_jax.parallel import sharding
    from mosaic_jax.training import optim, setup, train_state
    # Peak lr from step 0 and a cosine too long to move within a benchmark: every timed step does the same work.
    optim_cfg = optim.OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, decay_steps=10 ** 6)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    su = setup.build(cfg, optim_cfg, mesh, dropout=cfg.ic_dropout > 0 or cfg.hd_dropout > 0)
    state = train_state.create_sharded_state(cfg, su.tx, 0, su.shardings)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size, jnp.int32)
    data = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding.batch_sharding(mesh))
    t0 = time.perf_counter()
    compiled = su.train_step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def run() -> None:
        box[0], metrics = compiled(box[0], data)
        jax.block_until_ready(metrics["loss"])

    for _ in range(warmup):
        run()
    mem = xla_memory_bytes(compiled)
    row = {"bench": "train", "compile_s": round(compile_s, 1), "xla_mem_gb": None if mem is None else mem / 2 ** 30,
           "flops_per_token": flops.train_flops_per_token(cfg, seq), "params": train_state.count_params(state)}
    return Variant(row, run, hlo=compiled.as_text())


def decode_variant(cfg: ModelConfig, batch: int, prompt: int, new: int, warmup: int) -> Variant:
    """Prefill `prompt` tokens, then time `new` single-token steps (decode.step_jit, cache donated)."""
    import jax
    import jax.numpy as jnp

    from mosaic_jax.inference import decode
    from mosaic_jax.models import lm
    params = lm.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, prompt), 0, cfg.vocab_size, jnp.int32)
    lengths = jnp.full((batch,), prompt, jnp.int32)
    S = prompt + new
    nxt = jnp.zeros((batch,), jnp.int32)

    def run() -> float:   # times the token loop only, not the prefill
        cache = decode.init_cache(cfg, batch, S)
        logits, cache = decode.prefill_jit(cfg, params, tokens, lengths, cache, all_logits=False)
        jax.block_until_ready(logits)
        t0 = time.perf_counter()
        for _ in range(new):
            logits, cache = decode.step_jit(cfg, params, cache, nxt, read_len=S)
        jax.block_until_ready(logits)
        return time.perf_counter() - t0

    for _ in range(max(warmup, 1)):
        run()
    return Variant({"bench": "decode", "prompt": prompt, "new_tokens": new}, run)


def torch_variant(mode: str, size: str, batch: int, seq: int, warmup: int) -> Variant:
    """The PyTorch reference in a worker process (benchmarks/torch_reference.py --serve), one step per call."""
    from mosaic_jax.models import flops
    L, C, H, P, V = SIZES[size]
    cmd = [sys.executable, str(REFERENCE_SCRIPT), "--serve", f"--modes={mode}", f"--layers={L}", f"--embd={C}",
           f"--heads={H}", f"--pmem={P}", f"--vocab={V}", f"--seq={seq}", f"--batch={batch}",
           f"--warmup={max(warmup, 1)}", f"--threads={len(os.sched_getaffinity(0))}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = json.loads(proc.stdout.readline())
    atexit.register(proc.kill)

    def run() -> float:
        proc.stdin.write("step\n")
        return float(proc.stdout.readline())

    cfg = model_config("mosaic", size, seq, "float32", "plain", 0.0, "none")
    precision = "autocast bfloat16, float32 weights" if TORCH_MODES[mode] == "bfloat16" else "float32"
    return Variant({"bench": "train", "compile_s": round(ready["warmup_s"], 1), "xla_mem_gb": None,
                    "flops_per_token": flops.train_flops_per_token(cfg, seq), "threads": ready["threads"],
                    "torch": ready.get("torch"), "torch_precision": precision}, run)


def peak_for(dtype: str, override: float, cpu_peaks: dict[str, float]) -> tuple[Optional[float], str]:
    import jax

    from mosaic_jax.models import flops
    if override > 0:
        return override * jax.device_count(), "--peak_flops"
    if jax.devices()[0].platform != "cpu":
        peak = flops.device_peak_flops()
        return (None, "unknown device") if peak is None else (peak * jax.device_count(), "table (dense bf16)")
    return cpu_peaks[dtype], f"measured CPU {dtype} matmul peak (1024³, best over the rounds)"


def interleave(variants: Sequence[Variant], rounds: int, pause: float, cpu_peaks: dict[str, float]) -> None:
    """One step of every variant per round; on CPU the matmul peak of each dtype is measured in every round
    too (its best is kept), so that MFU is taken against the same machine state as the steps."""
    from mosaic_jax.models import flops
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
    from mosaic_jax.training import profiling
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
    from mosaic_jax.models import flops
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
    a = parse(argv)   # before importing jax: --help and flag errors answer at once
    import jax

    from mosaic_jax.tools import hostinfo
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
