"""Simulated-network benchmark ``sim``: the real sync core on 10 … 1,000 nodes without sockets.

``ecac.bench.simnet`` plays the node's I/O (gossip with a seen cache, ``/ecac/sync/1`` streams,
commits through ``put_many``, timers) on a simulated clock, here with inline writers (no thread per
node) and the node's timing: announce debounce 250 ms, anti-entropy ``ANTI_ENTROPY_S`` (the mesh
bench's 500 ms), other ``SyncConfig`` defaults.

The run, like ``ecac bench --scenario mesh`` so that the shapes compare at 10 nodes:

1. **join**: ``--ops`` ops split over the first ``--peers`` nodes (the writers; node *i*'s own hb
   chain, as in the mesh bench; ``--peers 1``, the default, puts them all on node 0), stored
   before any link; then the nodes are linked in ``--topology`` (``random``: a
   random spanning tree plus ``nodes`` extra links, mean degree ≈ 4; ``line``; ``star``) and the
   simulation runs until every store holds the same complete ops;
2. **partition and heal**: the nodes are split in two halves (even and odd indices) by removing
   every link across, the first node of each half writes ``max(1, ops/10)`` more ops (one batch) and
   runs ``PARTITION_S`` simulated seconds, then every link is restored; the simulation runs until
   all converge again.

Set reconciliation (``/ecac/reconcile/1``) runs as on the node (``reconcile=True``, the default;
``--no-reconcile`` turns it off to compare with the announce/heads/bloom path alone): on link-up
(the smaller name initiates) and on each node's anti-entropy tick with every neighbour whose last
announce differs from its state (``ecac.sync.reconcile_sched``; see ``ecac.bench.simnet``).

Per phase: simulated seconds until convergence (``*_s``), anti-entropy rounds that takes
(``*_rounds`` = seconds / period), messages (announce copies, sync requests, response frames,
reconcile frames) and payload bytes the network carried, per op and node, and duplicate fetches;
``*_reconcile_sessions`` / ``*_reconcile_bytes`` (frames with their length prefixes, both ways) /
``*_reconcile_ids_found`` (ids a side lacked, as each side found them) of the phase. Totals over the
run: ``reconcile_sessions`` (one per pair and session), ``reconcile_rounds`` (round trips, summed
over the nodes' sides), ``reconcile_round_trips_max`` (of one session), ``reconcile_failures``
(sides whose session was reset: by the partition, or one of the ``reconcile_refused`` sessions, which
the responder refused because the pair ran one already — both ends' ticks started one at once — or
it had ``MAX_SESSIONS``), ``reconcile_incomplete`` (ended by the round limit, failed or unverified),
``reconcile_bytes_per_op_per_node`` (over ``ops_after_heal``). ``mem_kb_per_node`` is the growth of
this process's resident memory over the run divided by the nodes (stores, indexes, coordinators,
seen caches). ``--json`` output as for every scenario.

Optional network conditions (``ecac.bench.simnet.netem``: 100 ms one-way delay, 1 % of the
messages retransmitted after 200 ms) are what ``ecac.testing.netns`` falls back to.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.bench.mesh import split_ops, topology_edges
from ecac.bench.simnet import Faults, SimNet, SimStats
from ecac.core.errors import EcacError
from ecac.sync.coordinator import SyncConfig
from ecac.sync.reconcile import ReconcileLimits

MAX_NODES = 5000
ANTI_ENTROPY_S = 0.5
PARTITION_S = 5.0
STEP_S = 0.25  # convergence is checked every STEP_S simulated seconds (FINE_STEP_S up to FINE_NODES)
FINE_STEP_S = 0.01
FINE_NODES = 20
LIMIT_S = 600.0  # simulated seconds a phase may take before it counts as not converged
TICK_S = 0.001  # events are batched per simulated millisecond (``SimNet(tick=…)``)

#: the node's timing (``NodeOptions`` / ``SyncConfig`` defaults) with the mesh bench's anti-entropy
SIM_BENCH_CONFIG = SyncConfig(anti_entropy_period=ANTI_ENTROPY_S)


def rss_kb() -> int:
    """This process's resident set size (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def link(net: SimNet, kind: str, seed: int) -> list[tuple[str, str]]:
    """Link ``net``'s nodes in ``kind``; the links as node-name pairs."""
    if kind == "random":
        return net.random_mesh(extra=1.0)
    edges = [(f"n{i}", f"n{j}") for i, j in topology_edges(kind, len(net.nodes), seed)]
    net.set_topology(edges)
    return edges


