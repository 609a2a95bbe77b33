"""Sans-I/O synchronisation: per-peer state machines and the node-level ``SyncCoordinator``.

The coordinator decides everything about sync except moving bytes: what to fetch and
from whom (via ``SyncPlanner``), how to check a streamed response (parent-first, dedup),
when to commit, when to announce, timeouts, backoff, peer switching and anti-entropy. It
never reads a clock (every event carries ``now``, a monotonic time in seconds), never
touches a socket and never touches the store: it returns **effects** (``ecac.sync.effects``)
that the I/O layer carries out, and the I/O layer reports back with **events**. Every event
method returns ``list[Effect]``; carry them out in order.

**What it reads.** ``facts`` is the live ``OpIndex`` as ``IndexFacts``: only the monotone
point queries ``contains`` and ``is_complete`` (safe while the writer thread adds ops;
never raising). Everything that needs a whole view — counts, heads, the recent bloom,
boundary samples — comes from the latest ``StoreSnapshot`` it was given (constructor,
``snapshot_changed``, ``commit_finished``). A snapshot older than the one it holds (lower
``seq``) is ignored.

**Never half-updated.** Each event method first checks its arguments and computes
everything that can fail (classification of received ops, the planner's choice, the
boundary, the request and announce values), and only then applies the transition with
plain dict, set and counter updates that cannot raise. So a method either completes its
transition or raises before mutating anything. A caller that gets an exception (a bug)
discards the coordinator and continues with ``restarted(snapshot, now)``: a fresh
coordinator from the latest snapshot that keeps the counters, bans, connected peers and
id counters (ids never repeat, so late reports for the old requests are ignored).
``check_invariants()`` lists any internal inconsistency (tests call it after every step).

**Bounded.** Ops held per request awaiting commit are capped in ops (``max_held_ops``)
and bytes (``max_held_bytes``): a reader that ignores back-pressure and exceeds them
fails its request (a local fault, no penalty). Across requests, ``accepting`` turns
false while ``max_held_bytes_total`` is reached, and every request's buffer is then
committed early, so the total drains. Peers remembered, wanted ids and in-flight
requests are bounded by ``max_peer_states``, ``max_wanted`` and
``max_in_flight_per_peer``; concurrent serves per peer (``max_serves_per_peer``) are
enforced by the node.

Integration guide for the node (the store's single writer publishes snapshots)::

    coord = SyncCoordinator(node_signing_key, store.index, SyncConfig(...), writer.snapshot)
    run(coord.start(now()))                     # after subscribing to the announce topic
    # peers are the base58 PeerId strings (anti-entropy goes round them in sorted order);
    # now() is trio.current_time() / time.monotonic(); the coordinator is NOT thread-safe:
    # call it from one task only (decode_frames and the syncserve functions may run in
    # worker threads: they only read their arguments, the monotone facts and a snapshot).

    # gossip topic validator (store §2.3.3); accept => gossipsub forwards it
    sa = coord.validate_announce(msg.data, expected_vk=originator_pubkey_or_None)
    # on delivery of an accepted announce
    run(coord.announce_received(origin_peer, sa, relayed_by=msg.received_from, now=now()))

    # connections / subscriptions
    run(coord.peer_connected(peer, now()));  run(coord.peer_subscribed(peer, now()))
    run(coord.peer_disconnected(peer, now()))

    # the writer published a snapshot after a local write (or any other commit):
    run(coord.snapshot_changed(snapshot, now(), local=True))

    # effects
    SendRequest(peer, request_id, request): open an /ecac/sync/1 stream, write
        effect.frame() (optionally report coord.request_started(...)), then read:
        reader = FrameReader(cfg.max_frame); for each chunk: bodies = reader.feed(chunk),
        decoded = decode_frames(bodies) (pure: may run in a worker thread),
        run(coord.decoded_received(request_id, decoded, now())).
        Read on only while coord.accepting(request_id) (back-pressure on commits and on
        the held-bytes budget). An oversized frame (ProtocolError from feed) is the
        peer's protocol violation: run(coord.request_failed(request_id, str(e), now(),
        violation=True)). On EOF call run(coord.stream_closed(request_id, now())): before
        a trailer it is a failure that is retried elsewhere (reader.eof() tells whether
        it ended inside a frame; log it, but a truncated stream is not penalised).
        Dial/open failure or reset: run(coord.request_failed(request_id, reason, now())).
    CancelRequest(request_id, ...): reset that stream; report nothing more for it.
    CommitOps(...): hand it to the store's writer (commits land in emission order); when
        it is done: run(coord.commit_finished(outcome, snapshot_after_it, now())).
    PublishAnnounce(data): gossip publish on the topic (drop it if no peer is subscribed).
    Penalise(peer, reason): log/metrics. Disconnect(peer, reason, ban_until): close the
        connection; refuse or re-close it until ban_until (the coordinator also re-sends
        Disconnect if a banned peer connects).

    # timers: call coord.timer(now()) whenever coord.next_wakeup() passes (or every
    # 50-100 ms).

    # supervision: any exception from a coordinator method is a bug; log it, count it and
    #     coord, effects = coord.restarted(writer.snapshot, now()); run(effects)

    # server side (incoming /ecac/sync/1 stream): read one frame with
    # FrameReader(MAX_REQUEST_FRAME), then for blob in syncserve.serve_sync(store.index,
    # writer.snapshot, load_cbor, body, server_max_ops=..., max_frame=...):
    #     await stream.write(blob)        # one write per batch of <= 512 ops
    # then close. Decode errors => reset the stream. plan_response (the paint-down walk)
    # is CPU-bound and load_cbor reads the disk: run them in worker threads.

Signature verification happens exactly once per op: in the store's validating
``put_many`` (run by the writer for ``CommitOps``), which is the final gate (store
§2.3.6). The coordinator checks structure first (strict canonical decode, parents stored
or earlier in the same response, dedup) so that nothing out of order is ever handed to
the store; a commit refused by the store is a protocol violation of the peer that sent
the op: the valid prefix is committed again (re-verified: attack case only), nothing
after it is kept, the peer is penalised and disconnected, and its ids are fetched
elsewhere.

Per request, at most one commit is outstanding and later ops wait in a buffer, so every
op reaches the store after its parents (parents were stored before the check, or are in
the same or an earlier commit of the same response).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, TypeVar

from nacl.signing import SigningKey

from ecac.core.errors import ProtocolError
from ecac.core.op import Op
from ecac.core.snapshot import SNAPSHOT_BLOOM_WINDOW, SNAPSHOT_HEADS_MAX, IndexFacts, StoreSnapshot
from ecac.sync.effects import (
    CancelRequest,
    CommitOps,
    CommitOutcome,
    Disconnect,
    Effect,
    Penalise,
    PublishAnnounce,
    SendRequest,
)
from ecac.sync.frames import DecodedFrames, decode_frames
from ecac.sync.planner import PeerId, PeerView, SyncPlanner
from ecac.sync.quota import QuotaLimits, QuotaTable
from ecac.sync.syncserve import BATCH_OPS, SERVER_MAX_OPS, build_boundary
from ecac.sync.wire import (
    ANNOUNCE_HEADS,
    BLOOM_WINDOW,
    MAX_ANNOUNCE_HEADS,
    MAX_BOUNDARY,
    MAX_FRAME,
    MAX_WANT,
    MORE,
    Announce,
    End,
    More,
    SignedAnnounce,
    SyncRequest,
    check_max_frame,
    node_id_of,
    validate_signed_announce,
)

_MIB = 1024 * 1024
#: a response cut by the ingest quota is asked again once a batch of ops and this many bytes are allowed
QUOTA_RESUME_BYTES = _MIB
QUOTA_MIN_WAIT = 0.05
#: ids of the per-peer received frontier kept (and put into that peer's boundaries); see ``PeerState``
PEER_FRONTIER_MAX = 64

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Tunable defaults of store §2.3.9 (times in seconds of the monotonic clock, sizes in bytes)."""

    announce_heads: int = ANNOUNCE_HEADS
    bloom_window: int = BLOOM_WINDOW
    announce_debounce: float = 0.25
    anti_entropy_period: float = 5.0
    max_in_flight_per_peer: int = 1  # a 2nd request would resend the ops the 1st is delivering
    max_want_per_request: int = MAX_WANT
    request_max_ops: int = 0  # 0 = the server's cap
    batch_ops: int = BATCH_OPS
    batch_bytes: int = MAX_FRAME  # a commit is cut at batch_ops ops or batch_bytes bytes, whichever first
    server_max_ops: int = SERVER_MAX_OPS
    max_frame: int = MAX_FRAME
    idle_timeout: float = 15.0
    request_deadline: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    ban_period: float = 60.0
    max_wanted: int = 10_000
    want_ttl: float = 60.0
    max_held_ops: int = 10_000  # ops buffered per request awaiting commit
    max_held_bytes: int = 64 * _MIB  # their bytes
    max_held_bytes_total: int = 256 * _MIB  # bytes buffered over all requests (back-pressure)
    max_serves_per_peer: int = 2  # concurrent /ecac/sync/1 streams served to one peer (the node enforces it)
    no_progress_limit: int = 2  # More answers in a row without a new op end the chain
    max_peer_states: int = 4096  # remembered peers (announce originators included); idle ones evicted
    # per-peer quotas (docs/protocol.md "Limits and quotas"): ops and op bytes per second taken from
    # one peer (ingest) and sent to one peer (serve; the node enforces it), each bucket holding
    # quota_burst_s seconds of its rate; 0 = unlimited
    peer_ingest_ops_per_s: float = 1024.0
    peer_ingest_bytes_per_s: float = 2.0 * _MIB
    peer_serve_ops_per_s: float = 1024.0
    peer_serve_bytes_per_s: float = 2.0 * _MIB
    quota_burst_s: float = 4.0

    @property
    def ingest_limits(self) -> QuotaLimits:
        return QuotaLimits(self.peer_ingest_ops_per_s, self.peer_ingest_bytes_per_s, self.quota_burst_s)

    @property
    def serve_limits(self) -> QuotaLimits:
        return QuotaLimits(self.peer_serve_ops_per_s, self.peer_serve_bytes_per_s, self.quota_burst_s)

    def __post_init__(self) -> None:
        check_max_frame(self.max_frame)
        if not 1 <= self.max_want_per_request <= MAX_WANT:
            raise ValueError(f"max_want_per_request must be between 1 and {MAX_WANT}")
        if not 1 <= self.announce_heads <= min(MAX_ANNOUNCE_HEADS, SNAPSHOT_HEADS_MAX):
            raise ValueError(f"announce_heads must be between 1 and {MAX_ANNOUNCE_HEADS}")
        if self.bloom_window != SNAPSHOT_BLOOM_WINDOW:
            raise ValueError(
                f"bloom_window must be {SNAPSHOT_BLOOM_WINDOW}: the snapshot's bloom covers that many ids"
            )
        if self.max_in_flight_per_peer < 1 or self.batch_ops < 1 or self.server_max_ops < 1:
            raise ValueError("in-flight limit, batch size and server cap must be positive")
        if self.batch_bytes < 1 or self.max_serves_per_peer < 1 or self.max_peer_states < 1:
            raise ValueError("batch_bytes, max_serves_per_peer and max_peer_states must be positive")
        if self.max_held_ops < self.batch_ops:
            raise ValueError("max_held_ops must be at least batch_ops")
        if self.max_held_bytes < self.batch_bytes:
            raise ValueError("max_held_bytes must be at least batch_bytes")
        if self.max_held_bytes_total < self.max_held_bytes:
            raise ValueError("max_held_bytes_total must be at least max_held_bytes")
        if min(self.idle_timeout, self.request_deadline, self.anti_entropy_period) <= 0:
            raise ValueError("timeouts and the anti-entropy period must be positive")
        if min(self.announce_debounce, self.backoff_base, self.backoff_max, self.ban_period) < 0:
            raise ValueError("debounce, backoff and ban times must not be negative")
        if self.request_max_ops < 0 or self.no_progress_limit < 1 or self.max_wanted < 1:
            raise ValueError("request_max_ops must be >= 0, no_progress_limit and max_wanted >= 1")
        _ = self.ingest_limits, self.serve_limits  # building them validates the quota settings

    def backoff(self, failures: int) -> float:
        """Delay after ``failures`` consecutive failures: base × 2^(failures−1), capped (0 when none)."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(failures - 1, 30))


@dataclass(slots=True)
class SyncCounters:
    """Sync metrics; each event is counted once (store §2.3.6). Carried over a restart."""

    ops_fetched: int = 0
    fetch_batches: int = 0
    ops_duplicates_dropped: int = 0
    announces_sent: int = 0
    announces_received: int = 0
    announces_rejected: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    requests_over_budget: int = 0
    peers_penalised: int = 0
    coordinator_restarts: int = 0
    quota_ingest_cuts: int = 0  # responses cut because the peer's ingest quota ran out
    quota_ingest_deferred: int = 0  # received ops dropped by those cuts (fetched again later)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def copy(self) -> SyncCounters:
        return SyncCounters(**self.as_dict())


# --------------------------------------------------------------------------- announces


def local_announce(
    snapshot: StoreSnapshot, sk: SigningKey, heads: int = ANNOUNCE_HEADS, bloom_window: int = BLOOM_WINDOW
) -> SignedAnnounce:
    """This node's signed announce from a snapshot: complete-op count, newest heads, recent bloom (§2.3.3)."""
    if bloom_window != SNAPSHOT_BLOOM_WINDOW:
        raise ValueError(f"the snapshot's bloom covers {SNAPSHOT_BLOOM_WINDOW} ids, not {bloom_window}")
    a = Announce(
        node_id_of(bytes(sk.verify_key)),
        snapshot.complete_count,
        snapshot.top_heads(heads),
        snapshot.recent_bloom,
    )
    return SignedAnnounce.sign(sk, a)


