"""Thin alias of the packaged preset mosaic_jax/presets/babistories_mm.py (use --config=babistories_mm)."""
from mosaic_jax.presets.babistories_mm import get_config  # noqa: F401
