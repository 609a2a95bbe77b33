"""Serving ``/ecac/sync/1``: one request frame per stream, answered from the latest snapshot.

The response set is planned by the pure ``plan_response`` over the index's monotone facts
and the writer's latest ``StoreSnapshot``; op bytes are read from RocksDB by the batch
(``load_cbor``). Both run in worker threads under the serve ``CapacityLimiter`` (the walk
is CPU-bound, the reads block), never on the event loop and never under a store lock.
Each blob (≤ ``batch_ops`` frames) is written with one stream write, so a large response is
never buffered whole (transport back-pressure).

Limits: at most ``SyncConfig.max_serves_per_peer`` streams of one peer are served at a
time; a stream beyond that is reset at once (logged, counted as ``serves_refused``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ecac.core.errors import EcacError, ProtocolError
from ecac.core.snapshot import IndexFacts, StoreSnapshot
from ecac.net.counters import NodeCounters
from ecac.sync.coordinator import SyncConfig
from ecac.sync.syncserve import plan_response, response_blobs
from ecac.sync.wire import MAX_REQUEST_FRAME, FrameReader, SyncRequest

log = logging.getLogger("ecac.node")

SERVE_READ_TIMEOUT = 15.0  # the request frame must arrive within this
READ_CHUNK = 256 * 1024  # = yamux's receive window: one read takes all that is buffered
#: worker threads planning responses and reading op bytes, for all peers together
SERVE_THREADS = 2


class SyncServer:
    """The ``/ecac/sync/1`` stream handler (see the module docstring)."""

    def __init__(
        self,
        config: SyncConfig,
        facts: IndexFacts,
        snapshot: Callable[[], StoreSnapshot],
        load_cbor: Callable[[Sequence[bytes]], list[bytes]],
        counters: NodeCounters,
        is_blocked: Callable[[str], bool],
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.cfg = config
        self.facts = facts
        self._snapshot = snapshot
        self._load_cbor = load_cbor
        self.counters = counters
        self._is_blocked = is_blocked
        self.limiter = limiter or trio.CapacityLimiter(SERVE_THREADS)
        self.active: Counter[str] = Counter()  # peer -> streams being served

    async def handle(self, stream: Any) -> None:
        """Serve one stream (the host's handler for the sync protocol)."""
        peer = stream.peer_id
        if self._is_blocked(peer):
            await stream.reset()
            return
        limit = self.cfg.max_serves_per_peer
        if self.active[peer] >= limit:
            self.counters.serves_refused += 1
            log.info(
                "refusing a sync stream from %s: %d serves of it already running (max %d)",
                peer,
                self.active[peer],
                limit,
            )
            await stream.reset()
            return
        self.active[peer] += 1
        try:
            await self._serve(stream, peer)
        finally:
            self.active[peer] -= 1
            if self.active[peer] <= 0:
                del self.active[peer]

    async def _serve(self, stream: Any, peer: str) -> None:
        from ecac.net.host import StreamResetError

        reader = FrameReader(MAX_REQUEST_FRAME)
        body: bytes | None = None
        try:
            with trio.fail_after(SERVE_READ_TIMEOUT):
                while body is None:
                    chunk = await stream.read(READ_CHUNK)
                    self.counters.sync_bytes_received += len(chunk)
                    if not chunk:
                        raise ProtocolError("stream ended before the request frame")
                    bodies = reader.feed(chunk)
                    if len(bodies) > 1:
                        raise ProtocolError("more than one request frame")
                    if bodies:
                        body = bodies[0]
            request = SyncRequest.decode(body)
        except (ProtocolError, EcacError, trio.TooSlowError, StreamResetError) as e:
            self.counters.serve_errors += 1
            log.info("bad sync request from %s: %s", peer, e or "timeout")
            await stream.reset()
            return
        cfg = self.cfg
        snap = self._snapshot()
        plan = await trio.to_thread.run_sync(
            plan_response, self.facts, snap, request, cfg.server_max_ops, limiter=self.limiter
        )
        self.counters.requests_served += 1
        log.log(
            logging.INFO if plan.ids else logging.DEBUG,
            "serving %s: want %d, boundary %d -> %d ops (%s, visited %d)",
            peer,
            len(request.want),
            len(request.boundary),
            len(plan.ids),
            plan.trailer.NAME,
            plan.visited,
        )
        blobs = response_blobs(plan, self._load_cbor, cfg.batch_ops, cfg.max_frame)
        try:
            while True:
                blob = await trio.to_thread.run_sync(next, blobs, None, limiter=self.limiter)
                if blob is None:
                    break
                await stream.write(blob)
                self.counters.sync_bytes_sent += len(blob)
        except (ProtocolError, StreamResetError) as e:
            self.counters.serve_errors += 1
            log.info("response to %s aborted: %s", peer, e)
            await stream.reset()
            return
        self.counters.ops_served += len(plan.ids)
        await stream.close()
