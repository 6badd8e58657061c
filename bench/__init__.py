"""Benchmarks of wspsr (``python -m bench``, ``make bench``): a harness beside the product, not part of it."""
