"""Thin alias of the packaged preset mosaic_jax/presets/babistories_gpt2.py (use --config=babistories_gpt2)."""
from mosaic_jax.presets.babistories_gpt2 import get_config  # noqa: F401