# --------------------------------------------------------------------------- per-peer state


@dataclass(slots=True)
class PeerState:
    """One peer: connection, failures and backoff, ban, requests in flight, last announce.

    Read-only outside the coordinator: ``connected``, ``failures``, the three deadlines and
    ``requests`` change only through ``SyncCoordinator._set_peer`` / ``_attach`` / ``_detach``,
    which keep the coordinator's peer index (connected peers, deadline heaps, eviction order)
    in step with them.
    """

    peer: PeerId
    connected: bool = False
    failures: int = 0
    backoff_until: float = 0.0
    banned_until: float = 0.0
    requests: set[int] = field(default_factory=set)
    last_announce_id: bytes | None = None
    watermark: int = 0
    bloom: bytes | None = None
    heads: tuple[bytes, ...] = ()  # of its last (new) announce
    all_heads: bool = False  # that announce listed every head the peer has (fewer than the cap)
    announced_at: float | None = None  # when that announce arrived
    # The newest ops this peer sent us (fresh ones once committed, duplicates as they arrive)
    # without a child among them, oldest first, at most PEER_FRONTIER_MAX: the peer certainly
    # holds them and their ancestors, so they go into every boundary sent to it.
    frontier: dict[bytes, None] = field(default_factory=dict)
    quota_until: float = 0.0  # its ingest quota ran out: no request to it before this time

    def note_received(self, ops: Sequence[Op]) -> None:
        """``ops`` (parent-first) came from this peer: they replace their parents in the frontier."""
        f = self.frontier
        for op in ops:
            for p in op.parents:
                f.pop(p, None)
            f.pop(op.op_id, None)
            f[op.op_id] = None
        while len(f) > PEER_FRONTIER_MAX:
            del f[next(iter(f))]

    def known_ids(self) -> list[bytes]:
        """Ids this peer certainly holds: its frontier (newest first), then its announced heads."""
        return list(reversed(self.frontier)) + [h for h in self.heads if h not in self.frontier]

    def available(self, now: float) -> bool:
        """Connected, not banned and out of backoff: requests may be sent."""
        return (
            self.connected
            and now >= self.banned_until
            and now >= self.backoff_until
            and now >= self.quota_until
        )

    def evictable(self) -> bool:
        """Disconnected, idle and not banned: forgetting it loses nothing (``max_peer_states``)."""
        return not self.connected and not self.requests and self.banned_until == 0.0


#: kinds of peer deadline in the coordinator's expiry heap
_BACKOFF = 0
_QUOTA = 1
#: the index heaps are rebuilt (stale entries dropped) once one holds more than
#: _HEAP_GROWTH × (peers + requests) + _HEAP_SLACK entries: amortised O(1) per push, bounded memory
_HEAP_GROWTH = 4
_HEAP_SLACK = 64
_H = TypeVar("_H", bound=tuple[Any, ...])


