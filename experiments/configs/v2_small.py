"""Thin alias of the packaged preset mosaic_jax/presets/v2_small.py (use --config=v2_small)."""
from mosaic_jax.presets.v2_small import get_config  # noqa: F401
