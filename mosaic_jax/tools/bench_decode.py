"""Decoding speed: the incremental decoder versus full recompute, per-token latency by position.

    python -m mosaic_jax.tools.bench_decode [--arch=mosaic|gpt2|mosaic_v2] [--positions=64,128,256,512,1024,2048,4096]
        [--batch=1]
        [--n_layer=4 --n_embd=128 --n_head=4 --pmem_size=448 --vocab_size=4096] [--rounds=5 --steps=8]
        [--out=FILE]

At each position P (random tokens, random weights: speed does not depend on them), after a prefill of P tokens,
`rounds` rounds each time `steps` single decoder steps and one full-recompute forward, interleaved so both see
the same machine load:
* decoder: one `step_jit` call of the family's decoder (`registry.decoder`) at positions P, P+1, ..., each one
  waited for, as a streaming generator must (the next input is the sampled token). Where the decoder bounds its
  read (`read_len_for`), the read is bucketed to the next power of two above the position, as
  `sampling.generate_stream` does.
* full recompute: one jitted forward over the P+1 tokens (what a cache-less generator that keeps the whole
  context pays per token; the reference crops to block_size instead, see the "window" line).
Compilation is excluded. The table gives the minimum per call (robust to other processes on a shared machine)
and the speed-up from minima and from medians. Prints a markdown table.
"""
from __future__ import annotations

import json
import platform
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import apply, init_params


def bench_position(cfg: ModelConfig, params: Any, tokens_BT: np.ndarray, P: int, rounds: int, steps: int,
                   cache_size: int) -> dict[str, float]:
    """Seconds per token at position P: decoder steps (after a prefill of P tokens) and full-recompute forwards
    over P+1 tokens, interleaved round by round so that both see the same machine load. Min and median."""

    decode = registry.decoder(cfg)
    read_len_for = getattr(decode, "read_len_for", None)
    B = tokens_BT.shape[0]
    cache = decode.init_cache(cfg, B, cache_size)
    _, cache = decode.prefill_jit(cfg, params, jnp.asarray(tokens_BT[:, :P]), jnp.full((B,), P, jnp.int32),
                                  cache, all_logits=False)
    fwd = jax.jit(lambda p, t: apply(cfg, p, t)[:, -1])
    ctx = jnp.asarray(tokens_BT[:, :P + 1])
    fwd(params, ctx).block_until_ready()                          # compile
    dec_t, rec_t, pos = [], [], P
    for r in range(rounds + 1):                                   # round 0 compiles the step: not timed
        for _ in range(steps if r else 1):
            tok = jnp.asarray(tokens_BT[:, pos])
            t0 = time.perf_counter()
            kw = {} if read_len_for is None else {"read_len": read_len_for(cfg, pos, cache_size)}
            logits, cache = decode.step_jit(cfg, params, cache, tok, **kw)
            logits.block_until_ready()                            # a streaming generator waits for each token
            if r:
                dec_t.append(time.perf_counter() - t0)
            pos += 1
        if r:
            t0 = time.perf_counter()
            fwd(params, ctx).block_until_ready()
            rec_t.append(time.perf_counter() - t0)
    return {"position": P, "decoder_min_s": min(dec_t), "decoder_median_s": float(np.median(dec_t)),
            "recompute_min_s": min(rec_t), "recompute_median_s": float(np.median(rec_t)),
            "speedup_min": min(rec_t) / min(dec_t), "speedup_median": float(np.median(rec_t) / np.median(dec_t))}


def window_recompute(cfg: ModelConfig, params: Any, batch: int, reps: int) -> float:
    fwd = jax.jit(lambda p, t: apply(cfg, p, t)[:, -1])
    x = jnp.zeros((batch, cfg.block_size), jnp.int32)
    fwd(params, x).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fwd(params, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(cfg: ModelConfig, positions: Sequence[int], batch: int, rounds: int, steps: int, seed: int = 0
        ) -> list[dict[str, float]]:
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.key(seed))
    top = max(positions) + rounds * steps + 2
    tokens = np.asarray(jax.random.randint(jax.random.key(seed + 1), (batch, top), 0, cfg.vocab_size), np.int32)
    rows = []
    for P in positions:
        r = bench_position(cfg, params, tokens, P, rounds, steps, top)
        rows.append(r)
        print(f"  position {P}: decoder {r['decoder_min_s'] * 1e3:.2f} ms (median {r['decoder_median_s'] * 1e3:.2f}),"
              f" recompute {r['recompute_min_s'] * 1e3:.2f} ms (median {r['recompute_median_s'] * 1e3:.2f})",
              flush=True)
    return rows


