"""``GatewayClient`` and ``resolve_token`` against real sockets on 127.0.0.1: each failure is the
one ``EcacError`` a user can act on."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ecac.core.errors import EcacError
from ecac.net.client import TOKEN_ENV, GatewayClient, GatewayError, normalize_url, resolve_token

TOKEN = "ab" * 32


class _Handler(BaseHTTPRequestHandler):
    """Answers from the server's ``answer(handler) -> (status, content_type, body)``; records requests."""

    server: Any

    def _serve(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append((self.command, self.path, dict(self.headers.items()), body))
        status, ctype, out = self.server.answer(self)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = _serve
    do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


Answer = Callable[[BaseHTTPRequestHandler], tuple[int, str, bytes]]


@contextmanager
def http_server(answer: Answer) -> Iterator[tuple[str, list[Any]]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.answer = answer  # type: ignore[attr-defined]
    srv.seen = []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.seen  # type: ignore[attr-defined]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def _json(status: int, obj: Any) -> Answer:
    return lambda h: (status, "application/json", json.dumps(obj).encode())


@contextmanager
def raw_server(reply: bytes | None, *, wait_for_request: bool = True) -> Iterator[str]:
    """A TCP server that reads the request head, then sends ``reply`` (None: closes) and closes."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    port = ls.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with c:
                if wait_for_request:
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        d = c.recv(4096)
                        if not d:
                            break
                        buf += d
                if reply:
                    c.sendall(reply)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        ls.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        ls.close()
        t.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- success paths


def test_get_and_post_send_the_token_and_content_types() -> None:
    with http_server(_json(200, {"ok": True})) as (url, seen):
        c = GatewayClient(url, token=TOKEN, timeout=5)
        assert c.status() == {"ok": True}
        assert c.inject(3, 7) == {"ok": True}
        assert c.append_ops(b"\x80") == {"ok": True}
        assert c.block_peer("p", 1.5) == {"ok": True}
    (m1, p1, h1, _), (m2, p2, h2, b2), (m3, p3, h3, b3), (_, p4, _, b4) = seen
    assert (m1, p1) == ("GET", "/status")
    assert h1["Authorization"] == f"Bearer {TOKEN}"
    assert (m2, p2, h2["Content-Type"], json.loads(b2)) == (
        "POST",
        "/inject-demo-ops",
        "application/json",
        {"count": 3, "seed": 7},
    )
    assert (m3, p3, h3["Content-Type"], b3) == ("POST", "/append-ops", "application/cbor", b"\x80")
    assert (p4, json.loads(b4)) == ("/peers/block", {"peer_id": "p", "seconds": 1.5})


def test_no_token_no_authorization_header() -> None:
    with http_server(_json(200, {"peers": []})) as (url, seen):
        assert GatewayClient(url.removeprefix("http://") + "/", timeout=5).peers() == {"peers": []}
    assert seen[0][1] == "/api/peers"
    assert "Authorization" not in seen[0][2]


def test_ignores_http_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    with http_server(_json(200, {"ok": 1})) as (url, _):
        assert GatewayClient(url, timeout=5).get("/api/health") == {"ok": 1}


# --------------------------------------------------------------------------- each failure


def test_connection_refused() -> None:
    port = _free_port()
    with pytest.raises(EcacError) as ei:
        GatewayClient(f"127.0.0.1:{port}", timeout=5).status()
    assert str(ei.value) == (
        f"cannot reach node at http://127.0.0.1:{port}: connection refused "
        "(is `ecac node --control …` running?)"
    )


def test_401_names_the_token_sources() -> None:
    answer = _json(401, {"error": "missing or wrong token: no Authorization header"})
    with http_server(answer) as (url, _), pytest.raises(EcacError) as ei:
        GatewayClient(url, timeout=5).inject(1, 1)
    msg = str(ei.value)
    assert msg.startswith(f"node at {url} answered 401: missing or wrong token: no Authorization header (")
    assert "--token-file" in msg and TOKEN_ENV in msg and "\n" not in msg


def test_other_http_errors_carry_the_json_error_or_the_reason() -> None:
    with (
        http_server(_json(404, {"error": "no endpoint /x"})) as (url, _),
        pytest.raises(GatewayError, match=r"answered 404: no endpoint /x$") as ei,
    ):
        GatewayClient(url, timeout=5).get("/x")
    assert (ei.value.status, ei.value.detail) == (404, "no endpoint /x")
    with (
        http_server(lambda h: (500, "text/html", b"<html>boom</html>")) as (url, _),
        pytest.raises(EcacError, match=r"answered 500: Internal Server Error$"),
    ):
        GatewayClient(url, timeout=5).get("/x")


def test_non_json_answer() -> None:
    with (
        http_server(lambda h: (200, "text/html", b"<html></html>")) as (url, _),
        pytest.raises(EcacError, match=r"non-JSON answer to /status: is it the node's --control address"),
    ):
        GatewayClient(url, timeout=5).status()
    with http_server(_json(200, [1, 2])) as (url, _), pytest.raises(EcacError, match="not a JSON object"):
        GatewayClient(url, timeout=5).status()


@pytest.mark.parametrize(
    "reply",
    [b"\x13/multistream/1.0.0\n", None],
    ids=["multistream-bytes", "hang-up"],
)
def test_not_http(reply: bytes | None) -> None:
    with raw_server(reply) as url, pytest.raises(EcacError) as ei:
        GatewayClient(url, timeout=5).status()
    assert str(ei.value) == (
        f"{url} does not speak HTTP: is it the node's libp2p port? use the --control address"
    )


def test_timeout() -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)  # accepted by the kernel, never answered
    try:
        url = f"http://127.0.0.1:{ls.getsockname()[1]}"
        with pytest.raises(EcacError) as ei:
            GatewayClient(url, timeout=0.3).status()
        assert str(ei.value) == f"node at {url} did not answer within 0.3 s"
    finally:
        ls.close()


def test_bad_urls() -> None:
    assert normalize_url(" 127.0.0.1:8080/ ") == "http://127.0.0.1:8080"
    for bad in ("https://127.0.0.1:1", "ftp://x", "http://", "127.0.0.1", "http://h:99999", "h:1/api"):
        with pytest.raises(EcacError, match="must be http://HOST:PORT"):
            GatewayClient(bad)


# --------------------------------------------------------------------------- the token


def test_resolve_token_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    db = tmp_path / "db"
    db.mkdir()
    assert resolve_token(None, None) is None
    assert resolve_token(None, db) is None  # no token file: reads still work
    (db / "control.token").write_text("db-token\n")
    assert resolve_token(None, db) == "db-token"
    monkeypatch.setenv(TOKEN_ENV, " env-token ")
    assert resolve_token(None, db) == "env-token"
    f = tmp_path / "tok"
    f.write_text("file-token\n")
    assert resolve_token(f, db) == "file-token"


def test_resolve_token_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(EcacError, match="does not exist"):
        resolve_token(tmp_path / "missing", None)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(EcacError, match="is empty"):
        resolve_token(tmp_path / "empty", None)
    (tmp_path / "big").write_bytes(b"a" * 5000)
    with pytest.raises(EcacError, match="not a token file"):
        resolve_token(tmp_path / "big", None)
    with pytest.raises(EcacError, match="is a directory"):
        resolve_token(tmp_path, None)
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(EcacError, match="not a token"):
        resolve_token(tmp_path / "two", None)
    monkeypatch.setenv(TOKEN_ENV, "x\x01y")
    with pytest.raises(EcacError, match=f"{TOKEN_ENV}: not a token"):
        resolve_token(None, None)
