"""mosaic_jax: Memory Mosaics in JAX/Flax."""
