"""HTTP/1.1 server mechanics for the node's gateway: h11 under trio, with every bound enforced.

``serve_http(app, listeners)`` accepts connections and speaks HTTP through ``h11`` (no
hand-written parser). What the app decides is split in two so that nothing is read that will
be refused: ``app.admit(head)`` sees the request head (method, path, headers; empty body) and
returns the body limit of that route or raises ``HttpError`` (auth, Host/Origin, content type,
unknown route); only then is the body read, up to that limit, and ``app.handle(request)``
answers with a ``Response`` or a ``StreamResponse`` (Server-Sent Events).

Bounds (``Limits``):

* request head ≤ 16 KiB (h11's ``max_incomplete_event_size``; 431 beyond);
* the head must arrive within ``header_timeout`` of the connection (or of the previous
  response: the keep-alive idle timeout) or the connection is closed (408 when some bytes
  came); a body must arrive within ``body_timeout``; a send must finish within ``send_timeout``;
* at most ``max_connections`` connections. A new connection beyond the cap evicts the
  connection that has waited longest for a request head (idle keep-alive or a slow head:
  both cost the server nothing to drop); when every connection is busy with a request it is
  refused with 503. So idle connections (slowloris) can never lock honest clients out.

JSON bodies are decoded by ``parse_json``: UTF-8 only (a byte-order mark or any other
encoding is a 400), no NaN/Infinity, no duplicate keys, nesting depth ≤ 32 and a bounded item
count. The C decoder is linear in the input and stops deep nesting at the recursion limit, and
the route's body limit bounds what it can allocate (a small multiple of the body), so the
depth and count are checked on the decoded value; no regular expression ever scans the body.
Every error answer is ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

import h11
import trio

from ecac.core.errors import EcacError

log = logging.getLogger("ecac.http")

MAX_HEAD = 16 * 1024
MAX_CONNECTIONS = 64
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
SEND_TIMEOUT = 10.0
#: JSON nesting depth and item count (values + keys) accepted by ``parse_json``
MAX_JSON_DEPTH = 32
MAX_JSON_ITEMS = 50_000
RECEIVE_CHUNK = 65536
#: all request bodies in flight together (each route has its own, smaller limit)
MAX_BODY_BYTES = 96 * 1024 * 1024

_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's bounds (see the module docstring)."""

    max_head: int = MAX_HEAD
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    #: bytes of request bodies being received and handled at once, over all connections
    max_body_bytes: int = MAX_BODY_BYTES


