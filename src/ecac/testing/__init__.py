"""Deterministic generators for tests, benchmarks and the demo: workloads, scenarios, demo ops."""
