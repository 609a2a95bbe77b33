"""Set reconciliation (``/ecac/reconcile/1``) in the simulated network.

Each node runs the node's own "when" policy (``ecac.sync.reconcile_sched.ReconcileSchedule``) and
real ``Reconciler`` sessions whose frames cross the simulated links. Everything asserted here is a
counter (sessions, round trips, ids, failures) or a store, never a time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from ecac.bench.sim import run_sim
from ecac.bench.simnet import SimNet
from ecac.sync.reconcile import ReconcileLimits
from ecac.sync.reconcile_sched import POLL_PERIOD, ReconcileCounters
from sim.dags import chain

pytestmark = pytest.mark.timeout(60)

NODES = 6
SHARED = 40
WRITES = (6, 5)  # ops written during the partition by the first node of each half


def _sums(net: SimNet) -> dict[str, int]:
    """The nodes' reconcile counters summed (``reconcile_round_trips_max``: the largest)."""
    total = ReconcileCounters()
    for node in net.nodes.values():
        for k, v in node.rc.as_dict().items():
            merge = max if k == "reconcile_round_trips_max" else int.__add__
            setattr(total, k, merge(getattr(total, k), v))
    return total.as_dict()


def _partition_and_heal(
    reconcile: bool, seed: int = 7, limits: ReconcileLimits | None = None
) -> dict[str, Any]:
    """A random mesh joins, splits in two halves that both write, heals; counters of each phase."""
    with SimNet(
        NODES, seed=seed, threaded=False, tick=0.001, reconcile=reconcile, reconcile_limits=limits
    ) as net:
        net.preload("n0", chain(SHARED))
        edges = net.random_mesh()
        joined = net.run_until_converged(30.0, step=0.05)
        halves = (sorted(net.nodes)[0::2], sorted(net.nodes)[1::2])
        net.cut(edges, halves)
        for half, k in zip(halves, WRITES, strict=True):
            net.write(half[0], k)
        net.run_for(2.0)
        before = _sums(net)
        sessions_before = net.stats.reconcile_sessions
        refused_before = net.stats.reconcile_refused
        net.set_topology(edges)
        healed = net.run_until_converged(30.0, step=0.05)
        after = _sums(net)
        return {
            "joined": joined,
            "healed": healed,
            "ops": len(net.nodes["n0"].store.topo_ids()),
            "heal": {k: after[k] - before[k] for k in after if k != "reconcile_round_trips_max"},
            "total": after,
            "heal_sessions": net.stats.reconcile_sessions - sessions_before,
            "refused_before": refused_before,
            "stats": asdict(net.stats),
            "nodes": {name: n.rc.as_dict() for name, n in sorted(net.nodes.items())},
            "penalties": sum(len(n.penalties) for n in net.nodes.values()),
        }


def test_a_partition_heals_with_reconciliation_within_the_round_trip_limit() -> None:
    r = _partition_and_heal(reconcile=True)
    assert r["joined"] and r["healed"]
    assert r["ops"] == SHARED + sum(WRITES)
    heal = r["heal"]
    assert r["heal_sessions"] >= 1
    # the sessions at the heal found what the halves wrote (each id as the side lacking it found it)
    assert heal["reconcile_ids_needed"] >= 1
    assert heal["reconcile_ids_found"] >= heal["reconcile_ids_needed"]
    # no link went down during the heal: a failure is a session refused because the pair ran one
    # already (both ends' ticks started one at once; the other one served both)
    assert heal["reconcile_failures"] == r["stats"]["reconcile_refused"] - r["refused_before"]
    total = r["total"]
    limit = ReconcileLimits().max_rounds
    assert 1 <= total["reconcile_round_trips_max"] <= 4 <= limit  # issue 13: a small difference in ≤ 4
    assert total["reconcile_rounds"] <= limit * total["reconcile_sessions"]
    assert total["reconcile_bytes_sent"] == r["stats"]["reconcile_bytes"] > 0
    # every frame sent arrives, except those in flight when their session was reset (the partition)
    lost = total["reconcile_bytes_sent"] - total["reconcile_bytes_received"]
    assert lost >= 0 and (lost == 0 or total["reconcile_failures"] > 0)
    assert r["stats"]["reconcile_frames"] >= 2 * r["stats"]["reconcile_sessions"] - NODES
    assert r["penalties"] == 0


def test_a_round_limit_ends_sessions_incomplete_and_the_network_still_converges() -> None:
    """With one frame per side a session is one round trip and cannot finish a difference this big:
    it ends incomplete (what it found is kept), and the nodes converge all the same."""
    r = _partition_and_heal(reconcile=True, limits=ReconcileLimits(max_rounds=1))
    assert r["joined"] and r["healed"]
    assert r["ops"] == SHARED + sum(WRITES)
    total = r["total"]
    assert total["reconcile_round_trips_max"] == 1
    assert total["reconcile_rounds"] == total["reconcile_sessions"]
    assert total["reconcile_incomplete"] >= 1


