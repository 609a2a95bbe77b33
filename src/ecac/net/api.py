"""What the control API needs from a running node (``NodeApi``), so ``control`` does not import ``node``.

``ecac.net.node.Node`` implements it; tests can hand ``dispatch`` any object that does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from ecac.core.op import Op
from ecac.store.memory import IndexedOpStore
from ecac.store.writer import LocalWritten, Written


class NodeApi(Protocol):
    """The node operations behind the control endpoints (all called from the node's event loop)."""

    #: the limiter for decoding in worker threads (request bodies, sync frames)
    decode_limiter: trio.CapacityLimiter

    def status(self) -> dict[str, Any]:
        """``GET /status``: from the latest snapshot and counters only (no store call, no lock)."""
        ...

    def digest_info(self) -> tuple[bytes, int]:
        """The published state digest (of the empty state until the first one) and the ops it covers."""
        ...

    def known_peers(self) -> list[str]: ...

    def connected_peers(self) -> list[str]: ...

    async def write_local(self, build: Callable[[IndexedOpStore], Sequence[Op]]) -> LocalWritten:
        """Build ops on the writer thread (``build`` reads the store there), store and announce them."""
        ...

    async def append_local(self, ops: Sequence[Op]) -> Written:
        """Store given ops (invalid ones skipped and reported), announce."""
        ...

    async def dial_now(self, addr: str) -> str: ...

    def block_peer(self, peer: str, seconds: float) -> None: ...
