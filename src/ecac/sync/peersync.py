"""Sans-I/O synchronisation: per-peer state machines and the node-level ``SyncCoordinator``.

The coordinator decides everything about sync except moving bytes: what to fetch and
from whom (via ``SyncPlanner``), how to check a streamed response (strict decode,
parent-first, dedup), when to commit, when to announce, timeouts, backoff, peer
switching and anti-entropy. It never reads a clock (every event carries ``now``, a
monotonic time in seconds), never touches a socket and never writes to the store: it
returns **effects** that the I/O layer carries out, and the I/O layer reports back
with **events**. Every event method returns ``list[Effect]``; carry them out in order.

Integration guide for the node (libp2p + RocksDB ``Store``; both stores implement
``ecac.store.memory.OpStore``)::

    coord = SyncCoordinator(store, node_signing_key, SyncConfig(...))
    run(coord.start(now()))                     # after subscribing to the announce topic
    # peers are the base58 PeerId strings (anti-entropy goes round them in sorted order);
    # now() is trio.current_time() / time.monotonic(); the coordinator is NOT thread-safe:
    # call it from one task only (decode_frames, apply_commit and serve_sync may run in
    # worker threads: they only read their arguments and the thread-safe store).

    # gossip topic validator (store §2.3.3); accept => gossipsub forwards it
    sa = coord.validate_announce(msg.data, expected_vk=originator_pubkey_or_None)
    # on delivery of an accepted announce
    run(coord.announce_received(origin_peer, sa, relayed_by=msg.received_from, now=now()))

    # connections / subscriptions
    run(coord.peer_connected(peer, now()));  run(coord.peer_subscribed(peer, now()))
    run(coord.peer_disconnected(peer, now()))

    # effects
    SendRequest(peer, request_id, request): open an /ecac/sync/1 stream, write
        effect.frame() (optionally report coord.request_started(...)), then read:
        reader = FrameReader(cfg.max_frame); for each chunk: bodies = reader.feed(chunk),
        decoded = decode_frames(bodies) (pure: may run in a worker thread),
        run(coord.decoded_received(request_id, decoded, now())).
        Before reading more, carry out the CommitOps it returned and wait for them
        (back-pressure; ``coord.accepting(request_id)`` says whether to read on).
        An oversized frame (ProtocolError from feed) is the peer's protocol violation:
        run(coord.request_failed(request_id, str(e), now(), violation=True)). On EOF
        call run(coord.stream_closed(request_id, now())): before a trailer it is a
        failure that is retried elsewhere (reader.eof() tells whether it ended inside a
        frame; log it, but a truncated stream is not penalised). Dial/open failure or
        reset: run(coord.request_failed(request_id, reason, now())).
    CancelRequest(request_id, ...): reset that stream; report nothing more for it.
    CommitOps(...): outcome = apply_commit(store, effect) (blocking: run it in a
        worker thread, commits in emission order); run(coord.commit_finished(outcome, now())).
    PublishAnnounce(data): gossip publish on the topic (drop it if no peer is subscribed).
    Penalise(peer, reason): log/metrics. Disconnect(peer, reason, ban_until): close the
        connection; refuse or re-close it until ban_until (the coordinator also re-sends
        Disconnect if a banned peer connects).

    # timers: call coord.timer(now()) whenever coord.next_wakeup() passes (or every
    # 50-100 ms); local writes: run(coord.local_write(now())).

    # server side (incoming /ecac/sync/1 stream): read one frame with
    # FrameReader(MAX_REQUEST_FRAME), then for blob in syncserve.serve_sync(store, body,
    # server_max_ops=cfg.server_max_ops, max_frame=cfg.max_frame):
    #     await stream.write(blob)        # one write per batch of <= 512 ops
    # then close. Decode errors => reset the stream. Computing the response set is
    # CPU-bound (the paint-down walk): run plan_response in a worker thread for big stores.

Signature verification happens exactly once per op: in the store's validating
``put_many`` (run by ``apply_commit``), which is the final gate (store §2.3.6). The
coordinator checks structure first (strict canonical decode, parents stored or earlier
in the same response, dedup) so that nothing out of order is ever handed to the store;
a commit refused by the store is a protocol violation of the peer that sent the op: the
valid prefix is committed again (re-verified: attack case only), nothing after it is
kept, the peer is penalised and disconnected, and its ids are fetched elsewhere.

Per request, at most one commit is outstanding and later ops wait in a buffer, so every
op reaches the store after its parents (parents were stored before the check, or are in
the same or an earlier commit of the same response).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from nacl.signing import SigningKey

from ecac.core.errors import EcacError, ProtocolError, StoreError
from ecac.core.op import Op
from ecac.core.opcodec import decode_op
from ecac.store.memory import OpStore, PutRejectedError
from ecac.sync.planner import PeerId, PeerView, SyncPlanner
from ecac.sync.syncserve import BATCH_OPS, SERVER_MAX_OPS, build_boundary
from ecac.sync.wire import (
    ANNOUNCE_HEADS,
    BLOOM_WINDOW,
    MAX_BOUNDARY,
    MAX_FRAME,
    MAX_WANT,
    Announce,
    End,
    More,
    OpBytes,
    SignedAnnounce,
    SyncRequest,
    check_max_frame,
    decode_rpc_frame,
    node_id_of,
    validate_signed_announce,
)

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Tunable defaults of store §2.3.9 (times in seconds of the monotonic clock)."""

    announce_heads: int = ANNOUNCE_HEADS
    bloom_window: int = BLOOM_WINDOW
    announce_debounce: float = 0.25
    anti_entropy_period: float = 5.0
    max_in_flight_per_peer: int = 1  # a 2nd request would resend the ops the 1st is delivering
    max_want_per_request: int = MAX_WANT
    request_max_ops: int = 0  # 0 = the server's cap
    batch_ops: int = BATCH_OPS
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
    no_progress_limit: int = 2  # More answers in a row without a new op end the chain
    max_peer_states: int = 4096  # remembered peers (announce originators included); idle ones evicted

    def __post_init__(self) -> None:
        check_max_frame(self.max_frame)
        if not 1 <= self.max_want_per_request <= MAX_WANT:
            raise ValueError(f"max_want_per_request must be between 1 and {MAX_WANT}")
        if self.max_in_flight_per_peer < 1 or self.batch_ops < 1 or self.server_max_ops < 1:
            raise ValueError("in-flight limit, batch size and server cap must be positive")
        if self.max_held_ops < self.batch_ops:
            raise ValueError("max_held_ops must be at least batch_ops")
        if min(self.idle_timeout, self.request_deadline, self.anti_entropy_period) <= 0:
            raise ValueError("timeouts and the anti-entropy period must be positive")

    def backoff(self, failures: int) -> float:
        """Delay after ``failures`` consecutive failures: base × 2^(failures−1), capped (0 when none)."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2 ** min(failures - 1, 30))


@dataclass(slots=True)
class SyncCounters:
    """Sync metrics; each event is counted once (store §2.3.6)."""

    ops_fetched: int = 0
    fetch_batches: int = 0
    ops_duplicates_dropped: int = 0
    announces_sent: int = 0
    announces_received: int = 0
    announces_rejected: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    peers_penalised: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Open a sync stream to ``peer`` and write ``frame()``; report frames under ``request_id``."""

    peer: PeerId
    request_id: int
    request: SyncRequest

    def frame(self) -> bytes:
        return self.request.frame()


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Reset the stream of ``request_id`` (timeout or protocol violation); report nothing more for it."""

    peer: PeerId
    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class CommitOps:
    """Store ``ops`` (decoded, parent-first, deduplicated, ≤ batch size) with ``apply_commit``."""

    commit_id: int
    peer: PeerId
    request_id: int
    ops: tuple[Op, ...]


@dataclass(frozen=True, slots=True)
class PublishAnnounce:
    """Publish ``data`` (a SignedAnnounce) on the announce topic."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Penalise:
    """``peer`` misbehaved (invalid op, broken framing, child before parent)."""

    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``peer``; refuse it until ``ban_until`` (None: no ban)."""

    peer: PeerId
    reason: str
    ban_until: float | None = None


Effect = SendRequest | CancelRequest | CommitOps | PublishAnnounce | Penalise | Disconnect


# --------------------------------------------------------------------------- pure helpers for the I/O layer


@dataclass(frozen=True, slots=True)
class DecodedFrames:
    """Response frames decoded strictly, in stream order, up to the first error.

    ``ops``: the ops of the ``OpBytes`` frames before any error. ``trailer``: ``End`` or
    ``More`` if it was among the frames. ``error``: the first violation (bad CBOR,
    non-canonical frame or op, frame after the trailer); frames after it are ignored.
    """

    ops: tuple[Op, ...] = ()
    trailer: End | More | None = None
    error: str | None = None


def decode_frames(bodies: Sequence[bytes]) -> DecodedFrames:
    """Decode response frame bodies (no signature check: the store verifies once). Pure, thread-safe."""
    ops: list[Op] = []
    trailer: End | More | None = None
    error: str | None = None
    for body in bodies:
        if trailer is not None:
            error = "frame after the trailer"
            break
        try:
            frame = decode_rpc_frame(body)
        except EcacError as e:
            error = f"bad frame: {e}"
            break
        if isinstance(frame, OpBytes):
            try:
                ops.append(decode_op(frame.data))
            except EcacError as e:
                error = f"bad op: {e}"
                break
        else:
            trailer = frame
    return DecodedFrames(tuple(ops), trailer, error)


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """Result of ``apply_commit``.

    ``rejected_index`` (with ``error``): the store refused that op of the batch (invalid:
    the peer's fault) and wrote nothing. ``error`` alone: a local store failure.
    """

    commit_id: int
    stored: tuple[bytes, ...] = ()
    duplicates: int = 0
    rejected_index: int | None = None
    error: str | None = None


def apply_commit(store: OpStore, commit: CommitOps) -> CommitOutcome:
    """Run one ``CommitOps`` through the store's validating ``put_many`` (all or nothing). Blocking."""
    try:
        r = store.put_many(list(commit.ops), on_invalid="raise")
    except PutRejectedError as e:
        return CommitOutcome(commit.commit_id, rejected_index=e.rejection.index, error=str(e))
    except StoreError as e:
        return CommitOutcome(commit.commit_id, error=f"store error: {e}")
    return CommitOutcome(commit.commit_id, tuple(r.stored), r.duplicates)


def local_announce(
    store: OpStore, sk: SigningKey, heads: int = ANNOUNCE_HEADS, bloom_window: int = BLOOM_WINDOW
) -> SignedAnnounce:
    """This node's signed announce: complete-op count, newest heads, recent bloom (store §2.3.3)."""
    a = Announce(
        node_id_of(bytes(sk.verify_key)),
        store.complete_count(),
        tuple(store.heads(heads)),
        store.recent_bloom(bloom_window),
    )
    return SignedAnnounce.sign(sk, a)


# --------------------------------------------------------------------------- per-peer state


@dataclass(slots=True)
class PeerState:
    """One peer: connection, failures and backoff, ban, requests in flight, last announce."""

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

    def available(self, now: float) -> bool:
        """Connected, not banned and out of backoff: requests may be sent."""
        return self.connected and now >= self.banned_until and now >= self.backoff_until

    def record_failure(self, now: float, cfg: SyncConfig) -> None:
        self.failures += 1
        self.backoff_until = now + cfg.backoff(self.failures)

    def record_success(self) -> None:
        self.failures = 0
        self.backoff_until = 0.0


_ACTIVE = "active"  # waiting for frames
_TRAILER = "trailer"  # trailer received, commits draining
_FAILED = "failed"  # failed, commits draining
_DONE = "done"

_FETCH = "fetch"
_ANTI_ENTROPY = "anti-entropy"


@dataclass(slots=True)
class _Request:
    rid: int
    peer: PeerId
    kind: str
    want: tuple[bytes, ...]
    started: float
    last_activity: float
    no_progress: int = 0  # More answers in a row without a new op, including this chain's earlier ones
    phase: str = _ACTIVE
    trailer: End | More | None = None
    buffer: list[Op] = field(default_factory=list)
    pending: set[bytes] = field(default_factory=set)  # ids in buffer or in the outstanding commit
    commit_id: int | None = None
    accepted: int = 0
    dup_ids: list[bytes] = field(default_factory=list)


# --------------------------------------------------------------------------- coordinator


class SyncCoordinator:
    """Node-level sync: planner + peers + requests + announces + anti-entropy. See the module docstring."""

    def __init__(self, store: OpStore, sk: SigningKey, config: SyncConfig | None = None) -> None:
        self.store = store
        self.sk = sk
        self.vk = bytes(sk.verify_key)
        self.node_id = node_id_of(self.vk)
        self.config = config or SyncConfig()
        self.counters = SyncCounters()
        self.planner = SyncPlanner(
            self.config.max_want_per_request, self.config.max_wanted, self.config.want_ttl
        )
        self._peers: dict[PeerId, PeerState] = {}
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

    # ------------------------------------------------------------------ queries

    def peer(self, peer: PeerId) -> PeerState | None:
        return self._peers.get(peer)

    def connected_peers(self) -> list[PeerId]:
        return sorted(p for p, s in self._peers.items() if s.connected)

    def active_requests(self) -> list[int]:
        """Requests still waiting for frames, ascending."""
        return sorted(r for r, q in self._requests.items() if q.phase == _ACTIVE)

    def request_peer(self, request_id: int) -> PeerId | None:
        q = self._requests.get(request_id)
        return None if q is None else q.peer

    def accepting(self, request_id: int) -> bool:
        """Whether the I/O layer should read more frames of this request now (back-pressure)."""
        q = self._requests.get(request_id)
        if q is None or q.phase != _ACTIVE:
            return False
        return q.commit_id is None or len(q.buffer) < self.config.batch_ops

    def idle(self) -> bool:
        """No request, commit or wanted id outstanding (useful to tests and shutdown)."""
        return not self._requests and not self._commits and len(self.planner) == 0

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which ``timer`` has something to do, or None."""
        times: list[float] = []
        if self._ae_next_at is not None:
            times.append(self._ae_next_at)
        if (self._announce_dirty or self._announce_forced) and self._last_publish_at is not None:
            times.append(self._last_publish_at + self.config.announce_debounce)
        for q in self._requests.values():
            if q.phase == _ACTIVE:
                times.append(
                    min(q.last_activity + self.config.idle_timeout, q.started + self.config.request_deadline)
                )
        if len(self.planner):
            for s in self._peers.values():
                if s.connected and s.backoff_until > 0:
                    times.append(s.backoff_until)
        return min(times) if times else None

    # ------------------------------------------------------------------ lifecycle and peers

    def start(self, now: float) -> list[Effect]:
        """The node subscribed to the announce topic: announce, and schedule anti-entropy."""
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
        return s

    def _evict_peer_state(self) -> None:
        """Forget the oldest peer that is disconnected, idle and not banned (bounded memory)."""
        for p, s in self._peers.items():
            if not s.connected and not s.requests and s.banned_until == 0.0:
                del self._peers[p]
                self.planner.clear_unavailable(p)
                return

    def peer_connected(self, peer: PeerId, now: float) -> list[Effect]:
        s = self._state(peer)
        if now < s.banned_until:
            return [Disconnect(peer, "banned", s.banned_until)]
        s.connected = True
        return self._plan(now)

    def peer_subscribed(self, peer: PeerId, now: float) -> list[Effect]:
        """A peer joined the announce topic: announce (debounced) so it learns our heads."""
        self._announce_forced = True
        return self._maybe_publish(now) + self._plan(now)

    def peer_disconnected(self, peer: PeerId, now: float) -> list[Effect]:
        """The connection is gone: its requests fail (no backoff: the link, not the peer, failed)."""
        s = self._peers.get(peer)
        if s is None:
            return []
        s.connected = False
        out: list[Effect] = []
        for rid in sorted(s.requests):
            q = self._requests.get(rid)
            if q is not None and q.phase == _ACTIVE:
                out += self._fail(q, "peer disconnected", now, cancel=False, count_failure=False)
        return out + self._plan(now)

    # ------------------------------------------------------------------ announces

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
        self.counters.announces_received += 1
        if sa.vk == self.vk:
            return []
        if origin is not None:
            s = self._state(origin)
            mid = sa.message_id()
            if s.last_announce_id != mid:
                s.last_announce_id = mid
                s.watermark = sa.announce.topo_watermark
                s.bloom = sa.announce.bloom16
                s.heads = sa.announce.head_ids
                s.all_heads = len(sa.announce.head_ids) < self.config.announce_heads
                s.announced_at = now
                self.planner.clear_unavailable(origin)
        self.planner.note_announce(sa.announce.head_ids, origin, relayed_by, now, self.store.contains)
        return self._plan(now)

    def local_write(self, now: float) -> list[Effect]:
        """Ops were written locally: announce (debounced)."""
        self._announce_dirty = True
        return self._maybe_publish(now)

    def _maybe_publish(self, now: float) -> list[Effect]:
        if not self._started or not (self._announce_dirty or self._announce_forced):
            return []
        last = self._last_publish_at
        if last is not None and now < last + self.config.announce_debounce:
            return []
        data = local_announce(
            self.store, self.sk, self.config.announce_heads, self.config.bloom_window
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
        out: list[Effect] = []
        cfg = self.config
        for rid in sorted(self._requests):
            q = self._requests.get(rid)
            if q is None or q.phase != _ACTIVE:
                continue
            if now >= q.started + cfg.request_deadline:
                out += self._fail(q, "request deadline exceeded", now)
            elif now >= q.last_activity + cfg.idle_timeout:
                out += self._fail(q, "idle timeout", now)
        for s in self._peers.values():
            if 0 < s.backoff_until <= now:
                s.backoff_until = 0.0  # expired: keeps next_wakeup in the future
        if self._ae_next_at is not None and now >= self._ae_next_at:
            out += self._anti_entropy(now)
        self.planner.expire(now)
        out += self._maybe_publish(now)
        return out + self._plan(now)

    def anti_entropy_tick(self, now: float) -> list[Effect]:
        """Run an anti-entropy round now (tests, or an external scheduler)."""
        self._ae_next_at = now
        return self.timer(now)

    def _anti_entropy(self, now: float) -> list[Effect]:
        """One anti-entropy round (store §2.3.7): reset unavailability, pull from the next peer, announce."""
        self._ae_next_at = now + self.config.anti_entropy_period
        self.planner.clear_unavailable()
        self._announce_dirty = True
        if self._ae_rid is not None:
            return []  # the previous round's More chain is still running
        # a peer we are already fetching from is being synced: pulling everything from it again
        # would only fetch the same ops twice, so the round goes to an idle peer (or waits);
        # so is a peer whose fresh announce shows nothing we lack (see _nothing_to_pull)
        peers = sorted(
            p
            for p, s in self._peers.items()
            if s.available(now) and not self._busy(s) and not self._nothing_to_pull(s, now)
        )
        if not peers:
            return []
        after = [p for p in peers if self._ae_cursor is None or p > self._ae_cursor]
        target = after[0] if after else peers[0]
        self._ae_cursor = target
        eff = self._send(target, _ANTI_ENTROPY, (), now, build_boundary(self.store))
        self._ae_rid = eff.request_id
        return [eff]

    # ------------------------------------------------------------------ requests

    def _busy(self, s: PeerState) -> bool:
        return any(self._requests[r].phase in (_ACTIVE, _TRAILER) for r in s.requests)

    def _free_slots(self, s: PeerState) -> int:
        """Requests that may still be opened to ``s``: none while an anti-entropy request to it
        runs (it delivers everything the peer has beyond our boundary)."""
        busy = 0
        for r in s.requests:
            q = self._requests[r]
            if q.phase in (_ACTIVE, _TRAILER):
                if q.kind == _ANTI_ENTROPY:
                    return 0
                busy += 1
        return max(0, self.config.max_in_flight_per_peer - busy)

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
        complete = self.store.is_complete
        return all(complete(h) for h in s.heads)

    def _send(
        self,
        peer: PeerId,
        kind: str,
        want: tuple[bytes, ...],
        now: float,
        boundary: tuple[bytes, ...],
        no_progress: int = 0,
    ) -> SendRequest:
        rid = self._next_rid
        self._next_rid += 1
        req = SyncRequest(want, boundary, self.config.request_max_ops)
        self._requests[rid] = _Request(rid, peer, kind, want, now, now, no_progress)
        self._peers[peer].requests.add(rid)
        self.planner.start(rid, want)
        self.counters.requests_sent += 1
        return SendRequest(peer, rid, req)

    def _views(self, now: float) -> dict[PeerId, PeerView]:
        return {
            p: PeerView(s.available(now), self._free_slots(s), s.watermark, s.bloom)
            for p, s in self._peers.items()
            if s.connected
        }

    def _plan(self, now: float) -> list[Effect]:
        if len(self.planner) == 0:
            return []
        planned = self.planner.plan(self._views(now), self.store.contains, now)
        if not planned:
            return []
        boundary = build_boundary(self.store)
        return [self._send(f.peer, _FETCH, f.want, now, boundary) for f in planned]

    def request_started(self, request_id: int, now: float) -> list[Effect]:
        """The stream is open and the request written (restarts the idle timer)."""
        q = self._requests.get(request_id)
        if q is not None and q.phase == _ACTIVE:
            q.last_activity = now
        return []

    def frames_received(self, request_id: int, bodies: Sequence[bytes], now: float) -> list[Effect]:
        """Response frame bodies (length prefix removed) in stream order; decodes inline."""
        return self.decoded_received(request_id, decode_frames(bodies), now)

    def decoded_received(self, request_id: int, decoded: DecodedFrames, now: float) -> list[Effect]:
        """Frames already decoded by ``decode_frames`` (e.g. in a worker thread)."""
        q = self._requests.get(request_id)
        if q is None or q.phase != _ACTIVE:
            return []  # late frames of a cancelled or finished request
        q.last_activity = now
        contains = self.store.contains
        pending = q.pending
        violation: str | None = None
        dups = 0
        for op in decoded.ops:
            x = op.op_id
            if x in pending or contains(x):
                dups += 1
                if len(q.dup_ids) < MAX_BOUNDARY:
                    q.dup_ids.append(x)
                continue
            for p in op.parents:
                if p not in pending and not contains(p):
                    violation = f"op {x.hex()} arrived before its parent {p.hex()}"
                    break
            if violation is not None:
                break
            q.buffer.append(op)
            pending.add(x)
            q.accepted += 1
        self.counters.ops_duplicates_dropped += dups
        if violation is None and decoded.error is not None:
            violation = decoded.error
        if violation is not None:
            out = self._fail(q, f"protocol violation: {violation}", now, penalise=True)
        elif len(q.buffer) > self.config.max_held_ops:
            for op in q.buffer:
                pending.discard(op.op_id)
            q.buffer.clear()
            out = self._fail(
                q, "too many ops awaiting commit (reader ignored back-pressure)", now, local=True
            )
        else:
            if decoded.trailer is not None:
                q.phase = _TRAILER
                q.trailer = decoded.trailer
            out = self._pump(q, now)
        return out + self._plan(now)

    def stream_closed(self, request_id: int, now: float) -> list[Effect]:
        """EOF on the response stream; before a trailer it is a failure (retried elsewhere)."""
        q = self._requests.get(request_id)
        if q is None or q.phase != _ACTIVE:
            return []
        return self._fail(q, "stream ended without a trailer", now, cancel=False) + self._plan(now)

    def request_failed(
        self, request_id: int, reason: str, now: float, violation: bool = False
    ) -> list[Effect]:
        """The I/O layer saw the request fail (dial, open, reset, framing: ``violation=True``)."""
        q = self._requests.get(request_id)
        if q is None or q.phase != _ACTIVE:
            return []
        reason = f"protocol violation: {reason}" if violation else reason
        return self._fail(q, reason, now, penalise=violation, cancel=False) + self._plan(now)

    def commit_finished(self, outcome: CommitOutcome, now: float) -> list[Effect]:
        """Report the outcome of a ``CommitOps`` (from ``apply_commit``)."""
        entry = self._commits.pop(outcome.commit_id, None)
        if entry is None:
            return []
        rid, ops = entry
        q = self._requests[rid]
        q.commit_id = None
        for op in ops:
            q.pending.discard(op.op_id)
        out: list[Effect] = []
        if outcome.error is None:
            self.counters.ops_fetched += len(outcome.stored)
            self.counters.fetch_batches += 1
            self.counters.ops_duplicates_dropped += outcome.duplicates
            self.planner.forget(outcome.stored)
            if outcome.stored:
                self._announce_dirty = True
            if q.phase == _ACTIVE:
                q.last_activity = now
        elif outcome.rejected_index is not None:
            i = outcome.rejected_index
            bad = ops[i].op_id.hex() if 0 <= i < len(ops) else "?"
            for op in q.buffer:
                q.pending.discard(op.op_id)
            q.buffer.clear()
            prefix = ops[:i] if 0 <= i < len(ops) else ()
            if prefix:
                out.append(self._commit(q, prefix))
            out += self._fail(q, f"invalid op {bad}: {outcome.error}", now, penalise=True)
        else:
            for op in q.buffer:
                q.pending.discard(op.op_id)
            q.buffer.clear()
            out += self._fail(q, outcome.error, now, local=True)
        out += self._pump(q, now)
        out += self._maybe_publish(now)
        return out + self._plan(now)

    def _commit(self, q: _Request, ops: Sequence[Op]) -> CommitOps:
        cid = self._next_cid
        self._next_cid += 1
        t = tuple(ops)
        self._commits[cid] = (q.rid, t)
        q.commit_id = cid
        for op in t:
            q.pending.add(op.op_id)
        return CommitOps(cid, q.peer, q.rid, t)

    def _pump(self, q: _Request, now: float) -> list[Effect]:
        """Emit the next commit of ``q`` when due; finish ``q`` when drained."""
        if q.commit_id is not None:
            return []
        n = self.config.batch_ops
        if q.buffer and (len(q.buffer) >= n or q.phase != _ACTIVE):
            chunk = q.buffer[:n]
            del q.buffer[:n]
            return [self._commit(q, chunk)]
        if not q.buffer and q.phase in (_TRAILER, _FAILED):
            return self._finish(q, now)
        return []

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
        if q.phase in (_FAILED, _DONE):
            return self._penalise(q.peer, reason, now, q) if penalise else []
        out: list[Effect] = []
        was_active = q.phase == _ACTIVE
        q.phase = _FAILED
        self.counters.requests_failed += 1
        if q.commit_id is None and not q.buffer:
            self.planner.finish(q.rid)  # else at the end of the drain, so the retry's boundary includes it
        if self._ae_rid == q.rid:
            self._ae_rid = None
        if was_active and cancel:
            out.append(CancelRequest(q.peer, q.rid, reason))
        s = self._peers[q.peer]
        if not local and count_failure:
            s.record_failure(now, self.config)
        if penalise:
            out += self._penalise(q.peer, reason, now, q)
        return out + self._pump(q, now)

    def _penalise(self, peer: PeerId, reason: str, now: float, origin: _Request) -> list[Effect]:
        """Penalise, disconnect and ban ``peer``; its other requests fail without extra backoff."""
        s = self._peers[peer]
        self.counters.peers_penalised += 1
        s.banned_until = now + self.config.ban_period
        s.connected = False
        out: list[Effect] = [
            Penalise(peer, reason),
            Disconnect(peer, reason, s.banned_until if self.config.ban_period > 0 else None),
        ]
        for rid in sorted(s.requests):
            other = self._requests.get(rid)
            if other is not None and other is not origin and other.phase == _ACTIVE:
                out += self._fail(other, "peer disconnected (penalised)", now, count_failure=False)
        return out

    def _finish(self, q: _Request, now: float) -> list[Effect]:
        """``q`` is drained: success bookkeeping, unavailability, ``More`` continuation."""
        phase = q.phase
        q.phase = _DONE
        del self._requests[q.rid]
        s = self._peers[q.peer]
        s.requests.discard(q.rid)
        self.planner.finish(q.rid)
        if phase != _TRAILER:
            return []
        s.record_success()
        is_ae = self._ae_rid == q.rid
        if is_ae:
            self._ae_rid = None
        contains = self.store.contains
        left = tuple(x for x in q.want if not contains(x))
        no_progress = 0 if q.accepted else q.no_progress + 1
        more = isinstance(q.trailer, More) and no_progress < self.config.no_progress_limit
        if more and (is_ae or left) and s.available(now) and self._free_slots(s) > 0:
            boundary = build_boundary(self.store, extra=q.dup_ids)
            eff = self._send(q.peer, q.kind, left, now, boundary, no_progress)
            if is_ae:
                self._ae_rid = eff.request_id
            return [eff]
        if left:
            self.planner.mark_unavailable(q.peer, left)
        return []
