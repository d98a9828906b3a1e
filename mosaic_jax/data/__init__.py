"""Data pipeline: ingestion → tokenizers → prepared token store → deterministic grain batches.

    from mosaic_jax.data import tokenizers, store, loader
    tok = tokenizers.load_tokenizer("path/to/prepared")
    ds = store.open_prepared("path/to/prepared", "train")
    src = loader.BatchSource(ds, seq_len=512, global_batch=64, seed=0, packing=False)
    batch = src.global_batch_at(step)

See docs/data.md.
"""
from mosaic_jax.data import ingest, loader, pipeline, store, tokenizers
from mosaic_jax.data.errors import DataError

__all__ = ["DataError", "ingest", "loader", "pipeline", "store", "tokenizers"]
