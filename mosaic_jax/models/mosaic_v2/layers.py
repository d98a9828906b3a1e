"""Memory Mosaics v2 (spec §5): the block, written once on parameter dicts (`v2_block`: training, prefill and the
decoding step differ only in the `mode` passed in), and the Flax (linen) modules that declare the parameters and
call it. The unit's math is `memory_v2.unit_read`.

Block l (pre-LN, LayerNorm weight-only as in v1):
    h = LN1(x);  x = x + W_o [ short-term memory(h) ‖ long-term memory(h) ]      (heads concatenated)
    h = LN2(x);  x = x + W₂(SiLU(W₁h) ⊙ W₃h)                                      (persistent memory, SwiGLU)

Initialisation (v2 Table 6): truncated normal at ±3σ with σ = 1/√(2d(l+1)) for W_φ (wk), W_g (wg), W_λ (wl),
W_ψ (wv), W_o, W₁, W₃ and σ = 1/√(2d′(l+1)) for W₂, where l is the 0-based block index. The block index
arrives as a scanned input of the layer scan (models/lm.py), so one stacked parameter tensor holds every depth's
distribution. Per-head scalars: β₀, β₁ raw 1.5, α raw 1/3, α_ψ raw 0, value mix γ ~ U(0, 1).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.ops import memory_v2
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import LayerNorm, const_vector, dropout, ln, param

Array = jax.Array
Params = Any
MEMORY_PARAMS = ("wk", "wg", "wl", "wv", "v_coef", "value_scale", "bw_b0", "bw_b1", "bw_alpha")


def trunc_normal(std: float | Array) -> Callable[..., Array]:
    """Truncated normal at ±3σ (the σ of the underlying normal, as torch's trunc_normal_(std, -3σ, 3σ))."""
    def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)
    return init


def layer_std(fan: int, layer_idx: Array | int) -> Array:
    """σ = 1/√(2·fan·(l+1))."""
    return jax.lax.rsqrt(2.0 * fan * (jnp.asarray(layer_idx, jnp.float32) + 1.0))


def kinds(cfg: ModelConfig) -> list[tuple[str, int]]:
    """The contextual memories a config enables, in the order their heads are concatenated: (kind, heads)."""
    return [(k, n) for k, n in (("short", cfg.short_heads), ("long", cfg.long_heads)) if n]


# ---------------------------------------------------------------------------------------------------------------
# The block's math, once, on parameter dicts (one layer of `params["blocks"]["mosaic_v2"]`). Training and prefill
# run it with `full_sequence(...)`; the decoding step with `models/mosaic_v2/decode.Step` (one position per row).
# ---------------------------------------------------------------------------------------------------------------
def full_sequence(cfg: ModelConfig, skip_B: Array, segment_ids_BT: Optional[Array] = None,
                  dropout_rngs: Optional[dict[str, Array]] = None) -> memory_v2.FullSequence:
    """The whole-sequence mode of the config's units (segment ids honoured only with cfg.doc_masking)."""
    return memory_v2.FullSequence(look=cfg.short_lookback, skip_B=skip_B,
                                  segment_ids_BT=segment_ids_BT if cfg.doc_masking else None, impl=cfg.v2_impl,
                                  key_impl=cfg.v2_key_impl, dropout_rate=cfg.ic_dropout,
                                  dropout_rngs=dropout_rngs or {})


def v2_block(cfg: ModelConfig, p: Params, x: Array, mode: memory_v2.UnitMode,
             branch: Callable[[Array], Array] = lambda y: y) -> Array:
    """x + W_o·(short ‖ long)(LN1(x)), then + SwiGLU(LN2(x)); x (B,T,C) or one position (B,C). `branch`: dropout
    p_hd in training."""
    h = ln(x, p["ln1"])
    ys = [memory_v2.unit_read(p[kind], h, kind, mode) for kind, _ in kinds(cfg)]
    y = jnp.concatenate(ys, axis=-2) if len(ys) > 1 else ys[0]
    x = x + branch(jnp.einsum("...hd,hdc->...c", y, p["wo"].astype(y.dtype)))
    return x + branch(memory_v2.swiglu(p["ffn"], ln(x, p["ln2"])))


