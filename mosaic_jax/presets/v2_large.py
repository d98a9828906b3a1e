"""Memory Mosaics v2 large (spec §5, "llama-8B scale"): 32 layers, d 4096, 32 heads per memory (short- and
long-term), SwiGLU d' 14336, 4k context, document masking; 1T tokens at batch 1024 x 4096 (238,419 steps),
peak lr 1e-3, otherwise as v2_small. Initialisation of v2 Table 6.

Counts (python -m mosaic_jax.models.mosaic_v2.counts): 9.926B parameters (paper: 9.9B) and 18.80 GFLOPs/token of weight
matmuls (paper: 18.9); docs/v2.md has the table.
    python -m mosaic_jax.train --config=v2_large --workdir=runs/v2_large \
        --config.data.path=data/<prepared> --config.mesh.tensor=8
"""
from mosaic_jax.presets import v2_small


def _small_config():
    return v2_small.get_config()


def get_config():
    c = _small_config()
    c.model.update(n_layer=32, n_embd=4096, n_head=32, ffn_hidden=14336)
    c.train.update(steps=238_419)
    c.optim.update(decay_steps=238_419, lr=1e-3, min_lr=1e-5)
    return c
