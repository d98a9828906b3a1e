"""Memory Mosaics (v1, ICLR 2025; v2, NeurIPS 2025) for Hugging Face transformers, in PyTorch.

Shipped inside every memory-mosaic export of mosaic_jax (`python -m mosaic_jax.export --format=hf`) and loaded with

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

It needs only torch and transformers. Written from the spec (Zhang et al. "Memory Mosaics", arXiv 2405.06394;
"Memory Mosaics at scale", arXiv 2507.03285) in mosaic_jax's notation: batch B, time T, heads H, head dim D,
model width C. Parameter names and layouts are mosaic_jax's (layers unstacked: `blocks.<l>.`), so an export
is a plain copy of the arrays. Evaluation mode only (no dropout); no position encoding; the whole prefix is
recomputed at each generated token (no cache: the memories' keys are leaky averages of the whole past).

v1 block (pre-LN):  x += c_proj(C-mem(LN1 x));  x += c_proj(P-mem(LN2 x));  logits = LN(x) Eᵀ / √C
  C-mem head: k_t = e^{min(10 kb, 5)} · Norm(Σ_{i≤t} e^{−λ(t−i)} W_k h_i), λ = 10|leak|,
              v_t = e^{10 vb} · Norm(c W_v h_t + (1−c) W_v h_{t+1}),  y_t = Σ_{j≤t−1} softmax_j(k_t·k_j) v_j, y_0 = 0
  P-mem head: q_t = e^{2 min(10 kb, 5)} · Norm(leaky average), y_t = e^{10 vb} · mean_n softmax(q_t·M_kⁿ) M_vⁿ
v2 block:  x += W_o[short ‖ long](LN1 x);  x += W₂(SiLU(W₁ h) ⊙ W₃ h), h = LN2 x;  logits = LN(x) Eᵀ
  keys k_t = Norm(k̄_t), k̄_t = e^{W_g h_t} W_φ h_t + e^{−|W_λ h_t|} k̄_{t−1};  values as v1 with scale e^{min(|θ|,15)}
  β_t = e^{min(θ₁,10)} n_t^{min(|θ_α|,1)} + e^{min(θ₀,10)}, n_t = pairs readable; scores β_t k_t·k_j
  short memory reads pairs t−look … t−1; long memory reads pairs 0 … t−m (m = long_skip_eval)
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

Tensor = torch.Tensor


class MosaicConfig(PretrainedConfig):
    """mosaic_jax's ModelConfig fields that define the function (implementation choices dropped)."""

    model_type = "memory_mosaic"

    def __init__(self, arch: str = "mosaic", vocab_size: int = 50304, n_layer: int = 12, n_head: int = 12,
                 n_embd: int = 768, block_size: int = 512, pmem_size: int = 2688, pmem_count: int = 1,
                 k_kernel_size: int = 1, bias: bool = False, weight_tying: bool = True, n_head_short: int = -1,
                 n_head_long: int = -1, short_lookback: int = 255, long_skip_eval: int = 64, ffn_dim: int = 0,
                 **kwargs: Any) -> None:
        self.arch, self.vocab_size, self.n_layer, self.n_head, self.n_embd = arch, vocab_size, n_layer, n_head, n_embd
        self.block_size, self.pmem_size, self.pmem_count, self.k_kernel_size = block_size, pmem_size, pmem_count, k_kernel_size
        self.bias, self.weight_tying = bias, weight_tying
        self.n_head_short, self.n_head_long, self.short_lookback = n_head_short, n_head_long, short_lookback
        self.long_skip_eval, self.ffn_dim = long_skip_eval, ffn_dim or 3 * n_embd
        kwargs.setdefault("tie_word_embeddings", False)   # a tied head reads `embed` directly (no second tensor)
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def short_heads(self) -> int:
        return self.n_head if self.n_head_short == -1 else self.n_head_short

    @property
    def long_heads(self) -> int:
        return self.n_head if self.n_head_long == -1 else self.n_head_long


