"""Pallas (TPU) kernels of the memory reads: a blocked flash kernel with band masks (`flash`), the v1 and v2
reads on it (`reads`) and its dropout hash (`dropout`). Off-TPU they run in Pallas interpret mode."""
from mosaic_jax.kernels.pallas.reads import (contextual_read, long_term_read, persistent_read, sequence_read,
                                     short_term_read)

__all__ = ["contextual_read", "long_term_read", "persistent_read", "sequence_read", "short_term_read"]
