"""Benchmark and comparison scripts (not part of the test suite)."""
