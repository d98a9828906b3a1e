"""Model FLOPs (analytic, per architecture), the per-device peak table, MFU, and a measured CPU matmul peak.

Convention (nanoGPT / PaLM "model FLOPs", as in ../shared/spec/performance_notes.md):
  * only matmuls count, 2 FLOPs per multiply-add; elementwise work (softmax, norms, the O(C) leaky average) does
    not; a training step is 3 × forward (backward = 2 × forward); rematerialisation is NOT counted;
  * NO causal halving: the T×T score and read-out matmuls count the full square, because that is what the
    memory mosaic computes (dense masked kernel regression) and what nanoGPT reports. MaxText halves them
    (`causal_halving=True` here gives that number; it changes MFU by 4TC/(total) per layer).

Forward FLOPs per token, with L layers, width C, T tokens of context, vocabulary V, key conv width K,
P slots per head and N slot tables:
  memory mosaic: L·((6 + 4K)·C² + 4·N·P·C + 4·T·C) + 2·C·V
      C-mem: W_k (K·C→C) 2KC², W_v 2C², c_proj 2C², scores q·kᵀ 2TC, read A·v 2TC
      P-mem: W_k 2KC², c_proj 2C², slot scores 2NPC, read 2NPC            (K = N = 1: 10C² + 4PC + 4TC)
  GPT-2:         L·(24·C² + 4·T·C) + 2·C·V
      qkv 6C², out 2C², MLP 16C², scores 2TC, A·v 2TC
  both: tied head 2CV. (Input embedding lookups are gathers: 0 FLOPs.)
With P = 3.5C, K = N = 1 the two have identical FLOPs and parameters per layer.
  memory mosaic v2: `models/mosaic_v2/counts.forward_flops_per_token` (projections, SwiGLU FFN, head, and the memory reads
      over the pairs each query actually reads: a short window and a long memory past the skip, averaged over
      positions, as the v2 paper counts them; `causal_halving` does not apply).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from etils import epath
import jax
import jax.numpy as jnp

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig

FORMULA_VERSION = "v1: 3x forward matmul FLOPs, no causal halving, remat excluded"

# Dense bf16 peak FLOP/s per JAX device (not the 2x "with sparsity" figures). Matched against
# `device.device_kind` in order, so more specific names come first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("v6 lite", 918e12),   # Trillium / v6e (device_kind "TPU v6 lite")
    ("v6e", 918e12),
    ("v5 lite", 197e12),   # v5e (device_kind "TPU v5 lite")
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v5", 459e12),        # device_kind "TPU v5" is v5p
    ("v4", 275e12),
)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, causal_halving: bool = False) -> float:
    """Matmul FLOPs of one forward pass, per token, at context length `seq_len` (the family's own count; the
    module docstring gives the formulas of the built-in families)."""
    return float(registry.of(cfg).forward_flops_per_token(cfg, seq_len, causal_halving))


def train_flops_per_token(cfg: ModelConfig, seq_len: int, causal_halving: bool = False) -> float:
    """Forward + backward (2 × forward) model FLOPs per trained token."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, causal_halving)


def device_peak_flops(device: Optional[jax.Device] = None) -> Optional[float]:
    """Table peak (dense bf16 FLOP/s) of one accelerator device, or None when unknown (CPU included)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, peak in PEAK_FLOPS:
        if name in kind:
            return peak
    return None


def measure_cpu_peak(dtype: str = "float32", n: int = 1024, repeats: int = 20) -> float:
    """Best-of-`repeats` FLOP/s of one jitted n×n×n matmul on the default device (best-of: on a shared machine
    the fastest repeat is the one least disturbed by other processes).

    On CPU every (simulated) device shares the same cores, so this is the peak of the whole host. bfloat16 is
    timed as the model computes it: bf16 operands with float32 accumulation (about 2x the f32 rate with AVX512-BF16).
    """
    dt = jnp.dtype(dtype)
    a = b = jnp.ones((n, n), dt)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32 if dt == jnp.bfloat16 else None))
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def cpu_peak_flops(cache_dir: Optional[os.PathLike] = None, dtype: str = "float32") -> float:
    """The measured CPU matmul peak, cached in `cache_dir/cpu_peak_flops.json` (measure once per workdir)."""
    path = epath.Path(cache_dir) / "cpu_peak_flops.json" if cache_dir else None   # epath: also a gs:// workdir
    key = f"{dtype}:{os.cpu_count()}"
    cached: dict[str, float] = {}
    if path is not None and path.exists():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        if key in cached:
            return float(cached[key])
    peak = measure_cpu_peak(dtype)
    if path is not None and jax.process_index() == 0:
        cached[key] = peak
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=1))
    return peak


def total_peak_flops(cache_dir: Optional[os.PathLike] = None, dtype: str = "float32",
                     override: float = 0.0) -> tuple[Optional[float], str]:
    """(peak FLOP/s of the whole job, where it came from). `override` > 0 is taken as the per-device peak."""
    devices = jax.devices()
    if override > 0:
        return override * len(devices), f"config: {override:.3g}/device"
    if devices[0].platform == "cpu":
        return cpu_peak_flops(cache_dir, dtype), f"measured CPU {dtype} matmul peak"
    peak = device_peak_flops(devices[0])
    if peak is None:
        return None, f"unknown device kind {devices[0].device_kind!r} (set train.peak_flops)"
    return peak * len(devices), f"table: {devices[0].device_kind} {peak:.3g}/device"


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s ÷ peak FLOP/s of all devices."""
    if not peak_flops:
        return None
    return tokens_per_s * flops_per_token / peak_flops
