"""Memory Mosaics v2 small (spec §5, "llama-1.5B scale"): 24 layers, d 2048, 16 heads per memory (short- and
long-term), SwiGLU d' 6144, 4k context, document masking; 200B tokens at batch 1024 x 4096 (47,684 steps).
AdamW(0.9, 0.95), wd 0.1, clip 1.0, 2k warm-up, cosine to lr/100, peak lr 3e-4. Initialisation of v2 Table 6.

Counts (python -m mosaic_jax.models.mosaic_v2.counts): 2.04B parameters with the Llama-3 vocabulary (128,256, untied).
The paper used a Llama-3-style tokenizer with <|begin_of_text|>/<|end_of_text|> around each document; prepare
data with document boundaries and train with data.packing=True (segment ids -> document-wise masks).
    python -m mosaic_jax.train --config=v2_small --workdir=runs/v2_small \
        --config.data.path=data/<prepared>
"""
from mosaic_jax.training.run_config import base_config


def get_config():
    c = base_config()
    c.model.update(arch="mosaic_v2", n_layer=24, n_embd=2048, n_head=16, n_head_short=-1, n_head_long=-1,
                   ffn_hidden=6144, block_size=4096, vocab_size=128256, vocab_multiple=64, weight_tying=False,
                   short_window=256, short_oldest="t-h+1", long_skip_min=64, long_skip_max=256, long_skip_eval=64,
                   doc_masking=True, ic_dropout=0.0, hd_dropout=0.0, bias=False)
    c.impl.update(dtype="bfloat16", remat="full", scan_layers=True, v2_impl="auto")
    c.data.update(path="data/v2_pretrain", seq_len=4096, packing=True)
    c.train.update(steps=47_684, global_batch=1024, microbatches=1, seed=0,
                   log_every=50, eval_every=2000, eval_batches=10, checkpoint_every=1000, keep_checkpoints=3,
                   sample_tokens=128)
    c.optim.update(lr=3e-4, min_lr=3e-6, warmup_steps=2000, decay_steps=47_684,
                   b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
