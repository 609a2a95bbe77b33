"""Plain byte streams over py-libp2p's yamux-over-Noise streams, and the inbound-handler guard.

:class:`P2PStream` gives ``read`` (b"" only at EOF), ``write``, ``close`` (write half-close)
and ``reset``, and reports every failure as :class:`~ecac.net.p2perrors.StreamResetError`.
:func:`serve_inbound` runs a protocol handler so that its exceptions reset the stream instead
of reaching libp2p. No module-level mutable state.

Patches of py-libp2p 0.8.1 behaviour contained here (all per stream object, no globals; each
has a contract test in ``tests/net/test_host.py`` that fails when py-libp2p changes it; see
``docs/libp2p-notes.md``):

* **yamux write stall** (:meth:`P2PStream.write`): ``YamuxStream.write`` waits at most 5 s
  (hard-coded) for a window update, then fails without telling the peer, which then waits
  forever. We write at most the send window and wait ourselves up to ``write_stall_timeout``,
  then reset. Remove when yamux's wait is configurable or unbounded and a failed write resets
  the stream. Contract: ``test_contract_yamux_write_waits_five_seconds_for_the_window``.
* **RST read as EOF** (:meth:`P2PStream.read`): yamux forgets a stream as soon as an RST
  arrives, so ``read`` raises ``StreamEOF``; ``muxed_stream.reset_received`` still tells.
  Remove when ``read`` raises ``StreamReset`` after an RST. Contract:
  ``test_contract_running_host_internals``.
* **close is not a half-close**: ``NetStream.close`` also drops the stream's bookkeeping; we
  use ``close_write`` and call ``close`` once both halves are done. Contract: as above.
* **handler exceptions** (:func:`serve_inbound`): an exception escaping a libp2p stream
  handler propagates into the connection's nursery and kills the connection. Remove never
  (it is our error policy too). Covered by ``test_handler_error_resets_stream_and_keeps_connection``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.network.stream.net_stream import NetStream

from ecac.net.p2perrors import StreamClosedError, StreamResetError

__all__ = ["P2PStream", "StreamHandler", "serve_inbound"]

log = logging.getLogger(__name__)


class P2PStream:
    """A yamux stream over Noise with plain byte semantics.

    ``read`` returns up to ``max_bytes`` (never b"" unless at EOF); ``close`` sends FIN (our
    write half only: keep reading until b"" to get the peer's answer); ``reset`` aborts both
    directions. Reads and writes raise :class:`StreamResetError` once the stream is reset.
    Deadlines are the caller's job (``trio.fail_after``); after a timeout, call ``reset``.
    A write waits at most ``write_stall_timeout`` for a peer that stopped reading, then
    resets the stream.
    """

    def __init__(self, raw: INetStream, *, write_stall_timeout: float = 15.0) -> None:
        self._raw = raw
        self._stall_timeout = write_stall_timeout
        self.peer_id: str = raw.muxed_conn.peer_id.to_base58()
        self.protocol: str = str(raw.get_protocol() or "")
        self._eof = False
        self._write_closed = False
        self._reset = False
        self._released = False

    @property
    def at_eof(self) -> bool:
        """True once the peer's FIN has been read."""
        return self._eof

    @property
    def is_reset(self) -> bool:
        """True once the stream was reset (by us, by the peer, or by a failure)."""
        return self._reset

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Read at most ``max_bytes``; b"" means the peer closed its write half (EOF)."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._reset:
            raise StreamResetError("stream was reset")
        if self._eof:
            return b""
        try:
            data = await self._raw.read(max_bytes)
        except StreamEOF:
            # Patch (py-libp2p 0.8.1): yamux drops a stream's bookkeeping as soon as an RST
            # arrives, so the read reports EOF; the stream object still remembers the reset.
            if getattr(getattr(self._raw, "muxed_stream", None), "reset_received", False):
                self._reset = True
                raise StreamResetError(f"stream from {self.peer_id} reset") from None
            data = b""
        except (StreamReset, StreamClosed) as exc:
            self._reset = True
            raise StreamResetError(f"stream from {self.peer_id} reset") from exc
        except (StreamError, OSError) as exc:
            self._reset = True
            raise StreamResetError(f"stream from {self.peer_id} failed: {exc}") from exc
        if not data:
            self._eof = True
            await self._release_if_done()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; returns when yamux accepted it (flow control applies).

        One call costs ~0.2 ms of Python overhead: coalesce many frames into one write.
        """
        if self._reset:
            raise StreamResetError("stream was reset")
        if self._write_closed:
            raise StreamClosedError("write half already closed")
        view = memoryview(data).cast("B")
        muxed = getattr(self._raw, "muxed_stream", None)
        if muxed is None or not isinstance(getattr(muxed, "send_window", None), int):
            await self._write_raw(view.tobytes())
            return
        # Patch (py-libp2p 0.8.1): yamux fails a write whose send window stays empty for 5 s
        # (hard-coded), leaving the peer waiting forever; write only what the window allows
        # and wait ourselves.
        while view:
            window: int = muxed.send_window
            if window <= 0 and not muxed.closed:
                await self._wait_for_window(muxed)
                continue
            n = min(len(view), window) if window > 0 else len(view)  # closed: let yamux raise
            await self._write_raw(view[:n].tobytes())
            view = view[n:]

    async def _wait_for_window(self, muxed: Any) -> None:
        with trio.move_on_after(self._stall_timeout) as scope:
            while muxed.send_window <= 0 and not muxed.closed:
                await trio.sleep(0.01)  # yamux offers no window event; it polls the same way
        if scope.cancelled_caught:
            await self.reset()
            raise StreamResetError(f"{self.peer_id} stopped reading for {self._stall_timeout:g} s")

    async def _write_raw(self, data: bytes) -> None:
        try:
            await self._raw.write(data)
        except (StreamClosed, StreamReset, StreamError, OSError) as exc:
            await self.reset()  # tell the peer, which would otherwise wait for more data
            raise StreamResetError(f"stream to {self.peer_id} failed: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        """Half-close: send FIN so the peer reads EOF; reading stays possible. Idempotent."""
        if self._write_closed or self._reset:
            return
        self._write_closed = True
        try:
            # ``INetStream`` does not declare ``close_write``; libp2p's ``new_stream`` and
            # stream handlers always hand out a ``NetStream``, which has it (contract test).
            await cast(NetStream, self._raw).close_write()
        except Exception as exc:  # a dead connection: nothing more to flush
            log.debug("close_write failed on stream to %s: %s", self.peer_id, exc)
        await self._release_if_done()

    async def reset(self) -> None:
        """Abort both directions (the peer's reads and writes fail). Idempotent."""
        if self._reset:
            return
        self._reset = True
        with trio.CancelScope(shield=True):
            try:
                await self._raw.reset()
            except Exception as exc:
                log.debug("reset failed on stream to %s: %s", self.peer_id, exc)

    async def _release_if_done(self) -> None:
        """Drop libp2p's bookkeeping once both halves are closed."""
        if self._released or not (self._eof and self._write_closed):
            return
        self._released = True
        try:
            await self._raw.close()
        except Exception as exc:
            log.debug("final close failed on stream to %s: %s", self.peer_id, exc)

    async def __aenter__(self) -> P2PStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.reset()


StreamHandler = Callable[[P2PStream], Awaitable[None]]


async def serve_inbound(
    raw: INetStream,
    protocol: str,
    lookup: Callable[[str], StreamHandler | None],
    *,
    write_stall_timeout: float,
) -> None:
    """Run the handler ``lookup(protocol)`` on one inbound stream, containing its failures.

    An exception in the handler resets the stream (it never reaches libp2p, where it would
    tear down the connection); a normal return half-closes the stream if the handler did
    not; no handler (removed meanwhile) resets it.
    """
    stream = P2PStream(raw, write_stall_timeout=write_stall_timeout)
    handler = lookup(protocol)
    if handler is None:
        await stream.reset()
        return
    try:
        await handler(stream)
    except Exception:
        log.exception("handler for %s from %s failed", protocol, stream.peer_id)
        await stream.reset()
        return
    if not stream.is_reset:
        await stream.close()