# ---------------------------------------------------------------------------------------------------------------
# Flax modules: they declare the parameters (names, shapes, logical axes, init) and run the functions above
# ---------------------------------------------------------------------------------------------------------------
class V2Memory(nn.Module):
    """One contextual memory of v2 (kind "short" or "long"): gated keys, look-ahead values, adaptive β."""
    cfg: ModelConfig
    kind: str
    n_heads: int

    @nn.compact
    def params_of(self, layer_idx: Array, deterministic: bool = True) -> tuple[Params, Optional[Array]]:
        """Declares (or fetches) the parameters; also the read-dropout key (None in eval or without dropout)."""
        c = self.cfg
        C, H, D = c.n_embd, self.n_heads, c.head_dim
        std = layer_std(C, layer_idx)
        hd = ("embed", "heads", "head_dim")
        p = {
            "wk": param(self, "wk", trunc_normal(std), (C, H, D), hd),
            "wg": param(self, "wg", trunc_normal(std), (C, H), ("embed", "heads")),
            "wl": param(self, "wl", trunc_normal(std), (C, H), ("embed", "heads")),
            "wv": param(self, "wv", trunc_normal(std), (C, H, D), hd),
            "v_coef": param(self, "v_coef", nn.initializers.uniform(1.0), (H,), ("heads",)),
            "value_scale": param(self, "value_scale", nn.initializers.constant(memory_v2.VALUE_SCALE_INIT),
                                 (H,), ("heads",)),
            "bw_b0": param(self, "bw_b0", nn.initializers.constant(memory_v2.BETA_INIT), (H,), ("heads",)),
            "bw_b1": param(self, "bw_b1", nn.initializers.constant(memory_v2.BETA_INIT), (H,), ("heads",)),
            "bw_alpha": param(self, "bw_alpha", const_vector(lambda n: jnp.full((n,), memory_v2.ALPHA_INIT)),
                              (H,), ("heads",)),
        }
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        return p, rng

    def __call__(self, h_BTC: Array, layer_idx: Array, segment_ids_BT: Optional[Array], skip_B: Optional[Array],
                 deterministic: bool = True) -> Array:
        p, rng = self.params_of(layer_idx, deterministic)
        mode = full_sequence(self.cfg, skip_B, segment_ids_BT, {} if rng is None else {self.kind: rng})
        return memory_v2.unit_read(p, h_BTC, self.kind, mode)


class SwiGLU(nn.Module):
    """Persistent memory of v2: a SwiGLU feed-forward layer of hidden size d′."""
    cfg: ModelConfig

    @nn.compact
    def params_of(self, layer_idx: Array) -> Params:
        C, F = self.cfg.n_embd, self.cfg.ffn_dim
        return {"w1": param(self, "w1", trunc_normal(layer_std(C, layer_idx)), (C, F), ("embed", "mlp")),
                "w3": param(self, "w3", trunc_normal(layer_std(C, layer_idx)), (C, F), ("embed", "mlp")),
                "w2": param(self, "w2", trunc_normal(layer_std(F, layer_idx)), (F, C), ("mlp", "embed"))}

    def __call__(self, h_BTC: Array, layer_idx: Array) -> Array:
        return memory_v2.swiglu(self.params_of(layer_idx), h_BTC)


class V2Block(nn.Module):
    """Short- and long-term memories (concatenated heads, one W_o), then the SwiGLU persistent memory; each branch
    ends in dropout p_hd."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTC: Array, layer_idx: Array, segment_ids_BT: Optional[Array] = None,
                 skip_B: Optional[Array] = None, deterministic: bool = True) -> Array:
        c = self.cfg
        if skip_B is None:   # called outside LanguageModel: the evaluation skip
            skip_B = jnp.full((x_BTC.shape[0],), c.long_skip_eval, jnp.int32)
        p = {"ln1": LayerNorm(c, name="ln1").params_of(c.n_embd)}
        rngs = {}
        for kind, n in kinds(c):
            p[kind], rng = V2Memory(c, kind, n, name=kind).params_of(layer_idx, deterministic)
            if rng is not None:
                rngs[kind] = rng
        p["wo"] = param(self, "wo", trunc_normal(layer_std(c.n_embd, layer_idx)),
                        (c.short_heads + c.long_heads, c.head_dim, c.n_embd), ("heads", "head_dim", "embed"))
        p["ln2"] = LayerNorm(c, name="ln2").params_of(c.n_embd)
        p["ffn"] = SwiGLU(c, name="ffn").params_of(layer_idx)
        return v2_block(c, p, x_BTC, full_sequence(c, skip_B, segment_ids_BT, rngs),
                        lambda y: dropout(self, y, c.hd_dropout, deterministic))