ACTIVE = "active"  # waiting for frames
TRAILER = "trailer"  # trailer received, commits draining
FAILED = "failed"  # failed, commits draining
DONE = "done"  # finished and forgotten (only stale references see it)

FETCH = "fetch"
ANTI_ENTROPY = "anti-entropy"


@dataclass(slots=True)
class _Request:
    rid: int
    peer: PeerId
    kind: str
    want: tuple[bytes, ...]
    started: float
    last_activity: float
    no_progress: int = 0  # More answers in a row without a new op, including this chain's earlier ones
    phase: str = ACTIVE
    trailer: End | More | None = None
    buffer: list[Op] = field(default_factory=list)
    buffer_bytes: int = 0
    pending: set[bytes] = field(default_factory=set)  # ids in buffer or in the outstanding commit
    commit_id: int | None = None
    accepted: int = 0
    dup_ids: list[bytes] = field(default_factory=list)
    quota_cut: bool = False  # ended by the peer's ingest quota (a More of our own making)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A read-only view of one request (status pages, tests)."""

    request_id: int
    peer: PeerId
    kind: str  # FETCH or ANTI_ENTROPY
    want: tuple[bytes, ...]
    phase: str  # ACTIVE, TRAILER or FAILED
    held_ops: int  # buffered, awaiting commit
    held_bytes: int
    commit_id: int | None  # the outstanding commit
    accepted: int  # new ops accepted from this response so far


@dataclass(frozen=True, slots=True)
class CoordinatorCarry:
    """What a restarted coordinator keeps of the one it replaces (see ``SyncCoordinator.restarted``)."""

    counters: SyncCounters
    next_request_id: int
    next_commit_id: int
    connected: tuple[PeerId, ...]
    bans: tuple[tuple[PeerId, float], ...]
    started: bool
    last_announce: bytes | None
    last_publish_at: float | None
    ae_cursor: PeerId | None
    ingest_quota: QuotaTable | None = None


def _check_now(now: float) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise TypeError(f"now must be a finite number of seconds, not {now!r}")


def _check_peer(peer: PeerId) -> None:
    if not isinstance(peer, str) or not peer:
        raise TypeError(f"a peer is a non-empty string, not {peer!r}")


def _check_snapshot(snapshot: StoreSnapshot) -> None:
    if not isinstance(snapshot, StoreSnapshot):
        raise TypeError(f"expected a StoreSnapshot, not {type(snapshot).__name__}")


# --------------------------------------------------------------------------- coordinator


