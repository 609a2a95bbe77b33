"""The node's control API: a tiny hand-written HTTP/1.1 JSON server on trio, plus its urllib client.

Loopback only (the API can write ops): ``parse_control_addr`` refuses other hosts. One
request per connection (``Connection: close``); request line and headers at most 16 KiB,
JSON bodies at most 64 KiB, op uploads at most 32 MiB; errors are
``{"error": "<message>"}`` with 400, 404, 405, 413 or 500.

Endpoints (all JSON unless noted):

==========================  =====================================================================
``GET /status``             op/complete/pending/head counts, heads, watermark, state digest (and
                            how many ops it covers), peers, PeerId, listen addresses, counters
                            (task failures and restarts, writer queue, limiter usage, ...): read
                            from the writer's latest snapshot, never from the store
``GET /api/health``         ``{"ok": true, "version": …}``
``GET /api/state/digest``   ``{"digest": <first 8 bytes, hex>, "ops": <complete ops>}`` (spec §6 tooling)
``GET /api/node/peers``     ``{"peers": [{"peer_id", "connected"}], "networking_enabled": true}``
``POST /inject-demo-ops``   body ``{"count": N, "seed": S}``: N chained demo ops (``ecac.testing.demo_ops``)
``POST /append-ops``        body: a CBOR op log (``application/cbor``); ops are validated by the
                            store's ``put_many``: invalid ones are reported, never stored
``POST /peers``             body ``{"multiaddr": "…/p2p/<id>"}``: dial now, keep re-dialling
                            (also ``POST /api/node/peers``)
``POST /peers/block``       body ``{"peer_id": …, "seconds": S}``: exchange no ops or announces with
                            that peer for S seconds (0 lifts it): a partition on demand
==========================  =====================================================================
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ecac import __version__
from ecac.core.errors import EcacError
from ecac.net.api import NodeApi

log = logging.getLogger("ecac.control")

MAX_HEAD = 16 * 1024
MAX_JSON_BODY = 64 * 1024
MAX_OPS_BODY = 32 * 1024 * 1024
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


# --------------------------------------------------------------------------- addresses


def parse_control_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback host; port 0 picks a free one."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise EcacError(f"control address {text!r} must be HOST:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep:
            raise EcacError(f"control address {text!r} must be HOST:PORT")
    try:
        port = int(port_s)
    except ValueError:
        raise EcacError(f"control address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise EcacError(f"control address {text!r}: port must be 0-65535")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise EcacError(
                f"control address {text!r}: the control API only listens on loopback "
                "(127.0.0.1, ::1 or localhost) because it can write ops"
            )
    return host, port


# --------------------------------------------------------------------------- server


class HttpError(Exception):
    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            obj = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"body is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise HttpError(400, "body must be a JSON object")
        return obj


Handler = Callable[[NodeApi, Request], Awaitable[tuple[int, Any]]]


async def read_request(stream: trio.abc.ReceiveStream) -> Request:
    """Parse one request: request line, headers, ``Content-Length`` body (bounded sizes)."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise HttpError(413, f"request line and headers exceed {MAX_HEAD} bytes")
        data = await stream.receive_some(65536)
        if not data:
            raise HttpError(400, "connection closed before the end of the headers")
        buf += data
    if end > MAX_HEAD:
        raise HttpError(413, f"request line and headers exceed {MAX_HEAD} bytes")
    try:
        head = bytes(buf[:end]).decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, "undecodable headers") from None
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(400, "chunked bodies are not supported; send Content-Length")
    path = target.split("?", 1)[0]
    limit = MAX_OPS_BODY if path == "/append-ops" else MAX_JSON_BODY
    raw_len = headers.get("content-length", "0")
    if not raw_len.isdigit():
        raise HttpError(400, f"bad Content-Length {raw_len[:40]!r}")
    length = int(raw_len)
    if length > limit:
        raise HttpError(413, f"body of {length} bytes exceeds the {limit}-byte limit of {path}")
    body = bytearray(buf[end + 4 :])
    while len(body) < length:
        data = await stream.receive_some(min(1 << 20, length - len(body)))
        if not data:
            raise HttpError(400, "connection closed before the end of the body")
        body += data
    if len(body) > length:
        raise HttpError(400, "more bytes than Content-Length (pipelining is not supported)")
    return Request(method.upper(), path, headers, bytes(body))


