r"""An independent PyTorch re-implementation of the reference memory mosaic (`Library/`, regular model), for the
side-by-side speed figure of issue 9. Written from ../shared/spec/memory_mosaics.md §2 (not copied from the
official code); its state_dict uses the reference names (§3.1), so the golden vectors check it.

    python benchmarks/torch_reference.py --check-golden               # logits vs ../shared/golden (≤ 2e-5)
    python benchmarks/torch_reference.py --modes eager,compile        # train-step tokens/s, JSON lines
    python benchmarks/torch_reference.py --modes compile-bf16         # the reference's mixed precision
    python benchmarks/torch_reference.py --serve --modes eager        # one step per "step" line on stdin
                                                                      # (used by `python -m mosaic_jax.tools.bench --torch`)

The step is the one the JAX harness times: no dropout, loss → backward → clip_grad_norm(1.0) → AdamW(1e-3,
betas (0.9, 0.95), weight decay 0.1). A mode ending in "-bf16" runs forward and loss under
torch.autocast(bfloat16) with float32 weights and optimizer, as the reference's training script does (it uses
float16 + GradScaler on GPU; bfloat16 is the CPU autocast type and needs no scaler). It follows the reference's
operator choices: the leaky average as a T×T decay matrix, the contextual read as masked softmax + matmul, the
persistent read through SDPA.
torch is imported here only; nothing in mosaic_jax depends on this file.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"


class LeakyKeys(nn.Module):
    """k = e^{min(10·kb, 5)·power} · normalize(D_λ @ (W_k h)), D_λ[t,i] = (1−e^{−λ}) e^{−λ(t−i)} for i ≤ t."""

    def __init__(self, C: int, H: int) -> None:
        super().__init__()
        self.H = H
        self.leaky_key_beta = nn.Parameter(torch.linspace(0.5, 5.0, H) / 10)
        self.kernel_beta = nn.Parameter(torch.full((H,), 0.1))
        self.value_beta = nn.Parameter(torch.full((H,), -0.05))
        self.k_featurizer = nn.Module()
        self.k_featurizer.conv = nn.Conv1d(C, C, 1, bias=False)
        nn.init.normal_(self.k_featurizer.conv.weight, std=1 / math.sqrt(C))

    def keys(self, h: torch.Tensor, power: float) -> torch.Tensor:
        B, T, C = h.shape
        kt = F.linear(h, self.k_featurizer.conv.weight[..., 0]).view(B, T, self.H, -1).transpose(1, 2)
        lam = 10 * self.leaky_key_beta.abs()
        t = torch.arange(T, device=h.device, dtype=h.dtype)
        dist = t[:, None] - t[None, :]
        decay = torch.exp(-lam[:, None, None] * dist.clamp(min=0)) * (dist >= 0)
        kbar = (decay * (1 - torch.exp(-lam))[:, None, None]) @ kt       # (B,H,T,D)
        scale = torch.exp(power * torch.clamp(10 * self.kernel_beta, max=5.0))
        return F.normalize(kbar, dim=-1, eps=0.0) * scale[None, :, None, None]


class ContextualMemory(LeakyKeys):
    def __init__(self, C: int, H: int, L: int) -> None:
        super().__init__(C, H)
        self.v_featurizer = nn.Module()
        self.v_featurizer.coef = nn.Parameter(torch.rand(H))
        self.v_featurizer.linear = nn.Linear(C, C, bias=False)
        nn.init.normal_(self.v_featurizer.linear.weight, std=1 / math.sqrt(C))
        self.c_proj = nn.Linear(C, C, bias=False)
        nn.init.normal_(self.c_proj.weight, std=1 / math.sqrt(C) / math.sqrt(L))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        k = self.keys(h, 1.0)
        vt = self.v_featurizer.linear(h).view(B, T, self.H, -1).transpose(1, 2)
        c = self.v_featurizer.coef[None, :, None, None]
        vbar = c * vt + (1 - c) * F.pad(vt[:, :, 1:], (0, 0, 0, 1))
        v = F.normalize(vbar, dim=-1, eps=0.0) * torch.exp(10 * self.value_beta)[None, :, None, None]
        s = k @ k.transpose(-1, -2)
        allowed = torch.ones(T, T, dtype=torch.bool, device=h.device).tril(-1)
        a = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        a = torch.nan_to_num(a, nan=0.0)   # row 0 reads nothing: exactly 0
        y = (a @ v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class PersistentMemory(LeakyKeys):
    def __init__(self, C: int, H: int, L: int, P: int) -> None:
        super().__init__(C, H)
        D = C // H
        self.pmem = nn.Module()
        self.pmem.M_k0 = nn.Parameter(torch.randn(1, H, P, D) / math.sqrt(D))
        self.pmem.M_v0 = nn.Parameter(torch.randn(1, H, P, D) / math.sqrt(D))
        self.c_proj = nn.Linear(C, C, bias=False)
        nn.init.normal_(self.c_proj.weight, std=1 / math.sqrt(C) / math.sqrt(L))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        q = self.keys(h, 2.0)
        M_k = self.pmem.M_k0.expand(B, -1, -1, -1)
        M_v = self.pmem.M_v0.expand(B, -1, -1, -1)
        y = F.scaled_dot_product_attention(q, M_k, M_v, scale=1.0)
        y = y * torch.exp(10 * self.value_beta)[None, :, None, None]
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, C: int, H: int, L: int, P: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(C, bias=False)
        self.attn = ContextualMemory(C, H, L)
        self.ln2 = nn.LayerNorm(C, bias=False)
        self.pmem = PersistentMemory(C, H, L, P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.pmem(self.ln2(x))


class MemoryMosaic(nn.Module):
    def __init__(self, V: int, C: int, H: int, L: int, P: int) -> None:
        super().__init__()
        self.C = C
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(C, H, L, P) for _ in range(L)])
        self.ln_out = nn.LayerNorm(C, bias=False)
        self.head = nn.Linear(C, V, bias=False)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(C))
        self.emb.weight = self.head.weight   # tied; the head's initialisation wins

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_out(x)) / math.sqrt(self.C)


def check_golden(golden: pathlib.Path = GOLDEN) -> float:
    worst = 0.0
    for path in sorted(golden.glob("mm_v1_*.npz")):
        ref = np.load(path)
        cfg = json.loads(str(ref["config"]))
        m = MemoryMosaic(cfg["vocab_size"], cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["pmem_size"])
        sd = {k[3:]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("sd/")}
        m.load_state_dict(sd, strict=True)
        with torch.no_grad():
            logits = m(torch.from_numpy(ref["idx"])).numpy()
        err = float(np.abs(logits - ref["logits"]).max())
        print(json.dumps({"golden": path.name, "max_abs_err": err}))
        worst = max(worst, err)
    return worst


MODES = ("eager", "compile", "eager-bf16", "compile-bf16")


def mode_dtype(mode: str) -> str:
    """The compute precision of a mode: "bfloat16" (autocast) for the "-bf16" modes, else "float32"."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
    return "bfloat16" if mode.endswith("-bf16") else "float32"