class HttpError(Exception):
    """An answer other than 2xx: ``status`` and a message for ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Request:
    """One request: ``path`` is percent-decoded per segment by ``segments``; header names are lower case."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    http_version: str = "1.1"
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def segments(self) -> list[str]:
        """The path's segments, each percent-decoded (``/api/state/a%2Fb`` → ``["api", "state", "a/b"]``)."""
        return [unquote(s, errors="strict") for s in self.path.split("/")[1:]]

    def json(self) -> Any:
        """The body as JSON (``parse_json``); an empty body is ``{}``."""
        if not self.body:
            return {}
        return parse_json(self.body)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A 200 whose body ``produce(send)`` writes piece by piece (SSE) until it returns or the client goes."""

    produce: Callable[[Send], Awaitable[None]]
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()
    cleanup: Callable[[], None] | None = None  # always called once the stream ends (or never starts)


class App(Protocol):
    def admit(self, head: Request) -> int:
        """The body limit for this request head, or ``HttpError`` (refused before its body is read)."""
        ...

    async def handle(self, request: Request) -> Response | StreamResponse: ...


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": message}, headers)


# --------------------------------------------------------------------------- bounded JSON


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def json_shape(value: Any, max_depth: int = MAX_JSON_DEPTH) -> tuple[int, int]:
    """``(nesting depth, item count)`` of a decoded JSON value (values and keys), iteratively;
    stops counting depth past ``max_depth``."""
    depth = items = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        items += 1
        if isinstance(v, dict):
            d += 1
            items += len(v)
            children: Any = v.values()
        elif isinstance(v, list):
            d += 1
            children = v
        else:
            continue
        if d > depth:
            depth = d
            if depth > max_depth:
                break
        stack.extend((c, d) for c in children)
    return depth, items


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, max_items: int = MAX_JSON_ITEMS) -> Any:
    """Decode a JSON body, refusing (``HttpError`` 400) anything but bounded UTF-8 JSON."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            raise HttpError(400, f"body starts with a {name} byte-order mark: send UTF-8 JSON without a BOM")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, f"body is not UTF-8 (byte {e.start}): send UTF-8 JSON") from None
    try:
        value = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_pairs)
    except RecursionError:  # the C decoder counts its nesting against the recursion limit
        raise HttpError(400, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise HttpError(400, f"body is not JSON: {e}") from None
    depth, items = json_shape(value, max_depth)
    if depth > max_depth:
        raise HttpError(400, f"JSON nested deeper than {max_depth} levels")
    if items > max_items:
        raise HttpError(400, f"JSON with more than {max_items} items")
    return value


# --------------------------------------------------------------------------- connection slots


@dataclass(eq=False, slots=True)
class _Conn:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    waiting_since: float | None = 0.0  # waiting for a request head since (None: busy with a request)
    received: int = 0  # bytes received while waiting for the current head


@dataclass(slots=True)
class ServerStats:
    """What the server did (for ``/status``)."""

    connections: int = 0
    open: int = 0
    requests: int = 0
    evicted: int = 0
    refused: int = 0
    timeouts: int = 0
    protocol_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "open": self.open,
            "requests": self.requests,
            "evicted_idle": self.evicted,
            "refused_busy": self.refused,
            "timeouts": self.timeouts,
            "protocol_errors": self.protocol_errors,
        }


class _Slots:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.conns: set[_Conn] = set()

    def take(self, conn: _Conn, stats: ServerStats) -> bool:
        """Admit ``conn``; at the cap evict the longest-waiting idle connection, or refuse (False)."""
        if len(self.conns) >= self.cap:
            idle = [c for c in self.conns if c.waiting_since is not None]
            if not idle:
                stats.refused += 1
                return False
            victim = min(idle, key=lambda c: c.waiting_since or 0.0)
            victim.scope.cancel()
            self.conns.discard(victim)
            stats.evicted += 1
        self.conns.add(conn)
        return True

    def release(self, conn: _Conn) -> None:
        self.conns.discard(conn)


# --------------------------------------------------------------------------- the server


_REFUSED_BODY = b'{"error":"too many connections busy with requests; try again soon"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


class _Closed(Exception):
    """The connection is finished (peer gone, timeout, protocol error answered)."""


