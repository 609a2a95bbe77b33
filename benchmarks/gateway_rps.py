"""Requests per second of a node's HTTP gateway on a store of N ops (one JSON line per endpoint).

Starts one real ``ecac node`` process on 127.0.0.1, fills its store with N chained demo ops
through ``POST /inject-demo-ops`` (10,000 per request, the gateway's cap), waits until the
digest covers them, then for each endpoint sends GET requests for ``--seconds`` over
``--connections`` keep-alive connections (one thread each) and prints
``{"endpoint", "ops", "connections", "requests", "seconds", "rps", "p50_ms", "p99_ms", "bytes"}``.

    .venv/bin/python benchmarks/gateway_rps.py --ops 10000 --seconds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from ecac.net.procs import start_node, wait_for

ENDPOINTS = ("/api/state", "/api/view/state", "/status", "/api/ops", "/api/access", "/api/explain")


def _worker(host: str, port: int, path: str, until: float, lat: list[float], sizes: list[int]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            conn.request("GET", path, headers={"Host": f"{host}:{port}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:200]!r}")
            lat.append(time.perf_counter() - t0)
            sizes.append(len(body))
    finally:
        conn.close()


def measure(url: str, path: str, seconds: float, connections: int) -> dict[str, object]:
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    _worker(u.hostname, u.port, path, time.perf_counter() + 0.5, [], [])  # warm the view cache
    lats: list[list[float]] = [[] for _ in range(connections)]
    sizes: list[list[int]] = [[] for _ in range(connections)]
    until = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_worker, args=(u.hostname, u.port, path, until, lats[i], sizes[i]))
        for i in range(connections)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = sorted(x for lst in lats for x in lst)
    n = len(all_lat)
    return {
        "endpoint": path,
        "connections": connections,
        "requests": n,
        "seconds": round(elapsed, 2),
        "rps": round(n / elapsed, 1),
        "p50_ms": round(statistics.median(all_lat) * 1000, 2) if n else None,
        "p99_ms": round(all_lat[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
        "bytes": sizes[0][0] if sizes and sizes[0] else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--endpoint", action="append", help="endpoint to measure (repeatable; default: a set)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ecac-gw-") as tmp:
        node = start_node(Path(tmp) / "n1")
        try:
            left, seed = args.ops, 1
            while left > 0:
                node.inject(min(left, 10_000), seed)
                left -= 10_000
                seed += 1
            assert node.control_url is not None
            wait_for(lambda: node.status()["digest_ops"] == args.ops, 120, what="digest covers the ops")
            for path in args.endpoint or ENDPOINTS:
                row = measure(node.control_url, path, args.seconds, args.connections)
                print(json.dumps({**row, "ops": args.ops}), flush=True)
        finally:
            node.stop()


if __name__ == "__main__":
    main()
