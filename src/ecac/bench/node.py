"""Node benchmark ``status-latency``: ``GET /status`` latency while the node ingests a large sync.

Setup (untimed): ``--ops`` ops (hb-chain with ``--peers 1``, else ``gen_concurrent`` with that
many writers) are put into node A's RocksDB store offline; A and an empty node B start as
real ``ecac node`` processes on 127.0.0.1 (``ecac.net.procs``), and A's start-up (loading its
store and replaying it for its digest) is awaited.

Timed: B dials A (``POST /peers``) and syncs every op while this process sends ``GET
/status`` to B back to back (one fresh loopback HTTP connection each, ``POLL_S`` apart)
until B reports all ops complete and its digest covers them. Each request's latency is
measured from connect to the last body byte. ``status_*_ms`` are over the requests sent
while B was ingesting (before it reported all ops complete); ``after_*`` over the rest
(digest catching up). Target (issue 9): p99 < 50 ms during ingest: ``/status`` reads the
writer's latest snapshot and counters only, so a commit's fsync or a Kahn rebuild on the
writer thread must not show here.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ecac.bench import BenchParams, scenario
from ecac.bench.sync import ANTI_ENTROPY_MS, HEARTBEAT_MS, START_TIMEOUT_S, _fill, workload
from ecac.core.errors import EcacError
from ecac.store.rocks import Store

POLL_S = 0.002
TARGET_P99_MS = 50.0
PROJECT = "ecac-bench-status"


def _percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def get_status(host: str, port: int, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
    """``(seconds, body)`` of one ``GET /status`` on a fresh connection."""
    import json

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    if resp.status != 200:
        raise EcacError(f"GET /status answered {resp.status}")
    return elapsed, json.loads(data)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def run_status_latency(params: BenchParams, root: Path) -> dict[str, Any]:
    from ecac.net.procs import NodeProc, start_node

    if params.ops < 1:
        raise EcacError("the status-latency scenario needs --ops of at least 1")
    name, ops = workload(params)
    n = len(ops)
    with Store.open(root / "a", sync_writes=False) as st:  # setup, untimed
        _fill(st, ops)
    procs: list[NodeProc] = []

    def start(x: str) -> NodeProc:
        p = start_node(
            root / x,
            project=PROJECT,
            anti_entropy_ms=ANTI_ENTROPY_MS,
            extra_args=("--heartbeat-ms", str(HEARTBEAT_MS)),
            log_path=root / f"{x}.log",
            startup_timeout=START_TIMEOUT_S,
        )
        procs.append(p)
        return p

    try:
        a, b = start("a"), start("b")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ((s := a.status())["digest_ready"] and s["digest_ops"] == n):
            if time.monotonic() > deadline:
                raise EcacError(f"node A did not load its {n} ops within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        assert b.control_url is not None
        url = urlsplit(b.control_url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        get_status(host, port)  # warm: the first request of a process pays for imports
        during: list[float] = []
        after: list[float] = []
        timeout = max(120.0, n / 200)
        t0 = time.perf_counter()
        b.add_peer(a.addr)
        synced_s: float | None = None
        while True:
            dt, s = get_status(host, port)
            now = time.perf_counter() - t0
            (during if synced_s is None else after).append(dt)
            if synced_s is None and s["complete_count"] == n:
                synced_s = now
            if synced_s is not None and s["digest_ops"] == n and s["digest_ready"]:
                converge_s = now
                last = s
                break
            if now > timeout:
                raise EcacError(
                    f"node B did not sync {n} ops within {timeout:g} s ({s['complete_count']} complete)"
                )
            time.sleep(POLL_S)
        digest_a = a.status()["state_digest"]
    finally:
        for p in procs:
            try:
                p.stop(timeout=10.0)
            except Exception:  # every node must be stopped
                p.kill()
    if last["state_digest"] != digest_a:
        raise EcacError(f"node B's digest {last['state_digest'][:16]} differs from A's {digest_a[:16]}")
    c = last["counters"]
    p99 = _percentile(during, 0.99)
    return {
        "scenario": "status-latency",
        "workload": name,
        "ops": n,
        "seed": params.seed,
        "status_requests": len(during),
        "status_p50_ms": _ms(statistics.median(during)) if during else 0.0,
        "status_p99_ms": _ms(p99),
        "status_max_ms": _ms(max(during, default=0.0)),
        "after_requests": len(after),
        "after_p99_ms": _ms(_percentile(after, 0.99)),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": p99 * 1000 < TARGET_P99_MS,
        "ops_synced_ms": _ms(synced_s or 0.0),
        "converge_ms": _ms(converge_s),
        "ops_per_s": round(n / synced_s, 1) if synced_s else 0.0,
        "writer_max_request_ms": c.get("writer", {}).get("max_request_ms"),
        "writer_commits": c.get("writer", {}).get("commits"),
        "task_failures": c.get("task_failures"),
        "poll_ms": POLL_S * 1000,
        "state_digest": last["state_digest"],
    }


@scenario(
    "status-latency",
    "GET /status p50/p99/max on node B while it syncs --ops ops from node A (real processes)",
)
def bench_status_latency(params: BenchParams) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ecac-bench-status-") as tmp:
        return run_status_latency(params, Path(tmp))