class HttpServer:
    """Serves one ``App`` on listeners (see the module docstring)."""

    def __init__(self, app: App, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.stats = ServerStats()
        self._slots = _Slots(self.limits.max_connections)
        self._body_bytes = 0  # reserved by requests receiving or handling a body

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        conn = _Conn(waiting_since=trio.current_time())
        try:
            if not self._slots.take(conn, self.stats):
                with trio.move_on_after(1.0):
                    await stream.send_all(_REFUSED)
                return
            self.stats.open += 1
            try:
                with conn.scope:
                    await self._serve_connection(stream, conn)
            finally:
                self.stats.open -= 1
                self._slots.release(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, _Closed):
            pass
        except Exception:  # a bug must not take the server down (the task would end serve_listeners)
            log.exception("gateway connection failed")
        finally:
            with trio.move_on_after(1.0) as cs:
                cs.shield = True
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream, conn: _Conn) -> None:
        lim = self.limits
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_head)
        first = True
        while True:
            conn.waiting_since = trio.current_time()
            deadline = conn.waiting_since + (lim.header_timeout if first else lim.idle_timeout)
            first = False
            before = len(h.trailing_data[0])
            conn.received = 0
            try:
                event = await self._next_event(h, stream, deadline, conn)
            except h11.RemoteProtocolError as e:
                self.stats.protocol_errors += 1
                await self._send_error_raw(h, stream, e.error_status_hint, f"bad request: {e}")
                await _linger(stream)
                return
            except trio.TooSlowError:
                self.stats.timeouts += 1
                if h.their_state is h11.SEND_BODY or _has_partial(h):
                    await self._send_error_raw(h, stream, 408, "request head not received in time")
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 yields a Request first
                return
            if before + conn.received - len(h.trailing_data[0]) > lim.max_head:  # arrived all at once
                self.stats.protocol_errors += 1
                too_big = _closing(error_response(431, f"request head exceeds {lim.max_head} bytes"))
                await self._send(h, stream, too_big)
                await _linger(stream)
                return
            conn.waiting_since = None
            self.stats.requests += 1
            resp = await self._one_request(h, stream, event)
            if isinstance(resp, StreamResponse):
                try:
                    await self._stream(h, stream, resp)
                finally:
                    if resp.cleanup is not None:
                        resp.cleanup()
                return
            keep = await self._send(h, stream, resp)
            if not keep or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                if h.their_state is h11.SEND_BODY:
                    await _linger(stream)  # a refused body: let the client read the answer first
                return
            h.start_next_cycle()

    async def _next_event(
        self, h: h11.Connection, stream: trio.SocketStream, deadline: float, conn: _Conn | None = None
    ) -> Any:
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_at(deadline):
                data = await stream.receive_some(RECEIVE_CHUNK)
            if conn is not None:
                conn.received += len(data)
            h.receive_data(data)

    async def _one_request(
        self, h: h11.Connection, stream: trio.SocketStream, ev: h11.Request
    ) -> Response | StreamResponse:
        try:
            head = _head_of(ev)
        except HttpError as e:
            return _closing(error_response(e.status, e.message, e.headers))
        try:
            limit = self.app.admit(head)
        except HttpError as e:
            return _closing(error_response(e.status, e.message, e.headers))
        except Exception as e:  # a bug must not take the node down
            log.exception("gateway admit failed")
            return _closing(error_response(500, f"internal error: {type(e).__name__}: {e}"))
        length = _content_length(ev)
        if length is not None and length > limit:
            return _closing(
                error_response(413, f"body of {length} bytes exceeds the {limit}-byte limit of {head.path}")
            )
        reserve = min(limit, length if length is not None else limit)
        if reserve and self._body_bytes + reserve > self.limits.max_body_bytes:
            self.stats.refused += 1
            return _closing(error_response(503, "too many request bodies in flight; try again soon"))
        self._body_bytes += reserve
        try:
            return await self._read_and_handle(h, stream, head, limit)
        finally:
            self._body_bytes -= reserve

    async def _read_and_handle(
        self, h: h11.Connection, stream: trio.SocketStream, head: Request, limit: int
    ) -> Response | StreamResponse:
        if h.they_are_waiting_for_100_continue:
            await self._send_bytes(stream, h.send(h11.InformationalResponse(status_code=100, headers=[])))
        try:
            body = await self._read_body(h, stream, limit, head.path)
        except HttpError as e:
            return _closing(error_response(e.status, e.message, e.headers))
        req = Request(head.method, head.target, head.path, head.query, head.headers, head.http_version, body)
        try:
            return await self.app.handle(req)
        except HttpError as e:
            return error_response(e.status, e.message, e.headers)
        except EcacError as e:
            return error_response(400, str(e))
        except Exception as e:  # a bug must not take the node down
            log.exception("gateway request %s %s failed", head.method, head.path)
            return error_response(500, f"internal error: {type(e).__name__}: {e}")

    async def _read_body(self, h: h11.Connection, stream: trio.SocketStream, limit: int, path: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        deadline = trio.current_time() + self.limits.body_timeout
        while True:
            try:
                event = await self._next_event(h, stream, deadline)
            except h11.RemoteProtocolError as e:
                self.stats.protocol_errors += 1
                raise HttpError(e.error_status_hint, f"bad request body: {e}") from None
            except trio.TooSlowError:
                self.stats.timeouts += 1
                raise HttpError(408, f"body not received within {self.limits.body_timeout:g} s") from None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise HttpError(413, f"body exceeds the {limit}-byte limit of {path}")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise _Closed()

    async def _send_bytes(self, stream: trio.SocketStream, data: bytes | None) -> None:
        if data:
            with trio.fail_after(self.limits.send_timeout):
                await stream.send_all(data)

    async def _send(self, h: h11.Connection, stream: trio.SocketStream, resp: Response) -> bool:
        """Send ``resp``; False when the connection must close afterwards."""
        headers = [
            ("Content-Type", resp.content_type),
            ("Content-Length", str(len(resp.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *resp.headers,
        ]
        if resp.close:
            headers.append(("Connection", "close"))
        try:
            await self._send_bytes(stream, h.send(h11.Response(status_code=resp.status, headers=headers)))
            await self._send_bytes(stream, h.send(h11.Data(data=resp.body)))
            await self._send_bytes(stream, h.send(h11.EndOfMessage()))
        except trio.TooSlowError:
            return False
        except h11.LocalProtocolError:  # pragma: no cover - e.g. a response to a HEAD with a body
            return False
        return not resp.close

    async def _send_error_raw(
        self, h: h11.Connection, stream: trio.SocketStream, status: int, msg: str
    ) -> None:
        if h.our_state is not h11.SEND_RESPONSE and h.our_state is not h11.IDLE:
            return
        try:
            await self._send(h, stream, _closing(error_response(status, msg)))
        except h11.LocalProtocolError:
            # h11 refuses to answer in some states (e.g. before any request): answer on the wire
            body = json.dumps({"error": msg}).encode()
            raw = (
                f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            with trio.move_on_after(1.0):
                await stream.send_all(raw)

    async def _stream(self, h: h11.Connection, stream: trio.SocketStream, resp: StreamResponse) -> None:
        headers = [
            ("Content-Type", resp.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
            *resp.headers,
        ]
        await self._send_bytes(stream, h.send(h11.Response(status_code=200, headers=headers)))

        async def send(data: bytes) -> None:
            await self._send_bytes(stream, h.send(h11.Data(data=data)))

        async with trio.open_nursery() as nursery:

            async def watch_eof() -> None:  # the client went away: stop producing
                try:
                    while await stream.receive_some(RECEIVE_CHUNK):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_eof)
            try:
                await resp.produce(send)
                await self._send_bytes(stream, h.send(h11.EndOfMessage()))
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()


#: after refusing a body: how long and how much of it to read and drop before closing
LINGER_SECONDS = 1.0
LINGER_BYTES = 8 * 1024 * 1024


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then drop what the client still sends (bounded), so closing with unread
    bytes does not reset the connection before the client has read our answer."""
    try:
        await stream.send_eof()
        dropped = 0
        with trio.move_on_after(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return
                dropped += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _closing(resp: Response) -> Response:
    return Response(resp.status, resp.body, resp.content_type, resp.headers, close=True)


def _has_partial(h: h11.Connection) -> bool:
    return bool(h.trailing_data[0])


def _content_length(ev: h11.Request) -> int | None:
    for name, value in ev.headers:
        if name == b"content-length":
            return int(value)
    return None


def _head_of(ev: h11.Request) -> Request:
    try:
        target = ev.target.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    path, _, qs = target.partition("?")
    if not path.startswith("/"):
        raise HttpError(400, f"request target {target[:100]!r} must be a path")
    try:
        query = dict(parse_qsl(qs, keep_blank_values=True, strict_parsing=False, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "bad query string") from None
    headers: dict[str, str] = {}
    for name, value in ev.headers:
        k = name.decode("latin-1")
        v = value.decode("latin-1")
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    return Request(ev.method.decode("ascii").upper(), target, path, query, headers, ev.http_version.decode())
