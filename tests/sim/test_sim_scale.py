"""The simulated network at scale and under network conditions (issue 13 items 4 and 5).

100 nodes in a random mesh (the 1,000-node run is ``ecac bench --scenario sim``), and the delay /
loss model that stands in for ``tc netem`` where namespaces or netem are unavailable
(``tests/netns``). Outcomes are simulated, so they are deterministic for a seed.
"""

from __future__ import annotations

import random

import pytest

from ecac.bench.sim import run_sim
from ecac.bench.simnet import Faults, SimNet, netem
from ecac.sync.coordinator import SyncConfig

pytestmark = pytest.mark.timeout(60)


def test_hundred_nodes_random_mesh_converge_after_join_and_after_a_partition() -> None:
    r = run_sim(100, 20, seed=3, topology="random", writers=2, partition_s=1.0, partition_ops=1)
    assert r["join_converged"] and r["heal_converged"] and r["converged"]
    assert r["links"] >= 99  # a spanning tree plus extra links
    assert r["ops_after_heal"] == 20 + 2
    assert r["join_op_copies_needed"] == 20 * 99
    assert r["join_ops_fetched"] >= r["join_op_copies_needed"]  # every node fetched what it lacked
    assert r["penalties"] == 0
    # (mem_kb_per_node is RSS growth: a bench figure, 0 in a worker that already grew its heap)
    assert r["join_bytes_per_op_per_node"] > 0


def test_runs_are_deterministic_for_a_seed() -> None:
    runs = [run_sim(10, 30, seed=4, topology="random", partition_s=1.0) for _ in range(2)]
    keys = ("links", "join_s", "join_messages", "join_bytes", "heal_s", "heal_messages", "heal_bytes")
    rec = [k for k in runs[0] if "reconcile" in k]
    assert runs[0]["reconcile"] and runs[0]["reconcile_sessions"] > 0
    for k in (*keys, *rec):
        assert runs[0][k] == runs[1][k], k


def test_netem_latency_model() -> None:
    with SimNet(2, seed=1, faults=Faults(latency=(0.0, 0.0), delay=0.1), threaded=False) as net:
        assert net._latency() == pytest.approx(0.1)
        assert net._chunk_gap() == 0.0  # chunks of one stream are pipelined
        net.faults = Faults(latency=(0.0, 0.0), delay=0.1, loss=1.0, rto=0.2)
        assert net._latency() == pytest.approx(0.3)  # every message retransmitted once
        assert net._chunk_gap() == pytest.approx(0.2)
    f = netem()
    assert (f.delay, f.loss) == (0.1, 0.01)
    rng = random.Random(5)
    assert sum(rng.random() < f.loss for _ in range(100_000)) == pytest.approx(1000, rel=0.15)


def test_three_nodes_converge_under_delay_and_loss_and_after_a_30s_partition() -> None:
    """The netns scenarios in simulation: node timing (SyncConfig defaults), 100 ms delay, 1 % loss."""
    cfg = SyncConfig()
    base = run_sim(3, 30, seed=2, topology="line", config=cfg, partition_s=30.0, partition_ops=5)
    slow = run_sim(
        3, 30, seed=2, topology="line", config=cfg, faults=netem(), partition_s=30.0, partition_ops=5
    )
    for r in (base, slow):
        assert r["join_converged"] and r["heal_converged"]
        assert r["ops_after_heal"] == 30 + 10
    assert slow["delay_ms"] == 100.0 and slow["loss"] == 0.01
    # a line of 3: the far node's ops cross two links, each announce → request → response (3 × 100 ms)
    assert slow["join_s"] >= 0.6 > base["join_s"]
    assert slow["heal_s"] <= cfg.anti_entropy_period + 5.0  # reconverges within about one anti-entropy round
