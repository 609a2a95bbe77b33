"""Deterministic generators for tests, benchmarks and the demo: workloads, policy scenarios, demo ops."""
