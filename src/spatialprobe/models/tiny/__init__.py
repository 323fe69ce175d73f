"""Tiny random-initialized checkpoints of the real architectures, built from configs written in code.

One module per family that needs more than a tower config (the adapters' `save_tiny` call them);
`spatialprobe.testing.save_tiny(family, folder)` is the public entry point.
"""
