"""Parameter and FLOP counts of Memory Mosaics v2 presets, beside the paper's (spec §5.2), without allocating.

    python -m mosaic_jax.models.mosaic_v2.counts            # prints the markdown table of docs/v2.md

Parameters are counted twice: analytically and from `jax.eval_shape` of the real initialiser (no memory is
allocated), and the two must agree. FLOPs follow `flops.py`'s convention (matmuls only, 2 per multiply-add,
forward pass, per token); `context_len` > 0 adds the kernel-regression reads (scores and read-out, 4·D per pair
read per head) for the pairs a query actually reads at that context length (causal, averaged over positions),
with the short-term window and the long-term skip m = long_skip_eval.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.models import lm
from mosaic_jax.models.config import ModelConfig

LLAMA3_VOCAB = 128256   # the paper's Llama-3-style tokenizer

# v2 Table 2 (spec §5.2): parameters and forward FLOPs per token.
PAPER = {
    "v2_large": (9.9e9, 18.9e9),
    "v2_large_no_long": (8.3e9, 15.6e9),
    "transformer_large": (8.8e9, 16.7e9),
}


def v2_small() -> ModelConfig:
    """MM v2 small ("llama-1.5B scale"): 24 layers, d = 2048, 16 heads, d′ = 6144, 4k context."""
    return ModelConfig(arch="mosaic_v2", vocab_size=LLAMA3_VOCAB, n_layer=24, n_embd=2048, n_head=16,
                       ffn_hidden=6144, block_size=4096, weight_tying=False, ic_dropout=0.0, hd_dropout=0.0,
                       short_window=256, long_skip_min=64, long_skip_max=256, long_skip_eval=64)


def v2_large() -> ModelConfig:
    """MM v2 large ("llama-8B scale"): 32 layers, d = 4096, 32 heads, d′ = 14336, 4k context."""
    return dataclasses.replace(v2_small(), n_layer=32, n_embd=4096, n_head=32, ffn_hidden=14336)


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the real initialiser, through jax.eval_shape (shapes only: nothing is allocated)."""

    shapes = jax.eval_shape(lambda k: lm.init_params(cfg, k), jax.random.key(0))
    return int(sum(x.size for x in jax.tree.leaves(shapes)))


def analytic_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter count by component (v2 only)."""
    C, D, V, F, L = cfg.n_embd, cfg.head_dim, cfg.vocab_size, cfg.ffn_dim, cfg.n_layer
    Hs, Hl = cfg.short_heads, cfg.long_heads
    per_memory = lambda H: 2 * C * H * D + 2 * C * H + 5 * H   # W_φ, W_ψ; W_g, W_λ; γ, α_ψ, θ_β₀, θ_β₁, θ_α
    out = {
        "embedding": V * C,
        "classifier": 0 if cfg.weight_tying else V * C,
        "short_memory": L * per_memory(Hs),
        "long_memory": L * per_memory(Hl),
        "w_o": L * (Hs + Hl) * D * C,
        "ffn": L * 3 * C * F,
        "norms": L * 2 * C + C,
    }
    out["total"] = sum(out.values())
    return out


def _mean_pairs(T: int, kind: str, cfg: ModelConfig) -> float:
    """Average number of pairs a query reads over positions 0..T−1 of one document."""
    t = jnp.arange(T)
    if kind == "short":
        n = jnp.minimum(t, cfg.short_lookback)
    else:
        n = jnp.maximum(t - cfg.long_skip_eval + 1, 0)
    return float(jnp.mean(n))


def forward_flops_per_token(cfg: ModelConfig, context_len: int = 0) -> dict[str, float]:
    """Forward matmul FLOPs per token by component; `context_len` > 0 adds the memory reads."""
    C, D, V, F, L = cfg.n_embd, cfg.head_dim, cfg.vocab_size, cfg.ffn_dim, cfg.n_layer
    Hs, Hl = cfg.short_heads, cfg.long_heads
    proj = lambda H: 2 * (2 * C * H * D + 2 * C * H)
    out = {
        "short_memory": L * proj(Hs),
        "long_memory": L * proj(Hl),
        "w_o": L * 2 * (Hs + Hl) * D * C,
        "ffn": L * 2 * 3 * C * F,
        "classifier": 2 * C * V,
        "short_reads": L * 4 * Hs * D * _mean_pairs(context_len, "short", cfg) if context_len and Hs else 0.0,
        "long_reads": L * 4 * Hl * D * _mean_pairs(context_len, "long", cfg) if context_len and Hl else 0.0,
    }
    out["total"] = float(sum(out.values()))
    return out


def llama_params(n_layer: int, d: int, ffn: int, vocab: int) -> int:
    """The paper's transformer baseline (Llama, multi-head attention, untied): 4d² + 3dd′ per layer."""
    return n_layer * (4 * d * d + 3 * d * ffn + 2 * d) + 2 * vocab * d + d


def llama_flops(n_layer: int, d: int, ffn: int, vocab: int, context_len: int = 0) -> float:
    """Forward matmul FLOPs per token of the transformer baseline; context adds causal QKᵀ and AV (avg t)."""
    return float(n_layer * (2 * (4 * d * d + 3 * d * ffn) + 4 * d * (context_len - 1) / 2 * (context_len > 0))
                 + 2 * d * vocab)


def table(context_len: int = 4096) -> str:
    """Markdown table: ours beside the paper's for the v2 presets and the transformer baseline."""
    small, large = v2_small(), v2_large()
    no_long = dataclasses.replace(large, n_head_long=0)
    rows = []
    for name, cfg, paper in (("MM v2 small", small, None), ("MM v2 large", large, PAPER["v2_large"]),
                             ("MM v2 large without long-term memory", no_long, PAPER["v2_large_no_long"])):
        n = param_count(cfg)
        assert n == analytic_params(cfg)["total"], (name, n, analytic_params(cfg))
        f0 = forward_flops_per_token(cfg)["total"]
        f1 = forward_flops_per_token(cfg, context_len)["total"]
        rows.append((name, n, f0, f1, paper))
    lp = llama_params(32, 4096, 14336, LLAMA3_VOCAB)
    rows.append(("Transformer large (Llama MHA, d′ = 14336)", lp, llama_flops(32, 4096, 14336, LLAMA3_VOCAB),
                 llama_flops(32, 4096, 14336, LLAMA3_VOCAB, context_len), PAPER["transformer_large"]))
    lines = ["| model | params (ours) | params (paper) | GFLOPs/token, matmul weights (ours) | "
             f"+ memory reads at {context_len} (ours) | GFLOPs/token (paper) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, n, f0, f1, paper in rows:
        pp = f"{paper[0] / 1e9:.1f}B" if paper else "—"
        pf = f"{paper[1] / 1e9:.1f}" if paper else "—"
        lines.append(f"| {name} | {n / 1e9:.3f}B | {pp} | {f0 / 1e9:.2f} | {f1 / 1e9:.2f} | {pf} |")
    return "\n".join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_integer("context_len", 4096, "Context length of the memory-read FLOPs column.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_string("out", "", "Also write the markdown table to this file.", flag_values=FLAGS)


def _print_table(rest: list[str]) -> int:
    if FLAGS.out:
        cli_util.check_out_parent("out", FLAGS.out)
    text = table(FLAGS.context_len)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status."""
    return cli_util.run("v2_counts", FLAGS, _print_table, argv, doc=__doc__)


cli = cli_util.exit_with(main)


if __name__ == "__main__":
    cli()
