"""A small memory mosaic that trains in minutes on 2 CPU cores (TinyStories sample, sentencepiece 4k vocab).

    python -m mosaic_jax.train --config=tiny_cpu --workdir=runs/tiny_cpu \
        --config.data.path=runs/data/tinystories_sp4k
"""
from mosaic_jax.training.run_config import base_config


def get_config():
    c = base_config()
    c.model.update(arch="mosaic", n_layer=4, n_embd=128, n_head=4, pmem_size=448,   # P = 3.5 C, as the paper
                   block_size=128, ic_dropout=0.0, hd_dropout=0.0)  # minutes of training underfit: no dropout
    c.data.path = "runs/data/tinystories_sp4k"
    c.train.update(steps=400, global_batch=16,
                   log_every=25, eval_every=100, eval_batches=8, checkpoint_every=100, keep_checkpoints=2,
                   sample_tokens=96)
    c.optim.update(lr=5e-3, min_lr=1e-4, warmup_steps=50, weight_decay=0.1)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