def render_response(status: int, payload: Any, allow: str | None = None) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        head.append(f"Allow: {allow}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def open_control_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on ``host:port`` (an ``EcacError`` naming the address when that fails)."""
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as e:
        raise EcacError(f"cannot listen for the control API on {host}:{port}: {e.strerror or e}") from None


async def serve_control_listeners(node: NodeApi, listeners: list[trio.SocketListener]) -> None:
    """Serve the control API on open ``listeners`` (at most ``MAX_CONNECTIONS`` at a time)."""
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    name = listeners[0].socket.getsockname()
    log.info("control API on http://%s:%d", name[0], name[1])

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            await _handle(node, stream)

    await trio.serve_listeners(handle, listeners)


async def _handle(node: NodeApi, stream: trio.SocketStream) -> None:
    allow = None
    try:
        try:
            with trio.fail_after(READ_TIMEOUT):
                req = await read_request(stream)
            status, payload = await dispatch(node, req)
        except HttpError as e:
            status, payload, allow = e.status, {"error": e.message}, e.allow
        except trio.TooSlowError:
            status, payload = 400, {"error": f"request not received within {READ_TIMEOUT:g} s"}
        except EcacError as e:
            status, payload = 400, {"error": str(e)}
        except Exception as e:  # a bug must not take the node down
            log.exception("control request failed")
            status, payload = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        with trio.move_on_after(READ_TIMEOUT):
            await stream.send_all(render_response(status, payload, allow))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def dispatch(node: NodeApi, req: Request) -> tuple[int, Any]:
    methods = ROUTES.get(req.path)
    if methods is None:
        raise HttpError(404, f"no endpoint {req.path}")
    handler = methods.get(req.method)
    if handler is None:
        raise HttpError(405, f"{req.method} not allowed on {req.path}", allow=", ".join(sorted(methods)))
    return await handler(node, req)


# --------------------------------------------------------------------------- endpoints


async def _status(node: NodeApi, req: Request) -> tuple[int, Any]:
    return 200, node.status()


async def _health(node: NodeApi, req: Request) -> tuple[int, Any]:
    return 200, {"ok": True, "version": __version__}


async def _digest(node: NodeApi, req: Request) -> tuple[int, Any]:
    digest, ops = node.digest_info()
    return 200, {"digest": digest[:8].hex(), "ops": ops}


async def _peers(node: NodeApi, req: Request) -> tuple[int, Any]:
    connected = set(node.connected_peers())
    return 200, {
        "peers": [{"peer_id": p, "connected": p in connected} for p in node.known_peers()],
        "networking_enabled": True,
    }


def _int_field(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if type(v) is not int:
        raise HttpError(400, f'"{name}" must be an integer')
    return v


async def _inject(node: NodeApi, req: Request) -> tuple[int, Any]:
    from ecac.testing.demo_ops import check_demo_args, demo_ops_for

    obj = req.json()
    count, seed = _int_field(obj, "count"), _int_field(obj, "seed")
    check_demo_args(count, seed)
    done = await node.write_local(lambda store: demo_ops_for(store, count, seed))  # on the writer thread
    ops = done.ops
    return 200, {
        "ok": True,
        "count": len(ops),
        "stored": len(done.result.stored),
        "op_ids": [ops[0].op_id.hex(), ops[-1].op_id.hex()],
        "op_count": done.snapshot.op_count,
    }


async def _append(node: NodeApi, req: Request) -> tuple[int, Any]:
    from ecac.core.opcodec import read_log
    from ecac.testing.demo_ops import check_frame

    if not req.body:
        raise HttpError(400, "empty body: send a CBOR op log")
    ops = await trio.to_thread.run_sync(read_log, req.body, "request body", limiter=node.decode_limiter)
    rejected: list[dict[str, Any]] = []
    ok_ops = []
    for i, op in enumerate(ops):
        try:
            check_frame(op)
        except EcacError as e:
            rejected.append({"index": i, "op_id": op.op_id.hex(), "error": str(e)})
            continue
        ok_ops.append((i, op))
    done = await node.append_local([op for _, op in ok_ops])
    result = done.result
    for r in result.rejected:
        i, op = ok_ops[r.index]
        rejected.append({"index": i, "op_id": op.op_id.hex(), "error": r.message})
    rejected.sort(key=lambda r: r["index"])
    if rejected:
        log.warning(
            "append-ops: %d of %d ops rejected (first: %s)", len(rejected), len(ops), rejected[0]["error"]
        )
    return 200, {
        "ok": not rejected,
        "received": len(ops),
        "stored": len(result.stored),
        "duplicates": result.duplicates,
        "rejected": rejected,
        "op_count": done.snapshot.op_count,
    }


async def _add_peer(node: NodeApi, req: Request) -> tuple[int, Any]:
    from ecac.net.host import DialError

    addr = req.json().get("multiaddr")
    if not isinstance(addr, str) or not addr:
        raise HttpError(400, '"multiaddr" must be a non-empty string')
    try:
        peer = await node.dial_now(addr)
    except ValueError as e:
        raise HttpError(400, f"Invalid multiaddr: {e}") from None
    except DialError as e:
        raise HttpError(400, str(e)) from None
    return 200, {"ok": True, "peer_id": peer}


async def _block_peer(node: NodeApi, req: Request) -> tuple[int, Any]:
    obj = req.json()
    peer, seconds = obj.get("peer_id"), obj.get("seconds")
    if not isinstance(peer, str) or not peer:
        raise HttpError(400, '"peer_id" must be a non-empty string')
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 86_400:
        raise HttpError(400, '"seconds" must be a number between 0 and 86400')
    node.block_peer(peer, float(seconds))
    return 200, {"ok": True, "peer_id": peer, "seconds": seconds}


ROUTES: dict[str, dict[str, Handler]] = {
    "/status": {"GET": _status},
    "/api/health": {"GET": _health},
    "/api/state/digest": {"GET": _digest},
    "/api/node/peers": {"GET": _peers, "POST": _add_peer},
    "/peers": {"GET": _peers, "POST": _add_peer},
    "/peers/block": {"POST": _block_peer},
    "/inject-demo-ops": {"POST": _inject},
    "/append-ops": {"POST": _append},
}


# --------------------------------------------------------------------------- client (urllib)


class ControlClient:
    """Blocking client of the control API; every failure is an ``EcacError`` naming the URL."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        u = url.strip().rstrip("/")
        if "://" not in u:
            u = "http://" + u
        if not u.startswith("http://"):
            raise EcacError(f"node URL {url!r} must be http://HOST:PORT")
        self.url = u
        self.timeout = timeout

    def _call(self, method: str, path: str, body: bytes | None, content_type: str) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", "")
            except Exception:
                msg = e.reason
            raise EcacError(f"node at {self.url} answered {e.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EcacError(f"cannot reach node at {self.url}: {reason}") from None
        try:
            return json.loads(data)
        except ValueError:
            raise EcacError(f"node at {self.url} sent a non-JSON answer") from None

    def get(self, path: str) -> Any:
        return self._call("GET", path, None, "")

    def post_json(self, path: str, obj: Any) -> Any:
        return self._call("POST", path, json.dumps(obj).encode(), "application/json")

    def post_bytes(self, path: str, data: bytes) -> Any:
        return self._call("POST", path, data, "application/cbor")

    def status(self) -> dict[str, Any]:
        return self.get("/status")

    def inject(self, count: int, seed: int) -> dict[str, Any]:
        return self.post_json("/inject-demo-ops", {"count": count, "seed": seed})

    def append_ops(self, log_bytes: bytes) -> dict[str, Any]:
        return self.post_bytes("/append-ops", log_bytes)

    def add_peer(self, multiaddr: str) -> dict[str, Any]:
        return self.post_json("/peers", {"multiaddr": multiaddr})

    def block_peer(self, peer_id: str, seconds: float) -> dict[str, Any]:
        return self.post_json("/peers/block", {"peer_id": peer_id, "seconds": seconds})
