"""The paper's BabiStories memory mosaic (spec §4.1): 12 layers, C 768, 12 heads, P 2688, block 512,
batch 512, AdamW(0.9, 0.95) lr 5e-3, 2k warm-up, cosine to 1e-4 at 80k steps, wd 0.1, clip 1.0, dropout 0.05.

The reference ran 64 V100s x 8 sequences in fp16 autocast; here bfloat16 compute with float32 master weights.
Prepare the data with the GPT-2 tokenizer (the reference's), e.g.
    python -m mosaic_jax.prepare_data --input=BabiStories/ --out=data/babistories_gpt2 --tokenizer=gpt2
On a small accelerator set train.microbatches so that each microbatch fits (the batch stays 512 sequences).
"""
from mosaic_jax.training.run_config import base_config


def get_config():
    c = base_config()
    c.model.update(arch="mosaic", n_layer=12, n_embd=768, n_head=12, pmem_size=2688, block_size=512,
                   ic_dropout=0.05, hd_dropout=0.05, vocab_size=0, vocab_multiple=64)   # 50257 -> 50304
    c.impl.update(dtype="bfloat16", remat="none", scan_layers=True)
    c.data.path = "data/babistories_gpt2"
    c.train.update(steps=80_000, global_batch=512, microbatches=1, seed=1337,
                   log_every=50, eval_every=2000, eval_batches=10, checkpoint_every=2000, keep_checkpoints=3,
                   sample_tokens=128)
    c.optim.update(lr=5e-3, min_lr=1e-4, warmup_steps=2000, decay_steps=80_000,
                   b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)   # pure FSDP over all devices
    return c
