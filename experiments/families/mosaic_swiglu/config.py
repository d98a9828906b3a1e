"""Train the example family on the TinyStories sample (the tiny_cpu recipe with a SwiGLU persistent memory):

    python -m mosaic_jax.train --config=experiments/families/mosaic_swiglu/config.py --workdir=runs/swiglu \
        --config.data.path=runs/data/tinystories_sp4k

Run from the repository root (the family module is imported by its dotted name).
"""
from mosaic_jax.presets import tiny_cpu


def get_config():
    c = tiny_cpu.get_config()
    c.model.arch = "mosaic_swiglu"
    c.model.family_module = "experiments.families.mosaic_swiglu.family"
    c.model.ffn_hidden = 3 * c.model.n_embd   # 3C hidden units: about the v1 persistent memory's FLOPs at P = 3.5C
    return c
