"""Contained patches of py-libp2p 0.8.1 for connection slots and yamux flow control.

Applied per host instance by :func:`install` (called from ``P2PHost.run``), no global
monkeypatch; each patch says why and when to remove it, and has a contract test in
``tests/net/test_p2ppatch.py`` that fails when py-libp2p changes what it relies on.

* **Inbound slot leak** (:func:`_guarded_inbound`, replaces ``swarm._do_handle_inbound_connection``
  on the instance). py-libp2p holds one ``swarm._inbound_limiter`` token per inbound connection
  until the handler returns, and the handler waits for ``swarm.manager.wait_finished()`` (the
  whole swarm's end), not for the connection's end: after ``max_connections`` inbound
  connections (128 here) had come and gone, every new one was closed at accept, for good. Ours
  waits for the muxed connection's ``event_closed`` instead, and in between runs the
  :class:`~ecac.net.connguard.ConnGuard` policy: per-IP churn bucket and pending-handshake
  slots at accept, a handshake timeout over Noise + muxer negotiation, and per-peer bucket,
  per-peer and total limits with eviction once the PeerId is known (before the muxer runs, so
  a refused peer never produces connected/disconnected events).
  Remove when: the swarm releases the inbound slot when the connection closes (then keep only
  the policy, through whatever hook py-libp2p offers).
* **Flow control** (:class:`FlowGuard`, installed on every yamux connection by wrapping
  ``upgrader.upgrade_connection``). py-libp2p's yamux appends every DATA frame to the stream's
  buffer whatever the receive window says (it logs "peer exceeded receive window" and clamps
  the window to 0), keeps appending after the stream was reset locally, and keeps a reset
  stream's unread buffer until the connection closes. ``FlowGuard`` makes the per-stream
  buffers account their bytes (per connection and per host, :class:`BufferBudget`), and on
  the first byte past the window (or past a budget) resets the stream at once: buffer
  dropped, RST sent, later frames for it discarded. A reset (ours or the peer's) drops the
  stream's buffered data at once. A peer that keeps sending to reset or unknown streams
  (more than one connection budget, refilled at ``DISCARD_RATE``) gets GO_AWAY(protocol
  error) and the connection is closed. Inbound streams beyond ``max_inbound_streams`` open on
  one connection are reset on arrival (yamux accepts any number). Remove when: yamux enforces
  the receive window (resets the stream or the connection), drops a reset stream's buffer and
  caps inbound streams.
* **Log flood** (:class:`RateLimitedLog`): one line per ``interval`` per message kind for the
  yamux warnings an attacker can trigger at will, libp2p's per-dead-connection stream-open
  errors, and our own per-event lines, with the count of suppressed ones. Process-wide
  (filters on those loggers, added once). Remove with the yamux patch.

Module-level mutable state: none (the log filter lives on libp2p's logger).
"""

from __future__ import annotations

import logging
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IMuxedConn
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.rcmgr import Direction
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from ecac.net.connguard import ConnCounters, ConnGuard, LiveConn

__all__ = [
    "BufferBudget",
    "FlowGuard",
    "RateLimitedLog",
    "install",
    "live_connections",
]

log = logging.getLogger("ecac.net.p2ppatch")

YAMUX_LOGGER = "libp2p.stream_muxer.yamux.yamux"
#: bytes per second a connection may send to reset or unknown streams (refilling its allowance)
DISCARD_RATE = 1 << 20
_RST_HEADER = struct.Struct(yamux_module.YAMUX_HEADER_FORMAT)


# --------------------------------------------------------------------------------------------
# log rate limiting


class RateLimitedLog(logging.Filter):
    """Passes the first record per ``interval`` seconds for each message kind matching one of
    ``kinds`` (a substring), with ``(+N similar suppressed)`` appended; others pass untouched."""

    def __init__(self, kinds: tuple[str, ...], interval: float = 10.0) -> None:
        super().__init__()
        self.kinds = kinds
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        kind = next((k for k in self.kinds if k in msg), None)
        if kind is None:
            return True
        now = time.monotonic()
        if now - self._last.get(kind, -1e18) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        n = self._suppressed.pop(kind, 0)
        if n:
            record.msg = f"{msg} (+{n} similar suppressed)"
            record.args = None
        return True


#: yamux warnings a hostile peer triggers at will (one per frame)
NOISY_YAMUX = ("exceeded receive window", "announced oversized DATA", "Incomplete read")
#: our own per-event lines (one per reset stream / refused connection)
NOISY_OURS = ("reset yamux stream", "closing yamux connection", "refused inbound", "evicting", "handshake")


