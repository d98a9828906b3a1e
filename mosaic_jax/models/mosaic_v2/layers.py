"""Flax (linen) modules of Memory Mosaics v2 (spec §5): they own parameters and call `memory_v2`.

Block l (pre-LN, LayerNorm weight-only as in v1):
    h = LN1(x);  x = x + W_o [ short-term memory(h) ‖ long-term memory(h) ]      (heads concatenated)
    h = LN2(x);  x = x + W₂(SiLU(W₁h) ⊙ W₃h)                                      (persistent memory, SwiGLU)

Initialisation (v2 Table 6): truncated normal at ±3σ with σ = 1/√(2d(l+1)) for W_φ (wk), W_g (wg), W_λ (wl),
W_ψ (wv), W_o, W₁, W₃ and σ = 1/√(2d′(l+1)) for W₂, where l is the 0-based block index. The block index
arrives as a scanned input of the layer scan (models/lm.py), so one stacked parameter tensor holds every depth's
distribution. Per-head scalars: β₀, β₁ raw 1.5, α raw 1/3, α_ψ raw 0, value mix γ ~ U(0, 1).
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.ops import memory_v2
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import LayerNorm, const_vector, dropout, param

Array = jax.Array
MEMORY_PARAMS = ("wk", "wg", "wl", "wv", "v_coef", "value_scale", "bw_b0", "bw_b1", "bw_alpha")


def trunc_normal(std: float | Array) -> Callable[..., Array]:
    """Truncated normal at ±3σ (the σ of the underlying normal, as torch's trunc_normal_(std, -3σ, 3σ))."""
    def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)
    return init


def layer_std(fan: int, layer_idx: Array | int) -> Array:
    """σ = 1/√(2·fan·(l+1))."""
    return jax.lax.rsqrt(2.0 * fan * (jnp.asarray(layer_idx, jnp.float32) + 1.0))


class V2Memory(nn.Module):
    """One contextual memory of v2 (kind "short" or "long"): gated keys, look-ahead values, adaptive β."""
    cfg: ModelConfig
    kind: str
    n_heads: int

    @nn.compact
    def __call__(self, h_BTC: Array, layer_idx: Array, segment_ids_BT: Optional[Array], skip_B: Optional[Array],
                 deterministic: bool = True) -> Array:
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
        y, _ = memory_v2.unit_forward(p, h_BTC, self.kind, look=c.short_lookback, skip_B=skip_B,
                                      segment_ids_BT=segment_ids_BT, impl=c.v2_impl, key_impl=c.v2_key_impl,
                                      dropout_rate=c.ic_dropout, dropout_rng=rng)
        return y


class SwiGLU(nn.Module):
    """Persistent memory of v2: a SwiGLU feed-forward layer of hidden size d′."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BTC: Array, layer_idx: Array) -> Array:
        C, F = self.cfg.n_embd, self.cfg.ffn_dim
        p = {"w1": param(self, "w1", trunc_normal(layer_std(C, layer_idx)), (C, F), ("embed", "mlp")),
             "w3": param(self, "w3", trunc_normal(layer_std(C, layer_idx)), (C, F), ("embed", "mlp")),
             "w2": param(self, "w2", trunc_normal(layer_std(F, layer_idx)), (F, C), ("mlp", "embed"))}
        return memory_v2.swiglu(p, h_BTC)


class V2Block(nn.Module):
    """Short- and long-term memories (concatenated heads, one W_o), then the SwiGLU persistent memory."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTC: Array, layer_idx: Array, segment_ids_BT: Optional[Array] = None,
                 skip_B: Optional[Array] = None, deterministic: bool = True) -> Array:
        c = self.cfg
        seg = segment_ids_BT if c.doc_masking else None
        if skip_B is None:   # called outside LanguageModel: the evaluation skip
            skip_B = jnp.full((x_BTC.shape[0],), c.long_skip_eval, jnp.int32)
        h = LayerNorm(c, name="ln1")(x_BTC)
        ys = []
        if c.short_heads:
            ys.append(V2Memory(c, "short", c.short_heads, name="short")(h, layer_idx, seg, skip_B, deterministic))
        if c.long_heads:
            ys.append(V2Memory(c, "long", c.long_heads, name="long")(h, layer_idx, seg, skip_B, deterministic))
        y = jnp.concatenate(ys, axis=2) if len(ys) > 1 else ys[0]
        wo = param(self, "wo", trunc_normal(layer_std(c.n_embd, layer_idx)),
                   (c.short_heads + c.long_heads, c.head_dim, c.n_embd), ("heads", "head_dim", "embed"))
        out = jnp.einsum("bthd,hdc->btc", y, wo.astype(y.dtype))
        x_BTC = x_BTC + dropout(self, out, c.hd_dropout, deterministic)
        h = LayerNorm(c, name="ln2")(x_BTC)
        return x_BTC + dropout(self, SwiGLU(c, name="ffn")(h, layer_idx), c.hd_dropout, deterministic)


def block_forward(cfg: ModelConfig, p: dict, x_BTC: Array, *, segment_ids_BT: Optional[Array] = None,
                  skip_B: Optional[Array] = None) -> tuple[Array, dict]:
    """The eval-mode block on a parameter dict (one layer of `params["blocks"]["mosaic_v2"]`), with the memories'
    internals: the same pure functions as V2Block, used by the decoder's prefill."""
    from mosaic_jax.ops.memory import layer_norm
    seg = segment_ids_BT if cfg.doc_masking else None
    h = layer_norm(x_BTC, p["ln1"]["weight"])
    ys, internals = [], {}
    for kind, n in (("short", cfg.short_heads), ("long", cfg.long_heads)):
        if n:
            y, st = memory_v2.unit_forward(p[kind], h, kind, look=cfg.short_lookback, skip_B=skip_B,
                                           segment_ids_BT=seg, impl=cfg.v2_impl, key_impl=cfg.v2_key_impl)
            ys.append(y)
            internals[kind] = st
    y = jnp.concatenate(ys, axis=2) if len(ys) > 1 else ys[0]
    x_BTC = x_BTC + jnp.einsum("bthd,hdc->btc", y, p["wo"].astype(y.dtype))
    return x_BTC + memory_v2.swiglu(p["ffn"], layer_norm(x_BTC, p["ln2"]["weight"])), internals