class SyncCoordinator:
    """Node-level sync: planner + peers + requests + announces + anti-entropy. See the module docstring."""

    def __init__(
        self,
        sk: SigningKey,
        facts: IndexFacts,
        config: SyncConfig | None = None,
        snapshot: StoreSnapshot | None = None,
        *,
        carry: CoordinatorCarry | None = None,
    ) -> None:
        if snapshot is not None:
            _check_snapshot(snapshot)
        self.sk = sk
        self.vk = bytes(sk.verify_key)
        self.node_id = node_id_of(self.vk)
        self.facts = facts
        self.config = config or SyncConfig()
        self.counters = SyncCounters()
        self.planner = SyncPlanner(
            self.config.max_want_per_request, self.config.max_wanted, self.config.want_ttl
        )
        self._snapshot = snapshot if snapshot is not None else StoreSnapshot()
        self._peers: dict[PeerId, PeerState] = {}
        # The peer index: what the per-event queries need, so that none of them walks every
        # remembered peer (a node remembers every announce originator, up to max_peer_states).
        # Lazy min-heaps: an entry is checked against the current state when it reaches the top,
        # and dropped there if stale; ``_set_peer``, ``_attach``, ``_detach`` and ``_touch`` push
        # an entry whenever a value they index appears or moves earlier.
        self._connected: dict[PeerId, PeerState] = {}  # in connection order
        self._expiry: list[tuple[float, int, PeerId]] = []  # every backoff/quota deadline > 0 (timer resets)
        self._live_backoff: list[tuple[float, PeerId]] = []  # those of connected peers (next_wakeup)
        self._live_quota: list[tuple[float, PeerId]] = []
        self._born: dict[PeerId, int] = {}  # creation order of the remembered peers
        self._next_born = 0
        self._evict_q: list[tuple[int, PeerId]] = []  # evictable peers by creation order
        self._deadlines: list[tuple[float, int]] = []  # active requests, lower bounds of their deadlines
        self._requests: dict[int, _Request] = {}
        self._commits: dict[int, tuple[int, tuple[Op, ...]]] = {}
        self._next_rid = 1
        self._next_cid = 1
        self._started = False
        self._ae_next_at: float | None = None
        self._ae_cursor: PeerId | None = None
        self._ae_rid: int | None = None
        self._announce_dirty = False
        self._announce_forced = False
        self._last_announce: bytes | None = None
        self._last_publish_at: float | None = None
        self.ingest_quota = QuotaTable(self.config.ingest_limits, self.config.max_peer_states)
        if carry is not None:
            self._take_carry(carry)

    # ------------------------------------------------------------------ restart (supervision)

    def carry_over(self) -> CoordinatorCarry:
        """What a replacement coordinator keeps: counters, id counters, connected peers, bans, announce."""
        return CoordinatorCarry(
            counters=self.counters.copy(),
            next_request_id=self._next_rid,
            next_commit_id=self._next_cid,
            connected=tuple(sorted(self._connected)),
            bans=tuple(sorted((p, s.banned_until) for p, s in self._peers.items() if s.banned_until > 0)),
            started=self._started,
            last_announce=self._last_announce,
            last_publish_at=self._last_publish_at,
            ae_cursor=self._ae_cursor,
            ingest_quota=self.ingest_quota,
        )

    def _take_carry(self, c: CoordinatorCarry) -> None:
        self.counters = c.counters.copy()
        self._next_rid = c.next_request_id
        self._next_cid = c.next_commit_id
        for p, until in c.bans:
            self._set_peer(self._state(p), banned_until=until)
        for p in c.connected:
            self._set_peer(self._state(p), connected=True)
        self._started = c.started
        self._last_announce = c.last_announce
        self._last_publish_at = c.last_publish_at
        self._ae_cursor = c.ae_cursor
        if c.ingest_quota is not None:
            self.ingest_quota = c.ingest_quota  # a restart must not refill a flooding peer's quota

    def restarted(self, snapshot: StoreSnapshot, now: float) -> tuple[SyncCoordinator, list[Effect]]:
        """A fresh coordinator replacing this one (after an exception), and the effects to carry out.

        The effects reset the streams of this coordinator's active requests; commits it
        emitted may still finish (report them to the new one: their ids are unknown there
        and only their snapshot is used). The new coordinator keeps counters, bans,
        connected peers and id counters, forgets wanted ids and requests, runs an
        anti-entropy round at once and re-announces. Only reads this coordinator's state.
        """
        _check_snapshot(snapshot)
        _check_now(now)
        cancels: list[Effect] = [
            CancelRequest(q.peer, rid, "sync coordinator restarted")
            for rid, q in sorted(self._requests.items())
            if q.phase == ACTIVE
        ]
        new = SyncCoordinator(self.sk, self.facts, self.config, snapshot, carry=self.carry_over())
        new.counters.coordinator_restarts += 1
        if not new._started:
            return new, cancels
        new._ae_next_at = now
        new._announce_forced = True
        return new, cancels + new.timer(now)

    # ------------------------------------------------------------------ queries

    @property
    def snapshot(self) -> StoreSnapshot:
        """The latest store snapshot the coordinator was given."""
        return self._snapshot

    def peer(self, peer: PeerId) -> PeerState | None:
        return self._peers.get(peer)

    def connected_peers(self) -> list[PeerId]:
        return sorted(self._connected)

    def active_requests(self) -> list[int]:
        """Requests still waiting for frames, ascending."""
        return sorted(r for r, q in self._requests.items() if q.phase == ACTIVE)

    def request_peer(self, request_id: int) -> PeerId | None:
        q = self._requests.get(request_id)
        return None if q is None else q.peer

    def request_info(self, request_id: int) -> RequestInfo | None:
        q = self._requests.get(request_id)
        if q is None:
            return None
        return RequestInfo(
            q.rid, q.peer, q.kind, q.want, q.phase, len(q.buffer), q.buffer_bytes, q.commit_id, q.accepted
        )

    def requests(self) -> list[RequestInfo]:
        """Every request not yet finished (active, or draining its commits), ascending by id."""
        return [i for r in sorted(self._requests) if (i := self.request_info(r)) is not None]

    def outstanding_commits(self) -> list[int]:
        """Ids of emitted ``CommitOps`` not yet reported finished, ascending."""
        return sorted(self._commits)

    def quota_status(self, now: float) -> dict[str, object]:
        """The ingest quotas for ``/status``: limits, the busiest peers, and who waits for a refill."""
        out = self.ingest_quota.status(now)
        out["waiting"] = sorted(p for p, s in self._peers.items() if s.quota_until > now)
        return out

    def held_bytes_total(self) -> int:
        """Bytes of ops buffered awaiting commit over all requests."""
        return sum(q.buffer_bytes for q in self._requests.values())

    def accepting(self, request_id: int) -> bool:
        """Whether the I/O layer should read more frames of this request now (back-pressure)."""
        q = self._requests.get(request_id)
        if q is None or q.phase != ACTIVE:
            return False
        if self.held_bytes_total() >= self.config.max_held_bytes_total:
            return False
        cfg = self.config
        return q.commit_id is None or (len(q.buffer) < cfg.batch_ops and q.buffer_bytes < cfg.batch_bytes)

    def idle(self) -> bool:
        """No request, commit or wanted id outstanding (useful to tests and shutdown)."""
        return not self._requests and not self._commits and len(self.planner) == 0

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which ``timer`` has something to do, or None.

        O(log n) amortised: the request and peer deadlines come from the index's heaps."""
        times: list[float] = []
        if self._ae_next_at is not None:
            times.append(self._ae_next_at)
        if (self._announce_dirty or self._announce_forced) and self._last_publish_at is not None:
            times.append(self._last_publish_at + self.config.announce_debounce)
        t = self._first_deadline()
        if t is not None:
            times.append(t)
        if len(self.planner):
            t = self._live_min(self._live_backoff, _BACKOFF)
            if t is not None:
                times.append(t)
        t = self._live_min(self._live_quota, _QUOTA)
        if t is not None:
            times.append(t)
        return min(times) if times else None

    def _next_wakeup_by_walk(self) -> float | None:
        """``next_wakeup`` computed by walking every request and peer (``check_invariants`` compares)."""
        times: list[float] = []
        if self._ae_next_at is not None:
            times.append(self._ae_next_at)
        if (self._announce_dirty or self._announce_forced) and self._last_publish_at is not None:
            times.append(self._last_publish_at + self.config.announce_debounce)
        times += [self._deadline(q) for q in self._requests.values() if q.phase == ACTIVE]
        if len(self.planner):
            times += [s.backoff_until for s in self._peers.values() if s.connected and s.backoff_until > 0]
        times += [s.quota_until for s in self._peers.values() if s.connected and s.quota_until > 0]
        return min(times) if times else None

    def peer_views(self, now: float) -> dict[PeerId, PeerView]:
        """What the planner sees of every connected peer at ``now`` (in connection order; the planner
        sorts whatever decides)."""
        return {
            p: PeerView(s.available(now), self._free_slots(s), s.watermark, s.bloom)
            for p, s in self._connected.items()
        }

    def check_invariants(self) -> list[str]:
        """Internal consistency problems (empty when sound): requests, commits, planner, budgets."""
        problems: list[str] = []
        cfg = self.config
        for rid, q in self._requests.items():
            if rid != q.rid or q.peer not in self._peers or rid not in self._peers[q.peer].requests:
                problems.append(f"request {rid} is not registered with its peer")
            if q.phase not in (ACTIVE, TRAILER, FAILED):
                problems.append(f"request {rid} has phase {q.phase!r}")
            if len(q.buffer) > cfg.max_held_ops or q.buffer_bytes > cfg.max_held_bytes:
                problems.append(f"request {rid} holds more than its budget")
            if q.buffer_bytes != sum(len(op.cbor) for op in q.buffer):
                problems.append(f"request {rid} miscounts its held bytes")
            committing: tuple[Op, ...] = ()
            if q.commit_id is not None:
                if q.commit_id in self._commits:
                    committing = self._commits[q.commit_id][1]
                else:
                    problems.append(f"request {rid} waits for an unknown commit")
            ids = {op.op_id for op in q.buffer} | {op.op_id for op in committing}
            if ids != q.pending:
                problems.append(f"request {rid}: pending ids differ from buffer + commit")
            if q.phase == ACTIVE and q.kind == FETCH and self.planner.request_ids(rid) != q.want:
                problems.append(f"request {rid}: the planner does not own its wanted ids")
        for cid, (rid, _) in self._commits.items():
            owner = self._requests.get(rid)
            if owner is None or owner.commit_id != cid:
                problems.append(f"commit {cid} belongs to no request")
        for p, s in self._peers.items():
            for rid in s.requests:
                if rid not in self._requests or self._requests[rid].peer != p:
                    problems.append(f"peer {p} lists unknown request {rid}")
            busy = sum(1 for r in s.requests if self._requests[r].phase in (ACTIVE, TRAILER))
            if busy > cfg.max_in_flight_per_peer:
                problems.append(f"peer {p} has {busy} requests in flight")
        if not self._commits and any(
            q.phase == ACTIVE and not self.accepting(r) for r, q in self._requests.items()
        ):
            problems.append("reading is paused but no commit is outstanding to resume it")
        if self._ae_rid is not None and self._ae_rid not in self._requests:
            problems.append("the anti-entropy chain points to a finished request")
        for x in self.planner.in_flight_ids():
            r = self.planner.owner(x)
            if r not in self._requests:
                problems.append(f"id {x.hex()} is in flight for finished request {r}")
        for x in self.planner.held_ids():
            if not self.planner.is_wanted(x) or self.planner.in_flight(x):
                problems.append(f"id {x.hex()} is held but not a want waiting to be planned")
            if any(r not in self._requests for r in self.planner.held_by(x)):
                problems.append(f"id {x.hex()} is held by a finished request")
        if any(len(s.frontier) > PEER_FRONTIER_MAX for s in self._peers.values()):
            problems.append("a peer's received frontier exceeds its bound")
        if len(self._peers) > cfg.max_peer_states:
            problems.append("too many peer states")
        if len(self.planner) > cfg.max_wanted:
            problems.append("too many wanted ids")
        return problems + self._index_problems()

    def _index_problems(self) -> list[str]:
        """Where the peer index disagrees with a walk over every peer and request (it must never)."""
        problems: list[str] = []
        walked = {p: s for p, s in self._peers.items() if s.connected}
        if walked != self._connected or any(self._connected[p] is not s for p, s in walked.items()):
            problems.append("the connected-peer index differs from the peer states")
        if set(self._born) != set(self._peers):
            problems.append("the creation-order index differs from the peer states")
        expiry = set(self._expiry)
        live = {_BACKOFF: set(self._live_backoff), _QUOTA: set(self._live_quota)}
        for p, s in self._peers.items():
            for kind, t in ((_BACKOFF, s.backoff_until), (_QUOTA, s.quota_until)):
                if t > 0 and (t, kind, p) not in expiry:
                    problems.append(f"peer {p}: a deadline missing from the expiry heap")
                if t > 0 and s.connected and (t, p) not in live[kind]:
                    problems.append(f"peer {p}: a deadline missing from the connected-peer heaps")
            if s.evictable() and (self._born.get(p), p) not in set(self._evict_q):
                problems.append(f"peer {p} is evictable but not queued for eviction")
        bounds = {rid: self._deadline(q) for rid, q in self._requests.items() if q.phase == ACTIVE}
        low: dict[int, float] = {}
        for t, rid in self._deadlines:
            low[rid] = min(t, low.get(rid, t))
        if any(rid not in low or low[rid] > t for rid, t in bounds.items()):
            problems.append("an active request's deadline is missing from the deadline heap")
        if self.next_wakeup() != self._next_wakeup_by_walk():
            problems.append("next_wakeup differs from a walk over every request and peer")
        first = next((p for p, s in self._peers.items() if s.evictable()), None)
        if self._eviction_candidate() != first:
            problems.append("the eviction queue does not name the oldest evictable peer")
        return problems

    # ------------------------------------------------------------------ the peer index

    def _set_peer(
        self,
        s: PeerState,
        *,
        connected: bool | None = None,
        failures: int | None = None,
        backoff_until: float | None = None,
        quota_until: float | None = None,
        banned_until: float | None = None,
    ) -> None:
        """The one writer of a peer's indexed fields: updates them and the index together (cannot raise)."""
        was_connected, was_evictable = s.connected, s.evictable()
        if failures is not None:
            s.failures = failures
        if banned_until is not None:
            s.banned_until = banned_until
        if backoff_until is not None:
            s.backoff_until = backoff_until
        if quota_until is not None:
            s.quota_until = quota_until
        if connected is not None:
            s.connected = connected
            if connected:
                self._connected[s.peer] = s
            else:
                self._connected.pop(s.peer, None)
        p = s.peer
        joined = s.connected and not was_connected
        if backoff_until is not None and backoff_until > 0:
            self._push(self._expiry, (backoff_until, _BACKOFF, p))
        if quota_until is not None and quota_until > 0:
            self._push(self._expiry, (quota_until, _QUOTA, p))
        if s.connected and s.backoff_until > 0 and (joined or backoff_until is not None):
            self._push(self._live_backoff, (s.backoff_until, p))
        if s.connected and s.quota_until > 0 and (joined or quota_until is not None):
            self._push(self._live_quota, (s.quota_until, p))
        if s.evictable() and not was_evictable:
            self._push(self._evict_q, (self._born[p], p))

    def _attach(self, s: PeerState, rid: int) -> None:
        s.requests.add(rid)

    def _detach(self, s: PeerState, rid: int) -> None:
        s.requests.discard(rid)
        if s.evictable():
            self._push(self._evict_q, (self._born[s.peer], s.peer))

    def _record_failure(self, s: PeerState, now: float) -> None:
        f = s.failures + 1
        self._set_peer(s, failures=f, backoff_until=now + self.config.backoff(f))

    def _record_success(self, s: PeerState) -> None:
        self._set_peer(s, failures=0, backoff_until=0.0)

    def _deadline(self, q: _Request) -> float:
        """When an active request times out: idle timeout or overall deadline, whichever first."""
        return min(q.last_activity + self.config.idle_timeout, q.started + self.config.request_deadline)

    def _touch(self, q: _Request, now: float) -> None:
        """Activity on ``q``: its idle timer restarts (a deadline that moved earlier is pushed anew)."""
        before = self._deadline(q)
        q.last_activity = now
        after = self._deadline(q)
        if after < before:
            self._push(self._deadlines, (after, q.rid))

    def _push(self, heap: list[_H], item: _H) -> None:
        heappush(heap, item)
        if len(heap) > _HEAP_GROWTH * (len(self._peers) + len(self._requests)) + _HEAP_SLACK:
            self._rebuild_index_heaps()

    def index_sizes(self) -> dict[str, int]:
        """Entries held by each heap of the peer index (tests check they stay bounded)."""
        return {
            "expiry": len(self._expiry),
            "live_backoff": len(self._live_backoff),
            "live_quota": len(self._live_quota),
            "eviction": len(self._evict_q),
            "deadlines": len(self._deadlines),
        }

    def _rebuild_index_heaps(self) -> None:
        """Drop every stale entry (bounded memory: stale entries below a heap's top are never popped)."""
        peers = self._peers.items()
        self._expiry = [(s.backoff_until, _BACKOFF, p) for p, s in peers if s.backoff_until > 0]
        self._expiry += [(s.quota_until, _QUOTA, p) for p, s in peers if s.quota_until > 0]
        self._live_backoff = [(s.backoff_until, p) for p, s in self._connected.items() if s.backoff_until > 0]
        self._live_quota = [(s.quota_until, p) for p, s in self._connected.items() if s.quota_until > 0]
        self._evict_q = [(self._born[p], p) for p, s in peers if s.evictable()]
        self._deadlines = [(self._deadline(q), r) for r, q in self._requests.items() if q.phase == ACTIVE]
        heapify(self._expiry)
        heapify(self._live_backoff)
        heapify(self._live_quota)
        heapify(self._evict_q)
        heapify(self._deadlines)

    def _live_min(self, heap: list[tuple[float, PeerId]], kind: int) -> float | None:
        """The earliest backoff (or quota) deadline of a connected peer; pops stale entries."""
        while heap:
            t, p = heap[0]
            s = self._connected.get(p)
            if s is not None and (s.backoff_until if kind == _BACKOFF else s.quota_until) == t:
                return t
            heappop(heap)
        return None

    def _first_deadline(self) -> float | None:
        """The earliest deadline of an active request. Entries are lower bounds (activity only moves a
        deadline later unless ``_touch`` pushed it): the top is corrected until it is exact."""
        heap = self._deadlines
        while heap:
            t, rid = heap[0]
            q = self._requests.get(rid)
            if q is None or q.phase != ACTIVE:
                heappop(heap)
                continue
            actual = self._deadline(q)
            if actual > t:
                heapreplace(heap, (actual, rid))
                continue
            return t
        return None

    def _eviction_candidate(self) -> PeerId | None:
        """The oldest remembered peer that is evictable (pops stale entries of the eviction queue)."""
        heap = self._evict_q
        while heap:
            born, p = heap[0]
            s = self._peers.get(p)
            if s is not None and self._born[p] == born and s.evictable():
                return p
            heappop(heap)
        return None

    # ------------------------------------------------------------------ lifecycle and peers

    def start(self, now: float) -> list[Effect]:
        """The node subscribed to the announce topic: announce, and schedule anti-entropy."""
        _check_now(now)
        self._started = True
        self._ae_next_at = now + self.config.anti_entropy_period
        self._announce_forced = True
        return self._maybe_publish(now)

    def _state(self, peer: PeerId) -> PeerState:
        s = self._peers.get(peer)
        if s is None:
            if len(self._peers) >= self.config.max_peer_states:
                self._evict_peer_state()
            s = PeerState(peer)
            self._peers[peer] = s
            self._born[peer] = self._next_born
            self._next_born += 1
            self._push(self._evict_q, (self._born[peer], peer))
        return s

    def _evict_peer_state(self) -> None:
        """Forget the oldest peer that is disconnected, idle and not banned (bounded memory)."""
        p = self._eviction_candidate()
        if p is not None:
            heappop(self._evict_q)
            del self._peers[p]
            del self._born[p]
            self.planner.clear_unavailable(p)

    def peer_connected(self, peer: PeerId, now: float) -> list[Effect]:
        _check_peer(peer)
        _check_now(now)
        s = self._peers.get(peer)
        if s is not None and now < s.banned_until:
            return [Disconnect(peer, "banned", s.banned_until)]
        self._set_peer(self._state(peer), connected=True)
        return self._plan(now)

    def peer_subscribed(self, peer: PeerId, now: float) -> list[Effect]:
        """A peer joined the announce topic: announce (debounced) so it learns our heads."""
        _check_peer(peer)
        _check_now(now)
        self._announce_forced = True
        return self._maybe_publish(now) + self._plan(now)

    def peer_disconnected(self, peer: PeerId, now: float) -> list[Effect]:
        """The connection is gone: its requests fail (no backoff: the link, not the peer, failed)."""
        _check_peer(peer)
        _check_now(now)
        s = self._peers.get(peer)
        if s is None:
            return []
        self._set_peer(s, connected=False)
        out: list[Effect] = []
        for rid in sorted(s.requests):
            q = self._requests.get(rid)
            if q is not None and q.phase == ACTIVE:
                out += self._fail(q, "peer disconnected", now, cancel=False, count_failure=False)
        return out + self._plan(now)

    # ------------------------------------------------------------------ announces and snapshots

    def validate_announce(self, data: bytes, expected_vk: bytes | None = None) -> SignedAnnounce | None:
        """Topic validator: the announce if it passes store §2.3.3, else None (counted as rejected)."""
        try:
            return validate_signed_announce(data, expected_vk=expected_vk)
        except ProtocolError:
            self.counters.announces_rejected += 1
            return None

    def announce_received(
        self, origin: PeerId | None, sa: SignedAnnounce, relayed_by: PeerId | None, now: float
    ) -> list[Effect]:
        """A validated announce from ``origin`` (its gossip originator) arrived via ``relayed_by``.

        Its heads that are not stored join the want table. A repeated announce (same bytes)
        changes nothing; a new one from a peer also ends that peer's "unavailable" round.
        Our own announces (our key) are ignored.
        """
        if not isinstance(sa, SignedAnnounce):
            raise TypeError(f"expected a SignedAnnounce, not {type(sa).__name__}")
        for p in (origin, relayed_by):
            if p is not None:
                _check_peer(p)
        _check_now(now)
        mid = sa.message_id()
        self.counters.announces_received += 1
        if sa.vk == self.vk:
            return []
        a = sa.announce
        if origin is not None:
            s = self._state(origin)
            if s.last_announce_id != mid:
                s.last_announce_id = mid
                s.watermark = a.topo_watermark
                s.bloom = a.bloom16
                s.heads = a.head_ids
                s.all_heads = len(a.head_ids) < self.config.announce_heads
                s.announced_at = now
                self.planner.clear_unavailable(origin)
        self.planner.note_announce(a.head_ids, origin, relayed_by, now, self.facts.contains)
        return self._plan(now)

    def reconciled(self, peer: PeerId, need: Sequence[bytes], now: float) -> list[Effect]:
        """Set reconciliation with ``peer`` (``ecac.sync.reconcile``) found ``need``, ids it holds that
        we lack: they join the want table with ``peer`` as origin and are fetched parent-first as usual.
        The peer just answered a whole session, so its backoff ends.

        A session names the whole difference; when requests already running (to ``peer`` or
        another peer) fetch some of these ids, typically an announced head, they stream its
        missing ancestry, which is most of the rest. So the rest is held until they end
        (``SyncPlanner.hold``) instead of being asked for by id at the same time, which would
        bring the same ops twice: what they stored has left the want table by then, and only
        what is still missing is requested (all of it if they failed)."""
        _check_peer(peer)
        _check_now(now)
        s = self._peers.get(peer)
        if s is None or not s.connected:
            return []
        contains = self.facts.contains
        fresh = [x for x in dict.fromkeys(need) if isinstance(x, bytes) and len(x) == 32 and not contains(x)]
        fresh = fresh[: self.config.max_wanted]
        self.planner.add_wants(fresh, now, origin=peer)
        self.planner.hold(fresh)
        self.planner.clear_unavailable(peer)
        self._record_success(s)
        return self._plan(now)

    def snapshot_changed(self, snapshot: StoreSnapshot, now: float, local: bool = False) -> list[Effect]:
        """The store's writer published ``snapshot`` (after a commit; ``local``: of a local write).

        Publishes the (debounced) announce if it changed and re-plans: ids the commit
        stored leave the want table, and new requests use the new heads as boundary.
        """
        _check_snapshot(snapshot)
        _check_now(now)
        self._adopt(snapshot, local)
        return self._maybe_publish(now) + self._plan(now)

    def _adopt(self, snapshot: StoreSnapshot, changed: bool) -> None:
        """Keep ``snapshot`` unless it is older than ours; mark the announce for re-checking if it moved."""
        old = self._snapshot
        if snapshot.seq >= old.seq and snapshot is not old:
            k = self.config.announce_heads
            if (
                snapshot.complete_count != old.complete_count
                or snapshot.recent_bloom != old.recent_bloom
                or snapshot.top_heads(k) != old.top_heads(k)
            ):
                changed = True
            self._snapshot = snapshot
        if changed:
            self._announce_dirty = True

    def _maybe_publish(self, now: float) -> list[Effect]:
        if not self._started or not (self._announce_dirty or self._announce_forced):
            return []
        last = self._last_publish_at
        if last is not None and now < last + self.config.announce_debounce:
            return []
        data = local_announce(
            self._snapshot, self.sk, self.config.announce_heads, self.config.bloom_window
        ).encode()
        forced = self._announce_forced
        self._announce_dirty = False
        self._announce_forced = False
        if data == self._last_announce and not forced:
            return []
        self._last_announce = data
        self._last_publish_at = now
        self.counters.announces_sent += 1
        return [PublishAnnounce(data)]

    # ------------------------------------------------------------------ timers

    def timer(self, now: float) -> list[Effect]:
        """Time passed: timeouts, anti-entropy, debounced announce, retries after backoff."""
        _check_now(now)
        out: list[Effect] = []
        cfg = self.config
        for rid in self._timed_out(now):
            q = self._requests.get(rid)
            if q is None or q.phase != ACTIVE:
                continue
            if now >= q.started + cfg.request_deadline:
                out += self._fail(q, "request deadline exceeded", now)
            elif now >= q.last_activity + cfg.idle_timeout:
                out += self._fail(q, "idle timeout", now)
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:  # expired deadlines are reset: keeps next_wakeup in the future
            t, kind, p = heappop(expiry)
            s = self._peers.get(p)
            if s is None:
                continue
            if kind == _BACKOFF and s.backoff_until == t:
                self._set_peer(s, backoff_until=0.0)
            elif kind == _QUOTA and s.quota_until == t:
                self._set_peer(s, quota_until=0.0)
        if self._ae_next_at is not None and now >= self._ae_next_at:
            out += self._anti_entropy(now)
        self.planner.expire(now)
        out += self._maybe_publish(now)
        return out + self._plan(now)

    def _timed_out(self, now: float) -> list[int]:
        """Active requests whose deadline is ``now`` or earlier, ascending (taken off the deadline heap)."""
        due: set[int] = set()
        while (t := self._first_deadline()) is not None and t <= now:
            due.add(heappop(self._deadlines)[1])
        return sorted(due)

    def anti_entropy_tick(self, now: float) -> list[Effect]:
        """Run an anti-entropy round now (tests, or an external scheduler)."""
        _check_now(now)
        self._ae_next_at = now
        return self.timer(now)

    def _anti_entropy(self, now: float) -> list[Effect]:
        """One anti-entropy round (store §2.3.7): reset unavailability, pull from the next peer, announce."""
        peers = sorted(
            p
            for p, s in self._connected.items()
            if s.available(now) and not self._busy(s) and not self._nothing_to_pull(s, now)
        )
        after = [p for p in peers if self._ae_cursor is None or p > self._ae_cursor]
        target = (after[0] if after else peers[0]) if peers and self._ae_rid is None else None
        request = None
        if target is not None:
            request = SyncRequest((), self.boundary_for(target), self.config.request_max_ops)
        # transition (nothing above mutates)
        self._ae_next_at = now + self.config.anti_entropy_period
        self.planner.clear_unavailable()
        self._announce_dirty = True
        if target is None or request is None:
            # no idle peer, or the previous round's More chain is still running. A peer we are
            # already fetching from is being synced: pulling everything from it again would only
            # fetch the same ops twice; so is a peer whose fresh announce shows nothing we lack
            return []
        self._ae_cursor = target
        eff = self._register(target, ANTI_ENTROPY, request, now)
        self._ae_rid = eff.request_id
        return [eff]

    # ------------------------------------------------------------------ requests

    def _busy(self, s: PeerState) -> bool:
        return any(self._requests[r].phase in (ACTIVE, TRAILER) for r in s.requests)

    def _free_slots(self, s: PeerState) -> int:
        """Requests that may still be opened to ``s``: none while an anti-entropy request to it
        runs (it delivers everything the peer has beyond our boundary)."""
        busy = 0
        for r in s.requests:
            q = self._requests[r]
            if q.phase in (ACTIVE, TRAILER):
                if q.kind == ANTI_ENTROPY:
                    return 0
                busy += 1
        return max(0, self.config.max_in_flight_per_peer - busy)

    def boundary_for(self, peer: PeerId, extra: Sequence[bytes] = ()) -> tuple[bytes, ...]:
        """The boundary of a request to ``peer`` (reads only; docs/protocol.md §5.4).

        Our newest heads (≤ ``MAX_BOUNDARY_HEADS``), then the ids ``peer`` certainly holds
        and we hold complete — the frontier of what it sent us, then the heads it announced
        — then ``extra`` (the duplicates of the previous answer of a ``More`` chain), then
        the snapshot's exponentially spaced samples, at most ``MAX_BOUNDARY`` in all. The
        peer's ids matter once we write local ops on top of what it sent: our heads are then
        ops it does not have (ignored by its walk), and the samples cover only some of the
        concurrent branches, so without them it would resend the ops it sent before.
        """
        s = self._peers.get(peer)
        known = s.known_ids() if s is not None else []
        return build_boundary(self._snapshot, self.facts, extra=known + list(extra))

    def _nothing_to_pull(self, s: PeerState, now: float) -> bool:
        """Soft hint: ``s``'s announce of the last anti-entropy period listed all its heads and we
        hold each of them complete, so pulling from it would only bring our own ops back.

        Typical case: the peer is catching up from us. It does not know our heads, so the
        boundary of a pull would not stop it from sending back everything it has received.
        The hint expires after one period, and never sooner than four announce debounce
        intervals (a peer catching up announces about once per interval): its later
        announces may have been lost, so a skipped peer is pulled from again soon.
        """
        at = s.announced_at
        cfg = self.config
        if (
            at is None
            or not s.all_heads
            or now - at >= max(cfg.anti_entropy_period, 4 * cfg.announce_debounce)
        ):
            return False
        complete = self.facts.is_complete
        return all(complete(h) for h in s.heads)

    def _register(
        self,
        peer: PeerId,
        kind: str,
        request: SyncRequest,
        now: float,
        no_progress: int = 0,
        continues: int | None = None,
    ) -> SendRequest:
        """Record a new request (cannot fail: ``request`` was built and checked before);
        ``continues``: the request whose ``More`` it follows."""
        rid = self._next_rid
        self._next_rid += 1
        q = _Request(rid, peer, kind, request.want, now, now, no_progress)
        self._requests[rid] = q
        self._attach(self._peers[peer], rid)
        self._push(self._deadlines, (self._deadline(q), rid))
        if kind == FETCH:
            self.planner.start(rid, request.want, continues)
        self.counters.requests_sent += 1
        return SendRequest(peer, rid, request)

    def _plan(self, now: float) -> list[Effect]:
        if len(self.planner) == 0:
            return []
        planned = self.planner.plan(self.peer_views(now), self.facts.contains, now)
        if not planned:
            return []
        max_ops = self.config.request_max_ops
        requests = [(f.peer, SyncRequest(f.want, self.boundary_for(f.peer), max_ops)) for f in planned]
        return [self._register(peer, FETCH, req, now) for peer, req in requests]

    def request_started(self, request_id: int, now: float) -> list[Effect]:
        """The stream is open and the request written (restarts the idle timer)."""
        _check_now(now)
        q = self._requests.get(request_id)
        if q is not None and q.phase == ACTIVE:
            self._touch(q, now)
        return []

    def frames_received(self, request_id: int, bodies: Sequence[bytes], now: float) -> list[Effect]:
        """Response frame bodies (length prefix removed) in stream order; decodes inline."""
        return self.decoded_received(request_id, decode_frames(bodies), now)

    def decoded_received(self, request_id: int, decoded: DecodedFrames, now: float) -> list[Effect]:
        """Frames already decoded by ``decode_frames`` (e.g. in a worker thread)."""
        if not isinstance(decoded, DecodedFrames):
            raise TypeError(f"expected DecodedFrames, not {type(decoded).__name__}")
        _check_now(now)
        q = self._requests.get(request_id)
        if q is None or q.phase != ACTIVE:
            return []  # late frames of a cancelled or finished request
        # classify every op first (reads only): accepted, duplicate, or the first violation; the
        # peer's ingest quota cuts the response at the first op it does not cover (every op costs
        # its bytes, a fresh one also one op), and everything from there on is dropped
        contains = self.facts.contains
        pending = q.pending
        fresh: dict[bytes, Op] = {}
        dup_ids: list[bytes] = []
        dup_stored: list[Op] = []  # duplicates already stored: the peer's frontier moves past them
        violation: str | None = None
        allow = self.ingest_quota.allowance(q.peer, now)
        ops_left, bytes_left = allow.ops, allow.bytes
        taken_bytes = 0
        cut_at: int | None = None
        for i, op in enumerate(decoded.ops):
            x = op.op_id
            size = len(op.cbor)
            if size > bytes_left:
                cut_at = i
                break
            if x in pending or x in fresh or contains(x):
                bytes_left -= size
                taken_bytes += size
                dup_ids.append(x)
                if x not in pending and x not in fresh and self.facts.is_complete(x):
                    dup_stored.append(op)
                continue
            for p in op.parents:
                if p not in pending and p not in fresh and not contains(p):
                    violation = f"op {x.hex()} arrived before its parent {p.hex()}"
                    break
            if violation is not None:
                break
            if ops_left < 1:
                cut_at = i
                break
            ops_left -= 1
            bytes_left -= size
            taken_bytes += size
            fresh[x] = op
        if cut_at is None and violation is None and decoded.error is not None:
            violation = decoded.error
        cfg = self.config
        new_bytes = sum(len(op.cbor) for op in fresh.values())
        over = (
            len(q.buffer) + len(fresh) > cfg.max_held_ops or q.buffer_bytes + new_bytes > cfg.max_held_bytes
        )
        # transition (nothing below raises)
        self._touch(q, now)
        self.ingest_quota.charge(q.peer, len(fresh), taken_bytes, now)
        if cut_at is not None:
            # ask again once half the burst is allowed (at least a batch, 1 MiB): each request
            # then carries many ops, and the stream set-up and resent ops cost little
            lim = cfg.ingest_limits
            wait = self.ingest_quota.ready_in(
                q.peer,
                max(cfg.batch_ops, lim.ops_per_s * lim.burst_s / 2),
                max(QUOTA_RESUME_BYTES, lim.bytes_per_s * lim.burst_s / 2),
                now,
            )
            self._set_peer(self._peers[q.peer], quota_until=now + max(wait, QUOTA_MIN_WAIT))
            self.counters.quota_ingest_cuts += 1
            self.counters.quota_ingest_deferred += len(decoded.ops) - cut_at
        self.counters.ops_duplicates_dropped += len(dup_ids)
        q.dup_ids.extend(dup_ids[: max(0, MAX_BOUNDARY - len(q.dup_ids))])
        self._peers[q.peer].note_received(dup_stored)
        if over:
            self._drop_buffer(q)
            self.counters.requests_over_budget += 1
            if violation is not None:
                out = self._fail(q, f"protocol violation: {violation}", now, penalise=True)
            else:
                out = self._fail(
                    q, "too many ops awaiting commit (reader ignored back-pressure)", now, local=True
                )
        else:
            q.buffer.extend(fresh.values())
            q.buffer_bytes += new_bytes
            pending.update(fresh)
            q.accepted += len(fresh)
            if violation is not None:
                out = self._fail(q, f"protocol violation: {violation}", now, penalise=True)
            elif cut_at is not None:
                # our own More: reset the stream, keep what was accepted, ask again at the quota rate
                q.phase = TRAILER
                q.trailer = MORE
                q.quota_cut = True
                out = [CancelRequest(q.peer, q.rid, "ingest quota of the peer reached")]
                out += self._pump(q, now)
            else:
                if decoded.trailer is not None:
                    q.phase = TRAILER
                    q.trailer = decoded.trailer
                out = self._pump(q, now)
        return out + self._drain_over_budget(now) + self._plan(now)

    def stream_closed(self, request_id: int, now: float) -> list[Effect]:
        """EOF on the response stream; before a trailer it is a failure (retried elsewhere)."""
        _check_now(now)
        q = self._requests.get(request_id)
        if q is None or q.phase != ACTIVE:
            return []
        return self._fail(q, "stream ended without a trailer", now, cancel=False) + self._plan(now)

    def request_failed(
        self, request_id: int, reason: str, now: float, violation: bool = False
    ) -> list[Effect]:
        """The I/O layer saw the request fail (dial, open, reset, framing: ``violation=True``)."""
        _check_now(now)
        q = self._requests.get(request_id)
        if q is None or q.phase != ACTIVE:
            return []
        reason = f"protocol violation: {reason}" if violation else reason
        return self._fail(q, reason, now, penalise=violation, cancel=False) + self._plan(now)

    def commit_finished(self, outcome: CommitOutcome, snapshot: StoreSnapshot, now: float) -> list[Effect]:
        """A ``CommitOps`` was carried out; ``snapshot`` is the one published right after it.

        An outcome for a commit this coordinator does not know (one emitted before a
        restart) only contributes its snapshot.
        """
        if not isinstance(outcome, CommitOutcome):
            raise TypeError(f"expected a CommitOutcome, not {type(outcome).__name__}")
        _check_snapshot(snapshot)
        _check_now(now)
        entry = self._commits.get(outcome.commit_id)
        if entry is None:
            self._adopt(snapshot, False)
            return self._maybe_publish(now) + self._plan(now)
        rid, ops = entry
        q = self._requests[rid]
        ids = {op.op_id for op in ops}
        if not ids.issuperset(outcome.stored):
            raise ValueError(f"commit {outcome.commit_id}: the outcome reports ids that were not in it")
        i = outcome.rejected_index
        if i is not None and not 0 <= i < len(ops):
            raise ValueError(f"commit {outcome.commit_id}: rejected index {i} outside its {len(ops)} ops")
        # transition
        del self._commits[outcome.commit_id]
        q.commit_id = None
        q.pending.difference_update(ids)
        self._adopt(snapshot, bool(outcome.stored))
        out: list[Effect] = []
        if outcome.error is None:
            self.counters.ops_fetched += len(outcome.stored)
            self.counters.fetch_batches += 1
            self.counters.ops_duplicates_dropped += outcome.duplicates
            self.planner.forget(outcome.stored)
            self._peers[q.peer].note_received(ops)  # all stored now (new, or duplicates)
            if q.phase == ACTIVE:
                self._touch(q, now)
        elif i is not None:
            self._drop_buffer(q)
            contains = self.facts.contains
            prefix = [op for op in ops[:i] if not contains(op.op_id)]
            if prefix:
                out.append(self._commit(q, prefix))
            out += self._fail(q, f"invalid op {ops[i].op_id.hex()}: {outcome.error}", now, penalise=True)
        else:
            self._drop_buffer(q)
            out += self._fail(q, outcome.error, now, local=True)
        out += self._pump(q, now)
        out += self._drain_over_budget(now)
        out += self._maybe_publish(now)
        return out + self._plan(now)

    def _drop_buffer(self, q: _Request) -> None:
        """Forget ``q``'s uncommitted ops (its outstanding commit, if any, stays pending)."""
        for op in q.buffer:
            q.pending.discard(op.op_id)
        q.buffer.clear()
        q.buffer_bytes = 0

    def _commit(self, q: _Request, ops: Sequence[Op]) -> CommitOps:
        cid = self._next_cid
        self._next_cid += 1
        t = tuple(ops)
        self._commits[cid] = (q.rid, t)
        q.commit_id = cid
        q.pending.update(op.op_id for op in t)
        return CommitOps(cid, q.peer, q.rid, t)

    def _cut(self, q: _Request) -> list[Op]:
        """Take the next commit batch off ``q``'s buffer: ≤ batch_ops ops, ≤ batch_bytes (≥ 1 op).

        Ops stored meanwhile (another request's commit delivered them) are dropped first and
        counted as duplicates; the batch may then be empty.
        """
        cfg = self.config
        contains = self.facts.contains
        if any(contains(op.op_id) for op in q.buffer):
            kept = [op for op in q.buffer if not contains(op.op_id)]
            for op in q.buffer:
                if contains(op.op_id):
                    q.pending.discard(op.op_id)
            self.counters.ops_duplicates_dropped += len(q.buffer) - len(kept)
            q.buffer[:] = kept
            q.buffer_bytes = sum(len(op.cbor) for op in kept)
        n = 0
        size = 0
        for op in q.buffer[: cfg.batch_ops]:
            if n and size + len(op.cbor) > cfg.batch_bytes:
                break
            n += 1
            size += len(op.cbor)
        chunk = q.buffer[:n]
        del q.buffer[:n]
        q.buffer_bytes -= size
        return chunk

    def _pump(self, q: _Request, now: float, force: bool = False) -> list[Effect]:
        """Emit the next commit of ``q`` when due; finish ``q`` when drained."""
        if q.commit_id is not None:
            return []
        cfg = self.config
        if q.buffer and (
            force or len(q.buffer) >= cfg.batch_ops or q.buffer_bytes >= cfg.batch_bytes or q.phase != ACTIVE
        ):
            chunk = self._cut(q)
            if chunk:
                return [self._commit(q, chunk)]
        if not q.buffer and q.phase in (TRAILER, FAILED):
            return self._finish(q, now)
        return []

    def _drain_over_budget(self, now: float) -> list[Effect]:
        """Over the total held-bytes budget: commit every waiting buffer now, so the total drains."""
        if self.held_bytes_total() < self.config.max_held_bytes_total:
            return []
        out: list[Effect] = []
        for rid in sorted(self._requests):
            q = self._requests.get(rid)
            if q is not None and q.commit_id is None and q.buffer:
                out += self._pump(q, now, force=True)
        return out

    def _fail(
        self,
        q: _Request,
        reason: str,
        now: float,
        *,
        penalise: bool = False,
        cancel: bool = True,
        local: bool = False,
        count_failure: bool = True,
    ) -> list[Effect]:
        """Fail ``q`` now: free its ids for other peers, back off (not for local faults), maybe penalise."""
        if q.phase in (FAILED, DONE):
            return self._penalise(q.peer, reason, now, q) if penalise else []
        out: list[Effect] = []
        was_active = q.phase == ACTIVE
        q.phase = FAILED
        self.counters.requests_failed += 1
        if q.commit_id is None and not q.buffer:
            self.planner.finish(q.rid)  # else at the end of the drain, so the retry's boundary includes it
        if self._ae_rid == q.rid:
            self._ae_rid = None
        if was_active and cancel:
            out.append(CancelRequest(q.peer, q.rid, reason))
        s = self._peers[q.peer]
        if not local and count_failure:
            self._record_failure(s, now)
        if penalise:
            out += self._penalise(q.peer, reason, now, q)
        return out + self._pump(q, now)

    def _penalise(self, peer: PeerId, reason: str, now: float, origin: _Request) -> list[Effect]:
        """Penalise, disconnect and ban ``peer``; its other requests fail without extra backoff."""
        s = self._peers[peer]
        self.counters.peers_penalised += 1
        self._set_peer(s, banned_until=now + self.config.ban_period, connected=False)
        out: list[Effect] = [
            Penalise(peer, reason),
            Disconnect(peer, reason, s.banned_until if self.config.ban_period > 0 else None),
        ]
        for rid in sorted(s.requests):
            other = self._requests.get(rid)
            if other is not None and other is not origin and other.phase == ACTIVE:
                out += self._fail(other, "peer disconnected (penalised)", now, count_failure=False)
        return out

    def _finish(self, q: _Request, now: float) -> list[Effect]:
        """``q`` is drained: success bookkeeping, unavailability, ``More`` continuation."""
        s = self._peers[q.peer]
        succeeded = q.phase == TRAILER
        contains = self.facts.contains
        left = tuple(x for x in q.want if not contains(x))
        # a quota cut is our own doing, not the peer's lack of progress
        no_progress = 0 if q.accepted else q.no_progress + (0 if q.quota_cut else 1)
        is_ae = self._ae_rid == q.rid
        more = succeeded and isinstance(q.trailer, More) and no_progress < self.config.no_progress_limit
        cont: SyncRequest | None = None
        if more and (is_ae or left):
            boundary = self.boundary_for(q.peer, q.dup_ids)
            cont = SyncRequest(left, boundary, self.config.request_max_ops)
        # transition
        q.phase = DONE
        del self._requests[q.rid]
        self._detach(s, q.rid)
        self.planner.finish(q.rid)
        if not succeeded:
            return []
        self._record_success(s)
        if is_ae:
            self._ae_rid = None
        if cont is not None and s.available(now) and self._free_slots(s) > 0:
            eff = self._register(q.peer, q.kind, cont, now, no_progress, q.rid)
            if is_ae:
                self._ae_rid = eff.request_id
            return [eff]
        if q.quota_cut:
            # the peer has more: its wanted ids stay wanted (planned again when its quota allows),
            # and a cut anti-entropy pull is resumed by an early round
            if is_ae and self._ae_next_at is not None:
                self._ae_next_at = min(self._ae_next_at, max(now, s.quota_until))
            return []
        if left:
            self.planner.mark_unavailable(q.peer, left)
        return []