def _holder(shapes: dict[str, tuple[int, ...]], **children: nn.Module) -> nn.Module:
    """A module owning zero-filled parameters of the given shapes (values come from the checkpoint)."""
    m = nn.Module()
    for name, shape in shapes.items():
        m.register_parameter(name, nn.Parameter(torch.zeros(shape)))
    for name, child in children.items():
        m.add_module(name, child)
    return m


def _layer_norm(x: Tensor, p: nn.Module) -> Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], p.weight, getattr(p, "bias", None), eps=1e-5)


def _normalize(x: Tensor) -> Tensor:
    return x * torch.rsqrt(torch.sum(x * x, dim=-1, keepdim=True))   # no ε, as the reference


def _masked_softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the last axis restricted to `allowed`; rows with nothing allowed are exactly 0."""
    w = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
    return w * allowed


def _ln_holder(C: int, bias: bool) -> nn.Module:
    return _holder({"weight": (C,), **({"bias": (C,)} if bias else {})})


# ---------------------------------------------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------------------------------------------
def _leaky_average(kt_BTHD: Tensor, lam_H: Tensor) -> Tensor:
    """(1 − e^{−λ}) Σ_{i≤t} e^{−λ(t−i)} k̃_i as a T×T decay matrix (the spec's form)."""
    T = kt_BTHD.shape[1]
    t = torch.arange(T, device=kt_BTHD.device)
    dist = (t[:, None] - t[None, :]).float()
    decay = torch.exp(-lam_H[:, None, None] * dist.clamp(min=0)[None]) * (dist >= 0)[None]
    decay = decay * (1 - torch.exp(-lam_H))[:, None, None]
    return torch.einsum("hts,bshd->bthd", decay, kt_BTHD)


def _v1_keys(p: nn.Module, h_BTC: Tensor, power: float) -> Tensor:
    wk = p.k_features.wk                                   # (K, C, H, D): causal conv, left padded
    K, T = wk.shape[0], h_BTC.shape[1]
    hp = F.pad(h_BTC, (0, 0, K - 1, 0))
    kt = sum(torch.einsum("btc,chd->bthd", hp[:, tau:tau + T], wk[tau]) for tau in range(K))
    if hasattr(p.k_features, "bk"):
        kt = kt + p.k_features.bk
    kbar = _leaky_average(kt, 10 * p.leaky_key_beta.abs())
    scale = torch.exp(power * torch.clamp(10 * p.kernel_beta, max=5.0))
    return _normalize(kbar) * scale[:, None]


def _out(p: nn.Module, y_BTHD: Tensor) -> Tensor:
    out = torch.einsum("bthd,hdc->btc", y_BTHD, p.wo)
    return out + p.bo if hasattr(p, "bo") else out


class MosaicV1Block(nn.Module):
    def __init__(self, c: MosaicConfig) -> None:
        super().__init__()
        C, H, D, K, N, P = c.n_embd, c.n_head, c.head_dim, c.k_kernel_size, c.pmem_count, c.pmem_size
        scalars = {"leaky_key_beta": (H,), "kernel_beta": (H,), "value_beta": (H,)}
        bias = c.bias

        def kf() -> nn.Module:
            return _holder({"wk": (K, C, H, D), **({"bk": (H, D)} if bias else {})})

        def out() -> nn.Module:
            return _holder({"wo": (H, D, C), **({"bo": (C,)} if bias else {})})

        self.ln1, self.ln2 = _ln_holder(C, bias), _ln_holder(C, bias)
        self.cmem = _holder({**scalars, "v_coef": (H,), "wv": (C, H, D), **({"bv": (H, D)} if bias else {})},
                            k_features=kf(), out=out())
        self.pmem = _holder({**scalars, "mk": (N, H, P, D), "mv": (N, H, P, D)}, k_features=kf(), out=out())

    def _cmem(self, h: Tensor) -> Tensor:
        p = self.cmem
        k = _v1_keys(p, h, 1.0)
        vt = torch.einsum("btc,chd->bthd", h, p.wv) + (p.bv if hasattr(p, "bv") else 0)
        nxt = F.pad(vt[:, 1:], (0, 0, 0, 0, 0, 1))          # ṽ_{t+1}, ṽ_T = 0 (never read)
        c = p.v_coef[:, None]
        v = _normalize(c * vt + (1 - c) * nxt) * torch.exp(10 * p.value_beta)[:, None]
        T = h.shape[1]
        t = torch.arange(T, device=h.device)
        allowed = t[None, :] <= t[:, None] - 1              # pair j ≤ t − 1: v_j holds x_{j+1} ≤ x_t
        w = _masked_softmax(torch.einsum("bthd,bshd->bhts", k, k), allowed)
        return _out(p.out, torch.einsum("bhts,bshd->bthd", w, v))

    def _pmem(self, h: Tensor) -> Tensor:
        p = self.pmem
        q = _v1_keys(p, h, 2.0)                             # squared scale: the slots carry none
        reads = [torch.einsum("bhtp,hpd->bthd", torch.softmax(torch.einsum("bthd,hpd->bhtp", q, mk), -1), mv)
                 for mk, mv in zip(p.mk, p.mv)]
        y = torch.stack(reads).mean(0) * torch.exp(10 * p.value_beta)[:, None]
        return _out(p.out, y)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._cmem(_layer_norm(x, self.ln1))
        return x + self._pmem(_layer_norm(x, self.ln2))


# ---------------------------------------------------------------------------------------------------------------
# v2
# ---------------------------------------------------------------------------------------------------------------
def _gated_keys(kt_BTHD: Tensor, log_gate_BTH: Tensor, log_decay_BTH: Tensor) -> Tensor:
    """Norm(k̄_t), k̄_t = Σ_{i≤t} g_i Π_{i<r≤t} λ_r k̃_i, in log space with a per-row max (no overflow); the
    decay sums Σ_{i<r≤t} log λ_r are summed per (t, i), not differenced from a running total (no cancellation)."""
    T = kt_BTHD.shape[1]
    t = torch.arange(T, device=kt_BTHD.device)
    upto = (t[None, :] <= t[:, None])                                   # (t, r): r ≤ t
    a = log_decay_BTH.permute(0, 2, 1)[:, :, None, :] * upto            # (B,H,t,r)
    suffix = torch.flip(torch.cumsum(torch.flip(a, [-1]), -1), [-1])    # Σ_{r≥i, r≤t}
    between = F.pad(suffix[..., 1:], (0, 1))                            # Σ_{i<r≤t}
    logw = between + log_gate_BTH.permute(0, 2, 1)[:, :, None, :]
    logw = logw.masked_fill(~upto, float("-inf"))
    w = torch.exp(logw - logw.amax(-1, keepdim=True))
    return _normalize(torch.einsum("bhti,bihd->bthd", w, kt_BTHD))


class MosaicV2Memory(nn.Module):
    def __init__(self, c: MosaicConfig, kind: str, H: int) -> None:
        super().__init__()
        C, D = c.n_embd, c.head_dim
        self.kind, self.look, self.skip = kind, c.short_lookback, c.long_skip_eval
        for name, shape in {"wk": (C, H, D), "wg": (C, H), "wl": (C, H), "wv": (C, H, D), "v_coef": (H,),
                            "value_scale": (H,), "bw_b0": (H,), "bw_b1": (H,), "bw_alpha": (H,)}.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    def forward(self, h: Tensor) -> Tensor:
        T = h.shape[1]
        k = _gated_keys(torch.einsum("btc,chd->bthd", h, self.wk), torch.einsum("btc,ch->bth", h, self.wg),
                        -torch.einsum("btc,ch->bth", h, self.wl).abs())
        vt = torch.einsum("btc,chd->bthd", h, self.wv)
        nxt = F.pad(vt[:, 1:], (0, 0, 0, 0, 0, 1))
        c = self.v_coef[:, None]
        v = _normalize(c * vt + (1 - c) * nxt) * torch.exp(torch.clamp(self.value_scale.abs(), max=15.0))[:, None]
        t = torch.arange(T, device=h.device)
        d = t[:, None] - t[None, :]                                     # t − j
        if self.kind == "short":
            allowed, n = (d >= 1) & (d <= self.look), torch.clamp(t, max=self.look)
        else:
            allowed, n = d >= self.skip, torch.clamp(t - self.skip + 1, min=0)
        n = torch.clamp(n.float(), min=1.0)[:, None]                    # (T,1); an empty row reads nothing
        beta = (torch.exp(torch.clamp(self.bw_b1, max=10.0)) * n ** torch.clamp(self.bw_alpha.abs(), max=1.0)
                + torch.exp(torch.clamp(self.bw_b0, max=10.0)))         # (T,H)
        q = k * beta[None, :, :, None]
        w = _masked_softmax(torch.einsum("bthd,bshd->bhts", q, k), allowed)
        return torch.einsum("bhts,bshd->bthd", w, v)


class MosaicV2Block(nn.Module):
    def __init__(self, c: MosaicConfig) -> None:
        super().__init__()
        C, F_ = c.n_embd, c.ffn_dim
        self.ln1, self.ln2 = _ln_holder(C, False), _ln_holder(C, False)
        if c.short_heads:
            self.short = MosaicV2Memory(c, "short", c.short_heads)
        if c.long_heads:
            self.long = MosaicV2Memory(c, "long", c.long_heads)
        self.wo = nn.Parameter(torch.zeros(c.short_heads + c.long_heads, c.head_dim, C))
        self.ffn = _holder({"w1": (C, F_), "w3": (C, F_), "w2": (F_, C)})

    def forward(self, x: Tensor) -> Tensor:
        h = _layer_norm(x, self.ln1)
        ys = [m(h) for m in (getattr(self, "short", None), getattr(self, "long", None)) if m is not None]
        x = x + torch.einsum("bthd,hdc->btc", torch.cat(ys, dim=2), self.wo)
        h = _layer_norm(x, self.ln2)
        f = self.ffn
        return x + (F.silu(h @ f.w1) * (h @ f.w3)) @ f.w2


# ---------------------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------------------
class MosaicForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MosaicConfig
    base_model_prefix = "mosaic"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: MosaicConfig) -> None:
        super().__init__(config)
        c = config
        if c.arch not in ("mosaic", "mosaic_v2"):
            raise ValueError(f"MosaicConfig.arch={c.arch!r} not in ('mosaic', 'mosaic_v2')")
        self.embed = nn.Parameter(torch.zeros(c.vocab_size, c.n_embd))
        block = MosaicV1Block if c.arch == "mosaic" else MosaicV2Block
        self.blocks = nn.ModuleList([block(c) for _ in range(c.n_layer)])
        self.ln_out = _ln_holder(c.n_embd, c.bias and c.arch == "mosaic")
        if not c.weight_tying:
            self.head = nn.Parameter(torch.zeros(c.vocab_size, c.n_embd))
        # v1 divides its logits by √C, as the reference does; v2 does not
        self.logit_divisor = math.sqrt(c.n_embd) if c.arch == "mosaic" else 1.0
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Every tensor comes from the exported checkpoint; nothing is initialised here."""

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits (B, T, V) in float32. Rows are causal, so right padding never changes the valid positions;
        `attention_mask` is accepted for API compatibility and ignored (left padding is not supported)."""
        x = F.embedding(input_ids, self.embed).float()
        for blk in self.blocks:
            x = blk(x)
        x = _layer_norm(x, self.ln_out)
        head = self.embed if self.config.weight_tying else self.head
        logits = (x @ head.T) / self.logit_divisor
        loss = None
        if labels is not None:   # the usual causal-LM convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        return {"input_ids": input_ids}   # no cache: the whole prefix each step
