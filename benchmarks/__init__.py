"""Benchmarks of bptorch: `python -m benchmarks.run`."""
