"""The GPT-2 baseline of the paper's BabiStories comparison: the same recipe as babistories_mm (the
paper tuned it for the transformer and transferred it), 12 layers, C 768, 12 heads, MLP 4C, block 512."""
from mosaic_jax.presets import babistories_mm as _mm


def get_config():
    c = _mm.get_config()
    c.model.arch = "gpt2"
    return c
