"""``/ecac/reconcile/1`` over libp2p: a thin adapter around the pure ``ecac.sync.reconcile``.

One stream per session. The initiator writes its first frame, then both sides alternate: read
one length-prefixed frame (``wire.FrameReader``, at most ``ReconcileLimits.max_frame`` bytes of
body, within ``FRAME_TIMEOUT``), hand it to the session's ``Reconciler`` (in a worker thread:
rank and fingerprint queries over a large tree cost milliseconds) and write its answer, until a
side has nothing more to send; it then half-closes. Each side reconciles the ``RangeTree`` of
the snapshot it held when the session started (immutable, so the writer goes on meanwhile).
The ids the peer holds and we lack (``need``) go to the coordinator (``SyncCoordinator.
reconciled``), which fetches them parent-first over ``/ecac/sync/1`` as usual; the peer learns
our extra ids as its own ``need`` in the same session, so one session serves both sides.

When (``ReconcileService.run``, the policy of ``ecac.sync.reconcile_sched.ReconcileSchedule``,
which the simulated network uses too): when a peer connects (the side with the smaller PeerId
initiates, so a pair runs one session), and every anti-entropy period for each connected peer
whose last announce differs from our state (heads or complete-op count) or who never
announced; at most one session per peer at a time (either role), at most
``MAX_SESSIONS`` at once. The live path (announce → fetch) and the anti-entropy pull are
unchanged.

Errors: a malformed or over-limit frame (``ProtocolError``), a timeout or a stream failure ends
the session (stream reset), counted in ``reconcile_failures``; ids found before it are kept.
Counters (``/status`` → ``counters``): ``reconcile_sessions``, ``reconcile_rounds`` (round
trips, summed), ``reconcile_round_trips_max`` (of one session), ``reconcile_bytes_sent`` /
``reconcile_bytes_received`` (frames with their length prefixes), ``reconcile_ids_found``
(ids either side lacks, as this node found them), ``reconcile_ids_needed``,
``reconcile_failures``, ``reconcile_incomplete`` (ended by a round limit, or unverified),
``reconcile_unverified`` (ended by itself, but the result does not match the peer's total
fingerprint: a range fingerprint collision hid a difference; the next session, salted by
another nonce, finds it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ecac.core.errors import EcacError, ProtocolError
from ecac.core.snapshot import StoreSnapshot
from ecac.sync.reconcile import RECONCILE_PROTOCOL_ID, ReconcileLimits, Reconciler
from ecac.sync.reconcile_sched import (
    MAX_SESSIONS,
    POLL_PERIOD,
    ReconcileCounters,
    ReconcileSchedule,
    count_session,
    round_trips,
)
from ecac.sync.wire import FrameReader, encode_frame

__all__ = ["MAX_SESSIONS", "RECONCILE_PROTOCOL_ID", "ReconcileCounters", "ReconcileService", "round_trips"]

log = logging.getLogger("ecac.node")

FRAME_TIMEOUT = 15.0  # the next frame of a session must arrive within this
SESSION_DEADLINE = 120.0  # a whole session
READ_CHUNK = 256 * 1024


class _Failed(Exception):
    pass


class ReconcileService:
    """Runs reconciliation sessions with the node's peers (see the module docstring)."""

    def __init__(
        self,
        host: Any,
        snapshot: Callable[[], StoreSnapshot],
        on_found: Callable[[str, list[bytes]], None],
        peer_state: Callable[[str], Any],
        is_blocked: Callable[[str], bool],
        period: float,
        limits: ReconcileLimits | None = None,
    ) -> None:
        self.host = host
        self._snapshot = snapshot
        self._on_found = on_found
        self._peer_state = peer_state  # the coordinator's PeerState of a peer (heads, watermark) or None
        self._is_blocked = is_blocked
        self.period = period
        self.limits = limits or ReconcileLimits()
        self.counters = ReconcileCounters()
        self.limiter = trio.CapacityLimiter(1)
        self.schedule = ReconcileSchedule(period)  # when to start a session (shared with the simulator)

    # ------------------------------------------------------------------ scheduling

    def wants_session(self, peer: str, now: float) -> bool:
        """Heads differ (or unknown) and no session with ``peer`` ran in the last period."""
        if self._is_blocked(peer):
            return False
        return self.schedule.due(peer, now, self._peer_state(peer), self._snapshot())

    async def run(self, nursery: trio.Nursery, my_peer_id: str) -> None:
        """Start sessions on connect and on every period (runs until cancelled)."""
        self.schedule.start(my_peer_id, trio.current_time() + self.period)
        while True:
            await trio.sleep(POLL_PERIOD)
            live = [p for p in self.host.connected_peers() if not self._is_blocked(p)]
            for p in self.schedule.poll(trio.current_time(), live, self._peer_state, self._snapshot()):
                nursery.start_soon(self._session, p)

    # ------------------------------------------------------------------ sessions

    async def _session(self, peer: str) -> None:
        """A session ``poll`` reserved, as a background task: an unexpected error is logged and
        counted, never raised."""
        try:
            await self._initiate(peer)
        except Exception:
            self.counters.reconcile_failures += 1
            log.exception("reconciliation with %s crashed", peer)

    async def initiate(self, peer: str) -> Reconciler | None:
        """One session as initiator; returns its reconciler (None if it could not start)."""
        if not self.schedule.begin(peer):
            return None
        return await self._initiate(peer)

    async def _initiate(self, peer: str) -> Reconciler | None:
        """The session reserved with ``peer`` (``schedule.initiating``), as initiator."""
        from ecac.net.host import P2PError, ProtocolNotSupportedError

        try:
            # the nonce salts the session's fingerprints: a collision is not repeated by the next session
            rec = Reconciler(self._snapshot().ranges, self.limits, nonce=self.counters.reconcile_sessions)
        except BaseException:
            self.schedule.ended(peer, trio.current_time(), initiator=True)  # never leak the reservation
            raise
        stream = None
        failed: BaseException | None = None
        try:
            with trio.fail_after(SESSION_DEADLINE):
                stream = await self.host.open_stream(peer, RECONCILE_PROTOCOL_ID)
                first = await trio.to_thread.run_sync(rec.start, limiter=self.limiter)
                await self._write(stream, first)
                await self._converse(stream, rec)
        except ProtocolNotSupportedError:
            # a peer without the protocol (another implementation): the pull path serves it; ask
            # again only after it reconnects
            if self.schedule.refused_protocol(peer, trio.current_time()):
                self.counters.reconcile_unsupported += 1
                log.info("%s does not speak %s: using the pull path with it", peer, RECONCILE_PROTOCOL_ID)
            return None
        except (P2PError, _Failed, ProtocolError, EcacError, trio.TooSlowError) as e:
            failed = e
        finally:
            self.schedule.ended(peer, trio.current_time(), initiator=True)
        if failed is not None:
            self._failed(peer, rec, failed)
            if stream is not None:
                await stream.reset()
            return rec
        await self._finish(peer, rec, stream)
        return rec

    async def handle(self, stream: Any) -> None:
        """The stream handler of ``/ecac/reconcile/1`` (responder)."""
        peer = stream.peer_id
        # one session per peer (it serves both sides); when both started one at once, the session
        # of the smaller PeerId goes on (its peer resets ours); at most MAX_SESSIONS
        if self._is_blocked(peer) or not self.schedule.accept(peer):
            await stream.reset()
            return
        rec = Reconciler(self._snapshot().ranges, self.limits)
        failed: BaseException | None = None
        try:
            with trio.fail_after(SESSION_DEADLINE):
                await self._converse(stream, rec)
        except (_Failed, ProtocolError, EcacError, trio.TooSlowError) as e:
            failed = e
        finally:
            self.schedule.ended(peer, trio.current_time(), initiator=False)
        if failed is not None:
            self._failed(peer, rec, failed)
            await stream.reset()
            return
        await self._finish(peer, rec, stream)

    async def _converse(self, stream: Any, rec: Reconciler) -> None:
        """Alternate frames until the session is done (EOF from the peer ends it incomplete)."""
        reader = FrameReader(self.limits.max_frame)
        while not rec.done:
            body = await self._read_frame(stream, reader)
            if body is None:
                return  # the peer stopped (its round limit): what we found stays valid
            reply = await trio.to_thread.run_sync(rec.receive, body, limiter=self.limiter)
            if reply is not None:
                await self._write(stream, reply)

    async def _read_frame(self, stream: Any, reader: FrameReader) -> bytes | None:
        from ecac.net.host import StreamResetError

        pending: list[bytes] = []
        with trio.fail_after(FRAME_TIMEOUT):
            while not pending:
                try:
                    chunk = await stream.read(READ_CHUNK)
                except StreamResetError as e:
                    raise _Failed(str(e)) from None
                self.counters.reconcile_bytes_received += len(chunk)
                if not chunk:
                    reader.eof()  # ProtocolError inside a frame
                    return None
                pending = reader.feed(chunk)
        if len(pending) > 1 or reader.buffered:
            raise ProtocolError("reconcile: a frame before the answer to the previous one")
        return pending[0]

    async def _write(self, stream: Any, body: bytes) -> None:
        from ecac.net.host import StreamResetError

        frame = encode_frame(body, self.limits.max_frame)
        try:
            await stream.write(frame)
        except StreamResetError as e:
            raise _Failed(str(e)) from None
        self.counters.reconcile_bytes_sent += len(frame)

    def _failed(self, peer: str, rec: Reconciler, e: BaseException) -> None:
        self.counters.reconcile_failures += 1
        log.info("reconciliation with %s failed: %s", peer, e or type(e).__name__)
        self._report(peer, rec)

    async def _finish(self, peer: str, rec: Reconciler, stream: Any) -> None:
        """Half-close, read the peer's EOF (briefly) so both halves close, then report the result."""
        from ecac.net.host import StreamResetError

        self._report(peer, rec)
        if stream is None:
            return
        await stream.close()
        with trio.move_on_after(1.0):
            try:
                while await stream.read(READ_CHUNK):
                    pass
            except StreamResetError:
                return
        if not stream.at_eof:
            await stream.reset()

    def _report(self, peer: str, rec: Reconciler) -> None:
        rt = count_session(self.counters, rec)
        log.log(
            logging.INFO if rec.need or rec.have else logging.DEBUG,
            "reconciled with %s: %d round trips, %d/%d bytes, we lack %d, it lacks %d%s",
            peer,
            rt,
            rec.bytes_sent,
            rec.bytes_received,
            len(rec.need),
            len(rec.have),
            "" if rec.complete else " (incomplete)",
        )
        if rec.need:
            self._on_found(peer, list(rec.need))
