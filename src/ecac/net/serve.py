"""Serving ``/ecac/sync/1``: one request frame per stream, answered from the latest snapshot.

The response set is planned by the pure ``plan_response`` over the index's monotone facts
and the writer's latest ``StoreSnapshot``; op bytes are read from RocksDB by the batch
(``load_cbor``). Both run in worker threads under the serve ``CapacityLimiter`` (the walk
is CPU-bound, the reads block), never on the event loop and never under a store lock.
Each blob (≤ ``batch_ops`` frames) is written with one stream write, so a large response is
never buffered whole (transport back-pressure).

Limits: at most ``SyncConfig.max_serves_per_peer`` streams of one peer are served at a
time; a stream beyond that is reset at once (logged, counted as ``serves_refused``). The
request frame must arrive within ``SERVE_READ_TIMEOUT``; a malformed one (bad framing, not
the canonical ``SyncRequest``, over a limit, more than one frame) gets a stream reset at once
(the protocol has no error frame), logged with its reason and counted in ``serve_errors``.

Per-peer serve quota (``SyncConfig.peer_serve_*``, ``ecac.sync.quota``): a peer whose quota
is spent waits for it to refill before its request is planned (at most ``SERVE_QUOTA_MAX_WAIT``;
beyond that it gets an empty ``More``), a response is capped at the ops the quota allows
(``More``), and one that spends the byte quota stops early with ``More``. The walk's visits
beyond the ops sent are charged too (``VISITS_PER_OP`` visits = one op). The requester asks
again with its updated boundary, so the rest comes parent-first at the quota rate.
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
from ecac.sync.coordinator import QUOTA_RESUME_BYTES, SyncConfig
from ecac.sync.quota import QuotaTable
from ecac.sync.syncserve import plan_response, response_batches
from ecac.sync.wire import MAX_REQUEST_FRAME, MORE, FrameReader, SyncRequest, encode_frame

log = logging.getLogger("ecac.node")

SERVE_READ_TIMEOUT = 15.0  # the request frame must arrive within this
READ_CHUNK = 256 * 1024  # = yamux's receive window: one read takes all that is buffered
#: worker threads planning responses and reading op bytes, for all peers together
SERVE_THREADS = 2
#: longest wait for a peer's serve quota to refill before its request is answered with an empty More
SERVE_QUOTA_MAX_WAIT = 5.0
#: ops of the paint-down walk that cost one op of the serve quota (a visit is a heap step, a sent op
#: a store read, an encode and a write)
VISITS_PER_OP = 64


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
        self.quota = QuotaTable(config.serve_limits, config.max_peer_states)
        self.bad_requests = 0  # malformed request frames (each got a reset)

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

    def counters_dict(self, now: float) -> dict[str, Any]:
        """Serve-side counters for ``/status``: bad requests, and the serve quota's totals and peers."""
        out: dict[str, Any] = {"serve_bad_requests": self.bad_requests}
        out.update(self.quota.counters.as_dict("quota_serve"))
        out["quota_serve"] = self.quota.status(now)
        return out

    async def _read_request(self, stream: Any, peer: str) -> SyncRequest | None:
        """The one request frame, strictly decoded; None after resetting a stream that sent a bad one."""
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
        except StreamResetError as e:
            self.counters.serve_errors += 1
            log.info("sync request from %s: stream reset by the peer (%s)", peer, e)
            return None
        except (ProtocolError, trio.TooSlowError) as e:
            reason = str(e) or f"no complete request frame within {SERVE_READ_TIMEOUT:g} s"
            await self._refuse(stream, peer, reason)
            return None
        try:
            return SyncRequest.decode(body)
        except Exception as e:  # any decode failure is the peer's bad request, never ours
            reason = str(e) if isinstance(e, EcacError) else f"{type(e).__name__}: {e}"
            await self._refuse(stream, peer, reason)
            return None

    async def _refuse(self, stream: Any, peer: str, reason: str) -> None:
        """Reset the stream of a malformed request at once (the protocol has no error frame)."""
        self.counters.serve_errors += 1
        self.bad_requests += 1
        log.info("bad sync request from %s: %s (stream reset)", peer, reason)
        await stream.reset()

    async def _quota_cap(self, peer: str) -> int:
        """Wait (bounded) for ``peer``'s serve quota; the most ops its response may carry (0: none now)."""
        cfg = self.cfg
        wait = self.quota.ready_in(peer, cfg.batch_ops, QUOTA_RESUME_BYTES, trio.current_time())
        if wait > SERVE_QUOTA_MAX_WAIT:
            return 0
        if wait > 0:
            self.quota.counters.deferred += 1
            await trio.sleep(wait)
        allow = self.quota.allowance(peer, trio.current_time())
        if allow.ops == float("inf"):
            return cfg.server_max_ops
        return max(0, min(cfg.server_max_ops, int(allow.ops)))

    async def _serve(self, stream: Any, peer: str) -> None:
        from ecac.net.host import StreamResetError

        request = await self._read_request(stream, peer)
        if request is None:
            return
        cfg = self.cfg
        cap = await self._quota_cap(peer)
        if cap < 1:
            self.quota.counters.cuts += 1
            log.info("serve quota of %s spent: answering More without ops", peer)
            await stream.write(encode_frame(MORE.encode()))
            await stream.close()
            return
        snap = self._snapshot()
        plan = await trio.to_thread.run_sync(
            plan_response, self.facts, snap, request, cap, limiter=self.limiter
        )
        self.counters.requests_served += 1
        # the walk's work counts too: a request that visits much and sends little is no free lunch
        self.quota.charge(peer, max(0, plan.visited - len(plan.ids)) // VISITS_PER_OP, 0, trio.current_time())
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
        if cap < cfg.server_max_ops and len(plan.ids) == cap and plan.total > cap:
            self.quota.counters.cuts += 1
        batches = response_batches(plan, self._load_cbor, cfg.batch_ops, cfg.max_frame)
        trailer = plan.trailer
        sent = 0
        try:
            while True:
                got = await trio.to_thread.run_sync(next, batches, None, limiter=self.limiter)
                if got is None:
                    break
                blob, n, nbytes = got
                await stream.write(blob)
                sent += n
                self.counters.sync_bytes_sent += len(blob)
                now = trio.current_time()
                self.quota.charge(peer, n, nbytes, now)
                if sent < len(plan.ids) and self.quota.allowance(peer, now).bytes <= 0:
                    trailer = MORE  # the byte quota is spent: the rest is asked for again
                    self.quota.counters.cuts += 1
                    break
            end = encode_frame(trailer.encode(), cfg.max_frame)
            await stream.write(end)
            self.counters.sync_bytes_sent += len(end)
        except (ProtocolError, StreamResetError) as e:
            self.counters.serve_errors += 1
            log.info("response to %s aborted: %s", peer, e)
            await stream.reset()
            return
        self.counters.ops_served += sent
        await stream.close()