#: libp2p errors logged once per connection that dies while identify/gossip streams open (harmless,
#: see docs/libp2p-notes.md), i.e. once per churn cycle of an attacker
NOISY_STREAM_OPEN = {
    "libp2p.host.basic_host": ("Failed to open stream to peer",),
    "libp2p.protocol_muxer.multiselect_client": ("MultiselectClient handshake",),
}


def _rate_limit_logs() -> None:
    loggers = {YAMUX_LOGGER: NOISY_YAMUX, log.name: NOISY_OURS, **NOISY_STREAM_OPEN}
    for name, kinds in loggers.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(RateLimitedLog(kinds))


# --------------------------------------------------------------------------------------------
# yamux flow control


@dataclass(eq=False)
class BufferBudget:
    """Buffered-but-unread yamux bytes of one host: limits, the running total, its connections."""

    per_conn: int
    total: int
    counters: ConnCounters
    max_inbound_streams: int = 256  # open inbound streams per connection
    buffered: int = 0
    conns: weakref.WeakSet[FlowGuard] = field(default_factory=weakref.WeakSet)


class _StreamBuffer(bytearray):
    """A yamux stream's receive buffer that asks its :class:`FlowGuard` before growing and
    reports every byte taken out (yamux mutates buffers only with ``extend``, ``del b[:n]``
    and ``clear``; contract ``test_contract_yamux_buffer_mutations``)."""

    def __init__(self, guard: FlowGuard | None, sid: int) -> None:
        super().__init__()
        self.guard = guard
        self.sid = sid

    def extend(self, data: Any) -> None:
        g = self.guard
        if g is None:
            bytearray.extend(self, data)
        elif g.admit(self.sid, self, len(data)):
            bytearray.extend(self, data)
            g.add(len(data))
            g.accepted += len(data)

    def __delitem__(self, key: Any) -> None:
        before = len(self)
        bytearray.__delitem__(self, key)
        if self.guard is not None:
            self.guard.add(len(self) - before)

    def clear(self) -> None:
        n = len(self)
        bytearray.clear(self)
        if self.guard is not None:
            self.guard.add(-n)

    def detach(self) -> None:
        """No longer the stream's buffer (yamux dropped it): its bytes leave the budget."""
        if self.guard is not None:
            self.guard.add(-len(self))
            self.guard = None


class _Buffers(dict[int, bytearray]):
    """``Yamux.stream_buffers`` whose values are :class:`_StreamBuffer` (accounted)."""

    def __init__(self, guard: FlowGuard) -> None:
        super().__init__()
        self._guard = guard

    def __setitem__(self, sid: int, value: bytearray) -> None:
        old = dict.get(self, sid)
        if isinstance(old, _StreamBuffer):
            old.detach()
        buf = _StreamBuffer(self._guard, sid)
        if value:
            bytearray.extend(buf, value)
            self._guard.add(len(value))
            self._guard.accepted += len(value)
        dict.__setitem__(self, sid, buf)
        self._guard.on_new_stream(sid)

    def __delitem__(self, sid: int) -> None:
        old = dict.pop(self, sid)
        if isinstance(old, _StreamBuffer):
            old.detach()

    def pop(self, sid: int, *default: Any) -> Any:
        old = dict.pop(self, sid, *default)
        if isinstance(old, _StreamBuffer):
            old.detach()
        return old

    def clear(self) -> None:
        for buf in dict.values(self):
            if isinstance(buf, _StreamBuffer):
                buf.detach()
        dict.clear(self)