def make_step(mode: str, L: int, C: int, H: int, P: int, V: int, T: int, B: int,
              threads: Optional[int] = None) -> Callable[[], float]:
    """A zero-argument training step (returns the loss) of the reference model; `mode` one of MODES."""
    autocast = mode_dtype(mode) == "bfloat16"
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MemoryMosaic(V, C, H, L, P)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    fwd = torch.compile(model) if mode.startswith("compile") else model
    x = torch.randint(0, V, (B, T))
    y = torch.roll(x, -1, 1)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):   # forward + loss, as the reference
            loss = F.cross_entropy(fwd(x).view(-1, V), y.view(-1), ignore_index=-1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_train(mode: str, L: int, C: int, H: int, P: int, V: int, T: int, B: int, steps: int, warmup: int,
               threads: Optional[int]) -> dict:
    step = make_step(mode, L, C, H, P, V, T, B, threads)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"impl": f"torch-{mode}", "arch": "mosaic-reference", "device": f"cpu ({torch.get_num_threads()} threads)",
            "L": L, "C": C, "H": H, "P": P, "V": V, "T": T, "B": B, "dtype": mode_dtype(mode),
            "step_ms": med * 1e3, "tokens_per_s": B * T / med, "steps": steps, "warmup_s": compile_s,
            "step_ms_all": [round(t * 1e3, 1) for t in times]}


def serve(mode: str, L: int, C: int, H: int, P: int, V: int, T: int, B: int, warmup: int,
          threads: Optional[int]) -> None:
    """Worker for the JAX harness: the reference runs in its own process (sharing one process with XLA's
    thread pool slowed it several-fold), and the harness interleaves its steps with the JAX variants."""
    import sys
    step = make_step(mode, L, C, H, P, V, T, B, threads)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": True, "warmup_s": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        print(time.perf_counter() - t0, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-golden", action="store_true")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--pmem", type=int, default=896)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--serve", action="store_true", help="warm up, print 'ready', then time one step per stdin line")
    a = ap.parse_args()
    if a.check_golden:
        err = check_golden()
        assert err <= 2e-5, err
        return
    if a.serve:
        serve(a.modes.split(",")[0], a.layers, a.embd, a.heads, a.pmem, a.vocab, a.seq, a.batch, a.warmup, a.threads)
        return
    for mode in a.modes.split(","):
        row = time_train(mode, a.layers, a.embd, a.heads, a.pmem, a.vocab, a.seq, a.batch, a.steps, a.warmup,
                         a.threads)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
