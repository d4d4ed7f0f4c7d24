"""Benchmarks of the product against its peers, measured in the same run (see bench/README.md)."""
