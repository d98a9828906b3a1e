"""Memory Mosaics v2 (NeurIPS 2025): Flax blocks, the incremental decoder and parameter counts."""
