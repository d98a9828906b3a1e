"""Full-scale recipes (issue 7, part 5): the paper's BabiStories runs, their token/step budget, launch commands for
a TPU v4-32 and an 8×H100 node, and a time/cost estimate from model FLOPs and MFU.

    python experiments/full_scale.py                    # → experiments/results/full_scale/results.md
    python experiments/full_scale.py --smoke --out /tmp/fs

Nothing is trained: the configs are the presets `babistories_mm` and
`babistories_gpt2` (read, not changed). Parameter counts come from `jax.eval_shape` of the real model,
FLOPs per token from `mosaic_jax.models.flops` (3 × forward matmul FLOPs, no causal halving, remat not counted),
and the MFU "measured so far" from the CPU runs of experiments/lm_by_depth.py (runs/*/metrics.jsonl), when
present. No accelerator MFU has been measured in this project yet, so the accelerator estimate is a range over
assumed MFU values; the prices are assumptions too (flags).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import _util  # noqa: F401  (puts the repo root on sys.path)
from _util import REPO, RESULTS, command_line, machine, md_table, out_dir

import jax
import numpy as np

CONFIGS = {"mosaic": REPO / "experiments" / "configs" / "babistories_mm.py",
           "gpt2": REPO / "experiments" / "configs" / "babistories_gpt2.py"}
VOCAB = 50304      # GPT-2 BPE 50,257 padded to a multiple of 64 (what train.py resolves from the gpt2 tokenizer)
HARDWARE = {       # name -> (devices, dense bf16 peak per device)
    "8×H100 (one node)": (8, 989e12),
    "TPU v4-32 (16 chips)": (16, 275e12),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "full_scale"))
    p.add_argument("--mfu", default="0.15,0.30,0.45", help="assumed accelerator MFU values (low, mid, high)")
    p.add_argument("--price-h100", type=float, default=3.0, help="assumed $ per H100-hour")
    p.add_argument("--price-v4", type=float, default=3.22, help="assumed $ per TPU v4 chip-hour (on-demand list)")
    p.add_argument("--lm-runs", default=str(REPO / "runs" / "lm_by_depth"))
    return p.parse_args(argv)


def load_config(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def model_config(c):
    from mosaic_jax.models.config import ModelConfig
    d = {**c.model, **c.impl}   # the family's fields and the switches (dtype, remat) the memory figures depend on
    d["vocab_size"] = VOCAB
    return ModelConfig.from_dict(d)


def n_params(mc) -> int:
    from mosaic_jax.models import lm as M
    shapes = jax.eval_shape(lambda: M.init_params(mc, jax.random.key(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def measured_cpu_mfu(root: pathlib.Path) -> list[list]:
    rows = []
    for wd in sorted(root.glob("*_L*")):
        f = wd / "metrics.jsonl"
        if not f.is_file():
            continue
        recs = [json.loads(x) for x in f.read_text().splitlines()]
        tr = [r for r in recs if r.get("split") == "train" and r.get("mfu")]
        if tr:
            rows.append([wd.name, f"{np.median([r['tokens_per_s'] for r in tr]):,.0f}",
                         f"{100 * np.median([r['mfu'] for r in tr]):.1f}%"])
    return rows


def hours(flops_total: float, devices: int, peak: float, mfu: float) -> float:
    return flops_total / (devices * peak * mfu) / 3600


def main(argv=None) -> dict:
    a = parse(argv)
    out = out_dir(a.out)
    t0 = time.time()
    from mosaic_jax.models import flops

    mfus = [float(x) for x in a.mfu.split(",")]
    rows, est_rows, info = [], [], {}
    for arch, path in CONFIGS.items():
        c = load_config(path)
        mc = model_config(c)
        T, B, S = mc.block_size, c.train.global_batch, c.train.steps
        tokens = S * B * T
        fpt = flops.train_flops_per_token(mc, T)
        total = fpt * tokens
        P = n_params(mc)
        info[arch] = dict(tokens=tokens, fpt=fpt, total=total, params=P, steps=S, batch=B, T=T)
        rows.append([arch, path.relative_to(REPO), f"{P:,}", f"{mc.n_layer}L/{mc.n_embd}/"
                     f"{mc.n_head}H" + (f"/P{mc.pmem_size}" if arch == "mosaic" else ""),
                     f"{S:,}", f"{B}×{T}", f"{tokens / 1e9:.2f}B", f"{fpt / 1e6:.0f}M", f"{total:.3g}"])
        for hw, (n, peak) in HARDWARE.items():
            price = a.price_h100 if "H100" in hw else a.price_v4
            hs = [hours(total, n, peak, m) for m in mfus]
            est_rows.append([arch, hw] + [f"{h:.1f} h / ${h * n * price:,.0f}" for h in hs])
    cpu = measured_cpu_mfu(pathlib.Path(a.lm_runs))

    both_h100 = [sum(hours(info[x]["total"], 8, 989e12, m) for x in info) for m in mfus]
    sweep_total = 0.0                     # Fig. 7: depths 1, 8, 12, 18 for both architectures
    for arch, path in CONFIGS.items():
        for depth in (1, 8, 12, 18):
            mc = model_config(load_config(path)).replace(n_layer=depth)
            sweep_total += flops.train_flops_per_token(mc, mc.block_size) * info[arch]["tokens"]
    sweep_h100 = [hours(sweep_total, 8, 989e12, m) for m in mfus]
    md = f"""# Full-scale recipes: the paper's BabiStories memory mosaic and GPT-2 baseline

Command: `{command_line(['python', 'experiments/full_scale.py'] + list(sys.argv[1:] if argv is None else argv))}`
Wall time: {time.time() - t0:.0f} s on {machine()}{' — SMOKE RUN' if a.smoke else ''} (nothing is trained; this
computes the budgets).

