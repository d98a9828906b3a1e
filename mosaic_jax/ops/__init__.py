"""The memory math of Memory Mosaics (v1 and v2) as pure functions of arrays."""
