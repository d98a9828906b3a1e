"""Flax (linen) modules that own the parameters of a memory mosaic and call the pure functions of `memory.py`.

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
from mosaic_jax.ops import memory
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
    return cfg.proj_impl == "fused" or (cfg.proj_impl == "auto" and platform.backend() == "cpu")


def dropout(module: nn.Module, x: Array, rate: float, deterministic: bool) -> Array:
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class KeyFeatures(nn.Module):
    """k̃ = causal conv (kernel K, left padded) of h, split into heads: W_k is (K, C, H, D)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BTC: Array) -> Array:
        c = self.cfg
        K, C, H, D = c.k_kernel_size, c.n_embd, c.n_head, c.head_dim
        w = param(self, "wk", normal(1 / math.sqrt(C * K)), (K, C, H, D), ("conv", "embed", "heads", "head_dim"))
        b = param(self, "bk", nn.initializers.zeros, (H, D), ("heads", "head_dim")) if c.bias else None
        if K == 1 and fused_projections(c):
            k = dense_vjp.project(h_BTC, w[0], 1)
            return k if b is None else k + b.astype(k.dtype)
        return memory.causal_conv_features(h_BTC, w, b)


class OutProjection(nn.Module):
    """c_proj: (H, D) -> C, initialised N(0, 1/√C/√L) as the reference re-draws every c_proj."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, y_BTHD: Array) -> Array:
        c = self.cfg
        std = 1 / math.sqrt(c.n_embd) / math.sqrt(c.n_layer)
        w = param(self, "wo", normal(std), (c.n_head, c.head_dim, c.n_embd), ("heads", "head_dim", "embed"))
        if fused_projections(c):
            out = dense_vjp.project(y_BTHD, w, 2)
        else:
            out = jnp.einsum("bthd,hdc->btc", y_BTHD, w.astype(y_BTHD.dtype))
        if c.bias:
            out = out + param(self, "bo", nn.initializers.zeros, (c.n_embd,), ("embed",)).astype(out.dtype)
        return out


def head_scalars(module: nn.Module, H: int) -> tuple[Array, Array, Array]:
    """(leaky_key_beta, kernel_beta, value_beta) raw per-head parameters with the reference's initial values."""
    leak = param(module, "leaky_key_beta", const_vector(lambda n: jnp.linspace(0.5, 5.0, n) / 10), (H,), ("heads",))
    kb = param(module, "kernel_beta", const_vector(lambda n: jnp.full((n,), 0.1)), (H,), ("heads",))
    vb = param(module, "value_beta", const_vector(lambda n: jnp.full((n,), -0.05)), (H,), ("heads",))
    return leak, kb, vb


class ContextualMemory(nn.Module):
    """H contextual memory units (keys: leaky averages; values: one-token look-ahead) and their c_proj."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, h_BTC: Array, deterministic: bool = True, allowed_TT: Optional[Array] = None) -> Array:
        c = self.cfg
        C, H, D = c.n_embd, c.n_head, c.head_dim
        leak, kb, vb = head_scalars(self, H)
        coef = param(self, "v_coef", nn.initializers.uniform(1.0), (H,), ("heads",))
        wv = param(self, "wv", normal(1 / math.sqrt(C)), (C, H, D), ("embed", "heads", "head_dim"))
        kt = KeyFeatures(c, name="k_features")(h_BTC)
        if fused_projections(c):
            vt = dense_vjp.project(h_BTC, wv, 1)
        else:
            vt = jnp.einsum("btc,chd->bthd", h_BTC, wv.astype(h_BTC.dtype))
        if c.bias:
            vt = vt + param(self, "bv", nn.initializers.zeros, (H, D), ("heads", "head_dim")).astype(vt.dtype)
        k = self.fns.keys(kt, leak, memory.key_scale(kb), c.leaky_impl)
        v = self.fns.values(vt, coef, memory.value_scale(vb))
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        y = memory.contextual_retrieval(k, v, kernel=self.fns.kernel, allowed_TT=allowed_TT,
                                        dropout_rate=c.ic_dropout, dropout_rng=rng, impl=c.cmem_impl)
        return OutProjection(c, name="out")(y)


class PersistentMemory(nn.Module):
    """H persistent memory units: leaky-average queries read learned (key, value) slot tables."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, h_BTC: Array, deterministic: bool = True) -> Array:
        c = self.cfg
        H, D, N, P = c.n_head, c.head_dim, c.pmem_count, c.pmem_size
        leak, kb, vb = head_scalars(self, H)
        axes = ("pmem_tables", "heads", "slots", "head_dim")
        mk = param(self, "mk", normal(1 / math.sqrt(D)), (N, H, P, D), axes)
        mv = param(self, "mv", normal(1 / math.sqrt(D)), (N, H, P, D), axes)
        kt = KeyFeatures(c, name="k_features")(h_BTC)
        q = self.fns.keys(kt, leak, jnp.square(memory.key_scale(kb)), c.leaky_impl)  # squared: slots carry no scale
        rng = None if deterministic or c.ic_dropout == 0.0 else self.make_rng("dropout")
        if self.fns.persistent is memory.persistent_retrieval:   # the default read has fast forms
            y = memory.persistent_retrieval(q, mk, mv, dropout_rate=c.ic_dropout, dropout_rng=rng, impl=c.pmem_impl)
        else:
            y = self.fns.persistent(q, mk, mv, dropout_rate=c.ic_dropout, dropout_rng=rng)
        y = y * memory.value_scale(vb)[None, None, :, None].astype(y.dtype)
        return OutProjection(c, name="out")(y)


class MosaicBlock(nn.Module):
    """x + C-mem(LN1 x), then + P-mem(LN2 x) (pre-LN); each branch ends in dropout p_hd."""
    cfg: ModelConfig
    fns: MemoryFns = DEFAULT_FNS

    @nn.compact
    def __call__(self, x_BTC: Array, deterministic: bool = True, allowed_TT: Optional[Array] = None) -> Array:
        c = self.cfg
        ln1, ln2 = LayerNorm(c, name="ln1"), LayerNorm(c, name="ln2")
        cmem = ContextualMemory(c, self.fns, name="cmem")
        pmem = PersistentMemory(c, self.fns, name="pmem")
        if c.pre_ln:
            x_BTC = x_BTC + dropout(self, cmem(ln1(x_BTC), deterministic, allowed_TT), c.hd_dropout, deterministic)
            x_BTC = x_BTC + dropout(self, pmem(ln2(x_BTC), deterministic), c.hd_dropout, deterministic)
        else:
            x_BTC = ln1(x_BTC)
            x_BTC = x_BTC + dropout(self, cmem(x_BTC, deterministic, allowed_TT), c.hd_dropout, deterministic)
            x_BTC = ln2(x_BTC)
            x_BTC = x_BTC + dropout(self, pmem(x_BTC, deterministic), c.hd_dropout, deterministic)
        return x_BTC
