"""A training config for tests that resolve one: `base_config()` with data.path set and some fields changed."""
from mosaic_jax.training import run_config


def config_with(**changes):
    """base_config() with data.path set and `changes` ({"section.field": value}) applied."""
    c = run_config.base_config()
    c.data.path = "somewhere"
    for key, value in changes.items():
        section, field = key.split(".")
        c[section][field] = value
    return c
