"""Benchmarks and multi-seed evaluations; results go to docs/."""
