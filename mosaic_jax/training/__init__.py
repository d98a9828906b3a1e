"""The training loop's parts: state, step, optimizer, checkpoints and their integrity, metrics, run guard."""
