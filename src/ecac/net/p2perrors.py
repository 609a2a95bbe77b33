"""The libp2p adapter's exception types, and the two helpers that keep foreign exceptions contained.

Every error the adapter (``ecac.net.host``, ``streams``, ``gossip``) raises derives from
:class:`P2PError`; libp2p's own exception types never leak out. This module does not import
libp2p, so code may name these types without paying for ``import libp2p`` (~0.5-0.85 s).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = [
    "DialError",
    "P2PError",
    "StreamClosedError",
    "StreamOpenError",
    "StreamResetError",
    "call_safely",
    "root_cause",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class P2PError(Exception):
    """Base class of every error this adapter raises (libp2p's own types never leak out)."""


class DialError(P2PError):
    """A dial failed (refused, unreachable, wrong PeerId, timeout); the node backs off and retries."""


class StreamOpenError(P2PError):
    """Opening a stream failed (no connection, protocol not supported by the peer, timeout)."""


class ProtocolNotSupportedError(StreamOpenError):
    """The peer answered that it does not speak the protocol (multistream ``na``): not a failure
    to retry, a fact about that peer (e.g. a js-libp2p peer without ``/ecac/reconcile/1``)."""


class StreamResetError(P2PError):
    """The stream was reset (locally, by the peer, or because the connection died)."""


class StreamClosedError(P2PError):
    """Writing after ``close()``: the write half is already closed."""


async def call_safely(fn: Callable[[T], Awaitable[None] | None], arg: T, *, what: str) -> None:
    """Run a user callback (sync or async) without letting its exceptions kill our tasks.

    The callbacks run inside the adapter's long-lived tasks (event dispatch, gossip drain);
    an escaping exception would end that task, and with it every later delivery.
    """
    try:
        result = fn(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("%s raised", what)


def root_cause(exc: BaseException) -> str:
    """Walk __cause__ chains (libp2p nests 3-4 deep) to the most specific message."""
    seen: list[str] = []
    cur: BaseException | None = exc
    depth = 0
    while cur is not None and depth < 8:
        text = str(cur).strip()
        if text and text not in seen:
            seen.append(text)
        cur = cur.__cause__ or (cur.__context__ if not cur.__suppress_context__ else None)
        depth += 1
    return " <- ".join(seen[-2:]) if seen else type(exc).__name__