def delta(a: SimStats, b: SimStats) -> SimStats:
    return SimStats(*(getattr(b, f) - getattr(a, f) for f in SimStats.__slots__))


def coord_sum(net: SimNet, name: str) -> int:
    return sum(int(getattr(n.coord.counters, name)) for n in net.nodes.values())


def rec_sum(net: SimNet, name: str) -> int:
    """A reconcile counter (``ReconcileCounters``) summed over the nodes."""
    return sum(int(getattr(n.rc, name)) for n in net.nodes.values())


def efficiency(needed: int, received: int) -> float | None:
    """Op copies needed / ops received (fetched + duplicates): 1.0 when no op crossed a link twice."""
    return round(needed / received, 3) if received else None


def phase(net: SimNet, step: float) -> tuple[bool, float]:
    """Run until converged (or ``LIMIT_S``); ``(converged, simulated seconds)``."""
    t0 = net.now
    ok = net.run_until_converged(LIMIT_S, step=step)
    return ok, net.now - t0


def phase_numbers(
    prefix: str, ok: bool, secs: float, period: float, st: SimStats, ops: int, nodes: int
) -> dict[str, Any]:
    return {
        f"{prefix}_converged": ok,
        f"{prefix}_s": round(secs, 3),
        f"{prefix}_rounds": round(secs / period, 1),
        f"{prefix}_messages": st.messages,
        f"{prefix}_bytes": st.bytes,
        f"{prefix}_messages_per_op_per_node": round(st.messages / (ops * nodes), 3),
        f"{prefix}_bytes_per_op_per_node": round(st.bytes / (ops * nodes), 1),
        f"{prefix}_reconcile_sessions": st.reconcile_sessions,
        f"{prefix}_reconcile_bytes": st.reconcile_bytes,
        f"{prefix}_reconcile_bytes_per_op_per_node": round(st.reconcile_bytes / (ops * nodes), 1),
    }


