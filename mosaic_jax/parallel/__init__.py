"""Device meshes, the logical-axis sharding table, and multi-process start-up."""
