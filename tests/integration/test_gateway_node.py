"""The HTTP gateway of a real node process on 127.0.0.1: every endpoint's JSON on real data
(issuer key, grant, allowed and denied writes), the event stream, and the attacks of issue 10
against the gateway (CSRF, oversized, malformed and amplifying bodies, slowloris)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cbor2
import pytest

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Op
from ecac.core.policyops import data_op, grant_ops, issuer_key_op
from ecac.core.vc import editor_claims, mint_vc
from ecac.net.client import GatewayClient
from ecac.net.procs import NODE_COMMAND, NodeProc, wait_for

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ISSUER = key_pair(1, b"gw-issuer")
USER = key_pair(2, b"gw-user")
HEX64 = "0123456789abcdef"


def addr_of(node: NodeProc) -> tuple[str, int]:
    assert node.control_url is not None
    u = urlsplit(node.control_url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


def raw(node: NodeProc, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Send one raw request (it should say ``Connection: close``) and read the answer to EOF."""
    with socket.create_connection(addr_of(node), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def post(
    node: NodeProc,
    path: str,
    body: bytes,
    *,
    ctype: str | None = "application/json",
    token: str | None = None,
    extra: str = "",
) -> tuple[int, Any]:
    port = addr_of(node)[1]
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    status, _, doc = raw(node, (head + extra + "\r\n").encode() + body)
    return status, doc


def submit(c: GatewayClient, ops: list[Op], **kw: bool) -> dict[str, Any]:
    doc: dict[str, Any] = c.post_json("/api/submit", {"ops": [op.cbor.hex() for op in ops], **kw})
    return doc


def heads(c: GatewayClient) -> list[bytes]:
    return [bytes.fromhex(h) for h in c.get("/api/heads")["heads"]]


class Sse:
    """A raw SSE subscriber: ``events()`` returns the (event, data) pairs read so far."""

    def __init__(self, node: NodeProc) -> None:
        port = addr_of(node)[1]
        self.sock = socket.create_connection(addr_of(node), timeout=5)
        self.sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        self.buf = b""
        self.got: list[tuple[str, Any]] = []

    def read_until(self, pred: Any, timeout: float = 30.0) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        while not pred(self.got):
            if time.monotonic() > deadline:
                raise TimeoutError(f"events so far: {[e for e, _ in self.got]}")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError("event stream closed")
            self.buf += chunk
            for block in self._blocks():
                ev = data = None
                for line in block.split("\n"):
                    if line.startswith("event: "):
                        ev = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                if ev is not None:
                    self.got.append((ev, data))
        return self.got

    def _blocks(self) -> list[str]:
        text = self.buf.decode("latin-1")
        *done, rest = text.split("\n\n")
        self.buf = rest.encode("latin-1")
        # chunked framing: drop the hex size lines between chunks
        return ["\n".join(ln for ln in b.split("\n") if not _is_chunk_size(ln)) for b in done]

    def close(self) -> None:
        self.sock.close()


def _is_chunk_size(line: str) -> bool:
    s = line.strip("\r")
    return bool(s) and all(ch in HEX64 for ch in s.lower())


def test_endpoints_on_real_data(nodes: Nodes) -> None:
    a = nodes.start("a", extra_args=("--allow-writes",))
    c = a.client()
    assert a.token is not None and len(a.token) == 64
    assert oct((a.db / "control.token").stat().st_mode & 0o777) == "0o600"
    events = Sse(a)
    events.read_until(lambda got: {"snapshot", "peers"} <= {e for e, _ in got})

    now = int(time.time() * 1000)
    ik = issuer_key_op(ISSUER, heads(c), Hlc(now, 0, 1), "issuer-1", "k1")
    r = submit(c, [ik])
    assert r["stored"] is True and r["preview"]["ok"] is True
    vc = mint_vc(ISSUER, editor_claims(public_key(USER), nbf_ms=now + 1, exp_ms=now + 3_600_000, status=None))
    cred, grant = grant_ops(vc, now + 2, issuer=ISSUER, grantor=ISSUER, parents=heads(c))
    r = submit(c, [cred, grant])
    assert r["stored"] is True, r
    ok = data_op(USER, heads(c), Hlc(now + 3, 0, 1), "mv:o:x", b"hello")
    r = submit(c, [ok])
    assert r["stored"] is True and r["preview"]["effects"][0]["decision"]["verdict"] == "ALLOWED"
    denied = data_op(USER, heads(c), Hlc(now + 4, 0, 1), "mv:o:y", b"nope")  # o.y has no resource tags
    r = submit(c, [denied])
    assert r["stored"] is False and r["preview"]["ok"] is False
    assert r["preview"]["effects"][0]["decision"]["verdict"] == "DENIED"
    r = submit(c, [denied], force=True, store_denied=True)
    assert r["stored"] is True
    r = c.post_json("/api/data", {"object": "o", "field": "x", "value": "by-node"})  # the node key: no grant
    assert r["ok"] is True and len(r["op_id"]) == 64 and r["error"] is None
    node_write = r["op_id"]

    # the event stream saw the writes with their verdicts
    got = events.read_until(lambda got: any(e == "op" and d["op_id"] == node_write for e, d in got))
    ops_ev = {d["op_id"]: d for e, d in got if e == "op"}
    assert ops_ev[ok.op_id.hex()]["decision"] == {"verdict": "ALLOWED", "reason": None}
    assert (
        ops_ev[ok.op_id.hex()]["kind"] == "Data"
        and ops_ev[ok.op_id.hex()]["author"] == public_key(USER).hex()
    )
    assert ops_ev[node_write]["decision"]["verdict"] == "DENIED"
    assert ops_ev[grant.op_id.hex()]["decision"] is None
    snap = [d for e, d in got if e == "snapshot"][-1]
    assert set(snap) == {"seq", "op_count", "digest", "heads"} and len(snap["digest"]) == 64
    events.close()

    node = c.get("/api/node")
    assert set(node) == {
        "site_name",
        "op_count",
        "head_count",
        "state_digest",
        "db_path",
        "allow_writes",
        "peer_id",
        "libp2p_listen",
    }
    assert node["op_count"] == 6 and node["head_count"] == 1 and node["allow_writes"] is True
    assert node["peer_id"] == a.peer_id and node["db_path"] == str(a.db) and node["site_name"] is None
    assert c.get("/api/health") == {"ok": True, "version": "0.1.0"}

    state = c.get("/api/state")
    assert state == {"objects": {"o": {"x": "hello"}}, "digest": node["state_digest"]}
    assert c.get("/api/state/o") == {"x": "hello"}
    assert c.get("/api/state/o/x") == "hello"
    with pytest.raises(EcacError, match="404: Object 'nope' not found"):
        c.get("/api/state/nope")
    with pytest.raises(EcacError, match=r"404: Field 'o.zz' not found"):
        c.get("/api/state/o/zz")
    assert c.get("/api/state/digest") == {"digest": node["state_digest"][:16], "ops": 6}

    view = c.get("/api/view/state")
    assert view["objects"]["o"]["x"] == {"type": "mv", "values": [{"kind": "text", "text": "hello"}]}
    assert view["digest"] == node["state_digest"] and view["processed_count"] == 6
    assert c.get("/api/view/state/o/x") == view["objects"]["o"]["x"]

    ops = c.get("/api/ops")
    assert ops["total"] == 6 and len(ops["ops"]) == 6
    assert ops["ops"][0]["op_id"] == node_write  # most recent first
    assert set(ops["ops"][0]) == {
        "op_id",
        "author",
        "hlc_ms",
        "hlc_logical",
        "parents",
        "payload_type",
        "payload",
    }
    kinds = {o["payload_type"] for o in ops["ops"]}
    assert kinds == {"IssuerKey", "Credential", "Grant", "Data"}
    assert c.get("/api/ops?limit=2")["ops"] == ops["ops"][:2]
    one = c.get(f"/api/ops/{grant.op_id.hex()}")
    assert one["payload_type"] == "Grant" and one["payload"]["subject_pk"] == public_key(USER).hex()
    assert c.get(f"/api/ops/{ik.op_id.hex()}")["payload"]["issuer_id"] == "issuer-1"
    with pytest.raises(EcacError, match="400: Invalid op_id hex"):
        c.get("/api/ops/zz")
    with pytest.raises(EcacError, match="400: op_id must be 32 bytes"):
        c.get("/api/ops/abcd")
    with pytest.raises(EcacError, match="404: Op not found"):
        c.get("/api/ops/" + "00" * 32)
    with pytest.raises(EcacError, match="400: limit"):
        c.get("/api/ops?limit=5000")

    trust = c.get("/api/trust")
    assert trust == {
        "issuers": [
            {
                "issuer_id": "issuer-1",
                "keys": [
                    {
                        "key_id": "k1",
                        "algo": "EdDSA",
                        "pubkey": public_key(ISSUER).hex(),
                        "valid_from_ms": 0,
                        "valid_until_ms": 2**64 - 1,
                        "revoked": False,
                    }
                ],
            }
        ]
    }
    assert c.get("/api/node/peers") == {"peers": [], "networking_enabled": True}
    assert c.get("/api/peers") == {
        "peers": [],
        "self": {"peer_id": a.peer_id, "digest": node["state_digest"], "op_count": 6},
    }
    assert c.get("/api/heads") == {"heads": [node_write]}

    acc = c.get(f"/api/access?now_ms={now + 10}")
    assert acc["policy_active"] is True
    (subj,) = acc["subjects"]
    assert subj["subject_pk"] == public_key(USER).hex() and subj["role"] == "editor"
    assert subj["epochs"][0]["status"] == "live" and subj["epochs"][0]["scope"] == ["hv"]
    ex = c.get("/api/explain")
    verdicts = {d["op_id"]: (d["verdict"], d["reason"]) for d in ex["decisions"]}
    assert verdicts[ok.op_id.hex()] == ("ALLOWED", None)
    assert verdicts[denied.op_id.hex()] == ("DENIED", "out_of_scope")
    assert verdicts[node_write][0] == "DENIED"
    assert c.get(f"/api/explain/{denied.op_id.hex()}")["reason"] == "out_of_scope"
    with pytest.raises(EcacError, match="404"):
        c.get("/api/explain/" + "ab" * 32)

    # tooling endpoints keep working, with the token
    assert c.inject(5, 7)["stored"] == 5
    assert c.status()["op_count"] == 11
    assert a.stop() == 0


def test_auth_csrf_limits_and_bad_bodies(nodes: Nodes) -> None:
    a = nodes.start("a")
    tok = a.token
    port = addr_of(a)[1]
    peers = json.dumps({"peer_id": "x", "seconds": 0}).encode()
    for path in ("/peers/block", "/inject-demo-ops", "/api/data", "/api/submit", "/peers", "/api/node/peers"):
        status, doc = post(a, path, b"{}")
        assert status == 401 and doc["error"].startswith("missing or wrong token"), (path, doc)
        status, doc = post(a, path, b"{}", token="0" * 64)
        assert status == 401, path
    status, _ = post(a, "/append-ops", b"\x80", ctype="application/cbor")
    assert status == 401
    assert post(a, "/peers/block", peers, token=tok) == (200, {"ok": True, "peer_id": "x", "seconds": 0})
    status, doc = post(a, "/append-ops", b"\x80", ctype="application/cbor", token=tok)
    assert status == 200 and doc["received"] == 0

    # CSRF: a form/text POST, a foreign Origin, a foreign Host (DNS rebinding)
    assert post(a, "/peers/block", peers, ctype="text/plain", token=tok)[0] == 415
    assert post(a, "/peers/block", peers, ctype=None, token=tok)[0] == 415
    assert post(a, "/peers/block", peers, ctype="application/x-www-form-urlencoded")[0] == 415
    status, doc = post(a, "/peers/block", peers, token=tok, extra="Origin: http://evil.example\r\n")
    assert status == 403 and "cross-origin" in doc["error"]
    assert post(a, "/peers/block", peers, token=tok, extra="Origin: null\r\n")[0] == 403
    same = f"Origin: http://127.0.0.1:{port}\r\n"
    assert post(a, "/peers/block", peers, token=tok, extra=same)[0] == 200
    status, _, doc = raw(a, b"GET /api/state HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert status == 421 and "loopback" in doc["error"]
    status, _, _ = raw(a, b"GET /api/state HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status == 200

    # oversized bodies: refused from Content-Length (nothing read), then for real
    status, doc = post(a, "/peers/block", b"x" * (64 * 1024 + 1), token=tok)
    assert status == 413 and "65536" in doc["error"]
    big = json.dumps({"ops": ["00" * (600 * 1024)]}).encode()
    assert post(a, "/api/submit", big, token=tok)[0] == 413
    status, _, doc = raw(
        a,
        b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 431
    status, doc = post(a, "/inject-demo-ops", b'{"count": 1000000, "seed": 1}', token=tok)
    assert status == 413 and "10000" in doc["error"] and "several requests" in doc["error"]

    # malformed JSON: syntax, UTF-16 with BOM, UTF-32, Latin-1, deep nesting, NaN, duplicates
    bad = [
        b"{",
        '{"peer_id": "x", "seconds": 0}'.encode("utf-16"),
        '{"peer_id": "x", "seconds": 0}'.encode("utf-32"),
        b'{"peer_id": "\xe9", "seconds": 0}',
        b'{"a":' * 33 + b"1" + b"}" * 33,
        b'{"peer_id": "x", "seconds": NaN}',
        b'{"peer_id": "x", "peer_id": "y", "seconds": 0}',
        b"\xef\xbb\xbf" + peers,
        b"[1]",
    ]
    for body in bad:
        status, doc = post(a, "/peers/block", body, token=tok)
        assert status == 400 and isinstance(doc["error"], str), (body[:20], status, doc)
    status, doc = post(a, "/api/submit", b"[" * 100_000 + b"]" * 100_000, token=tok)  # 200 kB, 1 MiB limit
    assert status == 400 and "deeper than 32" in doc["error"]
    assert post(a, "/peers/block", b'{"a":' * 30 + b"1" + b"}" * 30, token=tok)[0] == 400  # shape, not depth
    status, doc = post(a, "/api/submit", b'{"ops": ["zz"]}', token=tok)
    assert status == 400 and "op 0" in doc["error"]
    status, doc = post(a, "/api/submit", json.dumps({"ops": ["a0"]}).encode(), token=tok)
    assert status == 400 and "op 0" in doc["error"]

    # unknown routes and methods, static files and traversal
    status, _, doc = raw(a, b"GET /api/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 404 and doc == {"error": "no endpoint /api/nope"}
    status, headers, doc = raw(a, b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET"
    for path in (b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/.hidden", b"/nothing.html"):
        status, _, doc = raw(a, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status in (400, 404), path
    with socket.create_connection(addr_of(a), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        page = b""
        while chunk := s.recv(65536):
            page += chunk
    assert page.startswith(b"HTTP/1.1 200") and b"text/html" in page and b"<html" in page
    status, _, _ = raw(a, b"garbage\r\n\r\n")
    assert status == 400

    # keep-alive: two requests on one connection
    with socket.create_connection(addr_of(a), timeout=5) as s:
        req = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        s.sendall(req + req)
        data = b""
        while data.count(b'"ok":true') < 2:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 2

    st = a.status()
    assert st["op_count"] == 0 and a.alive
    assert a.stop() == 0


def test_cbor_amplification_stays_bounded(nodes: Nodes) -> None:
    """A 32 MiB CBOR array of empty maps must not make the node allocate gigabytes."""
    a = nodes.start("a")
    base = a.rss_bytes()
    n = 32 * 1024 * 1024 - 9
    body = b"\x9a" + n.to_bytes(4, "big") + b"\xa0" * n
    assert len(body) <= 32 * 1024 * 1024
    peak = base
    status = None

    def send() -> None:
        nonlocal status
        status, _ = post(a, "/append-ops", body, ctype="application/cbor", token=a.token)

    import threading

    t = threading.Thread(target=send, daemon=True)
    t.start()
    while t.is_alive():
        peak = max(peak, a.rss_bytes())
        time.sleep(0.02)
    t.join()
    peak = max(peak, a.rss_bytes())
    assert status == 400
    assert peak - base < 200 * 1024 * 1024, f"RSS grew by {(peak - base) >> 20} MiB"
    assert a.status()["op_count"] == 0
    assert cbor2.loads(b"\x80") == []


def test_slowloris_does_not_slow_status(nodes: Nodes) -> None:
    a = nodes.start("a")
    idle = [socket.create_connection(addr_of(a), timeout=5) for _ in range(100)]
    try:
        for s in idle[:50]:
            s.sendall(b"GET /status HTTP/1.1\r\n")  # half a head, never finished
        time.sleep(0.2)
        t0 = time.monotonic()
        st = a.client(timeout=1.0).status()
        assert time.monotonic() - t0 < 1.0
        assert st["gateway"]["evicted_idle"] >= 1  # 100 idle + 1 honest client over a cap of 64
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            a.client(timeout=1.0).status()
            times.append(time.monotonic() - t0)
        assert max(times) < 1.0
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: a.status()["gateway"]["open"] <= 2, 5)


def start_serve(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """``ecac serve`` on ephemeral ports; returns the process and its stdout lines up to the dashboard's."""
    cmd = [*NODE_COMMAND[:3], "serve", "--db", str(tmp / "s"), "--listen", "127.0.0.1:0", *args]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while not lines or not lines[-1].startswith("dashboard: "):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start: {lines} {proc.stderr.read() if proc.stderr else ''}")
        lines.append(line.rstrip("\n"))
    return proc, lines


def test_serve_lines_and_networking_off(tmp_path: Path) -> None:
    writer = key_pair(9, b"gw-writer")
    env = {**os.environ, "ECAC_SUBJECT_SK_HEX": bytes(writer).hex(), "ECAC_SITE_NAME": "lab"}
    proc, lines = start_serve(tmp_path, "--allow-writes", env=env)
    try:
        assert lines[0].startswith("libp2p Peer ID: 12D3KooW")
        assert lines[1].startswith("ECAC Gateway starting on http://127.0.0.1:")
        assert lines[2:5] == ["Site: lab", "Write operations: ENABLED", "libp2p networking: DISABLED"]
        url = lines[1].rsplit(" ", 1)[1]
        token = (tmp_path / "s" / "control.token").read_text().strip()
        assert lines[5] == f"dashboard: {url}/#token={token}"
        c = GatewayClient(url, token=token, timeout=10)
        node = c.get("/api/node")
        assert "libp2p_listen" not in node and node["site_name"] == "lab" and node["allow_writes"] is True
        assert c.get("/api/node/peers") == {"peers": [], "networking_enabled": False}
        with pytest.raises(EcacError, match="503: Networking not enabled"):
            c.post_json("/api/node/peers", {"multiaddr": "/ip4/127.0.0.1/tcp/1/p2p/x"})
        r = c.post_json("/api/data", {"object": "o", "field": "x", "value": "v1"})
        assert r["ok"] is True
        op = c.get(f"/api/ops/{r['op_id']}")
        assert op["author"] == public_key(writer).hex() and op["payload"] == {"key": "mv:o:x", "value": "v1"}
        assert c.get("/api/state/o/x") == "v1"
        with pytest.raises(EcacError, match=r"400: .*':'"):
            c.post_json("/api/data", {"object": "o:y", "field": "x", "value": "v"})
    finally:
        proc.terminate()
        proc.wait(15)
    # without --allow-writes: the spec's 200 ok:false; with networking: the libp2p lines and key
    proc, lines = start_serve(tmp_path, "--libp2p-listen", "/ip4/127.0.0.1/tcp/0")
    try:
        assert "Write operations: ENABLED" not in lines and "Site: (unnamed)" in lines
        assert "libp2p networking: ENABLED" in lines
        listen = next(x for x in lines if x.startswith("libp2p listen: "))
        url = lines[1].rsplit(" ", 1)[1]
        c = GatewayClient(url, token=(tmp_path / "s" / "control.token").read_text().strip(), timeout=10)
        assert c.get("/api/node")["libp2p_listen"] == listen.split(" ", 2)[2]
        assert c.post_json("/api/data", {"object": "o", "field": "x", "value": "v2"}) == {
            "ok": False,
            "op_id": None,
            "error": "Write operations not enabled (use --allow-writes)",
        }
        assert c.get("/api/state/o/x") == "v1"  # the store of the first run
    finally:
        proc.terminate()
        proc.wait(15)


def test_peers_and_their_events(nodes: Nodes) -> None:
    a = nodes.start("a")
    events = Sse(a)
    events.read_until(lambda got: any(e == "peers" for e, _ in got))
    b = nodes.start("b", peers=[a.addr])
    got = events.read_until(
        lambda got: any(e == "peers" and any(p["connected"] for p in d["peers"]) for e, d in got), timeout=20
    )
    (doc,) = [d for e, d in got if e == "peers" and d["peers"]][:1]
    assert doc["peers"][0]["peer_id"] == b.peer_id and doc["self"]["peer_id"] == a.peer_id
    assert b.inject(3, 5)["stored"] == 3
    c = b.client()

    def matched() -> Any:
        peers = c.get("/api/peers")["peers"]
        return peers if peers and peers[0]["heads_match"] else None

    (p,) = wait_for(matched, 20, what="heads_match")
    assert p["peer_id"] == a.peer_id and p["connected"] is True and p["addrs"] == [a.addr]
    assert isinstance(p["last_sync_ms"], int) and abs(p["last_sync_ms"] - time.time() * 1000) < 60_000
    assert c.get("/api/node/peers") == {
        "peers": [{"peer_id": a.peer_id, "connected": True}],
        "networking_enabled": True,
    }
    events.close()
