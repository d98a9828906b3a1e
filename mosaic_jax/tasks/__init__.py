"""Synthetic tasks and analyses of the paper: RegBench, three moons, per-position losses, attention maps."""
