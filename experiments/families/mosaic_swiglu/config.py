"""Train the example family on the TinyStories sample (the tiny_cpu recipe with a SwiGLU persistent memory):

    python -m mosaic_jax.train --config=experiments/families/mosaic_swiglu/config.py --workdir=runs/swiglu \
        --config.data.path=runs/data/tinystories_sp4k

Run from the repository root (the family module is imported by its dotted name).
"""
from mosaic_jax.presets import tiny_cpu
from mosaic_jax.training.run_config import base_config

MODULE = "experiments.families.mosaic_swiglu.family"


def get_config():
    c = base_config(family_module=MODULE)   # the model section gets this family's own fields (ffn_hidden, ...)
    tiny = tiny_cpu.get_config()
    for name in ("impl", "data", "train", "mesh"):
        c[name].update(tiny[name])
    c.model.update({k: v for k, v in tiny.model.items() if k in c.model})
    c.model.update(arch="mosaic_swiglu", family_module=MODULE)
    c.model.ffn_hidden = 3 * c.model.n_embd   # 3C hidden units: about the v1 persistent memory's FLOPs at P = 3.5C
    return c
