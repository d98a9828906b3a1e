r"""Where the time of one training step goes: per-op time from a `jax.profiler` trace of the real step
(`bench.train_variant`), grouped by the JAX source of each XLA op (its HLO `op_name` metadata).

    python benchmarks/profile_step.py --arch=mosaic --dtype=float32 --impl=fast+scan_layers=False --steps=3

Prints one JSON line per (dtype) with the op time per step in each group and the top ops. On a loaded machine op
times include time descheduled; compare shares within one profile, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax

from mosaic_jax.tools import bench

# (group, regex on the op_name metadata, i.e. the Flax module path / JAX function); first match wins.
GROUPS = (
    ("P-mem read kernel (slot softmax, chunk loop)", r"/pmem/while|persistent_read|hcd,hpd|hcp,hpd|hdc,hcp"),
    ("C-mem read kernel (T×T softmax, chunk loop)", r"/cmem/while|contextual_read|gtd,gsd|gts,gsd|gdt,gts"),
    ("GPT-2 attention", r"/attn/|causal_attention|dot_product_attention"),
    ("GPT-2 MLP", r"/mlp/"),
    ("key features (W_k, leaky average, normalise)", r"k_features|leaky"),
    ("value features / C-mem values", r"v_features|/values|value"),
    ("out projections", r"/out/"),
    ("LayerNorm", r"/ln1/|/ln2/|/ln_out/|/ln_1/|/ln_2/|layer_norm"),
    ("tied head + cross-entropy", r"head_cross_entropy|_ce_|mc,vc|mv,vc|cm,mv|logsumexp|cross_entropy|loss"),
    ("embedding", r"/embed|wte|take"),
)


CONTAINER = re.compile(r"(while|call|conditional)(\.\d+)?$")


def group_of(op_name: str) -> str:
    bwd = " [bwd]" if "transpose(" in op_name else ""
    for g, rx in GROUPS:
        if re.search(rx, op_name):
            return g + bwd
    if "jvp(" not in op_name and "transpose(" not in op_name:
        return "optimizer (AdamW + clip) and other top-level"
    return "other in the model (residual adds, reshapes, copies)" + bwd


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction / fusion name -> op_name metadata (for fusions: the metadata of the fusion itself)."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"", hlo_text, re.M):
        out.setdefault(m.group(1), m.group(2))
    return out


def profile(arch: str, size: str, dtype: str, impl: str, steps: int, batch: int, seq: int) -> dict:
    cfg = bench.model_config(arch, size, seq, dtype, impl, 0.0, "none")
    v = bench.train_variant(cfg, batch, seq, warmup=1)
    names = op_names(v.hlo)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(steps):
                v.run()
            wall = (time.perf_counter() - t0) / steps
        trace = next(pathlib.Path(d).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: collections.Counter = collections.Counter()
    for e in events:   # loops and calls are spans around their bodies' ops: counting them would count twice
        if e.get("ph") == "X" and e.get("name") in names and not CONTAINER.match(e["name"]):
            per_op[e["name"]] += e.get("dur", 0) / 1e6 / steps
    groups: collections.Counter = collections.Counter()
    for n, t in per_op.items():
        groups[group_of(names[n])] += t
    total = sum(per_op.values())
    return {"arch": arch, "dtype": dtype, "impl": impl, "wall_s_per_step": round(wall, 3),
            "op_s_per_step": round(total, 3),
            "groups": {g: [round(t, 3), round(100 * t / total, 1)] for g, t in groups.most_common()},
            "top_ops": [[n, round(t, 4), names[n][-90:]] for n, t in per_op.most_common(15)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mosaic")
    ap.add_argument("--size", default="cpu")
    ap.add_argument("--dtype", default="float32,bfloat16")
    ap.add_argument("--impl", default="fast+scan_layers=False")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    for dtype in a.dtype.split(","):
        print(json.dumps(profile(a.arch, a.size, dtype, a.impl, a.steps, a.batch, a.seq)), flush=True)


if __name__ == "__main__":
    main()