def test_without_reconciliation_the_same_partition_heals_by_the_announce_path() -> None:
    r = _partition_and_heal(reconcile=False)
    assert r["joined"] and r["healed"]
    assert r["ops"] == SHARED + sum(WRITES)
    assert r["stats"]["reconcile_sessions"] == r["stats"]["reconcile_bytes"] == 0
    assert all(v == 0 for v in r["total"].values())


def test_reconciling_runs_are_deterministic_for_a_seed() -> None:
    a, b = _partition_and_heal(True, seed=11), _partition_and_heal(True, seed=11)
    assert a["total"]["reconcile_sessions"] > 0
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = _partition_and_heal(True, seed=12)
    assert json.dumps(c["nodes"], sort_keys=True) != json.dumps(a["nodes"], sort_keys=True)


def test_on_link_up_the_smaller_name_initiates_one_session_per_pair() -> None:
    with SimNet(2, seed=3, threaded=False, reconcile=True) as net:
        net.preload("n0", chain(12))
        net.preload("n1", chain(3, label=b"other"))
        net.connect("n0", "n1")
        at = net.nodes["n0"].rec_poll_at  # n0's loop notices the link at its next poll
        assert at is not None and net.now <= at < net.now + POLL_PERIOD
        net.run_until(at)  # there n0 < n1 starts the session
        assert net.nodes["n0"].sched is not None and net.nodes["n0"].sched.initiating == {"n1"}
        assert net.nodes["n1"].sched is not None and not net.nodes["n1"].sched.initiating
        assert net.stats.reconcile_sessions == 1
        assert net.run_until_converged(10.0, step=0.01)
        a, b = net.nodes["n0"].rc, net.nodes["n1"].rc
        assert a.reconcile_failures == b.reconcile_failures == 0
        # the first session found the whole difference, each side its own part of it
        assert a.reconcile_ids_needed >= 3 and b.reconcile_ids_needed >= 12
        assert len(net.nodes["n1"].store.topo_ids()) == 15


def test_a_link_cut_during_a_session_fails_it_at_both_ends() -> None:
    with SimNet(2, seed=4, threaded=False, reconcile=True) as net:
        net.preload("n0", chain(200))
        net.preload("n1", chain(150, label=b"other"))
        net.connect("n0", "n1")
        pair = frozenset(("n0", "n1"))
        for _ in range(1000):  # until the responder has answered the first frame
            net.run_for(0.0005)
            live = net._rec_pairs.get(pair, [])
            if live and live[0].rb is not None:
                break
        assert live and live[0].rb is not None and not live[0].over
        net.disconnect("n0", "n1")
        a, b = net.nodes["n0"].rc, net.nodes["n1"].rc
        assert a.reconcile_failures == b.reconcile_failures == 1
        assert a.reconcile_sessions == b.reconcile_sessions == 1
        assert a.reconcile_incomplete == b.reconcile_incomplete == 1
        for node in (net.nodes["n0"], net.nodes["n1"]):
            assert node.sched is not None and not node.sched.active  # both slots are free again
        assert pair not in net._rec_pairs
        sent = net.stats.reconcile_frames
        net.run_for(1.0)  # frames in flight across the cut are never delivered
        assert net.stats.reconcile_frames == sent
        assert (a.reconcile_failures, b.reconcile_failures) == (1, 1)


def test_run_sim_reports_reconciliation_and_can_turn_it_off() -> None:
    on = run_sim(6, 30, seed=2, topology="random", writers=2, partition_s=1.0)
    off = run_sim(6, 30, seed=2, topology="random", writers=2, partition_s=1.0, reconcile=False)
    for r in (on, off):
        assert r["join_converged"] and r["heal_converged"] and r["ops_after_heal"] == 30 + 6
    assert on["reconcile"] is True and off["reconcile"] is False
    assert on["reconcile_sessions"] >= on["heal_reconcile_sessions"] >= 1
    assert on["heal_reconcile_ids_found"] >= 1
    assert 1 <= on["reconcile_round_trips_max"] <= ReconcileLimits().max_rounds
    assert on["reconcile_bytes"] > 0 and on["reconcile_bytes_per_op_per_node"] > 0
    assert on["heal_bytes"] >= on["heal_reconcile_bytes"] > 0  # reconcile frames count in the phase's bytes
    for k in ("reconcile_sessions", "reconcile_bytes", "reconcile_ids_found", "heal_reconcile_bytes"):
        assert off[k] == 0, k


def test_the_bench_cli_turns_reconciliation_off() -> None:
    from conftest import cli_ok

    args = ("bench", "--scenario", "sim", "--nodes", "4", "--ops", "8", "--peers", "2", "--json")
    on = json.loads(cli_ok(*args).output.strip().splitlines()[-1])
    off = json.loads(cli_ok(*args, "--no-reconcile").output.strip().splitlines()[-1])
    assert on["converged"] and off["converged"]
    assert on["reconcile"] is True and on["reconcile_sessions"] > 0
    assert off["reconcile"] is False and off["reconcile_sessions"] == 0
