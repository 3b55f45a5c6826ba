"""Benchmarks of mhc_pre against the memory-traffic floor: ``python -m benchmarks.run --help``."""