class FlowGuard:
    """Receive-window and budget enforcement for one yamux connection (see the module docstring)."""

    def __init__(self, conn: Yamux, budget: BufferBudget) -> None:
        self.conn = conn
        self.budget = budget
        self.buffered = 0
        budget.conns.add(self)
        conn.stream_buffers = _Buffers(self)
        original = conn._finalize_stream_locked

        def finalize_locked(stream: YamuxStream, *, fully_closed: bool) -> None:
            # A reset (ours or the peer's) aborts the stream: nobody will read what is buffered.
            if fully_closed and stream.reset_received:
                buf = conn.stream_buffers.get(stream.stream_id)
                if buf:
                    self.budget.counters.bytes_dropped += len(buf)
                    buf.clear()
            original(stream, fully_closed=fully_closed)

        conn._finalize_stream_locked = finalize_locked  # type: ignore[method-assign]

        # Data nobody will read (frames for reset or unknown streams) is allowed at a refill of
        # DISCARD_RATE up to one connection budget; beyond that the peer is flooding us: close
        # the connection with GO_AWAY(protocol error), the only "reason" yamux can carry.
        self.received = 0
        self.accepted = 0
        self._discard_seen = 0
        self._allowance = float(budget.per_conn)
        self._allowance_at = trio.current_time()
        read_body = conn._read_data_body

        async def read_data_body(length: int) -> bytes:
            self._charge_discards()
            data = await read_body(length)
            self.received += len(data)
            return data

        conn._read_data_body = read_data_body  # type: ignore[method-assign]

    def add(self, n: int) -> None:
        self.buffered += n
        self.budget.buffered += n

    def on_new_stream(self, sid: int) -> None:
        """A stream was just registered (yamux creates its buffer right after): refuse (reset)
        an inbound one beyond ``max_inbound_streams`` open ones on this connection."""
        stream = self.conn.streams.get(sid)
        if stream is None or stream.is_initiator:
            return
        open_inbound = sum(1 for st in self.conn.streams.values() if not st.is_initiator and not st.closed)
        if open_inbound > self.budget.max_inbound_streams:
            self.budget.counters.streams_refused += 1
            self.kill(stream, 0, f"more than {self.budget.max_inbound_streams} inbound streams open")

    def _charge_discards(self) -> None:
        """Charge the bytes of earlier frames that were not buffered against the allowance."""
        discarded = self.received - self.accepted
        new = discarded - self._discard_seen
        if new <= 0:
            return
        self._discard_seen = discarded
        now = trio.current_time()
        cap = float(self.budget.per_conn)
        self._allowance = min(cap, self._allowance + (now - self._allowance_at) * DISCARD_RATE) - new
        self._allowance_at = now
        if self._allowance < 0 and not self.conn.event_shutting_down.is_set():
            self.budget.counters.goaways_sent += 1
            log.warning(
                "closing yamux connection of %s: %d bytes sent to reset or unknown streams (GO_AWAY)",
                self.conn.peer_id,
                discarded,
            )
            self._allowance = cap  # once
            nursery = self.conn._nursery
            if nursery is not None:
                nursery.start_soon(self.conn.close, yamux_module.GO_AWAY_PROTOCOL_ERROR)

    def admit(self, sid: int, buf: _StreamBuffer, n: int) -> bool:
        """Whether ``n`` more bytes may be buffered for stream ``sid``; else the stream is reset."""
        if n <= 0:
            return True
        counters = self.budget.counters
        stream = self.conn.streams.get(sid)
        if stream is None:
            return True
        if stream.reset_received or stream.recv_closed:
            # after a reset, or after the peer's FIN: nothing will read it (yamux would keep it)
            counters.frames_dropped += 1
            counters.bytes_dropped += n
            stream.recv_window += n  # yamux subtracts it right after this call
            return False
        if n > stream.recv_window:
            counters.window_overruns += 1
            self.kill(stream, n, f"{n} bytes past its receive window of {stream.recv_window}")
            return False
        budget = self.budget
        while self.buffered + n > budget.per_conn or budget.buffered + n > budget.total:
            over_conn = self.buffered + n > budget.per_conn
            owner = self if over_conn else max(budget.conns, key=lambda g: g.buffered, default=self)
            victim = owner.largest_stream()
            if (
                victim is None
                or victim is stream
                or len(owner.conn.stream_buffers.get(victim.stream_id, b"")) <= len(buf)
            ):
                counters.budget_resets += 1
                self.kill(
                    stream, n, "buffered-bytes budget of the " + ("connection" if over_conn else "host")
                )
                return False
            counters.budget_resets += 1
            owner.kill(victim, 0, "buffered-bytes budget (largest unread stream)")
        return True

    def largest_stream(self) -> YamuxStream | None:
        bufs = self.conn.stream_buffers
        sid = max(bufs, key=lambda s: (len(bufs[s]), s), default=None)
        return None if sid is None else self.conn.streams.get(sid)

    def kill(self, stream: YamuxStream, incoming: int, why: str) -> None:
        """Reset ``stream`` now: drop its buffer, wake its reader, send RST (in the background)."""
        sid = stream.stream_id
        counters = self.budget.counters
        buf = self.conn.stream_buffers.get(sid)
        counters.bytes_dropped += incoming + (len(buf) if buf else 0)
        if buf:
            buf.clear()
        stream.recv_window += incoming  # yamux subtracts the rejected frame right after admit()
        stream.closed = stream.send_closed = stream.recv_closed = True
        stream.reset_received = True
        event = self.conn.stream_events.get(sid)
        if event is not None:
            event.set()
        log.warning("reset yamux stream %d of %s: %s", sid, self.conn.peer_id, why)
        nursery = self.conn._nursery
        if nursery is not None:
            nursery.start_soon(self._send_rst, stream)

    async def _send_rst(self, stream: YamuxStream) -> None:
        header = _RST_HEADER.pack(
            0, yamux_module.TYPE_WINDOW_UPDATE, yamux_module.FLAG_RST, stream.stream_id, 0
        )
        try:
            await self.conn._write_frame(header)
        except Exception as exc:  # the connection is going away anyway
            log.debug("sending RST: %s", exc)
        await self.conn._finalize_stream(stream, fully_closed=True)


