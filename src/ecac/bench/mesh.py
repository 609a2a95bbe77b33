"""Many-node benchmark ``mesh``: up to 10 real ``ecac node`` processes on 127.0.0.1 in a topology.

Setup (untimed): ``--ops`` ops are split over the ``--nodes`` nodes; node *i* gets its own hb
chain (one author per node, ``gen_hb_chain(seed·1000 + i, share)``) put into its RocksDB store
offline, so every node starts with ops no other node has. The nodes start unlinked and each
loads and replays its store.

Timed: the nodes are linked in ``--topology`` (``POST /peers`` through ``ecac.net.procs``; for an
edge i–j with i < j, j dials i): ``line`` 0—1—2…, ``star`` (node 0 in the centre) or ``random``
(a random spanning tree plus N/2 extra edges, from ``--seed``). Every node's ``/status`` is polled
every 10 ms until all report the same complete ops, heads and state digest (``converge_ms``);
the digest is checked against an in-process replay of all the ops.

Wire, from the nodes' own counters (docs/protocol.md §10.5): ``bytes_total`` = payload bytes
of every ``/ecac/sync/1`` stream the nodes sent (requests and response frames) plus the
announces they published (gossip relaying and Noise/yamux framing not included; the kernel's
``tcp_bytes`` of the libp2p connections, read with ``ss``, includes everything).
``bytes_per_op_per_node`` = bytes_total / (ops × nodes); ``bytes_per_op_copy`` = bytes_total /
(op copies a node had to receive = ops × (nodes − 1)). ``messages`` = sync requests + response
frames + announces published; ``gossip_messages_in`` = announces the nodes' validators saw
(relayed copies included). ``duplicate_fetches`` = ops received that the receiver already had
(``ops_duplicates_dropped``); ``fetch_efficiency`` = op copies needed / ops received (fetched +
duplicates; 1.0 = no op crossed a link twice).

If the nodes do not converge within the timeout the result says ``converged: false`` (and
``converge_ms: null``) instead of failing, so a script sees the numbers of a failed run.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.bench.sync import _counter_sum, _fill, _ms, _port, wire_bytes
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.replay import replay_full
from ecac.store.rocks import Store
from ecac.store.verifypool import VerifyPool
from ecac.testing.workloads import gen_hb_chain

MAX_NODES = 10
TOPOLOGIES = ("line", "star", "random")
POLL_S = 0.01
START_TIMEOUT_S = 120.0
ANTI_ENTROPY_MS = 500
HEARTBEAT_MS = 200
PROJECT = "ecac-bench-mesh"


def topology_edges(kind: str, n: int, seed: int) -> list[tuple[int, int]]:
    """The links ``(i, j)``, ``i < j``, of ``kind`` over nodes ``0 … n-1`` (connected, deterministic)."""
    if kind == "line":
        return [(i, i + 1) for i in range(n - 1)]
    if kind == "star":
        return [(0, j) for j in range(1, n)]
    if kind == "random":
        rng = random.Random(seed)
        edges = {(rng.randrange(j), j) for j in range(1, n)}  # a random spanning tree
        missing = sorted({(i, j) for i in range(n) for j in range(i + 1, n)} - edges)
        edges.update(rng.sample(missing, min(len(missing), n // 2)))
        return sorted(edges)
    raise EcacError(f"unknown topology '{kind}': use one of {', '.join(TOPOLOGIES)}")


def split_ops(seed: int, ops: int, nodes: int) -> list[list[Op]]:
    """Node i's own ops: an hb chain of its share (the first ``ops % nodes`` nodes get one more)."""
    shares = [ops // nodes + (1 if i < ops % nodes else 0) for i in range(nodes)]
    return [gen_hb_chain(seed * 1000 + i, k) for i, k in enumerate(shares)]


def _stop(p: Any) -> None:
    try:
        p.stop(timeout=10.0)
    except Exception:  # every node must be stopped
        p.kill()


def run_mesh(params: BenchParams, root: Path) -> dict[str, Any]:
    """The measurement itself, with stores and logs under ``root``."""
    from ecac.net.procs import NodeProc, converged, start_node

    n_nodes, topology = params.nodes, params.topology
    if not 2 <= n_nodes <= MAX_NODES:
        raise EcacError(f"the mesh scenario needs --nodes between 2 and {MAX_NODES}")
    if params.ops < n_nodes:
        raise EcacError("the mesh scenario needs --ops of at least --nodes (every node writes)")
    edges = topology_edges(topology, n_nodes, params.seed)
    per_node = split_ops(params.seed, params.ops, n_nodes)
    all_ops = [op for ops in per_node for op in ops]
    n = len(all_ops)
    with VerifyPool() as pool:
        expected = replay_full(all_ops, verify=pool.verify)[1].hex()
    for i, ops in enumerate(per_node):  # setup, untimed
        with Store.open(root / f"n{i}", sync_writes=False) as st:
            _fill(st, ops)

    def start(i: int) -> NodeProc:
        return start_node(
            root / f"n{i}",
            project=PROJECT,
            anti_entropy_ms=ANTI_ENTROPY_MS,
            extra_args=("--heartbeat-ms", str(HEARTBEAT_MS)),
            log_path=root / f"n{i}.log",
            startup_timeout=START_TIMEOUT_S,
        )

    procs: list[NodeProc] = []
    sts: list[dict[str, Any]] = []
    converge_s: float | None = None
    timeout = max(60.0, n / 200)
    try:
        with ThreadPoolExecutor(n_nodes) as ex:
            futures = [ex.submit(start, i) for i in range(n_nodes)]
        procs = [f.result() for f in futures if f.exception() is None]
        for f in futures:
            if f.exception() is not None:
                raise EcacError(f"a node did not start: {f.exception()}")
        deadline = time.monotonic() + START_TIMEOUT_S
        for p, ops in zip(procs, per_node, strict=True):
            while not ((s := p.status())["digest_ready"] and s["digest_ops"] == len(ops)):
                if time.monotonic() > deadline:
                    raise EcacError(
                        f"node {p.db.name} did not load its {len(ops)} ops in {START_TIMEOUT_S:g} s"
                    )
                time.sleep(0.05)
        t0 = time.perf_counter()
        for i, j in edges:
            procs[j].add_peer(procs[i].addr)
        while True:
            sts = [p.status() for p in procs]
            now = time.perf_counter() - t0
            if converged(sts) and sts[0]["complete_count"] == n:
                converge_s = now
                break
            if now > timeout:
                break
            time.sleep(POLL_S)
        tcp_bytes, connections = wire_bytes({_port(p.addr) for p in procs})
        rss = [p.rss_bytes() for p in procs]
    finally:
        if procs:
            with ThreadPoolExecutor(len(procs)) as ex:
                list(ex.map(_stop, procs))
    ok = converge_s is not None
    if ok and any(s["state_digest"] != expected for s in sts):
        raise EcacError(
            f"the nodes agree on digest {sts[0]['state_digest'][:16]}, the replay of the same ops gives "
            f"{expected[:16]}"
        )
    return mesh_result(params, edges, per_node, sts, converge_s, tcp_bytes, connections, rss, expected)


def mesh_result(
    params: BenchParams,
    edges: Sequence[tuple[int, int]],
    per_node: Sequence[Sequence[Op]],
    sts: Sequence[dict[str, Any]],
    converge_s: float | None,
    tcp_bytes: int | None,
    connections: int,
    rss: Sequence[int],
    expected: str,
) -> dict[str, Any]:
    """The result dict from the final statuses (pure; see the module docstring for each number)."""
    n_nodes = len(per_node)
    n = sum(len(ops) for ops in per_node)
    copies = sum(n - len(ops) for ops in per_node)
    sync_bytes = _counter_sum(sts, "sync_bytes_sent")
    gossip_bytes = _counter_sum(sts, "gossip_bytes_out")
    total = sync_bytes + gossip_bytes
    requests = _counter_sum(sts, "requests_sent")
    frames = _counter_sum(sts, "ops_served") + _counter_sum(sts, "requests_served")
    announces = _counter_sum(sts, "announces_published")
    fetched = _counter_sum(sts, "ops_fetched")
    dups = _counter_sum(sts, "ops_duplicates_dropped")
    messages = requests + frames + announces
    return {
        "scenario": "mesh",
        "nodes": n_nodes,
        "topology": params.topology,
        "edges": len(edges),
        "links": " ".join(f"{i}-{j}" for i, j in edges),
        "ops": n,
        "seed": params.seed,
        "converged": converge_s is not None,
        "converge_ms": _ms(converge_s) if converge_s is not None else None,
        "bytes_total": total,
        "sync_bytes": sync_bytes,
        "gossip_bytes": gossip_bytes,
        "bytes_per_op_per_node": round(total / (n * n_nodes), 1),
        "bytes_per_op_copy": round(total / copies, 1) if copies else None,
        "tcp_bytes": tcp_bytes,
        "wire_connections": connections,
        "messages": messages,
        "messages_per_op_per_node": round(messages / (n * n_nodes), 3),
        "requests": requests,
        "response_frames": frames,
        "announces": announces,
        "gossip_messages_in": _counter_sum(sts, "gossip_messages_in"),
        "op_copies_needed": copies,
        "ops_fetched": fetched,
        "duplicate_fetches": dups,
        "fetch_efficiency": round(copies / (fetched + dups), 3) if fetched + dups else None,
        "requests_failed": _counter_sum(sts, "requests_failed"),
        "rss_mb_per_node": round(sum(rss) / len(rss) / 2**20, 1) if rss else None,
        "poll_ms": POLL_S * 1000,
        "anti_entropy_ms": ANTI_ENTROPY_MS,
        "heartbeat_ms": HEARTBEAT_MS,
        "state_digest": expected,
        "node_digests": sorted({s["state_digest"] for s in sts}),
    }


@scenario(
    "mesh",
    "--nodes (≤ 10) real nodes in --topology line|star|random, --ops split over them: time to one digest",
)
def bench_mesh(params: BenchParams) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ecac-bench-mesh-") as tmp:
        return run_mesh(params, Path(tmp))
