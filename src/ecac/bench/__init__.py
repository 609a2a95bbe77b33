"""Benchmark scenarios behind ``ecac bench``.

A scenario is a function ``(BenchParams) -> dict`` returning the measured numbers; the
``bench`` command prints them (human table or, with ``--json``, one JSON object as the
last stdout line). Areas add scenarios in their own module under ``ecac.bench``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BenchParams:
    scenario: str
    ops: int
    seed: int
    peers: int = 1
    nodes: int = 2
    checkpoint_every: int = 0
    diff: int = 0  # ops differing between the two stores (scenario reconcile)
    topology: str = "line"  # the mesh scenario: line | star | random
    reconcile: bool = True  # the sim scenario: run set reconciliation (``--no-reconcile``: off)
    link_delay_ms: float | None = None  # the mesh scenario: links through ecac.bench.linkproxy
    link_loss: float = 0.0  # the mesh scenario: TCP segment loss of every proxied link
    partition_s: float = 0.0  # the mesh scenario: cut the middle link this long after the join


Scenario = Callable[[BenchParams], dict[str, Any]]
SCENARIOS: dict[str, tuple[Scenario, str]] = {}


def scenario(name: str, help_text: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario under ``name`` with a one-line description."""

    def deco(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (fn, help_text)
        return fn

    return deco


def load_all() -> dict[str, tuple[Scenario, str]]:
    """Import every scenario module (each registers itself) and return the registry."""
    import importlib

    for mod in ("replay", "policy", "store", "sync", "digest", "node", "mesh", "sim", "reconcile"):
        try:
            importlib.import_module(f"ecac.bench.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"ecac.bench.{mod}":
                raise
    return SCENARIOS