def _guard_upgrades(upgrader: Any, budget: BufferBudget) -> None:
    """Every muxed connection of this host (both directions) gets a :class:`FlowGuard`."""
    original = upgrader.upgrade_connection

    async def upgrade_connection(conn: Any, peer_id: Any) -> Any:
        muxed = await original(conn, peer_id)
        if isinstance(muxed, Yamux) and not isinstance(muxed.stream_buffers, _Buffers):
            FlowGuard(muxed, budget)
        return muxed

    upgrader.upgrade_connection = upgrade_connection


# --------------------------------------------------------------------------------------------
# inbound connections


def live_connections(swarm: Any) -> list[LiveConn]:
    """The swarm's established connections, as the guard sees them."""
    out = []
    for peer, conns in list(swarm.connections.items()):
        pid = peer.to_base58()
        for c in conns:
            out.append(LiveConn(pid, id(c), c.direction == Direction.INBOUND, float(c._created_at)))
    return out


async def _close_quietly(obj: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await obj.close()
        except Exception as exc:
            log.debug("closing: %s", exc)


async def _evict(swarm: Any, victim: LiveConn) -> None:
    for conns in list(swarm.connections.values()):
        for c in list(conns):
            if id(c) == victim.conn_id:
                log.info("evicting the newest inbound connection of %s (connection limit)", victim.peer)
                await _close_quietly(c)
                return


def _remote_ip(rwc: Any) -> str:
    try:
        addr = rwc.get_remote_address()
    except Exception:
        addr = None
    return str(addr[0]) if addr else "?"


async def _guarded_inbound(swarm: Any, guard: ConnGuard, handshake_timeout: float, rwc: Any) -> None:
    """One inbound TCP connection: policy, handshake, registration, then wait for its end."""
    counters = guard.counters
    ip = _remote_ip(rwc)
    evicted = trio.CancelScope()
    pending = guard.open_pending(ip, trio.current_time(), evicted.cancel)
    if pending is None:
        log.debug("refused inbound connection from %s (rate or pending limit)", ip)
        await _close_quietly(rwc)
        return
    raw = RawConnection(rwc, False)
    muxed: Any = None
    try:
        remote = swarm._build_remote_multiaddr(rwc)
        if remote is not None and not await swarm.connection_gate.is_allowed(remote):
            return
        with evicted, trio.fail_after(handshake_timeout):
            secured = await swarm.upgrader.upgrade_security(raw, False)
            peer = secured.get_remote_peer()
            verdict = guard.admit_peer(
                pending, peer.to_base58(), trio.current_time(), live_connections(swarm)
            )
            if not verdict.accept:
                log.info("refused inbound connection of %s from %s: %s", peer, ip, verdict.reason)
                await _close_quietly(secured)
                return
            if verdict.evict is not None:
                await _evict(swarm, verdict.evict)
            muxed = await swarm.upgrader.upgrade_connection(secured, peer)
        if evicted.cancelled_caught:
            log.debug("pending handshake from %s evicted by newer connections", ip)
            muxed = None
            return
        guard.close_pending(pending)
        await swarm.add_conn(muxed, direction="inbound")
    except trio.TooSlowError:
        counters.handshake_timeouts += 1
        log.info("inbound handshake from %s timed out after %g s", ip, handshake_timeout)
        muxed = None
        return
    except Exception as exc:
        counters.handshake_failures += 1
        log.debug("inbound handshake from %s failed: %s", ip, exc)
        if muxed is not None:
            await _close_quietly(muxed)
        muxed = None
        return
    finally:
        guard.close_pending(pending)
        if muxed is None:
            await _close_quietly(raw)
    # The slot (swarm._inbound_limiter, the TCP handler task) is held while the connection lives;
    # returning makes trio close the socket, so wait for the connection's own end.
    await muxed.event_closed.wait()


def install(swarm: Any, guard: ConnGuard, budget: BufferBudget, *, handshake_timeout: float) -> None:
    """Apply this module's patches to one swarm (before it listens)."""
    original: Callable[..., Any] = swarm._do_handle_inbound_connection

    async def do_handle_inbound_connection(rwc: Any, maddr: Any, failure_event: Any) -> None:
        if isinstance(rwc, IMuxedConn):  # already multiplexed (QUIC): not ours to police
            await original(rwc, maddr, failure_event)
            return
        await _guarded_inbound(swarm, guard, handshake_timeout, rwc)

    swarm._do_handle_inbound_connection = do_handle_inbound_connection
    _guard_upgrades(swarm.upgrader, budget)
    _rate_limit_logs()
