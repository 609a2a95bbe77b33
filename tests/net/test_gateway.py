"""The gateway's admission rules, addresses, token file, static files and event fan-out, without a node."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from ecac.core.errors import EcacError
from ecac.core.keys import key_pair
from ecac.net.gateway import (
    EVENT_BUFFER,
    MAX_JSON_BODY,
    MAX_OPS_BODY,
    MAX_SUBMIT_BODY,
    MAX_SUBSCRIBERS,
    TOKEN_FILE_NAME,
    EventHub,
    Gateway,
    GatewayConfig,
    is_loopback_host,
    new_token,
    parse_control_addr,
    sse,
    write_token_file,
)
from ecac.net.http import HttpError, Request, Response

TOKEN = "ab" * 32


def gateway(tmp_path: Path | None = None, **kw: Any) -> Gateway:
    cfg = GatewayConfig(token=TOKEN, db_path="/db", write_key=key_pair(1, b"gw"), **kw)
    if tmp_path is not None:
        cfg = GatewayConfig(
            token=TOKEN, db_path="/db", write_key=key_pair(1, b"gw"), static_dir=tmp_path, **kw
        )
    return Gateway(None, cfg)  # type: ignore[arg-type]  # admission and static files need no node


def head(method: str, path: str, **headers: str) -> Request:
    hs = {"host": "127.0.0.1:8080", **{k.replace("_", "-").lower(): v for k, v in headers.items()}}
    return Request(method, path, path.split("?")[0], {}, hs)


def refused(g: Gateway, req: Request) -> HttpError:
    with pytest.raises(HttpError) as e:
        g.admit(req)
    return e.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("127.5.6.7:1", ("127.5.6.7", 1)),
    ],
)
def test_loopback_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_control_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:80", "--allow-remote"),
        ("10.0.0.1:80", "loopback"),
        ("example.org:80", "loopback"),
        ("127.0.0.1", "HOST:PORT"),
        (":80", "HOST:PORT"),
        ("127.0.0.1:x", "number"),
        ("127.0.0.1:70000", "0-65535"),
        ("[::1]9000", "HOST:PORT"),
    ],
)
def test_refused_addresses(text: str, message: str) -> None:
    with pytest.raises(EcacError, match=message):
        parse_control_addr(text)


def test_allow_remote_addresses() -> None:
    assert parse_control_addr("0.0.0.0:80", allow_remote=True) == ("0.0.0.0", 80)


def test_loopback_hosts() -> None:
    for h in ("127.0.0.1", "localhost", "LOCALHOST", "[::1]", "::1", "127.1.2.3", "app.localhost"):
        assert is_loopback_host(h), h
    for h in ("evil.example", "10.0.0.1", "localhost.evil.example", "[::2]", "0.0.0.0", ""):
        assert not is_loopback_host(h), h


def test_token_file(tmp_path: Path) -> None:
    t1, t2 = new_token(), new_token()
    assert len(t1) == 64 and t1 != t2 and int(t1, 16) >= 0
    p = write_token_file(tmp_path, t1)
    assert p == tmp_path / TOKEN_FILE_NAME
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == t1 + "\n"
    write_token_file(tmp_path, t2)  # replaced at the next start
    assert p.read_text() == t2 + "\n" and sorted(x.name for x in tmp_path.iterdir()) == [TOKEN_FILE_NAME]


def test_host_and_origin_checks() -> None:
    g = gateway()
    assert g.admit(head("GET", "/api/state")) == 0
    assert g.admit(head("GET", "/api/state", host="localhost")) == 0
    assert g.admit(head("GET", "/api/state", host="[::1]:1")) == 0
    e = refused(g, head("GET", "/api/state", host="evil.example:8080"))
    assert e.status == 421 and "--allow-remote" in e.message
    e = refused(g, head("GET", "/api/state", host="127.0.0.1.evil.example"))
    assert e.status == 421
    assert refused(g, head("GET", "/api/state", origin="http://evil.example")).status == 403
    assert refused(g, head("GET", "/api/state", origin="null")).status == 403
    assert refused(g, head("GET", "/api/state", origin="https://127.0.0.1:8080")).status == 403
    assert g.admit(head("GET", "/api/state", origin="http://127.0.0.1:8080")) == 0
    no_host = Request("GET", "/status", "/status", {}, {}, "1.0")
    assert g.admit(no_host) == 0
    assert refused(g, Request("GET", "/status", "/status", {}, {}, "1.1")).status == 400


def test_post_needs_json_and_the_token() -> None:
    g = gateway()
    auth = {"authorization": f"Bearer {TOKEN}"}
    ok = head("POST", "/peers/block", content_type="application/json; charset=utf-8", **auth)
    assert g.admit(ok) == MAX_JSON_BODY
    assert g.admit(head("POST", "/api/submit", content_type="application/json", **auth)) == MAX_SUBMIT_BODY
    assert g.admit(head("POST", "/append-ops", content_type="application/cbor", **auth)) == MAX_OPS_BODY
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        e = refused(g, head("POST", "/peers/block", content_type=ctype, **auth))
        assert e.status == 415, ctype
    assert refused(g, head("POST", "/append-ops", content_type="application/json", **auth)).status == 415
    e = refused(g, head("POST", "/peers/block", content_type="application/json"))
    assert e.status == 401 and e.message.startswith("missing or wrong token")
    bad = {"authorization": "Bearer " + "cd" * 32}
    assert refused(g, head("POST", "/peers/block", content_type="application/json", **bad)).status == 401
    assert (
        refused(g, head("POST", "/peers/block", content_type="application/json", authorization=TOKEN)).status
        == 401
    )
    assert g.admit(head("GET", "/api/state")) == 0  # reads need no token on loopback


def test_allow_remote_needs_the_token_for_every_request() -> None:
    g = gateway(allow_remote=True)
    assert refused(g, head("GET", "/api/state", host="node.example:8080")).status == 401
    assert g.admit(head("GET", "/api/state", host="node.example:8080", authorization=f"Bearer {TOKEN}")) == 0
    assert g.admit(head("GET", "/", host="node.example:8080")) == 0  # the page itself is not secret


def test_routes_unknown_and_wrong_method() -> None:
    g = gateway()
    assert refused(g, head("GET", "/api/nope")).status == 404
    assert refused(g, head("POST", "/nope")).status == 404
    e = refused(g, head("DELETE", "/status"))
    assert e.status == 405 and dict(e.headers)["Allow"] == "GET"
    e = refused(g, head("PUT", "/api/node/peers"))
    assert dict(e.headers)["Allow"] == "GET, POST"


async def _static(g: Gateway, path: str) -> Response:
    req = head("GET", path)
    g.admit(req)
    resp = await g.handle(req)
    assert isinstance(resp, Response)
    return resp


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_static_files(tmp_path: Path, anyio_backend: str) -> None:
    root = tmp_path / "dash"
    root.mkdir()
    (root / "index.html").write_text("<html>hi</html>")
    (root / "app.js").write_text("1;")
    (root / "app.css").write_text("a{}")
    (root / "logo.svg").write_text("<svg/>")
    (root / ".secret").write_text("x")
    (tmp_path / "outside.html").write_text("no")
    g = gateway(root)
    r = await _static(g, "/")
    assert (r.status, r.body, r.content_type) == (200, b"<html>hi</html>", "text/html; charset=utf-8")
    assert "default-src 'self'" in dict(r.headers)["Content-Security-Policy"]
    assert (await _static(g, "/app.js")).content_type == "text/javascript; charset=utf-8"
    assert (await _static(g, "/app.css")).content_type == "text/css; charset=utf-8"
    assert (await _static(g, "/logo.svg")).content_type == "image/svg+xml"
    for bad in (
        "/.secret",
        "/../outside.html",
        "/%2e%2e/outside.html",
        "/missing.js",
        "/dash/../outside.html",
    ):
        r = await _static(g, bad)
        assert r.status == 404 and json.loads(r.body) == {"error": "Not Found"}, bad


def test_shipped_dashboard_has_an_index() -> None:
    from ecac.net.gateway import DASHBOARD_DIR

    assert (DASHBOARD_DIR / "index.html").is_file()


def test_event_hub_coalesces_bounds_and_caps() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    hub.publish("snapshot", {"seq": 1})
    hub.publish("snapshot", {"seq": 2})
    hub.publish("op", {"op_id": "a"})
    hub.publish("snapshot", {"seq": 3})
    items, lost = sub.take()
    assert items == [("snapshot", {"seq": 2}), ("op", {"op_id": "a"}), ("snapshot", {"seq": 3})] and lost == 0
    hub.publish_many([("op", {"i": i}) for i in range(EVENT_BUFFER + 10)], skipped=5)
    items, lost = sub.take()
    assert len(items) == EVENT_BUFFER and lost == 15
    subs = [hub.subscribe() for _ in range(MAX_SUBSCRIBERS - 1)]
    with pytest.raises(HttpError) as e:
        hub.subscribe()
    assert e.value.status == 503
    hub.unsubscribe(subs[0])
    hub.subscribe()


def test_sse_format() -> None:
    assert sse("op", {"a": 1}) == b'event: op\ndata: {"a":1}\n\n'


def test_digest_state_caches_views_per_version_and_reports_verdicts() -> None:
    from ecac.core.hlc import Hlc
    from ecac.core.keys import public_key
    from ecac.core.policyops import data_op, grant_ops, issuer_key_op
    from ecac.core.vc import editor_claims, mint_vc
    from ecac.net.digest import DigestState

    issuer, user, other = key_pair(1, b"i"), key_pair(2, b"u"), key_pair(3, b"o")
    ik = issuer_key_op(issuer, [], Hlc(1000, 0, 1), "issuer-1", "k1")
    vc = mint_vc(issuer, editor_claims(public_key(user), nbf_ms=1001, exp_ms=10**9, status=None))
    cred, grant = grant_ops(vc, 1002, issuer=issuer, grantor=issuer, parents=[ik.op_id])
    st = DigestState()
    assert st.add([ik, cred, grant])
    calls: list[int] = []

    def count(s: DigestState) -> int:
        calls.append(s.version)
        return len(s.order)

    assert st.cached_view("n", count) == 3 and st.cached_view("n", count) == 3 and len(calls) == 1
    ok = data_op(user, [grant.op_id], Hlc(1003, 0, 1), "mv:o:x", b"yes")
    bad = data_op(other, [grant.op_id], Hlc(1004, 0, 1), "mv:o:x", b"no")
    assert st.add([ok, bad])
    assert st.last_verdicts == {ok.op_id: ("ALLOWED", None), bad.op_id: ("DENIED", "deny_wins")}
    assert st.cached_view("n", count) == 5 and len(calls) == 2  # a new version recomputes
    assert not st.add([ok]) and st.last_verdicts == {}
