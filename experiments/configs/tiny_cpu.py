"""Thin alias of the packaged preset mosaic_jax/presets/tiny_cpu.py (use --config=tiny_cpu)."""
from mosaic_jax.presets.tiny_cpu import get_config  # noqa: F401
