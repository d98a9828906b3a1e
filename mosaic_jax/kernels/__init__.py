"""Hand-written VJPs (custom_vjp) and Pallas kernels for the memory reads and the dense parts of a step."""
