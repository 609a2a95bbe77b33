"""Attacks on the node's HTTP gateway (issue 10 items 4, 5 and the control-API attacks of its
report), against a real node: slowloris, decoder amplification, unbounded work, hostile JSON.

Each asserts the issue's bounds (``/status`` within 1 s throughout, RSS below baseline +
200 MB), that an honest node dialling in afterwards converges, and that ``verify-store``
passes. Marked ``redteam`` (``make redteam``); fast versions of the same attacks are in
``tests/integration/test_gateway_node.py``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from .harness import RedTeam, raw_request

pytestmark = [pytest.mark.integration, pytest.mark.redteam, pytest.mark.timeout(240)]

MIB = 1 << 20


def finish(redteam: RedTeam, target: object, a: object) -> None:
    assert redteam.honest_peer_converges(target)  # type: ignore[arg-type]
    assert redteam.stop_and_verify(target) == "ok"  # type: ignore[arg-type]
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)  # type: ignore[attr-defined]


def test_gateway_slowloris(redteam: RedTeam) -> None:
    """100 connections that never finish (or never start) a request, held for 15 s."""
    target = redteam.start_node("target")
    assert target.inject(200, 1)["stored"] == 200
    u = urlsplit(target.control_url or "")
    socks: list[socket.socket] = []
    with redteam.attack("gateway_slowloris", target) as a:
        for i in range(100):
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head that never ends
            socks.append(s)
        t_end = time.monotonic() + 15
        while time.monotonic() < t_end:  # keep trickling one header byte now and then
            for s in socks[1::2]:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")
            time.sleep(1.0)
        gw = target.status()["gateway"]
        a.note(connections=100, evicted=gw["evicted_idle"], timeouts=gw["timeouts"])
    for s in socks:
        s.close()
    finish(redteam, target, a)


def test_gateway_cbor_amplification(redteam: RedTeam) -> None:
    """A 32 MiB CBOR array of 33.5 million empty maps to /append-ops (was 2.45 GB RSS for 14 s)."""
    target = redteam.start_node("target")
    assert target.inject(200, 1)["stored"] == 200
    n = 32 * MIB - 9
    body = b"\x9a" + n.to_bytes(4, "big") + b"\xa0" * n
    with redteam.attack("gateway_cbor_amplification", target) as a:
        t0 = time.monotonic()
        status, answer = raw_request(target, "POST", "/append-ops", body, "application/cbor")
        a.note(http=status, secs=f"{time.monotonic() - t0:.2f}", body_mb=len(body) // MIB)
    assert status == 400, answer[:200]
    a.settle_rss()
    finish(redteam, target, a)


def test_gateway_unbounded_inject(redteam: RedTeam) -> None:
    """``count: 1000000`` (was 269 s of work and 3.4 GB), then the largest allowed batch."""
    target = redteam.start_node("target")
    with redteam.attack("gateway_unbounded_inject", target) as a:
        status, answer = raw_request(target, "POST", "/inject-demo-ops", b'{"count": 1000000, "seed": 1}')
        assert status == 413 and b"10000" in answer, answer
        t0 = time.monotonic()
        assert target.inject(10_000, 2)["stored"] == 10_000  # on the writer thread: /status stays live
        a.note(refused=status, batch_secs=f"{time.monotonic() - t0:.2f}")
    finish(redteam, target, a)


def test_gateway_hostile_json(redteam: RedTeam) -> None:
    """UTF-16/UTF-32 bodies (were accepted as JSON), 100k-deep nesting, oversized bodies, repeated."""
    target = redteam.start_node("target")
    assert target.inject(200, 1)["stored"] == 200
    ok = json.dumps({"peer_id": "x", "seconds": 0})
    bodies = [
        ("/peers/block", ok.encode("utf-16")),
        ("/peers/block", ok.encode("utf-32")),
        ("/peers/block", ok.encode("utf-16-le")),
        ("/api/submit", b"[" * 500_000 + b"]" * 500_000),
        ("/api/submit", b'{"ops": [' + b'"00",' * 200_000 + b'"00"]}'),
        ("/api/submit", b'{"ops": ["' + b'\\"' * 300_000),  # unterminated, escapes: no regex scan
    ]
    statuses: set[int] = set()
    with redteam.attack("gateway_hostile_json", target) as a:
        for _ in range(20):
            for path, body in bodies:
                status, _ = raw_request(target, "POST", path, body)
                statuses.add(status)
            status, _ = raw_request(target, "POST", "/peers/block", b"x" * (2 * MIB))
            statuses.add(status)
        a.note(statuses="/".join(map(str, sorted(statuses))))
    assert statuses <= {400, 413}, statuses
    finish(redteam, target, a)
