"""The GPT-2 baseline (nanoGPT-equivalent block)."""
