"""Model families (mosaic, mosaic_v2, gpt2), their configs, the language model wrapper and FLOP counts."""
