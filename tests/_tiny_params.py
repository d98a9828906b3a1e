"""Random parameters for interop tests, built without compiling `init_params` (its jit costs minutes on a loaded
CPU for v2): shapes from jax.eval_shape, values drawn here. Every per-head scalar gets its own value, so a
converter that swaps heads, layers or scalars changes the function."""
import jax
import numpy as np

from mosaic_jax.models.lm import init_params

HEAD_SCALARS = {"leaky_key_beta", "kernel_beta", "value_beta", "value_scale", "bw_b0", "bw_b1", "bw_alpha"}


def random_params(cfg, seed: int = 0):
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "weight" or name == "ln":                   # LayerNorm gains
            x = 1.0 + 0.1 * rng.standard_normal(s.shape)
        elif name in HEAD_SCALARS:                               # near the inits: keys stay well conditioned
            x = 0.1 + 0.05 * rng.standard_normal(s.shape)
        elif name == "v_coef":
            x = rng.uniform(0.0, 1.0, s.shape)
        else:
            x = 0.2 * rng.standard_normal(s.shape)
        return jax.numpy.asarray(x, jax.numpy.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
