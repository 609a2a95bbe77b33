"""The node's HTTP gateway: the routes of store §3.5, the operator endpoints and the dashboard.

Served by ``ecac node --control HOST:PORT`` and ``ecac serve --listen HOST:PORT`` on the
server of ``ecac.net.http`` (h11 under trio). docs/gateway.md lists every endpoint; in short:

* reads (``GET``): ``/status``, ``/api/health``, ``/api/node``, ``/api/state[/obj[/field]]``,
  ``/api/state/digest``, ``/api/ops[?limit=N]``, ``/api/ops/<id>``, ``/api/trust``,
  ``/api/node/peers``, ``/api/heads``, ``/api/access[?now_ms=N]``, ``/api/explain[/<id>]``,
  ``/api/view/state[/obj[/field]]``, ``/api/peers``, ``/api/events`` (SSE), ``/peers``;
* writes (``POST``, token required): ``/api/data``, ``/api/submit``, ``/api/node/peers``,
  ``/peers``, ``/peers/block``, ``/inject-demo-ops``, ``/append-ops``;
* anything else: the dashboard's static files (``ecac/net/dashboard``), else 404.

Safety (before a body is read, ``Gateway.admit``): the ``Host`` must be a loopback name
unless ``--allow-remote`` (DNS rebinding, 421); an ``Origin`` must be the same origin (403);
POST bodies must be ``application/json`` (``/append-ops``: ``application/cbor``; 415); every
POST needs ``Authorization: Bearer <token>`` (with ``--allow-remote`` every API request;
401); bodies have per-route limits (413). The token is 64 random hex characters written to
``<db>/control.token`` (0600) at every start.

Every document that depends on the log (state, ops, trust, access, explain, views) comes
from the node's replayed DAG and state (``DigestTracker.view``): computed in the digest
thread, JSON-encoded there, cached per digest version. A read first waits briefly until
the digest covers the latest commit, so a client reads its own writes.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from ecac import __version__
from ecac.core import access
from ecac.core.errors import DecodeError, EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import parse_hex
from ecac.core.op import Data, Op, make_op
from ecac.core.opcodec import decode_op, read_log
from ecac.core.policyops import data_key
from ecac.core.resources import SET_FIELD
from ecac.net.api import NodeApi
from ecac.net.digest import DigestState, DigestUpdate
from ecac.net.http import (
    HttpError,
    HttpServer,
    Limits,
    Request,
    Response,
    Send,
    StreamResponse,
    error_response,
    json_response,
    parse_json,
)
from ecac.store.memory import IndexedOpStore

log = logging.getLogger("ecac.gateway")

TOKEN_FILE_NAME = "control.token"
MAX_JSON_BODY = 64 * 1024
MAX_SUBMIT_BODY = 1024 * 1024
MAX_OPS_BODY = 32 * 1024 * 1024
#: ``POST /inject-demo-ops`` makes at most this many ops per request (issue 10: bounded work)
MAX_INJECT = 10_000
MAX_SUBMIT_OPS = 1000
OPS_LIMIT_MAX = 1000
#: how long a read waits for the digest to cover the latest commit before answering anyway
VIEW_WAIT = 5.0
#: SSE: subscribers, events buffered per subscriber, keep-alive comment period
MAX_SUBSCRIBERS = 16
EVENT_BUFFER = 256
PING_PERIOD = 15.0
PEERS_POLL = 0.5
DASHBOARD_DIR = Path(__file__).with_name("dashboard")
MAX_STATIC_FILE = 4 * 1024 * 1024
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_LOOPBACK_NAMES = ("localhost",)


# --------------------------------------------------------------------------- addresses and tokens


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``; IPv6 with or without brackets)."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in _LOOPBACK_NAMES or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_control_addr(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); loopback only unless ``allow_remote``; port 0 = any free."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise EcacError(f"control address {text!r} must be HOST:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host:
            raise EcacError(f"control address {text!r} must be HOST:PORT")
    try:
        port = int(port_s)
    except ValueError:
        raise EcacError(f"control address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise EcacError(f"control address {text!r}: port must be 0-65535")
    if not allow_remote and not is_loopback_host(host):
        raise EcacError(
            f"control address {text!r}: the gateway only listens on loopback (127.0.0.1, ::1 or "
            "localhost) because it can write ops; add --allow-remote to listen elsewhere (every "
            "request then needs the token)"
        )
    return host, port


def new_token() -> str:
    """A fresh gateway token: 64 hex characters from the OS CSPRNG."""
    return secrets.token_hex(32)


def write_token_file(db: Path, token: str) -> Path:
    """Write ``<db>/control.token`` (mode 0600), replacing an older one atomically."""
    path = db / TOKEN_FILE_NAME
    tmp = db / f".{TOKEN_FILE_NAME}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, token.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise EcacError(f"cannot write the gateway token file {path}: {e.strerror or e}") from None
    return path


async def open_gateway_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on ``host:port`` (an ``EcacError`` naming the address when that fails, e.g. a busy port)."""
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as e:
        raise EcacError(f"cannot listen for the gateway on {host}:{port}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway serves besides the node: token, write settings, labels."""

    token: str
    db_path: str
    write_key: SigningKey
    allow_writes: bool = False
    allow_remote: bool = False
    site_name: str | None = None
    networking: bool = True
    static_dir: Path = DASHBOARD_DIR


# --------------------------------------------------------------------------- the event stream


class _Subscriber:
    def __init__(self) -> None:
        self.items: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.lost = 0
        self.wake = trio.Event()

    def push(self, event: str, data: dict[str, Any]) -> None:
        if event == "snapshot" and self.items and self.items[-1][0] == "snapshot":
            self.items[-1] = (event, data)  # coalesced: only the newest snapshot matters
        elif len(self.items) >= EVENT_BUFFER:
            self.lost += 1
        else:
            self.items.append((event, data))
        self.wake.set()

    def take(self) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        items, lost = list(self.items), self.lost
        self.items.clear()
        self.lost = 0
        self.wake = trio.Event()
        return items, lost


class EventHub:
    """Fan-out of gateway events to at most ``MAX_SUBSCRIBERS`` bounded subscriber buffers."""

    def __init__(self) -> None:
        self.subs: set[_Subscriber] = set()
        self.published = 0

    def subscribe(self) -> _Subscriber:
        if len(self.subs) >= MAX_SUBSCRIBERS:
            raise HttpError(503, f"at most {MAX_SUBSCRIBERS} event-stream subscribers; close one and retry")
        sub = _Subscriber()
        self.subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self.subs.discard(sub)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.published += 1
        for sub in self.subs:
            sub.push(event, data)

    def publish_many(self, items: Sequence[tuple[str, dict[str, Any]]], skipped: int = 0) -> None:
        for sub in self.subs:
            sub.lost += skipped
            for event, data in items:
                sub.push(event, data)


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event (the JSON has no newline, so one ``data:`` line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --------------------------------------------------------------------------- cached documents


@dataclass(frozen=True, slots=True)
class Doc:
    """A view and its JSON bytes (encoded once, in the digest thread)."""

    value: Any
    body: bytes


def _doc(value: Any) -> Doc:
    return Doc(value, json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _api_state(st: DigestState) -> Doc:
    return _doc(access.api_state(st.replayer.state, st.digest))


def _view_state(st: DigestState) -> tuple[access.StateView, Doc]:
    view = access.state_view(st.replayer.state, st.digest)
    return view, _doc(view.to_obj())


def _explanation(st: DigestState) -> tuple[access.Explanation, Doc]:
    ex = access.explain_order(st.order)
    return ex, _doc(ex.to_obj())


def _trust(st: DigestState) -> Doc:
    report = access.access_report(st.order, None)
    return _doc(
        {
            "issuers": [
                {
                    "issuer_id": iss.issuer_id,
                    "keys": [
                        {
                            "key_id": k.key_id,
                            "algo": k.algo,
                            "pubkey": k.pubkey.hex(),
                            "valid_from_ms": k.valid_from_ms,
                            "valid_until_ms": k.valid_until_ms,
                            "revoked": k.revoked_at_ms is not None,
                        }
                        for k in iss.keys
                    ],
                }
                for iss in report.issuers  # sorted by issuer id, keys by key id (access._issuers)
            ]
        }
    )


def _raw(body: bytes) -> Response:
    return Response(200, body)


def _ok(obj: Any) -> Response:
    return json_response(200, obj)


def _wall_clock_ms() -> int:
    """HLC time of ops the gateway mints (``POST /api/data``: store §3.1, the wall clock)."""
    return time.time_ns() // 1_000_000


def _str_field(obj: dict[str, Any], name: str, *, empty: bool = False) -> str:
    v = obj.get(name)
    if not isinstance(v, str) or (not empty and not v):
        raise HttpError(400, f'"{name}" must be a {"" if empty else "non-empty "}string')
    return v


def _int_field(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if type(v) is not int:
        raise HttpError(400, f'"{name}" must be an integer')
    return v


def _bool_field(obj: dict[str, Any], name: str) -> bool:
    v = obj.get(name, False)
    if type(v) is not bool:
        raise HttpError(400, f'"{name}" must be true or false')
    return v


def _object(req: Request) -> dict[str, Any]:
    obj = req.json()
    if not isinstance(obj, dict):
        raise HttpError(400, "body must be a JSON object")
    return obj


async def _object_off_loop(req: Request, limiter: trio.CapacityLimiter) -> dict[str, Any]:
    """``_object`` in a decode thread for bodies larger than a small JSON body (``/api/submit``)."""
    if len(req.body) <= MAX_JSON_BODY:
        return _object(req)
    obj = await trio.to_thread.run_sync(parse_json, req.body, limiter=limiter)
    if not isinstance(obj, dict):
        raise HttpError(400, "body must be a JSON object")
    return obj


def _op_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError as e:
        raise HttpError(400, f"Invalid op_id hex: {e}") from None
    if len(raw) != 32:
        raise HttpError(400, "op_id must be 32 bytes")
    return raw


# --------------------------------------------------------------------------- routes


Handler = Callable[["Gateway", Request, list[str]], Any]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # "*" matches one segment
    handler: Handler
    body: str = ""  # "", "json" or "cbor"
    limit: int = 0

    def match(self, segs: list[str]) -> list[str] | None:
        if len(segs) != len(self.pattern):
            return None
        params = []
        for p, s in zip(self.pattern, segs, strict=True):
            if p == "*":
                params.append(s)
            elif p != s:
                return None
        return params


class Gateway:
    """The gateway's ``App`` (``ecac.net.http``): admission checks, routes, views, events."""

    def __init__(self, node: NodeApi, config: GatewayConfig, hub: EventHub | None = None) -> None:
        self.node = node
        self.config = config
        self.hub = hub or EventHub()
        self.server: HttpServer | None = None
        self._expected_auth = f"Bearer {config.token}".encode()

    # ------------------------------------------------------------------ admission (head only)

    def _route(self, head: Request) -> tuple[Route | None, list[str]]:
        try:
            segs = head.segments()
        except UnicodeDecodeError:
            raise HttpError(400, "path is not UTF-8 after percent-decoding") from None
        allowed: list[str] = []
        for r in ROUTES:
            params = r.match(segs)
            if params is None:
                continue
            if r.method == head.method:
                return r, params
            allowed.append(r.method)
        if allowed:
            raise HttpError(
                405,
                f"{head.method} not allowed on {head.path}",
                (("Allow", ", ".join(sorted(set(allowed)))),),
            )
        return None, segs

    def admit(self, head: Request) -> int:
        cfg = self.config
        host = head.header("host")
        if host is None:
            if head.http_version != "1.0":
                raise HttpError(400, "missing Host header")
        elif not cfg.allow_remote and not is_loopback_host(_host_name(host)):
            raise HttpError(
                421,
                f"Host {host[:100]!r} is not served here: the gateway answers loopback names only "
                "(127.0.0.1, localhost, [::1]); use --allow-remote to serve other names",
            )
        origin = head.header("origin")
        if origin is not None and (
            host is None or origin.strip().lower() != f"http://{host.strip().lower()}"
        ):
            raise HttpError(403, f"cross-origin request refused (Origin {origin[:100]!r}, Host {host!r})")
        route, params = self._route(head)
        if route is None:
            if head.method != "GET" or (params and params[0] == "api"):
                raise HttpError(404, f"no endpoint {head.path}")
            return 0  # static files: no token, even with --allow-remote (a browser navigation sends none)
        if route.body:
            want = "application/json" if route.body == "json" else "application/cbor"
            ctype = (head.header("content-type") or "").split(";")[0].strip().lower()
            if ctype != want:
                raise HttpError(415, f"{head.path} takes Content-Type: {want} (got {ctype or 'none'!r})")
        if route.method == "POST" or cfg.allow_remote:
            got = (head.header("authorization") or "").strip().encode("latin-1")
            if not hmac.compare_digest(got, self._expected_auth):
                what = "missing" if not got else "wrong"
                raise HttpError(
                    401,
                    f"missing or wrong token: {what} Authorization: Bearer <token> "
                    f"(the node writes it to <db>/{TOKEN_FILE_NAME} at start)",
                    (("WWW-Authenticate", 'Bearer realm="ecac"'),),
                )
        return route.limit

    async def handle(self, req: Request) -> Response | StreamResponse:
        route, params = self._route(req)
        if route is None:
            return self._static(params)
        result = await route.handler(self, req, params)
        if isinstance(result, Response | StreamResponse):
            return result
        return _ok(result)

    # ------------------------------------------------------------------ views

    async def _view(self, key: Any, compute: Callable[[DigestState], Any]) -> Any:
        tracker = self.node.digest
        snap = self.node.snapshot()
        await tracker.wait_covering(snap.complete_count, VIEW_WAIT)
        if not tracker.ready:
            raise HttpError(503, "the node is still loading its store; retry in a moment")
        return await tracker.view(key, compute)

    # ------------------------------------------------------------------ static files

    def _static(self, segs: list[str]) -> Response:
        parts = [s for s in segs if s != ""]
        if not parts:
            parts = ["index.html"]
        for p in parts:
            if p.startswith(".") or "/" in p or "\\" in p or "\x00" in p:
                return error_response(404, "Not Found")
        root = self.config.static_dir.resolve()
        path = root.joinpath(*parts)
        try:
            resolved = path.resolve()
            if root not in resolved.parents or not resolved.is_file():
                return error_response(404, "Not Found")
            if resolved.stat().st_size > MAX_STATIC_FILE:
                return error_response(404, "Not Found")
            data = resolved.read_bytes()
        except OSError:
            return error_response(404, "Not Found")
        ctype = STATIC_TYPES.get(resolved.suffix.lower(), "application/octet-stream")
        headers: tuple[tuple[str, str], ...] = (("Referrer-Policy", "no-referrer"),)
        if ctype.startswith("text/html"):
            headers += (("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"))
        return Response(200, data, ctype, headers)

    # ------------------------------------------------------------------ events

    def on_digest(self, update: DigestUpdate) -> None:
        """The digest tracker's listener: a ``snapshot`` event, then an ``op`` event per new op."""
        if not self.hub.subs:
            return
        self.hub.publish("snapshot", self._snapshot_event(update.digest, update.ops_count))
        ops = update.new_ops
        skipped = max(0, len(ops) - EVENT_BUFFER)
        items = []
        for op in ops[skipped:]:
            v = update.verdicts.get(op.op_id)
            items.append(
                (
                    "op",
                    {
                        "op_id": op.op_id.hex(),
                        "kind": op.payload.NAME,
                        "author": op.author_pk.hex(),
                        "decision": None if v is None else {"verdict": v[0], "reason": v[1]},
                    },
                )
            )
        self.hub.publish_many(items, skipped)

    def _snapshot_event(self, digest: bytes | None = None, ops: int | None = None) -> dict[str, Any]:
        snap = self.node.snapshot()
        if digest is None or ops is None:
            digest, ops = self.node.digest_info()
        return {
            "seq": snap.seq,
            "op_count": ops,
            "digest": digest.hex(),
            "heads": [h.hex() for h in snap.top_heads(8)],
        }

    def _peers_doc(self) -> dict[str, Any]:
        snap = self.node.snapshot()
        digest, _ = self.node.digest_info()
        return {
            "peers": [p.to_obj() for p in self.node.peer_infos()],
            "self": {"peer_id": self.node.peer_id, "digest": digest.hex(), "op_count": snap.complete_count},
        }

    async def watch_peers(self) -> None:
        """Publish a ``peers`` event whenever the set of connected peers changes (polled)."""
        last: list[str] | None = None
        while True:
            now = sorted(self.node.connected_peers())
            if now != last:
                if last is not None:
                    self.hub.publish("peers", self._peers_doc())
                last = now
            await trio.sleep(PEERS_POLL)

    async def _events(self, req: Request, params: list[str]) -> StreamResponse:
        sub = self.hub.subscribe()

        async def produce(send: Send) -> None:
            await send(b"retry: 2000\n\n")
            await send(sse("snapshot", self._snapshot_event()))
            await send(sse("peers", self._peers_doc()))
            while True:
                with trio.move_on_after(PING_PERIOD):
                    await sub.wake.wait()
                items, lost = sub.take()
                if not items and not lost:
                    await send(b": ping\n\n")
                    continue
                out = [sse("lag", {"lost": lost})] if lost else []
                out += [sse(ev, data) for ev, data in items]
                await send(b"".join(out))

        return StreamResponse(produce, cleanup=lambda: self.hub.unsubscribe(sub))

    # ------------------------------------------------------------------ handlers: node

    async def _status(self, req: Request, params: list[str]) -> Any:
        doc = self.node.status()
        if self.server is not None:
            doc["gateway"] = {**self.server.stats.as_dict(), "event_subscribers": len(self.hub.subs)}
        return doc

    async def _health(self, req: Request, params: list[str]) -> Any:
        return {"ok": True, "version": __version__}

    async def _node(self, req: Request, params: list[str]) -> Any:
        snap = self.node.snapshot()
        await self.node.digest.wait_covering(snap.complete_count, VIEW_WAIT)
        digest, _ = self.node.digest_info()
        doc: dict[str, Any] = {
            "site_name": self.config.site_name,
            "op_count": snap.complete_count,
            "head_count": min(8, snap.head_count),
            "state_digest": digest.hex(),
            "db_path": self.config.db_path,
            "allow_writes": self.config.allow_writes,
            "peer_id": self.node.peer_id,
        }
        if self.config.networking and self.node.listen_addrs:
            doc["libp2p_listen"] = self.node.listen_addrs[0]
        return doc

    async def _digest(self, req: Request, params: list[str]) -> Any:
        digest, ops = self.node.digest_info()
        return {"digest": digest[:8].hex(), "ops": ops}

    async def _heads(self, req: Request, params: list[str]) -> Any:
        return {"heads": [h.hex() for h in self.node.snapshot().top_heads(8)]}

    async def _node_peers(self, req: Request, params: list[str]) -> Any:
        connected = set(self.node.connected_peers())
        return {
            "peers": [{"peer_id": p, "connected": p in connected} for p in self.node.known_peers()],
            "networking_enabled": self.config.networking,
        }

    async def _peers(self, req: Request, params: list[str]) -> Any:
        return self._peers_doc()

    # ------------------------------------------------------------------ handlers: views

    async def _state(self, req: Request, params: list[str]) -> Any:
        doc: Doc = await self._view("api_state", _api_state)
        if not params:
            return _raw(doc.body)
        objects = doc.value["objects"]
        obj = params[0]
        if obj not in objects:
            raise HttpError(404, f"Object '{obj}' not found")
        if len(params) == 1:
            return objects[obj]
        field = params[1]
        if field not in objects[obj]:
            raise HttpError(404, f"Field '{obj}.{field}' not found")
        return objects[obj][field]

    async def _view_state(self, req: Request, params: list[str]) -> Any:
        view, doc = await self._view("view_state", _view_state)
        try:
            if not params:
                return _raw(doc.body)
            if len(params) == 1:
                return view.object_obj(params[0])
            return view.field_obj(params[0], params[1])
        except access.NotFoundError as e:
            raise HttpError(404, str(e)) from None

    async def _ops(self, req: Request, params: list[str]) -> Any:
        raw = req.query.get("limit", str(access.DEFAULT_OPS_LIMIT))
        if not raw.isdigit() or not 0 <= int(raw) <= OPS_LIMIT_MAX:
            raise HttpError(400, f"limit must be an integer between 0 and {OPS_LIMIT_MAX}")
        limit = int(raw)
        doc: Doc = await self._view(
            ("ops", limit), lambda st: _doc(access.ops_view(st.order, limit).to_obj())
        )
        return _raw(doc.body)

    async def _op(self, req: Request, params: list[str]) -> Any:
        op_id = _op_id(params[0])

        def find(st: DigestState) -> dict[str, Any] | None:
            op = st.dag.get(op_id)
            return None if op is None else access.OpView(op).to_obj()

        found = await self._view(("op", op_id), find)
        if found is None:
            raise HttpError(404, "Op not found")
        return found

    async def _trust_route(self, req: Request, params: list[str]) -> Any:
        doc: Doc = await self._view("trust", _trust)
        return _raw(doc.body)

    async def _access(self, req: Request, params: list[str]) -> Any:
        raw = req.query.get("now_ms")
        now: int | None = None
        if raw is not None:
            if not raw.isdigit() or len(raw) > 20:
                raise HttpError(400, "now_ms must be a non-negative integer (ms since the epoch)")
            now = int(raw)
        doc: Doc = await self._view(
            ("access", now), lambda st: _doc(access.access_report(st.order, now).to_obj())
        )
        return _raw(doc.body)

    async def _explain(self, req: Request, params: list[str]) -> Any:
        ex, doc = await self._view("explain", _explanation)
        if not params:
            return _raw(doc.body)
        try:
            return ex.find(params[0]).to_obj()
        except access.NotFoundError as e:
            raise HttpError(404, str(e)) from None

    # ------------------------------------------------------------------ handlers: writes

    async def _data(self, req: Request, params: list[str]) -> Any:
        obj = _object(req)
        o, f, v = _str_field(obj, "object"), _str_field(obj, "field"), _str_field(obj, "value", empty=True)
        if not self.config.allow_writes:
            return {"ok": False, "op_id": None, "error": "Write operations not enabled (use --allow-writes)"}
        sk = self.config.write_key
        payload = Data(data_key(SET_FIELD, o, f), v.encode("utf-8"))
        now = _wall_clock_ms()

        def build(store: IndexedOpStore) -> list[Op]:
            return [make_op(sk, store.heads(8), Hlc(now, 0, 0), payload)]

        done = await self.node.write_local(build)
        return {"ok": True, "op_id": done.ops[0].op_id.hex(), "error": None}

    async def _submit(self, req: Request, params: list[str]) -> Any:
        from ecac.testing.demo_ops import check_frame

        obj = await _object_off_loop(req, self.node.decode_limiter)
        hexes = obj.get("ops")
        if not isinstance(hexes, list) or not hexes or not all(isinstance(h, str) for h in hexes):
            raise HttpError(
                400, '"ops" must be a non-empty list of hex strings (one op\'s canonical CBOR each)'
            )
        if len(hexes) > MAX_SUBMIT_OPS:
            raise HttpError(413, f"at most {MAX_SUBMIT_OPS} ops per submission; split it")
        force, store_denied = _bool_field(obj, "force"), _bool_field(obj, "store_denied")

        def decode_all() -> list[Op]:
            out = []
            for i, h in enumerate(hexes):
                try:
                    op = decode_op(parse_hex(h, what=f"op {i}"))
                    check_frame(op)
                except DecodeError as e:
                    raise HttpError(400, f"op {i}: {e}") from None
                out.append(op)
            return out

        if len(req.body) > MAX_JSON_BODY:
            ops = await trio.to_thread.run_sync(decode_all, limiter=self.node.decode_limiter)
        else:
            ops = decode_all()
        tracker = self.node.digest
        outcome: list[tuple[access.Preview, bool]] = []

        def build(store: IndexedOpStore) -> list[Op]:
            # the log at commit time: the digest's order when it covers exactly the store's ops
            order: Sequence[Op] = tracker.state.order
            if len(order) != store.complete_count():
                order = list(store.iter_topo_ops())
            pv = access.preview(order, ops)
            # the rule of LocalTarget.submit (ecac.cli.access_cmds)
            keep = pv.storable(force=force, store_denied=store_denied)
            outcome.append((pv, keep))
            return ops if keep else []

        await self.node.write_local(build)
        pv, stored = outcome[0]
        return {"preview": pv.to_obj(), "stored": stored}

    async def _inject(self, req: Request, params: list[str]) -> Any:
        from ecac.testing.demo_ops import check_demo_args, demo_ops_for

        obj = _object(req)
        count, seed = _int_field(obj, "count"), _int_field(obj, "seed")
        if count > MAX_INJECT:
            raise HttpError(
                413,
                f"count {count} is over the {MAX_INJECT}-op limit of one request: send several requests "
                f"of at most {MAX_INJECT}, or use `ecac inject-demo-ops --db DIR` on a stopped node",
            )
        check_demo_args(count, seed)
        done = await self.node.write_local(lambda store: demo_ops_for(store, count, seed))  # writer thread
        ops = done.ops
        return {
            "ok": True,
            "count": len(ops),
            "stored": len(done.result.stored),
            "op_ids": [ops[0].op_id.hex(), ops[-1].op_id.hex()],
            "op_count": done.snapshot.op_count,
        }

    async def _append(self, req: Request, params: list[str]) -> Any:
        from ecac.testing.demo_ops import check_frame

        if not req.body:
            raise HttpError(400, "empty body: send a CBOR op log")

        def decode() -> tuple[list[Op], list[dict[str, Any]], list[tuple[int, Op]]]:
            ops = read_log(req.body, "request body")  # bounded decoding (ecac.core.codec.loads)
            rejected: list[dict[str, Any]] = []
            ok_ops = []
            for i, op in enumerate(ops):
                try:
                    check_frame(op)
                except EcacError as e:
                    rejected.append({"index": i, "op_id": op.op_id.hex(), "error": str(e)})
                    continue
                ok_ops.append((i, op))
            return ops, rejected, ok_ops

        ops, rejected, ok_ops = await trio.to_thread.run_sync(decode, limiter=self.node.decode_limiter)
        done = await self.node.append_local([op for _, op in ok_ops])
        result = done.result
        for r in result.rejected:
            i, op = ok_ops[r.index]
            rejected.append({"index": i, "op_id": op.op_id.hex(), "error": r.message})
        rejected.sort(key=lambda r: r["index"])
        if rejected:
            log.warning(
                "append-ops: %d of %d ops rejected (first: %s)", len(rejected), len(ops), rejected[0]["error"]
            )
        return {
            "ok": not rejected,
            "received": len(ops),
            "stored": len(result.stored),
            "duplicates": result.duplicates,
            "rejected": rejected,
            "op_count": done.snapshot.op_count,
        }

    async def _add_peer(self, req: Request, params: list[str]) -> Any:
        from ecac.net.host import DialError

        addr = _object(req).get("multiaddr")
        if not isinstance(addr, str) or not addr:
            raise HttpError(400, '"multiaddr" must be a non-empty string')
        if not self.config.networking:
            raise HttpError(503, "Networking not enabled")
        if "/p2p/" not in addr:
            raise HttpError(400, "Multiaddr must contain /p2p/<peer_id>")
        try:
            peer = await self.node.dial_now(addr)
        except ValueError as e:
            raise HttpError(400, f"Invalid multiaddr: {e}") from None
        except DialError as e:
            raise HttpError(400, str(e)) from None
        return {"ok": True, "peer_id": peer}

    async def _block_peer(self, req: Request, params: list[str]) -> Any:
        obj = _object(req)
        peer, seconds = obj.get("peer_id"), obj.get("seconds")
        if not isinstance(peer, str) or not peer:
            raise HttpError(400, '"peer_id" must be a non-empty string')
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 86_400:
            raise HttpError(400, '"seconds" must be a number between 0 and 86400')
        self.node.block_peer(peer, float(seconds))
        return {"ok": True, "peer_id": peer, "seconds": seconds}


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8080`` → ``[::1]``, ``a:1`` → ``a``)."""
    h = host.strip()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end >= 0 else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


G = Gateway
ROUTES: tuple[Route, ...] = (
    Route("GET", ("status",), G._status),
    Route("GET", ("api", "health"), G._health),
    Route("GET", ("api", "node"), G._node),
    Route("GET", ("api", "state"), G._state),
    Route("GET", ("api", "state", "digest"), G._digest),  # before /api/state/<obj>
    Route("GET", ("api", "state", "*"), G._state),
    Route("GET", ("api", "state", "*", "*"), G._state),
    Route("GET", ("api", "view", "state"), G._view_state),
    Route("GET", ("api", "view", "state", "*"), G._view_state),
    Route("GET", ("api", "view", "state", "*", "*"), G._view_state),
    Route("GET", ("api", "ops"), G._ops),
    Route("GET", ("api", "ops", "*"), G._op),
    Route("GET", ("api", "trust"), G._trust_route),
    Route("GET", ("api", "heads"), G._heads),
    Route("GET", ("api", "access"), G._access),
    Route("GET", ("api", "explain"), G._explain),
    Route("GET", ("api", "explain", "*"), G._explain),
    Route("GET", ("api", "peers"), G._peers),
    Route("GET", ("api", "events"), G._events),
    Route("GET", ("api", "node", "peers"), G._node_peers),
    Route("POST", ("api", "node", "peers"), G._add_peer, "json", MAX_JSON_BODY),
    Route("GET", ("peers",), G._node_peers),
    Route("POST", ("peers",), G._add_peer, "json", MAX_JSON_BODY),
    Route("POST", ("peers", "block"), G._block_peer, "json", MAX_JSON_BODY),
    Route("POST", ("api", "data"), G._data, "json", MAX_JSON_BODY),
    Route("POST", ("api", "submit"), G._submit, "json", MAX_SUBMIT_BODY),
    Route("POST", ("inject-demo-ops",), G._inject, "json", MAX_JSON_BODY),
    Route("POST", ("append-ops",), G._append, "cbor", MAX_OPS_BODY),
)


# --------------------------------------------------------------------------- serving


async def serve_gateway(
    gateway: Gateway, listeners: list[trio.SocketListener], limits: Limits | None = None
) -> None:
    """Serve ``gateway`` on open ``listeners`` until cancelled (plus its peers watcher)."""
    server = HttpServer(gateway, limits)
    gateway.server = server
    name = listeners[0].socket.getsockname()
    log.info("gateway on http://%s:%d", name[0], name[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.watch_peers)
        await server.serve(listeners)
