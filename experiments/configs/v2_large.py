"""Thin alias of the packaged preset mosaic_jax/presets/v2_large.py (use --config=v2_large)."""
from mosaic_jax.presets.v2_large import get_config  # noqa: F401
