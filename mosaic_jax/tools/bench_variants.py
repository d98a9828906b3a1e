"""What `bench` times: the variants (one row each) and their model configs, built, compiled and warmed.

A `Variant` is one training step (`train_variant`: the step `train` runs), one decode loop (`decode_variant`, the
family's own decoder) or one step of the PyTorch reference in a worker process (`torch_variant`). `bench` runs
them interleaved and turns their times into rows (mosaic_jax/tools/bench.py).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mosaic_jax.models import flops, lm, registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.parallel import sharding
from mosaic_jax.tools import hostinfo
from mosaic_jax.training import optim, setup, train_state

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
    return hostinfo.device_fields()["device"]


def model_config(arch: str, size: str, seq: int, dtype: str, impl: str, dropout: float, remat: str,
                 family_module: str = "") -> ModelConfig:
    """impl: "fast" (the config's defaults: every "auto" switch) or "plain" (all dense), optionally followed by
    config overrides "+field=value" (e.g. "fast+scan_layers=False+pmem_impl=dense")."""
    L, C, H, P, V = SIZES[size]
    cfg = ModelConfig.from_dict(dict(   # from_dict: pmem_size is left out for a family without persistent slots
        arch=arch, family_module=family_module, n_layer=L, n_embd=C, n_head=H, pmem_size=P, vocab_size=V,
        block_size=seq, dtype=dtype, ic_dropout=dropout, hd_dropout=dropout, remat=remat))
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
    """Prefill `prompt` tokens, then time `new` single-token steps (the family's decoder, `registry.decoder`:
    step_jit, cache donated; reading every slot where the decoder bounds its read)."""

    decode = registry.decoder(cfg)
    params = lm.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, prompt), 0, cfg.vocab_size, jnp.int32)
    lengths = jnp.full((batch,), prompt, jnp.int32)
    S = prompt + new
    nxt = jnp.zeros((batch,), jnp.int32)
    read = {"read_len": S} if hasattr(decode, "read_len_for") else {}

    def run() -> float:   # times the token loop only, not the prefill
        cache = decode.init_cache(cfg, batch, S)
        logits, cache = decode.prefill_jit(cfg, params, tokens, lengths, cache, all_logits=False)
        jax.block_until_ready(logits)
        t0 = time.perf_counter()
        for _ in range(new):
            logits, cache = decode.step_jit(cfg, params, cache, nxt, **read)
        jax.block_until_ready(logits)
        return time.perf_counter() - t0

    for _ in range(max(warmup, 1)):
        run()
    return Variant({"bench": "decode", "prompt": prompt, "new_tokens": new}, run)


def torch_variant(mode: str, size: str, batch: int, seq: int, warmup: int) -> Variant:
    """The PyTorch reference in a worker process (benchmarks/torch_reference.py --serve), one step per call."""
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
