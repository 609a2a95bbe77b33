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

Link conditions without ``tc netem`` (``--link-delay-ms D``, ``--link-loss P``, ``--partition-s S``;
any of them, also ``--link-delay-ms 0``, puts every link through a proxy): each edge i–j gets its
own :class:`ecac.bench.linkproxy.LinkProxy` (seeded from ``--seed`` and the edge) in front of node
i, and j dials the proxy's port, never i's. D ms one-way delay per chunk, a chunk with one of its
segments lost (P each) held 200 ms more; a userspace emulation, not netem (see that module for what
it does not model). The node's dialer dials only the addresses it is given (``ecac.net.dialer``),
but libp2p's ``new_stream`` dials a peer it is not connected to at its peerstore addresses, which
identify replaced with the peer's real listen address: so a :class:`~ecac.bench.linkproxy.BypassWatch`
samples ``/proc/net/tcp`` every 10 ms during the timed run and ``direct_connections`` (after the
join: ``direct_connections_join``) counts the connections to a node's listen port that did not
come from a proxy (0: nothing bypassed the links); ``peers_are_neighbours``: after the join every
node is connected to its topology neighbours only.

With ``--partition-s S`` (a tree topology: ``line`` or ``star``), after the join the middle edge
is cut: its two nodes block each other (``POST /peers/block``, so that neither redials the other
around the proxy) and its proxy resets its connections and refuses new ones; the two nodes write
``ops // nodes`` new ops each (another hb chain per side, ``POST /append-ops``); after S seconds
the proxy is restored and the blocks lifted. ``heal_ms``: from the restore until one digest over
all ops; ``reconnect_ms``: until the first connection through the restored proxy;
``partition_isolated``: no node held an op of the other side's chain at the end of the cut.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.bench.linkproxy import BypassWatch, LinkModel, LinkProxy
from ecac.bench.sync import _counter_sum, _fill, _ms, _port, wire_bytes
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.opcodec import encode_ops
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
PARTITION_SEED = 500  # the partition's chains: gen_hb_chain(seed·1000 + 500 + side, ops // nodes)


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


def cut_sides(n: int, edges: Sequence[tuple[int, int]], cut: tuple[int, int]) -> tuple[set[int], set[int]]:
    """The two sides of ``edges`` without ``cut`` (the side of ``cut[0]`` first); EcacError if the
    graph stays connected (``random`` has extra edges: no single cut partitions it)."""
    side, todo = {cut[0]}, [cut[0]]
    while todo:
        x = todo.pop()
        for e in edges:
            if e != cut and x in e:
                y = e[1] if e[0] == x else e[0]
                if y not in side:
                    side.add(y)
                    todo.append(y)
    if cut[1] in side:
        raise EcacError("--partition-s needs a tree topology (line or star): one cut must split the nodes")
    return side, set(range(n)) - side


def _wait_converged(procs: Sequence[Any], total: int, t0: float, timeout: float) -> tuple[float | None, Any]:
    """Poll every node's ``/status`` until one digest over ``total`` ops: seconds since ``t0`` (None
    after ``timeout``) and the last statuses."""
    from ecac.net.procs import converged

    while True:
        sts = [p.status() for p in procs]
        now = time.perf_counter() - t0
        if converged(sts) and sts[0]["complete_count"] == total:
            return now, sts
        if now > timeout:
            return None, sts
        time.sleep(POLL_S)


def _stop(p: Any) -> None:
    try:
        p.stop(timeout=10.0)
    except Exception:  # every node must be stopped
        p.kill()


