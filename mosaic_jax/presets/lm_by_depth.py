"""Language modelling by depth on 2 CPU cores (issue 7, part 3; experiments/lm_by_depth.py runs it).

One recipe for the memory mosaic and the GPT-2 baseline at equal size (C 128, P = 3.5 C = 448, so that a
mosaic block and a GPT-2 block have the same parameters and FLOPs per token), TinyStories sample with the
sentencepiece 4k vocabulary of scripts/quickstart.sh. The driver overrides `model.arch` and `model.n_layer`
(depths 1 and 4):

    python -m mosaic_jax.train --config=lm_by_depth --workdir=runs/lm_by_depth/mosaic_L1 \
        --config.model.arch=mosaic --config.model.n_layer=1
"""
from mosaic_jax.training.run_config import base_config


def get_config():
    c = base_config()
    c.model.update(arch="mosaic", n_layer=1, n_embd=128, n_head=4, pmem_size=448, block_size=256,
                   ic_dropout=0.0, hd_dropout=0.0)   # < 1 epoch of data: no dropout (paper: 0.05)
    c.data.path = "runs/data/tinystories_sp4k"
    c.train.update(steps=300, global_batch=8, seed=0,
                   log_every=10, eval_every=50, eval_batches=8, checkpoint_every=300, keep_checkpoints=1,
                   sample_tokens=0, export_params=False)
    c.optim.update(lr=5e-3, min_lr=1e-4, warmup_steps=30, weight_decay=0.1, grad_clip=1.0, b1=0.9, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
