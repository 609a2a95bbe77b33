"""The gateway's tooling endpoints of a real node over raw HTTP, and node start-up errors."""

from __future__ import annotations

import json
import socket
import subprocess
from urllib.parse import urlsplit

import pytest

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.opcodec import encode_ops
from ecac.core.replay import replay_full
from ecac.net.procs import NODE_COMMAND, node_args, wait_for

from .conftest import Nodes, spec_dag
from .handpeer import forged

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def raw_http(url: str, request: bytes) -> tuple[int, dict[str, str], object]:
    """One request on its own connection (``Host`` and ``Connection: close`` added after the request line)."""
    u = urlsplit(url)
    line, sep, rest = request.partition(b"\r\n")
    if sep:
        request = line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + rest
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_endpoints_and_errors(nodes: Nodes) -> None:
    a = nodes.start("a")
    url = a.control_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    auth = f"Authorization: Bearer {a.token}\r\nContent-Type: application/json\r\n".encode()
    status, _, body = raw_http(url, b"GET /api/health HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, {"ok": True, "version": "0.1.0"})
    status, _, body = raw_http(url, b"GET /api/nope HTTP/1.1\r\n\r\n")
    assert (status, body) == (404, {"error": "no endpoint /api/nope"})
    status, _, body = raw_http(url, b"GET /nope HTTP/1.1\r\n\r\n")  # not a dashboard file
    assert (status, body) == (404, {"error": "Not Found"})
    status, headers, body = raw_http(url, b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET" and "not allowed" in body["error"]
    status, _, body = raw_http(
        url, b"POST /inject-demo-ops HTTP/1.1\r\n" + auth + b"Content-Length: 999999\r\n\r\n"
    )
    assert status == 413
    status, _, body = raw_http(url, b"garbage\r\n\r\n")
    assert status == 400 and "bad request" in body["error"]
    bad_json = b'{"count": "3", "seed": 1}'
    status, _, body = raw_http(
        url,
        b"POST /inject-demo-ops HTTP/1.1\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % len(bad_json)
        + bad_json,
    )
    assert (status, body) == (400, {"error": '"count" must be an integer'})

    with pytest.raises(EcacError, match="answered 400: Multiaddr must contain /p2p/<peer_id>"):
        a.add_peer("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(EcacError, match="answered 400: Invalid multiaddr"):
        a.add_peer("/ip4/127.0.0.1/tcp/1/p2p/not-a-peer-id")
    with pytest.raises(EcacError, match=r"answered 400: .*not a CBOR"):
        a.append_ops(b"\xff\x00")

    # a mixed upload: valid ops are stored, a forged one and an op too large for MAX_FRAME are refused
    ops = spec_dag(5)
    huge = make_op(key_pair(1, b"big"), [], Hlc(1, 0, 0), Data("mv:o:x", bytes(range(24, 256)) * 20_000))
    upload = encode_ops([ops[0], ops[1], huge])
    r = a.append_ops(upload)
    assert (r["ok"], r["stored"], [x["index"] for x in r["rejected"]]) == (False, 2, [2])
    assert "MAX_FRAME" in r["rejected"][0]["error"]
    log = b"\x83" + ops[2].cbor + forged(ops[3]) + ops[4].cbor  # a CBOR array of three ops
    r = a.append_ops(log)
    assert r["stored"] == 2 and [x["index"] for x in r["rejected"]] == [1]
    assert "op_id mismatch" in r["rejected"][0]["error"]
    s = a.status()
    assert s["op_count"] == 4 and s["complete_count"] == 3 and s["pending_ops"] == 1  # op 4 waits for op 3

    wait_for(lambda: a.status()["digest_ops"] == 3, 10)
    status, _, body = raw_http(url, b"GET /api/state/digest HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, {"digest": replay_full(ops[:3])[1][:8].hex(), "ops": 3})
    status, _, body = raw_http(url, b"GET /api/node/peers HTTP/1.1\r\n\r\n")
    assert body == {"peers": [], "networking_enabled": True}
    assert a.stop() == 0


def test_second_node_on_a_locked_store_fails(nodes: Nodes) -> None:
    a = nodes.start("a")
    args = node_args(nodes.db("a"), control=None)
    r = subprocess.run([*NODE_COMMAND, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"Error: store {nodes.db('a')} is locked by another process"
    assert r.stdout == ""
    assert a.alive and a.status()["op_count"] == 0