## Configs (owned by the training code; spec §4.1)

{md_table(['arch', 'config', 'params (V=50,304)', 'model', 'steps', 'batch × context', 'tokens',
           'train FLOPs/token', 'total FLOPs'], rows)}

Both: AdamW (0.9, 0.95), lr 5e-3, 2,000 warm-up steps, cosine to 1e-4 at 80,000 steps, weight decay 0.1, clip 1.0,
dropout 0.05, bf16 compute with f32 master weights, seed 1337. The reference trained on 64 V100s (8 per GPU ×
64 = 512 sequences of 512 tokens per step, ≈ 21.0B tokens ≈ 44 passes over BabiStories' 475M training tokens).
Prepare the data with the GPT-2 tokenizer first (BabiStories is not in ../shared; get it from the reference repo):

```bash
python -m mosaic_jax.prepare_data --input=BabiStories/ --out=data/babistories_gpt2 --tokenizer=gpt2
```

## Launch commands

8×H100, one SLURM node (one task per GPU; pure FSDP over NVLink; 64 rows per GPU per step, so split into
microbatches and rematerialise; check the fit first with `python -m mosaic_jax.tools.aot ... --device_memory_gb=60`):

```bash
sbatch launch/slurm_gpu.sbatch -- --config=babistories_mm --workdir=/shared/runs/bs_mm \\
    --config.data.path=/shared/data/babistories_gpt2 --config.mesh.fsdp=8 \\
    --config.train.microbatches=4 --config.impl.remat=full
sbatch launch/slurm_gpu.sbatch -- --config=babistories_gpt2 --workdir=/shared/runs/bs_gpt2 \\
    --config.data.path=/shared/data/babistories_gpt2 --config.mesh.fsdp=8 \\
    --config.train.microbatches=4 --config.impl.remat=full
```

TPU v4-32 (16 chips on 4 hosts; the settings the AOT check in docs/scaling.md found to fit 32 GiB HBM):

```bash
launch/tpu_pod.sh --name=mm-v4 --zone=us-central2-b --accelerator-type=v4-32 -- \\
    --config=babistories_mm --workdir=/mnt/shared/runs/bs_mm \\
    --config.data.path=/mnt/shared/data/babistories_gpt2 \\
    --config.mesh.fsdp=16 --config.train.microbatches=16 --config.impl.remat=full
launch/tpu_pod.sh --name=mm-v4 --zone=us-central2-b --skip-setup -- \\
    --config=babistories_gpt2 --workdir=/mnt/shared/runs/bs_gpt2 \\
    --config.data.path=/mnt/shared/data/babistories_gpt2 \\
    --config.mesh.fsdp=16 --config.train.microbatches=16 --config.impl.remat=full
```

Depth sweep for Fig. 7 (depths 1, 8, 12, 18; one run folder each): add `--config.model.n_layer=N` and a workdir
per depth, or `python -m mosaic_jax.tools.sweep run --name=depth --mode=slurm --grid=model.n_layer=1,8,12,18 --
--config=babistories_mm` (and the same for `babistories_gpt2.py`).

## Time and cost estimate

Time = total model FLOPs ÷ (devices × dense bf16 peak × MFU). Peak per device: H100 989 TFLOP/s, TPU v4
275 TFLOP/s. **MFU measured so far is on CPU only** (no accelerator was available to this project's sessions);
the accelerator MFU values are assumptions ({', '.join(f'{100 * m:.0f}%' for m in mfus)}), bracketing what
tuned JAX stacks report for small models (jax_engineering.md §9.4: H100 40–50% for Megatron-class stacks, small
models lower) and the CPU measurements below. Rematerialisation (`remat=full`, needed to fit the batch) adds
about one extra forward (+33% compute) that MFU does not count: multiply the times by about 1.33 when it is on.
Prices: ${a.price_h100:.2f} per H100-hour and ${a.price_v4:.2f} per v4 chip-hour (assumptions; change with
`--price-h100/--price-v4`).

{md_table(['arch', 'hardware'] + [f'MFU {100 * m:.0f}%: time / cost' for m in mfus], est_rows)}

Both models, one 8×H100 node, sequentially: {', '.join(f'{h:.1f} h' for h in both_h100)} at the three MFU values
(× about 1.33 with remat). The whole Fig. 7 sweep (depths 1, 8, 12 and 18, both architectures, 21B tokens each:
{sweep_total:.3g} FLOPs) takes {', '.join(f'{h:.0f} h' for h in sweep_h100)} on one 8×H100 node
({', '.join(f'${h * 8 * a.price_h100:,.0f}' for h in sweep_h100)}).

MFU measured on this 2-core CPU (`experiments/lm_by_depth.py` runs, f32, against the CPU matmul peak the trainer
measures in each workdir, which is itself measured under load: read as upper bounds):

{md_table(['run', 'tokens/s (median)', 'MFU (median)'], cpu) if cpu else '(no lm_by_depth runs found)'}

Other CPU measurements: ../shared/spec/performance_notes.md (memory mosaic f32 17–22%, bf16 27%; GPT-2 of the same
FLOPs 29–42%; the mosaic runs at 0.64–0.76 × the GPT-2 speed at equal FLOPs) and docs/training.md (tiny_cpu 6–9%
against the unloaded peak). If the same MM:GPT-2 ratio holds on accelerators, the mosaic run takes 1.3–1.6 × the
GPT-2 run's time at equal model FLOPs.
"""
    (out / "results.md").write_text(md)
    print(md, flush=True)
    return {"info": info, "estimates": est_rows}


if __name__ == "__main__":
    main()
