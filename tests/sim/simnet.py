"""The simulated network, for the tests: it lives in ``ecac.bench.simnet`` (the sim bench uses it too)."""

from ecac.bench.simnet import (
    SIM_CONFIG,
    Faults,
    InlineWriter,
    SimNet,
    SimNode,
    SimStats,
    SimWriter,
    apply_commit,
    netem,
)

__all__ = [
    "SIM_CONFIG",
    "Faults",
    "InlineWriter",
    "SimNet",
    "SimNode",
    "SimStats",
    "SimWriter",
    "apply_commit",
    "netem",
]
