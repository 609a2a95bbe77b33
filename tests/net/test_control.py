"""Control API pieces without a node: address checks, request parsing, responses, routing."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from ecac.core.errors import EcacError
from ecac.net.control import (
    MAX_JSON_BODY,
    ControlClient,
    HttpError,
    Request,
    dispatch,
    parse_control_addr,
    read_request,
    render_response,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


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
        ("0.0.0.0:80", "loopback"),
        ("10.0.0.1:80", "loopback"),
        ("example.org:80", "loopback"),
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:x", "number"),
        ("127.0.0.1:70000", "0-65535"),
        ("[::1]9000", "HOST:PORT"),
    ],
)
def test_refused_addresses(text: str, message: str) -> None:
    with pytest.raises(EcacError, match=message):
        parse_control_addr(text)


async def parse(raw: bytes) -> Request:
    send, recv = trio.testing.memory_stream_pair()
    await send.send_all(raw)
    await send.aclose()
    return await read_request(recv)


async def test_parses_request_with_body_in_pieces() -> None:
    send, recv = trio.testing.memory_stream_pair()
    body = json.dumps({"count": 3, "seed": 1}).encode()
    raw = b"POST /inject-demo-ops?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            for i in range(0, len(raw), 7):
                await send.send_all(raw[i : i + 7])
                await trio.sleep(0)

        nursery.start_soon(feed)
        req = await read_request(recv)
    assert (req.method, req.path, req.headers["host"]) == ("POST", "/inject-demo-ops", "x")
    assert req.json() == {"count": 3, "seed": 1}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /status\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /peers HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_JSON_BODY + 1), 413),
        (b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 413),
        (b"POST /peers HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
        (b"GET /status HTTP/1.1\r\nHost: x", 400),
    ],
)
async def test_bad_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as e:
        await parse(raw)
    assert e.value.status == status


async def test_json_body_errors() -> None:
    req = Request("POST", "/peers", {}, b"[1]")
    with pytest.raises(HttpError, match="JSON object"):
        req.json()
    with pytest.raises(HttpError, match="not JSON"):
        Request("POST", "/peers", {}, b"{").json()


async def test_routing_errors() -> None:
    with pytest.raises(HttpError) as e:
        await dispatch(None, Request("GET", "/nope", {}, b""))  # type: ignore[arg-type]
    assert e.value.status == 404
    with pytest.raises(HttpError) as e:
        await dispatch(None, Request("DELETE", "/status", {}, b""))  # type: ignore[arg-type]
    assert (e.value.status, e.value.allow) == (405, "GET")


def test_render_response() -> None:
    out = render_response(405, {"error": "no"}, allow="GET, POST")
    head, body = out.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 405 Method Not Allowed",
        b"Content-Type: application/json",
        b"Content-Length: 14",
        b"Connection: close",
        b"Allow: GET, POST",
    ]
    assert json.loads(body) == {"error": "no"}


def test_client_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EcacError, match=f"cannot reach node at http://127.0.0.1:{port}"):
        ControlClient(f"127.0.0.1:{port}", timeout=2).status()
    with pytest.raises(EcacError, match="http://"):
        ControlClient("https://127.0.0.1:1")
