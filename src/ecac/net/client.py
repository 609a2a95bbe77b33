"""``GatewayClient``: the one blocking client of a node's HTTP gateway (``ecac node --control``).

Used by the CLI (``--node URL``), ``ecac.net.procs`` and the tests. Plain ``urllib`` (no trio,
no libp2p), so a CLI command that asks a node loads nothing heavy. Every failure is one
``EcacError`` that says what to do: the node is not running, the token is missing or wrong,
the URL is the node's libp2p port rather than its control address, the node is too slow.

The token of mutating requests (``Authorization: Bearer``) comes from ``resolve_token``:
``--token-file FILE``, else ``ECAC_CONTROL_TOKEN``, else ``<db>/control.token`` (the node
rewrites that file, mode 0600, at every start). The client never goes through an HTTP proxy
(the gateway is on loopback and the token must not leave the machine).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ecac.core.errors import EcacError

TOKEN_ENV = "ECAC_CONTROL_TOKEN"
TOKEN_FILE_NAME = "control.token"
#: a token file is 64 hex characters; anything much larger is not one (and is not read)
MAX_TOKEN_FILE_BYTES = 4096
#: the largest answer read (``/api/view/state`` of a big store is a few MB)
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
#: the largest error body read from a 4xx/5xx answer
MAX_ERROR_BYTES = 64 * 1024

_TOKEN_HINT = (
    f"give --token-file FILE (the node writes <db>/{TOKEN_FILE_NAME} at start), set {TOKEN_ENV}, "
    "or pass --db DIR of the node's store"
)
_NOT_HTTP = "does not speak HTTP: is it the node's libp2p port? use the --control address"

# never a proxy: the token must not travel anywhere but to the node
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GatewayError(EcacError):
    """The node answered with an HTTP error: ``status`` and the gateway's own ``detail`` (its
    ``{"error": …}``), so a caller can show a 404 exactly as the local command would."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def resolve_token(token_file: Path | None, db: Path | None) -> str | None:
    """The gateway token to send: ``--token-file FILE``, else ``ECAC_CONTROL_TOKEN``, else
    ``<db>/control.token`` when ``db`` is given and holds one, else None (reads only)."""
    if token_file is not None:
        return _read_token_file(token_file, required=True)
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        _check_token_text(env, TOKEN_ENV)
        return env
    if db is not None:
        return _read_token_file(db / TOKEN_FILE_NAME, required=False)
    return None


def _check_token_text(text: str, source: str) -> None:
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise EcacError(f"{source}: not a token (expected one line of printable ASCII, e.g. 64 hex chars)")


def _read_token_file(path: Path, *, required: bool) -> str | None:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise EcacError(f"token file {path} is a directory")
        if size > MAX_TOKEN_FILE_BYTES:
            raise EcacError(f"token file {path} is {size} bytes; not a token file")
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not required:
            return None
        raise EcacError(
            f"token file {path} does not exist (the node writes <db>/{TOKEN_FILE_NAME} when it starts)"
        ) from None
    except UnicodeDecodeError:
        raise EcacError(f"token file {path}: not a token (not ASCII text)") from None
    except OSError as e:
        raise EcacError(f"token file {path}: cannot read: {e.strerror or e}") from None
    if not text:
        raise EcacError(f"token file {path} is empty")
    _check_token_text(text, f"token file {path}")
    return text


def normalize_url(url: str) -> str:
    """``HOST:PORT`` or ``http://HOST:PORT[/]`` → ``http://HOST:PORT`` (https and paths are refused)."""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    parts = urllib.parse.urlsplit(u)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise EcacError(f"node URL {url!r} must be http://HOST:PORT (the node's --control address)")
    if parts.query or parts.fragment or parts.username is not None:
        raise EcacError(f"node URL {url!r} must be http://HOST:PORT (the node's --control address)")
    return f"http://{parts.netloc}"


