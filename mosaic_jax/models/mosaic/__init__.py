"""Memory Mosaics v1 (ICLR 2025): Flax blocks and the official-checkpoint converter."""