def table(rows: Sequence[dict[str, float]], batch: int, window_s: Optional[float], block_size: int) -> str:
    lines = ["| position | decoder ms/token | decoder tokens/s | full recompute ms/token | recompute tokens/s "
             "| speed-up (min) | speed-up (median) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d, c = r["decoder_min_s"], r["recompute_min_s"]
        lines.append(f"| {r['position']} | {d * 1e3:.2f} | {batch / d:,.0f} | {c * 1e3:.2f} | {batch / c:,.1f} | "
                     f"{r['speedup_min']:.1f}x | {r['speedup_median']:.1f}x |")
    if window_s is not None:
        lines.append(f"\nSliding-window recompute (the reference's generate: last {block_size} tokens) costs "
                     f"{window_s * 1e3:.2f} ms/token at any position past the window.")
    return "\n".join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_enum("arch", "mosaic", ["mosaic", "gpt2", "mosaic_v2"], "Architecture (mosaic_v2: the v2 defaults "
                  "for the short window and the long skip).", flag_values=FLAGS)
flags.DEFINE_list("positions", ["64", "128", "256", "512", "1024", "2048", "4096"], "Positions to time.",
                  flag_values=FLAGS)
flags.DEFINE_integer("batch", 1, "Sequences decoded together.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("n_layer", 4, "Layers.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("n_embd", 128, "Width.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("n_head", 4, "Heads.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("pmem_size", 448, "Persistent-memory slots.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("vocab_size", 4096, "Vocabulary.", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("block_size", 128, "Training window (mosaic: only the window line).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 5, "Rounds per position: each times --steps decoder steps and one full-recompute "
                     "forward.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 8, "Timed decoder steps per round.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("out", "", "Also write the rows as JSON to this file.", flag_values=FLAGS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status."""
    return cli_util.run("bench_decode", FLAGS, _bench, argv, doc=__doc__)


cli = cli_util.exit_with(main)


def _bench(rest: list[str]) -> int:
    args = cli_util.namespace(FLAGS)
    if args.out:
        cli_util.check_out_parent("out", args.out)
    if not all(x.isdigit() and int(x) > 0 for x in args.positions):
        raise cli_util.UsageError(f"--positions={','.join(args.positions)}: positive integers")
    positions = [int(x) for x in args.positions]
    cfg = ModelConfig.from_dict(dict(   # from_dict: --pmem_size is left out for a family without persistent slots
        arch=args.arch, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, pmem_size=args.pmem_size,
        vocab_size=args.vocab_size, block_size=args.block_size, dtype=args.dtype, ic_dropout=0.0, hd_dropout=0.0))
    unbounded = registry.of(cfg).max_positions(cfg) is None
    if not unbounded:   # learned positions: the table must hold every decoded position
        cfg = cfg.replace(block_size=max(max(positions) + args.rounds * args.steps + 2, args.block_size))
    dev = jax.devices()[0]
    sizes = "".join(f" {k}={v}" for k, v in registry.of(cfg).describe(cfg).items())   # v1: P slots; v2: ffn d′
    header = (f"{args.arch} L={cfg.n_layer} C={cfg.n_embd} H={cfg.n_head}{sizes} V={cfg.vocab_size} "
              f"{args.dtype}, batch {args.batch}; {dev.platform} ({getattr(dev, 'device_kind', '')}, "
              f"{jax.device_count()} device(s), host {platform.node()}); jax {jax.__version__}")
    print(header, flush=True)
    rows = run(cfg, positions, args.batch, args.rounds, args.steps)
    window_s = None
    if unbounded:   # the sliding-window recompute is the reference's way past the window
        params = jax.jit(lambda k: init_params(cfg, k))(jax.random.key(0))
        window_s = window_recompute(cfg, params, args.batch, args.rounds)
    print()
    print(table(rows, args.batch, window_s, cfg.block_size))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows, "window_s": window_s}, f, indent=1)
    return 0


if __name__ == "__main__":
    cli()
