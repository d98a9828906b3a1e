"""Thin alias of the packaged preset mosaic_jax/presets/lm_by_depth.py (use --config=lm_by_depth)."""
from mosaic_jax.presets.lm_by_depth import get_config  # noqa: F401
