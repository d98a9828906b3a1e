"""Benchmarks, the ahead-of-time compile check and sweeps (command-line tools)."""
