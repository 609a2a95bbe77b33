"""Network sync benchmark ``sync``: real ``ecac node`` processes on 127.0.0.1 over libp2p.

Setup (untimed): ``--ops`` ops (hb-chain with ``--peers 1``, else ``gen_concurrent`` with
that many writers) are put into node A's RocksDB store offline (``Store.put_many``), then
A and ``--nodes``-1 empty nodes start, unlinked. A's start-up (reading its store and
replaying it for its digest) is awaited too.

Timed: the empty nodes are linked in a line A—B—C… (``POST /peers``: B dials A, C dials
B, …, so C syncs through B) and every node's ``/status`` is polled every 10 ms until all
report A's complete-op count (``ops_synced_ms``) and then A's heads and state digest
(``converge_ms``). Linking through the control API instead of ``--peer`` keeps process
start-up (~1 s of Python and libp2p imports) out of the number.

Baseline: the time one receiver needs to ingest the same ops from a file in-process:
read the log file, decode it (``read_log``) and ``Store.put_many`` in batches of 512 (the
node's commit batch) into a fresh store with synced writes, as the node does
(``ingest_ms``); ``replay_ms`` is ``replay_full`` of those ops (the node also computes
the state digest before it counts as converged). ``sync_vs_ingest`` = converge_ms /
ingest_ms; ``sync_vs_ingest_replay`` = converge_ms / (ingest_ms + replay_ms).

Wire: ``messages`` = sync requests + response frames (one ``OpBytes`` per op served plus
one trailer per served request) + gossip announces published, from the nodes' counters.
``bytes_on_wire`` = what the nodes sent, from their own counters: the payload bytes of
every ``/ecac/sync/1`` stream (request and response frames) plus the announces they
published (``sync_bytes`` and ``gossip_bytes`` separately); each byte sent is received by
one peer, so sent bytes count every transfer once. Nodes without these counters fall
back to the kernel: ``tcp_bytes`` = TCP payload bytes of every libp2p connection between
the nodes, both directions (Noise, yamux, multistream, gossip relaying and control
included), read with ``ss -ti`` while the connections are still open (null without
``ss``); it is reported whenever available, for comparison.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.opcodec import encode_ops, read_log
from ecac.core.replay import replay_full
from ecac.store.rocks import Store
from ecac.store.verifypool import VerifyPool
from ecac.sync.syncserve import BATCH_OPS
from ecac.testing.workloads import gen_concurrent, gen_hb_chain

MAX_NODES = 8
POLL_S = 0.01
START_TIMEOUT_S = 120.0
ANTI_ENTROPY_MS = 500
HEARTBEAT_MS = 200
PROJECT = "ecac-bench"


def workload(params: BenchParams) -> tuple[str, list[Op]]:
    """``(name, ops)``: one hb chain, or ``params.peers`` concurrent writers when ``peers > 1``."""
    if params.peers > 1:
        return f"concurrent/{params.peers}", gen_concurrent(params.seed, params.ops, params.peers)
    return "hb-chain", gen_hb_chain(params.seed, params.ops)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _fill(st: Store, ops: Sequence[Op | bytes], batch: int = BATCH_OPS) -> None:
    for lo in range(0, len(ops), batch):
        st.put_many(ops[lo : lo + batch])


def ingest_from_file(log_file: Path, db: Path) -> float:
    """Seconds to read and decode ``log_file`` and put its ops into a fresh store in node-sized batches."""
    st = Store.open(db, sync_writes=True)
    try:
        gc.collect()
        t0 = time.perf_counter()
        ops = read_log(log_file.read_bytes(), str(log_file))
        _fill(st, ops)
        elapsed = time.perf_counter() - t0
        if st.complete_count() != len(ops):
            raise EcacError(f"ingest baseline lost ops: {st.complete_count()} of {len(ops)} complete")
    finally:
        st.close()
    return elapsed


# --------------------------------------------------------------------------- bytes on the wire (ss)


def parse_ss(text: str, ports: set[int]) -> tuple[int, int]:
    """``(bytes, connections)`` from ``ss -tinH`` output: sent + received bytes of every socket
    whose local port is one of ``ports`` (the accepting side: each connection counted once)."""
    total = conns = 0
    local_port: int | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            local_port = None
            if len(fields) >= 4:
                port = fields[2].rsplit(":", 1)[-1]
                local_port = int(port) if port.isdigit() else None
            continue
        if local_port not in ports:
            continue
        info = dict(
            tok.split(":", 1) for tok in line.split() if tok.startswith(("bytes_sent:", "bytes_received:"))
        )
        total += int(info.get("bytes_sent", 0)) + int(info.get("bytes_received", 0))
        conns += 1
    return total, conns


def wire_bytes(ports: set[int]) -> tuple[int | None, int]:
    """Kernel TCP byte counters of the connections accepted on ``ports``; ``(None, 0)`` without ``ss``."""
    ss = shutil.which("ss")
    if ss is None:
        return None, 0
    try:
        out = subprocess.run(
            [ss, "-tinH", "state", "established"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, 0
    return parse_ss(out, ports)


def _port(multiaddr: str) -> int:
    parts = multiaddr.split("/")
    return int(parts[parts.index("tcp") + 1])


# --------------------------------------------------------------------------- the scenario


def _counter_sum(statuses: Sequence[dict[str, Any]], name: str) -> int:
    return sum(int(s["counters"].get(name, 0)) for s in statuses)


def run_sync(params: BenchParams, root: Path) -> dict[str, Any]:
    """The measurement itself, with stores and logs under ``root``."""
    from ecac.net.procs import NodeProc, converged, start_node

    n_nodes = params.nodes
    if not 2 <= n_nodes <= MAX_NODES:
        raise EcacError(f"the sync scenario needs --nodes between 2 and {MAX_NODES}")
    if params.ops < 1:
        raise EcacError("the sync scenario needs --ops of at least 1")
    name, ops = workload(params)
    n = len(ops)
    log_file = root / "ops.cbor"
    log_file.write_bytes(encode_ops(ops))
    op_bytes = sum(len(op.cbor) for op in ops)
    with VerifyPool() as pool:
        t = time.perf_counter()
        expected = replay_full(ops, verify=pool.verify)[1].hex()
        replay_s = time.perf_counter() - t

    names = [chr(ord("a") + i) for i in range(n_nodes)]
    with Store.open(root / "a", sync_writes=False) as st:  # setup, untimed
        _fill(st, ops)
    procs: list[NodeProc] = []

    def start(i: int) -> NodeProc:
        return start_node(
            root / names[i],
            project=PROJECT,
            anti_entropy_ms=ANTI_ENTROPY_MS,
            extra_args=("--heartbeat-ms", str(HEARTBEAT_MS)),
            log_path=root / f"{names[i]}.log",
            startup_timeout=START_TIMEOUT_S,
        )

    try:
        with ThreadPoolExecutor(n_nodes) as ex:
            futures = [ex.submit(start, i) for i in range(n_nodes)]
        procs = [f.result() for f in futures if f.exception() is None]
        for f in futures:
            if f.exception() is not None:
                raise EcacError(f"a node did not start: {f.exception()}")
        a = procs[0]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ((s := a.status())["digest_ready"] and s["digest_ops"] == n):
            if time.monotonic() > deadline:
                raise EcacError(f"node A did not load its {n} ops within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        sts = [p.status() for p in procs]
        ops_synced_s: float | None = None
        timeout = max(60.0, n / 200)
        t0 = time.perf_counter()
        for i in range(1, n_nodes):
            procs[i].add_peer(procs[i - 1].addr)
        while True:
            sts = [p.status() for p in procs]
            now = time.perf_counter() - t0
            if ops_synced_s is None and all(s["complete_count"] == n for s in sts):
                ops_synced_s = now
            if ops_synced_s is not None and converged(sts):
                converge_s = now
                break
            if now > timeout:
                seen = ", ".join(
                    f"{x.upper()}: {s['complete_count']}" for x, s in zip(names, sts, strict=True)
                )
                raise EcacError(
                    f"sync of {n} ops did not converge within {timeout:g} s ({seen} complete ops)"
                )
            time.sleep(POLL_S)
        tcp_bytes, connections = wire_bytes({_port(p.addr) for p in procs})
    finally:
        for p in procs:
            try:
                p.stop(timeout=10.0)
            except Exception:  # every node must be stopped
                p.kill()
    for x, s in zip(names, sts, strict=True):
        if s["state_digest"] != expected:
            raise EcacError(
                f"node {x.upper()} reports digest {s['state_digest'][:16]}, the replay of the same ops gives "
                f"{expected[:16]}"
            )
    ingest_s = ingest_from_file(log_file, root / "ingest")

    counted = all("sync_bytes_sent" in s["counters"] for s in sts)
    sync_bytes = _counter_sum(sts, "sync_bytes_sent") if counted else None
    gossip_bytes = _counter_sum(sts, "gossip_bytes_out") if counted else None
    if sync_bytes is not None and gossip_bytes is not None:
        bytes_on_wire: int | None = sync_bytes + gossip_bytes
        wire_source: str | None = "node counters"
    else:
        bytes_on_wire, wire_source = tcp_bytes, "ss" if tcp_bytes is not None else None
    requests = _counter_sum(sts, "requests_sent")
    frames = _counter_sum(sts, "ops_served") + _counter_sum(sts, "requests_served")
    announces = _counter_sum(sts, "announces_published")
    receivers = n_nodes - 1
    return {
        "scenario": "sync",
        "nodes": n_nodes,
        "topology": "line " + "—".join(x.upper() for x in names),
        "workload": name,
        "ops": n,
        "seed": params.seed,
        "converge_ms": _ms(converge_s),
        "ops_synced_ms": _ms(ops_synced_s),
        "ops_per_s": round(n / converge_s, 1) if converge_s > 0 else 0.0,
        "ingest_ms": _ms(ingest_s),
        "ingest_ops_per_s": round(n / ingest_s, 1) if ingest_s > 0 else 0.0,
        "replay_ms": _ms(replay_s),
        "sync_vs_ingest": round(converge_s / ingest_s, 2) if ingest_s > 0 else 0.0,
        "sync_vs_ingest_replay": round(converge_s / (ingest_s + replay_s), 2),
        "ingest_batch": BATCH_OPS,
        "bytes_on_wire": bytes_on_wire,
        "wire_bytes_source": wire_source,
        "sync_bytes": sync_bytes,
        "gossip_bytes": gossip_bytes,
        "tcp_bytes": tcp_bytes,
        "wire_connections": connections,
        "op_bytes": op_bytes,
        "wire_bytes_per_op_copy": round(bytes_on_wire / (n * receivers), 1) if bytes_on_wire else None,
        "messages": requests + frames + announces,
        "requests": requests,
        "response_frames": frames,
        "announces": announces,
        "ops_fetched": _counter_sum(sts, "ops_fetched"),
        "fetch_batches": _counter_sum(sts, "fetch_batches"),
        "duplicates_dropped": _counter_sum(sts, "ops_duplicates_dropped"),
        "requests_failed": _counter_sum(sts, "requests_failed"),
        "poll_ms": POLL_S * 1000,
        "anti_entropy_ms": ANTI_ENTROPY_MS,
        "state_digest": expected,
        "node_digests": [s["state_digest"] for s in sts],
    }


@scenario(
    "sync", "--ops ops in node A's store; empty nodes linked in a line sync them over libp2p, vs ingest"
)
def bench_sync(params: BenchParams) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ecac-bench-sync-") as tmp:
        return run_sync(params, Path(tmp))