def run_mesh(params: BenchParams, root: Path) -> dict[str, Any]:
    """The measurement itself, with stores and logs under ``root``."""
    from ecac.net.procs import NodeProc, start_node

    n_nodes, topology = params.nodes, params.topology
    if not 2 <= n_nodes <= MAX_NODES:
        raise EcacError(f"the mesh scenario needs --nodes between 2 and {MAX_NODES}")
    if params.ops < n_nodes:
        raise EcacError("the mesh scenario needs --ops of at least --nodes (every node writes)")
    edges = topology_edges(topology, n_nodes, params.seed)
    proxied = params.link_delay_ms is not None or params.link_loss > 0 or params.partition_s > 0
    cut = edges[len(edges) // 2] if params.partition_s > 0 else None
    sides = cut_sides(n_nodes, edges, cut) if cut is not None else None
    per_node = split_ops(params.seed, params.ops, n_nodes)
    n = sum(len(ops) for ops in per_node)
    k = max(1, params.ops // n_nodes)
    cut_ops = [gen_hb_chain(params.seed * 1000 + PARTITION_SEED + side, k) for side in (0, 1)] if cut else []
    all_ops = [op for ops in [*per_node, *cut_ops] for op in ops]
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
    proxies: list[LinkProxy] = []
    sts: list[dict[str, Any]] = []
    converge_s: float | None = None
    link: dict[str, Any] = {}
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
        if proxied:
            delay = params.link_delay_ms or 0.0
            for e, (i, _) in enumerate(edges):
                model = LinkModel(delay_ms=delay, loss=params.link_loss, seed=params.seed * 1000 + e)
                proxies.append(LinkProxy(_port(procs[i].addr), model))
        watch = BypassWatch({_port(p.addr) for p in procs}, proxies)
        with watch if proxied else contextlib.nullcontext():
            t0 = time.perf_counter()
            for e, (i, j) in enumerate(edges):
                addr = procs[i].addr
                if proxied:
                    addr = f"/ip4/127.0.0.1/tcp/{proxies[e].port}/p2p/{procs[i].peer_id}"
                procs[j].add_peer(addr)
            converge_s, sts = _wait_converged(procs, n, t0, timeout)
            if proxied:
                link = _link_figures(procs, edges, proxies, sts)
                watch.sample()
                link["direct_connections_join"] = len(watch.seen)
            if cut is not None and sides is not None and converge_s is not None:
                px = proxies[edges.index(cut)]
                link.update(_partition(params, procs, px, cut, sides, cut_ops, n, timeout))
                sts = link.pop("statuses")
        if proxied:
            link["direct_connections"] = len(watch.seen)
            link["direct_connection_samples"] = watch.samples
        tcp_bytes, connections = wire_bytes({_port(p.addr) for p in procs})
        rss = [p.rss_bytes() for p in procs]
    finally:
        if procs:
            with ThreadPoolExecutor(len(procs)) as ex:
                list(ex.map(_stop, procs))
        for px in proxies:
            px.close()
    ok = converge_s is not None and link.get("heal_ms", 0) is not None
    if ok and any(s["state_digest"] != expected for s in sts):
        raise EcacError(
            f"the nodes agree on digest {sts[0]['state_digest'][:16]}, the replay of the same ops gives "
            f"{expected[:16]}"
        )
    if cut is not None:  # the partition's writers hold their chain too (copies, ops)
        per_node = [list(ops) for ops in per_node]
        per_node[cut[0]] += cut_ops[0]
        per_node[cut[1]] += cut_ops[1]
    result = mesh_result(params, edges, per_node, sts, converge_s, tcp_bytes, connections, rss, expected)
    if proxied:
        result["join_ops"] = n
        result.update(link)
    return result


def _link_figures(
    procs: Sequence[Any],
    edges: Sequence[tuple[int, int]],
    proxies: Sequence[LinkProxy],
    sts: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """After the join: the link model, and whether every connection went through a proxy."""
    neighbours = [
        {procs[b].peer_id for a, b in edges if a == i} | {procs[a].peer_id for a, b in edges if b == i}
        for i in range(len(procs))
    ]
    model = proxies[0].model
    return {
        "link_proxy": True,
        "link_delay_ms": model.delay_ms,
        "link_loss": model.loss,
        "link_rto_ms": model.rto_ms,
        "peers_are_neighbours": all(set(s["peers"]) == nb for s, nb in zip(sts, neighbours, strict=True)),
        "proxy_connections": sum(px.stats()["accepted"] for px in proxies),
    }


def _partition(
    params: BenchParams,
    procs: Sequence[Any],
    proxy: LinkProxy,
    cut: tuple[int, int],
    sides: tuple[set[int], set[int]],
    cut_ops: Sequence[Sequence[Op]],
    joined: int,
    timeout: float,
) -> dict[str, Any]:
    """Cut ``proxy``'s link, write on both of its nodes, wait ``partition_s``, restore, time the heal.

    Both nodes of the cut also block each other (``POST /peers/block``) for the cut: a reset
    connection alone does not keep them apart, because libp2p's ``new_stream`` dials a peer it is
    not connected to at the addresses in its peerstore, which identify filled with the peer's real
    listen address, not the proxy (seen here: the listening node of the cut link dialled the
    other directly during the cut). The block makes the node neither dial nor exchange with it.
    """
    a, b = procs[cut[0]], procs[cut[1]]
    hold = params.partition_s + 120.0  # lifted at the restore; the margin only bounds a crashed bench
    a.block_peer(b.peer_id, hold)
    b.block_peer(a.peer_id, hold)
    proxy.cut()
    t_cut = time.perf_counter()
    for node, ops in zip(cut, cut_ops, strict=True):
        procs[node].append_ops(encode_ops(list(ops)))
    time.sleep(max(0.0, params.partition_s - (time.perf_counter() - t_cut)))  # the partition itself
    during = [p.status() for p in procs]  # no op of the other side's chain crossed the cut
    isolated = all(
        during[x]["op_count"] <= joined + len(cut_ops[s]) for s, side in enumerate(sides) for x in side
    )
    restored = time.monotonic()
    proxy.restore()
    a.block_peer(b.peer_id, 0)
    b.block_peer(a.peer_id, 0)
    t1 = time.perf_counter()
    total = joined + sum(len(ops) for ops in cut_ops)
    heal_s, sts = _wait_converged(procs, total, t1, timeout)
    last = proxy.last_accept
    return {
        "partition_s": params.partition_s,
        "partition_link": f"{cut[0]}-{cut[1]}",
        "partition_ops": total - joined,
        "partition_isolated": isolated,
        "partition_resets": proxy.stats()["reset_by_cut"],
        "partition_refused_dials": proxy.stats()["refused"],
        "heal_converged": heal_s is not None,
        "heal_ms": _ms(heal_s) if heal_s is not None else None,
        "reconnect_ms": _ms(last - restored) if last is not None and last >= restored else None,
        "statuses": sts,
    }


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
