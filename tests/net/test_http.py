"""The gateway's HTTP mechanics (``ecac.net.http``) in-process: bounded JSON, keep-alive, limits,
timeouts, connection slots (idle eviction, busy refusal), streaming, failures of the app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from ecac.net.http import (
    MAX_JSON_DEPTH,
    HttpError,
    HttpServer,
    Limits,
    Request,
    Response,
    Send,
    StreamResponse,
    json_response,
    json_shape,
    parse_json,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


# --------------------------------------------------------------------------- bounded JSON


def test_parse_json_accepts_plain_utf8() -> None:
    assert parse_json('{"a": [1, "é", {"b": null}], "c": "[[[{{{"}'.encode()) == {
        "a": [1, "é", {"b": None}],
        "c": "[[[{{{",
    }
    assert parse_json(b'"a \\" [[[ "') == 'a " [[[ '


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"a": 1}'.encode("utf-16"), "UTF-16 byte-order mark"),
        ('{"a": 1}'.encode("utf-16-be"), "not JSON"),  # no BOM: NUL bytes, not JSON
        (b"\xfe\xff\x00{\x00}", "UTF-16 byte-order mark"),
        ('{"a": 1}'.encode("utf-32"), "UTF-32 byte-order mark"),
        (b"\xef\xbb\xbf{}", "UTF-8 byte-order mark"),
        (b'{"a": "\xe9"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, f"deeper than {MAX_JSON_DEPTH}"),
        (b'{"a":' * 33 + b"1" + b"}" * 33, "deeper than"),
        (b"[" + b"1," * 60_000 + b"1]", "more than"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": Infinity}', "not JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"{", "not JSON"),
        (b"1" * 5000, "not JSON"),  # past Python's int digit limit
    ],
)
def test_parse_json_refuses(body: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=message) as e:
        parse_json(body)
    assert e.value.status == 400


def test_json_shape_of_decoded_values() -> None:
    # the root object, its key, the list, [1, 2] and its two ints, {"b": …}, its key and value
    assert json_shape({"a": [[1, 2], {"b": "]]]]"}]}) == (3, 9)
    assert json_shape("[" * 100) == (0, 1)
    assert parse_json(b'{"a":' * 32 + b"1" + b"}" * 32) is not None


@pytest.mark.timeout(20)
def test_parse_json_is_linear_on_hostile_strings() -> None:
    """Unterminated strings full of escapes made a regular-expression pre-scan quadratic."""
    for body in (b'"\\' * 500_000, b'["' + b'\\"' * 300_000, b'"' * 1_000_000):
        with pytest.raises(HttpError):
            parse_json(body)


# --------------------------------------------------------------------------- a toy app over real sockets


class ToyApp:
    def __init__(self) -> None:
        self.release = trio.Event()
        self.stream_closed = trio.Event()
        self.busy = 0

    def admit(self, head: Request) -> int:
        if head.path == "/refuse":
            raise HttpError(403, "no")
        return 100 if head.path == "/small" else 10_000

    async def handle(self, req: Request) -> Response | StreamResponse:
        if req.path == "/echo":
            return json_response(
                200, {"method": req.method, "body": req.body.decode(), "query": dict(req.query)}
            )
        if req.path == "/block":
            self.busy += 1
            await self.release.wait()
            return json_response(200, {"released": True})
        if req.path == "/boom":
            raise RuntimeError("bug")
        if req.path == "/stream":

            async def produce(send: Send) -> None:
                await send(b"data: 1\n\n")
                await send(b"data: 2\n\n")
                await trio.sleep_forever()

            return StreamResponse(produce, cleanup=self.stream_closed.set)
        raise HttpError(404, "nothing here")


@asynccontextmanager
async def served(app: ToyApp, limits: Limits) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(app, limits)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, listeners)
        yield server, port
        nursery.cancel_scope.cancel()


async def read_response(
    stream: trio.SocketStream, buf: bytes = b""
) -> tuple[int, dict[str, str], Any, bytes]:
    """Read one Content-Length response (after ``buf``); returns (status, headers, json body, leftover)."""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    n = int(headers["content-length"])
    while len(rest) < n:
        rest += await stream.receive_some(65536)
    return int(lines[0].split()[1]), headers, json.loads(rest[:n]), rest[n:]


async def at_eof(stream: trio.SocketStream) -> bool:
    with trio.fail_after(5):
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_keep_alive_query_and_errors() -> None:
    app = ToyApp()
    async with served(app, Limits()) as (server, port):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        body = b"hello"
        await s.send_all(
            b"POST /echo?a=1&b=%C3%A9 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
            + body
            + GET % b"/nope"
        )
        status, _, doc, rest = await read_response(s)
        assert (status, doc) == (200, {"method": "POST", "body": "hello", "query": {"a": "1", "b": "é"}})
        status, _, doc, _ = await read_response(s, rest)  # the pipelined second answer
        assert (status, doc) == (404, {"error": "nothing here"})
        await s.send_all(GET % b"/boom")
        status, _, doc, _ = await read_response(s)
        assert status == 500 and "RuntimeError: bug" in doc["error"]
        await s.send_all(GET % b"/refuse")
        status, headers, doc, _ = await read_response(s)
        assert (status, doc, headers["connection"]) == (403, {"error": "no"}, "close")
        assert await at_eof(s)
        assert server.stats.requests == 4


async def test_body_and_head_limits() -> None:
    async with served(ToyApp(), Limits(max_head=1024)) as (_, port):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101)
        status, _, doc, _ = await read_response(s)
        assert status == 413 and "100-byte limit" in doc["error"]
        assert await at_eof(s)
        # chunked: the limit counts what arrives
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await s.send_all(b"80\r\n" + b"x" * 128 + b"\r\n0\r\n\r\n")
        status, _, doc, _ = await read_response(s)
        assert status == 413
        for trickle in (False, True):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            raw = b"GET /echo HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
            if trickle:
                for i in range(0, len(raw), 100):
                    await s.send_all(raw[i : i + 100])
            else:
                await s.send_all(raw)
            status, _, doc, _ = await read_response(s)
            assert status == 431, trickle
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"garbage\r\n\r\n")
        status, _, doc, _ = await read_response(s)
        assert status == 400 and "bad request" in doc["error"]


async def test_header_and_idle_timeouts() -> None:
    async with served(ToyApp(), Limits(header_timeout=0.2, idle_timeout=0.2)) as (server, port):
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        partial = await trio.open_tcp_stream("127.0.0.1", port)
        await partial.send_all(b"GET /echo HTTP/1.1\r\nHost")
        status, _, _, _ = await read_response(partial)
        assert status == 408
        assert await at_eof(silent)  # nothing sent: closed without an answer
        kept = await trio.open_tcp_stream("127.0.0.1", port)
        await kept.send_all(GET % b"/echo")
        assert (await read_response(kept))[0] == 200
        assert await at_eof(kept)  # idle after the answer
        assert server.stats.timeouts == 3


async def test_idle_connections_are_evicted_and_busy_ones_refused() -> None:
    app = ToyApp()
    async with served(app, Limits(max_connections=2)) as (server, port):
        idle1 = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.sleep(0.05)
        idle2 = await trio.open_tcp_stream("127.0.0.1", port)
        await idle2.send_all(b"GET /echo HTTP/1.1\r\n")  # half a head: still evictable
        await trio.sleep(0.05)
        honest = await trio.open_tcp_stream("127.0.0.1", port)
        await honest.send_all(GET % b"/echo")
        assert (await read_response(honest))[0] == 200
        assert await at_eof(idle1)  # the longest-waiting one went
        assert server.stats.evicted == 1
        # all slots busy with requests: a newcomer is refused at once
        b1 = await trio.open_tcp_stream("127.0.0.1", port)
        await b1.send_all(GET % b"/block")
        b2 = await trio.open_tcp_stream("127.0.0.1", port)
        await b2.send_all(GET % b"/block")
        while app.busy < 2:
            await trio.sleep(0.01)
        late = await trio.open_tcp_stream("127.0.0.1", port)
        status, _, doc, _ = await read_response(late)
        assert status == 503 and "too many connections" in doc["error"]
        app.release.set()
        assert (await read_response(b1))[2] == {"released": True}
        assert server.stats.refused == 1


async def test_stream_response_ends_when_the_client_goes() -> None:
    app = ToyApp()
    async with served(app, Limits()) as (server, port):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(GET % b"/stream")
        buf = b""
        while b"data: 2" not in buf:
            buf += await s.receive_some(65536)
        assert buf.startswith(b"HTTP/1.1 200") and b"text/event-stream" in buf
        assert b"transfer-encoding: chunked" in buf.lower()
        await s.aclose()
        with trio.fail_after(5):
            await app.stream_closed.wait()
        while server.stats.open:
            await trio.sleep(0.01)


async def test_bodies_in_flight_are_bounded_together() -> None:
    app = ToyApp()
    async with served(app, Limits(max_body_bytes=15_000)) as (_, port):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(
            b"POST /block HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10_000
        )
        while app.busy < 1:
            await trio.sleep(0.01)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        await second.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n" + b"y" * 9000)
        status, _, doc, _ = await read_response(second)
        assert status == 503 and "bodies in flight" in doc["error"]
        small = await trio.open_tcp_stream("127.0.0.1", port)
        await small.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert (await read_response(small))[2]["body"] == "abc"
        app.release.set()
        assert (await read_response(first))[0] == 200