def run_sim(
    nodes: int,
    ops: int,
    seed: int = 1,
    topology: str = "random",
    writers: int | None = None,
    faults: Faults | None = None,
    partition_s: float = PARTITION_S,
    config: SyncConfig = SIM_BENCH_CONFIG,
    partition_ops: int | None = None,
    reconcile: bool = True,
    reconcile_limits: ReconcileLimits | None = None,
    step: float | None = None,
) -> dict[str, Any]:
    """The whole measurement (see the module docstring); also used by the netns fallback and tests.

    ``step``: how often convergence is checked (default ``FINE_STEP_S`` up to ``FINE_NODES`` nodes,
    else ``STEP_S``): the resolution of ``*_s``. (A phase ends at the first check that finds it
    converged, so another step also moves the instant the next phase starts.)"""
    if not 2 <= nodes <= MAX_NODES:
        raise EcacError(f"the sim scenario needs --nodes between 2 and {MAX_NODES}")
    w = nodes if writers is None else writers
    if not 1 <= w <= nodes:
        raise EcacError(f"the sim scenario needs between 1 and --nodes ({nodes}) writers, not {w}")
    if ops < w:
        raise EcacError("the sim scenario needs --ops of at least one per writer")
    per_node = split_ops(seed, ops, w) + [[] for _ in range(nodes - w)]
    gc.collect()
    mem0 = rss_kb()
    wall0 = time.perf_counter()
    with SimNet(
        nodes,
        seed=seed,
        config=config,
        faults=faults or Faults(),
        threaded=False,
        tick=TICK_S,
        reconcile=reconcile,
        reconcile_limits=reconcile_limits,
    ) as net:
        for i, mine in enumerate(per_node):
            if mine:
                net.preload(f"n{i}", mine)
        period = config.anti_entropy_period
        if step is None:
            step = FINE_STEP_S if nodes <= FINE_NODES else STEP_S
        s0 = replace(net.stats)
        fetched0 = coord_sum(net, "ops_fetched")
        edges = link(net, topology, seed)
        ok1, t1 = phase(net, step)
        s1 = replace(net.stats)
        found1 = rec_sum(net, "reconcile_ids_found")
        fetched1 = coord_sum(net, "ops_fetched")
        dups1 = coord_sum(net, "ops_duplicates_dropped")
        copies = sum(ops - len(m) for m in per_node)
        result: dict[str, Any] = {
            "scenario": "sim",
            "nodes": nodes,
            "topology": topology,
            "links": len(edges),
            "ops": ops,
            "writers": w,
            "seed": seed,
            "anti_entropy_s": period,
            "resolution_s": step,
            "delay_ms": round(net.faults.delay * 1000, 1),
            "loss": net.faults.loss,
            "reconcile": reconcile,
            "converged": ok1,
        }
        result |= phase_numbers("join", ok1, t1, period, delta(s0, s1), ops, nodes)
        result |= {
            "join_op_copies_needed": copies,
            "join_ops_fetched": fetched1 - fetched0,
            "join_duplicate_fetches": dups1,
            "join_fetch_efficiency": round(copies / (fetched1 - fetched0), 3)
            if fetched1 > fetched0
            else None,
            "join_reconcile_ids_found": found1,
        }
        # 2. partition (even | odd), writes on both sides, heal
        names = sorted(net.nodes, key=lambda x: net.nodes[x].idx)
        halves: Sequence[Sequence[str]] = (names[0::2], names[1::2])
        net.cut(edges, halves)
        extra = max(1, ops // 10) if partition_ops is None else partition_ops
        for half in halves:  # one batch per side, like ``POST /inject-demo-ops``
            net.write(half[0], extra)
        net.run_for(partition_s)
        s2 = replace(net.stats)
        f2 = coord_sum(net, "ops_fetched")
        d2 = coord_sum(net, "ops_duplicates_dropped")
        found2 = rec_sum(net, "reconcile_ids_found")
        failed2 = rec_sum(net, "reconcile_failures")
        net.set_topology(edges)
        ok3, t3 = phase(net, step)
        s3 = replace(net.stats)
        total = len(net.nodes["n0"].store.topo_ids())
        result |= {"partition_s": partition_s, "partition_writes": 2 * extra, "ops_after_heal": total}
        result |= phase_numbers("heal", ok3, t3, period, delta(s2, s3), 2 * extra, nodes)
        result |= {
            "heal_ops_fetched": coord_sum(net, "ops_fetched") - f2,
            "heal_duplicate_fetches": coord_sum(net, "ops_duplicates_dropped") - d2,
            "heal_reconcile_ids_found": rec_sum(net, "reconcile_ids_found") - found2,
            "heal_reconcile_failures": rec_sum(net, "reconcile_failures") - failed2,
            "converged": ok1 and ok3,
            "penalties": sum(len(n.penalties) for n in net.nodes.values()),
        }
        result |= {
            "reconcile_sessions": s3.reconcile_sessions - s0.reconcile_sessions,
            "reconcile_rounds": rec_sum(net, "reconcile_rounds"),
            "reconcile_round_trips_max": max(n.rc.reconcile_round_trips_max for n in net.nodes.values()),
            "reconcile_bytes": s3.reconcile_bytes - s0.reconcile_bytes,
            "reconcile_bytes_per_op_per_node": round(
                (s3.reconcile_bytes - s0.reconcile_bytes) / (total * nodes), 1
            ),
            "reconcile_ids_found": rec_sum(net, "reconcile_ids_found"),
            "reconcile_failures": rec_sum(net, "reconcile_failures"),
            "reconcile_refused": s3.reconcile_refused - s0.reconcile_refused,
            "reconcile_incomplete": rec_sum(net, "reconcile_incomplete"),
        }
        gc.collect()
        mem1 = rss_kb()
    result["mem_kb_per_node"] = round((mem1 - mem0) / nodes, 1)
    result["wall_s"] = round(time.perf_counter() - wall0, 2)
    return result


@scenario(
    "sim",
    "simulated network (real sync core, no sockets): --nodes, --peers of them writers; join, partition, heal",
)
def bench_sim(params: BenchParams) -> dict[str, Any]:
    """``--peers`` = writers: 1 (the default) puts every op on node 0, like the sync bench; ``--peers``
    = ``--nodes`` gives every node its share, like the mesh bench; ``--no-reconcile`` runs without set
    reconciliation."""
    return run_sim(
        params.nodes,
        params.ops,
        params.seed,
        params.topology,
        writers=min(params.peers, params.nodes),
        reconcile=params.reconcile,
    )