class GatewayClient:
    """Blocking JSON client of a node's gateway; every failure is an ``EcacError`` naming the URL."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = normalize_url(url)
        self.token = token
        self.timeout = timeout

    # ------------------------------------------------------------------ transport

    def _call(self, method: str, path: str, body: bytes | None, content_type: str) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Accept", "application/json")
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                data = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._transport_error(e.reason) from None
        except (http.client.HTTPException, OSError) as e:
            raise self._transport_error(e) from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise EcacError(f"node at {self.url}: answer to {path} exceeds {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise EcacError(
                f"node at {self.url} sent a non-JSON answer to {path}: is it the node's --control address?"
            ) from None

    def _http_error(self, e: urllib.error.HTTPError) -> GatewayError:
        raw = b""
        with contextlib.suppress(OSError, http.client.HTTPException):
            raw = e.read(MAX_ERROR_BYTES)
        try:
            obj = json.loads(raw)
            msg = obj["error"] if isinstance(obj, dict) and isinstance(obj.get("error"), str) else None
        except (ValueError, UnicodeDecodeError):
            msg = None
        if msg is None:
            msg = str(e.reason) if e.reason else "(no error message)"
        msg = " ".join(msg.split())[:500]
        if e.code == 401:
            return GatewayError(f"node at {self.url} answered 401: {msg} ({_TOKEN_HINT})", e.code, msg)
        return GatewayError(f"node at {self.url} answered {e.code}: {msg}", e.code, msg)

    def _transport_error(self, reason: object) -> EcacError:
        if isinstance(reason, TimeoutError):
            return EcacError(f"node at {self.url} did not answer within {self.timeout:g} s")
        if isinstance(reason, ConnectionRefusedError):
            return EcacError(
                f"cannot reach node at {self.url}: connection refused (is `ecac node --control …` running?)"
            )
        if isinstance(reason, (http.client.BadStatusLine, http.client.RemoteDisconnected)):
            return EcacError(f"{self.url} {_NOT_HTTP}")  # libp2p answers multistream bytes or hangs up
        if isinstance(reason, ConnectionResetError):
            return EcacError(f"{self.url} reset the connection: is it the node's libp2p port? use --control")
        if isinstance(reason, http.client.HTTPException):
            return EcacError(f"{self.url} {_NOT_HTTP} ({type(reason).__name__})")
        if isinstance(reason, socket.gaierror):
            return EcacError(f"cannot reach node at {self.url}: unknown host ({reason.strerror or reason})")
        if isinstance(reason, OSError):
            return EcacError(f"cannot reach node at {self.url}: {reason.strerror or reason}")
        return EcacError(f"cannot reach node at {self.url}: {reason}")

    # ------------------------------------------------------------------ requests

    def get(self, path: str) -> Any:
        return self._call("GET", path, None, "")

    def post_json(self, path: str, obj: Any) -> Any:
        return self._call("POST", path, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def post_bytes(self, path: str, data: bytes) -> Any:
        return self._call("POST", path, data, "application/cbor")

    def status(self) -> dict[str, Any]:
        return self._obj(self.get("/status"), "/status")

    def peers(self) -> dict[str, Any]:
        return self._obj(self.get("/api/peers"), "/api/peers")

    def inject(self, count: int, seed: int) -> dict[str, Any]:
        return self._obj(
            self.post_json("/inject-demo-ops", {"count": count, "seed": seed}), "/inject-demo-ops"
        )

    def append_ops(self, log_bytes: bytes) -> dict[str, Any]:
        return self._obj(self.post_bytes("/append-ops", log_bytes), "/append-ops")

    def add_peer(self, multiaddr: str) -> dict[str, Any]:
        return self._obj(self.post_json("/peers", {"multiaddr": multiaddr}), "/peers")

    def block_peer(self, peer_id: str, seconds: float) -> dict[str, Any]:
        return self._obj(
            self.post_json("/peers/block", {"peer_id": peer_id, "seconds": seconds}), "/peers/block"
        )

    def _obj(self, doc: Any, path: str) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise EcacError(f"node at {self.url}: {path} answered {type(doc).__name__}, not a JSON object")
        return doc
