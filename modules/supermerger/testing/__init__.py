"""Helpers for tests and benchmarks: synthetic checkpoints with the real key names."""
