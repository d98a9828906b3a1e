"""The memory mosaic's block, written once: pure functions over the parameter dict (training, prefill and the
decoding step differ only in the `mode` passed in), and the Flax (linen) modules that declare the parameters and
call them. The memory math itself is the pure functions of `ops/memory.py`.

Every parameter carries a logical axis name per dimension (`embed`, `heads`, `head_dim`, `slots`, ...); the
mapping of those names onto mesh axes lives in one table, `sharding.LOGICAL_RULES`.

Research extensions swap a part without editing this file: pass a `MemoryFns` with another key extractor,
kernel or persistent-memory read (see experiments/gaussian_kernel.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mosaic_jax.kernels import dense_vjp, platform
from mosaic_jax.ops import dispatch, memory
from mosaic_jax.models.config import ModelConfig

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class MemoryFns:
    """The replaceable parts of the memory units (pure functions; defaults are the reference's)."""
    # (raw key features k̃ (B,T,H,D), raw leak (H,), key scale (H,), leaky impl) -> keys (B,T,H,D)
    keys: Callable[[Array, Array, Array, str], Array] = memory.memory_keys
    # (queries (B,T,H,D), keys (B,S,H,D)) -> scores (B,H,T,S) in float32, for the contextual memory
    kernel: memory.KernelFn = memory.dot_kernel
    # (raw value features ṽ (B,T,H,D), mix coef (H,), value scale (H,)) -> values (B,T,H,D)
    values: Callable[[Array, Array, Array], Array] = memory.lookahead_values
    # (queries, M_k (N,H,P,D), M_v (N,H,P,D), *, dropout_rate, dropout_rng) -> read (B,T,H,D)
    persistent: Callable[..., Array] = memory.persistent_retrieval


DEFAULT_FNS = MemoryFns()


def normal(std: float) -> Callable[..., Array]:
    return nn.initializers.normal(stddev=std)


def const_vector(values: Callable[[int], Array]) -> Callable[..., Array]:
    return lambda key, shape, dtype=jnp.float32: values(shape[-1]).astype(dtype)


def param(module: nn.Module, name: str, init: Callable[..., Array], shape: tuple[int, ...],
          axes: tuple[str, ...]) -> Array:
    """A float32 parameter annotated with its logical axis names."""
    assert len(shape) == len(axes), (name, shape, axes)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def ln(x: Array, p: Params) -> Array:
    """LayerNorm over the last axis with the parameter dict {"weight", "bias"?} of `LayerNorm`."""
    return memory.layer_norm(x, p["weight"], p.get("bias"))


class LayerNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def params_of(self, C: int) -> Params:
        """Declares (or fetches) the parameters: blocks written as pure functions take them as a dict."""
        p = {"weight": param(self, "weight", nn.initializers.ones, (C,), ("norm",))}
        if self.cfg.bias:
            p["bias"] = param(self, "bias", nn.initializers.zeros, (C,), ("norm",))
        return p

    def __call__(self, x: Array) -> Array:
        return ln(x, self.params_of(x.shape[-1]))


def fused_projections(cfg: ModelConfig) -> bool:
    """cfg.proj_impl: project with dense_vjp.matmul (float32 accumulation, hand-written VJP); auto: on CPU."""
    return dispatch.proj(cfg.proj_impl, platform.backend()) == "fused"


def dropout(module: nn.Module, x: Array, rate: float, deterministic: bool) -> Array:
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# The block's math, once, on parameter dicts. Training, prefill and the decoding step share the projections, the
# persistent read and the residual wiring; what differs (the key states, the contextual read) is the `mode`:
# `Parallel` here (training; decoding's prefill extends it to record the cache), `models/mosaic/decode.Step`.
# ---------------------------------------------------------------------------------------------------------------
def key_features(cfg: ModelConfig, p: Params, h_BTC: Array) -> Array:
    """k̃ = causal conv (kernel K, left padded) of h (B,T,C), split into heads: W_k is (K, C, H, D)."""
    if cfg.k_kernel_size == 1 and fused_projections(cfg):
        k = dense_vjp.project(h_BTC, p["wk"][0], 1)
        return k + p["bk"].astype(k.dtype) if "bk" in p else k
    return memory.causal_conv_features(h_BTC, p["wk"], p.get("bk"))


def _project(cfg: ModelConfig, x: Array, w: Array, b: Optional[Array], contract: int, spec: str) -> Array:
    """x·W (+ b) over x's last `contract` axes: dense_vjp.project where the config asks, else the einsum `spec`."""
    y = dense_vjp.project(x, w, contract) if fused_projections(cfg) else jnp.einsum(spec, x, w.astype(x.dtype))
    return y if b is None else y + b.astype(y.dtype)


def value_features(cfg: ModelConfig, p: Params, h_XC: Array) -> Array:
    """ṽ = h·W_v (+ b_v), h (..., C) -> (..., H, D)."""
    return _project(cfg, h_XC, p["wv"], p.get("bv"), 1, "...c,chd->...hd")


def out_proj(cfg: ModelConfig, p: Params, y_XHD: Array) -> Array:
    """c_proj: (..., H, D) -> (..., C)."""
    return _project(cfg, y_XHD, p["wo"], p.get("bo"), 2, "...hd,hdc->...c")


def unit_keys(kbar_XHD: Array, scale_H: Array) -> Array:
    """scale·k̄/|k̄| per head (the default key extractor after its leaky average; decoding keeps k̄ as state)."""
    return memory.l2_normalize(kbar_XHD) * scale_H[:, None].astype(kbar_XHD.dtype)


def persistent_read(cfg: ModelConfig, fns: MemoryFns, q_BTHD: Array, p: Params, impl: str,
                    dropout_rng: Optional[Array] = None) -> Array:
    """The P-mem read of the slot tables, scaled per head."""
    if fns.persistent is memory.persistent_retrieval:   # the default read has fast forms
        y = memory.persistent_retrieval(q_BTHD, p["mk"], p["mv"], dropout_rate=cfg.ic_dropout, dropout_rng=dropout_rng,
                                        impl=impl)
    else:
        y = fns.persistent(q_BTHD, p["mk"], p["mv"], dropout_rate=cfg.ic_dropout, dropout_rng=dropout_rng)
    return y * memory.value_scale(p["value_beta"])[:, None].astype(y.dtype)


@dataclasses.dataclass
class Parallel:
    """Training mode: the whole sequence at once (leaky averages by scan, the T×T contextual read)."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS
    dropout_rng: Optional[Array] = None
    allowed_TT: Optional[Array] = None

    def keys(self, unit: str, p: Params, h_BTC: Array, scale_H: Array) -> Array:
        """Keys (C-mem, unit "c") or queries (P-mem, unit "p") of every position."""
        kt = key_features(self.cfg, p["k_features"], h_BTC)
        return self.fns.keys(kt, p["leaky_key_beta"], scale_H, self.cfg.leaky_impl)

    def values(self, p: Params, vt_BTHD: Array) -> Array:
        return self.fns.values(vt_BTHD, p["v_coef"], memory.value_scale(p["value_beta"]))

    def read(self, k_BTHD: Array, v_BTHD: Array) -> Array:
        return memory.contextual_retrieval(k_BTHD, v_BTHD, kernel=self.fns.kernel, allowed_TT=self.allowed_TT,
                                           dropout_rate=self.cfg.ic_dropout, dropout_rng=self.dropout_rng,
                                           impl=self.cfg.cmem_impl)

    def contextual(self, p: Params, k_BTHD: Array, vt_BTHD: Array) -> Array:
        """The C-mem read of every position from its keys and raw value features ṽ."""
        return self.read(k_BTHD, self.values(p, vt_BTHD))

    def persistent(self, q_BTHD: Array, p: Params) -> Array:
        return persistent_read(self.cfg, self.fns, q_BTHD, p, self.cfg.pmem_impl, self.dropout_rng)


def contextual_branch(cfg: ModelConfig, p: Params, h: Array, mode: Any) -> Array:
    """C-mem: keys k (leaky averages), values from ṽ (one-token look-ahead), the read, then c_proj."""
    k = mode.keys("c", p, h, memory.key_scale(p["kernel_beta"]))
    return out_proj(cfg, p["out"], mode.contextual(p, k, value_features(cfg, p, h)))


def persistent_branch(cfg: ModelConfig, p: Params, h: Array, mode: Any) -> Array:
    """P-mem: leaky-average queries (squared key scale: the slots carry no scale) read the slots, then c_proj."""
    q = mode.keys("p", p, h, jnp.square(memory.key_scale(p["kernel_beta"])))
    return out_proj(cfg, p["out"], mode.persistent(q, p))


def mosaic_residual(cfg: ModelConfig, p: Params, x: Array, cmem: Callable[[Array], Array],
                    pmem: Callable[[Array], Array], branch: Callable[[Array], Array] = lambda y: y) -> Array:
    """The block's two branches with pre-LN (reference) or post-LN ordering; `branch`: dropout p_hd in training."""
    if cfg.pre_ln:
        x = x + branch(cmem(ln(x, p["ln1"])))
        return x + branch(pmem(ln(x, p["ln2"])))
    x = ln(x, p["ln1"])
    x = x + branch(cmem(x))
    x = ln(x, p["ln2"])
    return x + branch(pmem(x))


# ---------------------------------------------------------------------------------------------------------------
# Flax modules: they declare the parameters (names, shapes, logical axes, init) and run the functions above
# ---------------------------------------------------------------------------------------------------------------
class KeyFeatures(nn.Module):
    """W_k (K, C, H, D) and b_k of a key convolution."""
    cfg: ModelConfig

    @nn.compact
    def params_of(self) -> Params:
        c = self.cfg
        K, C, H, D = c.k_kernel_size, c.n_embd, c.n_head, c.head_dim
        p = {"wk": param(self, "wk", normal(1 / math.sqrt(C * K)), (K, C, H, D), ("conv", "embed", "heads", "head_dim"))}
        if c.bias:
            p["bk"] = param(self, "bk", nn.initializers.zeros, (H, D), ("heads", "head_dim"))
        return p

    def __call__(self, h_BTC: Array) -> Array:
        return key_features(self.cfg, self.params_of(), h_BTC)


class OutProjection(nn.Module):
    """c_proj: (H, D) -> C, initialised N(0, 1/√C/√L) as the reference re-draws every c_proj."""
    cfg: ModelConfig

    @nn.compact
    def params_of(self) -> Params:
        c = self.cfg
        std = 1 / math.sqrt(c.n_embd) / math.sqrt(c.n_layer)
        p = {"wo": param(self, "wo", normal(std), (c.n_head, c.head_dim, c.n_embd), ("heads", "head_dim", "embed"))}
        if c.bias:
            p["bo"] = param(self, "bo", nn.initializers.zeros, (c.n_embd,), ("embed",))
        return p

    def __call__(self, y_BTHD: Array) -> Array:
        return out_proj(self.cfg, self.params_of(), y_BTHD)


def head_scalars(module: nn.Module, H: int) -> Params:
    """{leaky_key_beta, kernel_beta, value_beta}: raw per-head parameters with the reference's initial values."""
    return {"leaky_key_beta": param(module, "leaky_key_beta", const_vector(lambda n: jnp.linspace(0.5, 5.0, n) / 10),
                                    (H,), ("heads",)),
            "kernel_beta": param(module, "kernel_beta", const_vector(lambda n: jnp.full((n,), 0.1)), (H,), ("heads",)),
            "value_beta": param(module, "value_beta", const_vector(lambda n: jnp.full((n,), -0.05)), (H,), ("heads",))}


class ContextualMemory(nn.Module):
    """H contextual memory units (keys: leaky averages; values: one-token look-ahead) and their c_proj."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, h_BTC: Array, deterministic: bool = True, allowed_TT: Optional[Array] = None) -> Array:
        c = self.cfg
        C, H, D = c.n_embd, c.n_head, c.head_dim
        p = head_scalars(self, H)    # declaration order kept: the init draws follow it
        p["v_coef"] = param(self, "v_coef", nn.initializers.uniform(1.0), (H,), ("heads",))
        p["wv"] = param(self, "wv", normal(1 / math.sqrt(C)), (C, H, D), ("embed", "heads", "head_dim"))
        if c.bias:
            p["bv"] = param(self, "bv", nn.initializers.zeros, (H, D), ("heads", "head_dim"))
        p["k_features"] = KeyFeatures(c, name="k_features").params_of()
        p["out"] = OutProjection(c, name="out").params_of()
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        return contextual_branch(c, p, h_BTC, Parallel(c, self.fns, rng, allowed_TT))


class PersistentMemory(nn.Module):
    """H persistent memory units: leaky-average queries read learned (key, value) slot tables."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, h_BTC: Array, deterministic: bool = True) -> Array:
        c = self.cfg
        H, D, N, P = c.n_head, c.head_dim, c.pmem_count, c.pmem_size
        axes = ("pmem_tables", "heads", "slots", "head_dim")
        p = head_scalars(self, H)
        p["mk"] = param(self, "mk", normal(1 / math.sqrt(D)), (N, H, P, D), axes)
        p["mv"] = param(self, "mv", normal(1 / math.sqrt(D)), (N, H, P, D), axes)
        p["k_features"] = KeyFeatures(c, name="k_features").params_of()
        p["out"] = OutProjection(c, name="out").params_of()
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        return persistent_branch(c, p, h_BTC, Parallel(c, self.fns, rng))


class MosaicBlock(nn.Module):
    """x + C-mem(LN1 x), then + P-mem(LN2 x) (pre-LN); each branch ends in dropout p_hd."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, x_BTC: Array, deterministic: bool = True, allowed_TT: Optional[Array] = None) -> Array:
        c = self.cfg
        p = {"ln1": LayerNorm(c, name="ln1").params_of(c.n_embd), "ln2": LayerNorm(c, name="ln2").params_of(c.n_embd)}
        cmem = ContextualMemory(c, self.fns, name="cmem")
        pmem = PersistentMemory(c, self.fns, name="pmem")
        return mosaic_residual(c, p, x_BTC, lambda h: cmem(h, deterministic, allowed_TT), lambda h: pmem(h, deterministic),
                               lambda y: dropout(self, y, c.hd_dropout, deterministic))
