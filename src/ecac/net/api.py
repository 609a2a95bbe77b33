"""What the gateway needs from a running node (``NodeApi``), so ``gateway`` does not import ``node``.

``ecac.net.node.Node`` implements it; tests can hand ``Gateway`` any object that does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ecac.core.op import Op
from ecac.core.snapshot import StoreSnapshot
from ecac.net.digest import DigestTracker
from ecac.store.memory import IndexedOpStore
from ecac.store.writer import LocalWritten, Written


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A known peer as ``GET /api/peers`` shows it.

    ``last_sync_ms`` is the wall-clock time of the peer's last announce (its state as it last
    told us), ``heads_match`` whether that announce listed exactly our heads (None: no
    complete announce yet). Access (``ecac.net.hello``): ``subject`` the subject its hello
    proved (None: no verified hello), ``served`` whether we serve it ops now (strict: its
    subject holds a live role), ``refused_us`` what it told us it refuses us, and why
    (``(what, reason)`` pairs from its ``/ecac/refused/1`` notices on this connection).
    """

    peer_id: str
    addrs: tuple[str, ...]
    connected: bool
    last_sync_ms: int | None
    heads_match: bool | None
    subject: str | None = None
    served: bool = True
    refused_us: tuple[tuple[str, str], ...] = ()

    def to_obj(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "connected": self.connected,
            "last_sync_ms": self.last_sync_ms,
            "heads_match": self.heads_match,
            "subject": self.subject,
            "served": self.served,
            "refused_us": dict(self.refused_us),
        }


class NodeApi(Protocol):
    """The node operations behind the gateway's endpoints (all called from the node's event loop)."""

    #: the limiter for decoding in worker threads (request bodies, sync frames)
    decode_limiter: trio.CapacityLimiter
    #: the replayed DAG and state, and the views computed from them (``DigestTracker.view``)
    digest: DigestTracker
    peer_id: str
    listen_addrs: list[str]

    def snapshot(self) -> StoreSnapshot:
        """The writer's latest snapshot (counts, heads, digest)."""
        ...

    def status(self) -> dict[str, Any]:
        """``GET /status``: from the latest snapshot and counters only (no store call, no lock)."""
        ...

    def digest_info(self) -> tuple[bytes, int]:
        """The published state digest (of the empty state until the first one) and the ops it covers."""
        ...

    def known_peers(self) -> list[str]: ...

    def connected_peers(self) -> list[str]: ...

    def peer_infos(self) -> list[PeerInfo]:
        """Every known peer (connected or dialled), sorted by peer id."""
        ...

    async def write_local(self, build: Callable[[IndexedOpStore], Sequence[Op]]) -> LocalWritten:
        """Build ops on the writer thread (``build`` reads the store there), store and announce them."""
        ...

    async def append_local(self, ops: Sequence[Op]) -> Written:
        """Store given ops (invalid ones skipped and reported), announce."""
        ...

    async def dial_now(self, addr: str) -> str: ...

    def block_peer(self, peer: str, seconds: float) -> None: ...
