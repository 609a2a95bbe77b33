"""SyncPlanner: which ids to fetch, from which peer, in which requests (store §2.3.5).

The planner only names *tips* (announced heads the store lacks); the server adds every
missing ancestor beyond the requester's boundary. It keeps:

* the want table: ids announced by someone and not stored, with who announced or
  relayed them (bounded, oldest evicted first, expired after a TTL);
* the ids in flight, each owned by one request (never requested twice at once);
* per-peer "not available this round" marks (cleared by that peer's next announce or
  the next anti-entropy round, never permanent).

``plan`` splits the wanted ids, in ascending op-id order, into requests of at most 256
ids, choosing for each id the first eligible peer among: the announce's originator; the
other peers that announced it; the peers that relayed it; any other connected peer.
The first of them that is available and not marked "unavailable" for the id gets it;
when that peer has no free request slot, the id waits for it rather than going to the
next candidate: the request running there most likely delivers the id's ancestry
already, and another peer would send the same ops again (each request's boundary can
only list ops the requester has stored). The same holds across peers for a set of
ids known to be related (``hold``: the ids a reconciliation session found): those not
in flight wait while a request fetching any of the others runs, whichever peer it
asks, since it streams their missing ancestry; when it ends (in any way: its stored
ops have left the table by then, and a failed one releases them too) only what is
still wanted is planned. The bloom and watermark of a peer's announce
only *order* that last group. They never
decide that an id need not be fetched: a saturated bloom (almost always ``ffff``)
would otherwise hide every missing op. Pure and deterministic: sets are always sorted
before they decide anything, time is the ``now`` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ecac.core.opindex import bloom_may_contain
from ecac.sync.wire import MAX_WANT

#: peers are opaque, totally ordered names (the I/O layer uses the base58 PeerId)
PeerId = str


def diff_heads(
    head_ids: Iterable[bytes], have: Callable[[bytes], bool], in_flight: Callable[[bytes], bool]
) -> list[bytes]:
    """The want-list seed: announced heads that are neither stored nor in flight, deduplicated, ascending."""
    return sorted({h for h in head_ids if not have(h) and not in_flight(h)})


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the planner needs to know about one connected peer.

    ``available``: not in backoff and not banned. ``free_slots``: requests that may still
    be opened to it. ``watermark``/``bloom``: soft hints from its last announce.
    """

    available: bool = True
    free_slots: int = 2
    watermark: int = 0
    bloom: bytes | None = None


@dataclass(frozen=True, slots=True)
class PlannedFetch:
    """One request to send: ``want`` ids (ascending, ≤ 256) to ``peer``."""

    peer: PeerId
    want: tuple[bytes, ...]


@dataclass(slots=True)
class WantEntry:
    """Why an id is wanted: who originated, announced and relayed it, and since when."""

    origin: PeerId | None
    since: float
    announcers: set[PeerId] = field(default_factory=set)
    relays: set[PeerId] = field(default_factory=set)


class SyncPlanner:
    """Want table, in-flight ids and per-peer unavailability; ``plan`` turns them into requests."""

    def __init__(
        self, max_want_ids: int = MAX_WANT, max_wanted: int = 10_000, want_ttl: float = 60.0
    ) -> None:
        if not 1 <= max_want_ids <= MAX_WANT:
            raise ValueError(f"max_want_ids must be between 1 and {MAX_WANT}")
        if max_wanted < 1:
            raise ValueError("max_wanted must be positive")
        self.max_want_ids = max_want_ids
        self.max_wanted = max_wanted
        self.want_ttl = want_ttl
        self._wanted: dict[bytes, WantEntry] = {}  # insertion order = age (deterministic)
        self._in_flight: dict[bytes, int] = {}  # id -> request id
        self._requests: dict[int, tuple[bytes, ...]] = {}
        self._unavailable: dict[PeerId, set[bytes]] = {}
        # id -> requests it waits for: not planned while one of them runs (see ``hold``)
        self._held: dict[bytes, frozenset[int]] = {}

    # ------------------------------------------------------------------ queries

    def is_wanted(self, op_id: bytes) -> bool:
        return op_id in self._wanted

    def in_flight(self, op_id: bytes) -> bool:
        return op_id in self._in_flight

    def wanted_ids(self) -> list[bytes]:
        """Every wanted id, ascending (in flight or not)."""
        return sorted(self._wanted)

    def entry(self, op_id: bytes) -> WantEntry | None:
        return self._wanted.get(op_id)

    def unavailable_at(self, peer: PeerId, op_id: bytes) -> bool:
        s = self._unavailable.get(peer)
        return s is not None and op_id in s

    def request_ids(self, request_id: int) -> tuple[bytes, ...]:
        return self._requests.get(request_id, ())

    def in_flight_ids(self) -> list[bytes]:
        """Every id owned by a running request, ascending."""
        return sorted(self._in_flight)

    def owner(self, op_id: bytes) -> int | None:
        """The request that owns ``op_id`` (None when it is not in flight)."""
        return self._in_flight.get(op_id)

    def held_by(self, op_id: bytes) -> frozenset[int]:
        """The running requests that hold ``op_id`` back (empty: it is not held)."""
        return frozenset(r for r in self._held.get(op_id, ()) if r in self._requests)

    def held_ids(self) -> list[bytes]:
        """Every id with a hold, ascending (released ones stay listed until the next ``plan``)."""
        return sorted(self._held)

    def __len__(self) -> int:
        return len(self._wanted)

    # ------------------------------------------------------------------ want table

    def note_announce(
        self,
        head_ids: Iterable[bytes],
        origin: PeerId | None,
        relayed_by: PeerId | None,
        now: float,
        have: Callable[[bytes], bool],
    ) -> list[bytes]:
        """Record an announce's heads; returns the ids newly added to the want table."""
        added: list[bytes] = []
        for x in dict.fromkeys(head_ids):
            if have(x):
                continue
            e = self._wanted.get(x)
            if e is None:
                e = WantEntry(origin, now)
                self._wanted[x] = e
                added.append(x)
            elif e.origin is None:
                e.origin = origin
            if origin is not None:
                e.announcers.add(origin)
            if relayed_by is not None and relayed_by != origin:
                e.relays.add(relayed_by)
        self._evict()
        return added

    def add_wants(self, ids: Iterable[bytes], now: float, origin: PeerId | None = None) -> None:
        """Want ids without an announce (for example ids a peer reported and then failed to send)."""
        self.note_announce(ids, origin, None, now, lambda _x: False)

    def forget(self, ids: Iterable[bytes]) -> None:
        """Drop ids from the want table (stored now); in-flight ids stay owned by their request."""
        for x in ids:
            self._wanted.pop(x, None)
            self._held.pop(x, None)

    def hold(self, ids: Iterable[bytes]) -> int:
        """``ids`` are related (one peer holds them all and we lack them all, as a reconciliation
        session finds them): the wanted ones not in flight are not planned while a request that
        owns one of the others runs. Returns how many are held.

        Such a request streams its ids' missing ancestry, which is much of the rest; asking
        for the rest by id meanwhile (the same peer has no free slot, but another peer may)
        would bring the same ops twice. Every request ends (trailer, failure, timeout,
        disconnect: ``finish``), so a held id is always planned in the end."""
        t = tuple(dict.fromkeys(ids))
        owners = frozenset(r for x in t if (r := self._in_flight.get(x)) is not None)
        if not owners:
            return 0
        n = 0
        for x in t:
            if x in self._wanted and x not in self._in_flight:
                self._held[x] = owners | self._held.get(x, frozenset())
                n += 1
        return n

    def _evict(self) -> None:
        excess = len(self._wanted) - self.max_wanted
        if excess <= 0:
            return
        victims = [x for x in self._wanted if x not in self._in_flight][:excess]
        for x in victims:
            del self._wanted[x]
            self._held.pop(x, None)

    def expire(self, now: float) -> int:
        """Drop wants older than the TTL that are not in flight (anti-entropy covers them); count them."""
        old = [
            x for x, e in self._wanted.items() if now - e.since > self.want_ttl and x not in self._in_flight
        ]
        for x in old:
            del self._wanted[x]
            self._held.pop(x, None)
        return len(old)

    # ------------------------------------------------------------------ unavailability

    def mark_unavailable(self, peer: PeerId, ids: Iterable[bytes]) -> None:
        """``peer`` answered ``End`` without these ids: skip it for them this round."""
        s = self._unavailable.setdefault(peer, set())
        for x in ids:
            if x in self._wanted and len(s) < self.max_wanted:
                s.add(x)

    def clear_unavailable(self, peer: PeerId | None = None) -> None:
        """A new round: for one peer (its new announce) or for all (anti-entropy)."""
        if peer is None:
            self._unavailable.clear()
        else:
            self._unavailable.pop(peer, None)

    # ------------------------------------------------------------------ in flight

    def start(self, request_id: int, ids: Iterable[bytes], continues: int | None = None) -> None:
        """Ids now owned by ``request_id``; ``continues``: the request it takes over from (the
        ``More`` continuation of a response), whose holds it keeps."""
        t = tuple(ids)
        self._requests[request_id] = t
        for x in t:
            self._in_flight[x] = request_id
            self._held.pop(x, None)
        if continues is not None and self._held:  # rare: once per server cap of ops at most
            moved: dict[frozenset[int], frozenset[int]] = {}
            for x, owners in self._held.items():
                if continues in owners:
                    g = moved.get(owners)
                    if g is None:
                        g = moved[owners] = owners | {request_id}
                    self._held[x] = g

    def finish(self, request_id: int) -> tuple[bytes, ...]:
        """The request ended (any way): its ids are no longer in flight; returns them."""
        t = self._requests.pop(request_id, ())
        for x in t:
            if self._in_flight.get(x) == request_id:
                del self._in_flight[x]
        return t

    # ------------------------------------------------------------------ planning

    def candidates(self, op_id: bytes, peers: Mapping[PeerId, PeerView]) -> list[PeerId]:
        """Connected peers to ask for ``op_id``, best first (store §2.3.5), before eligibility."""
        e = self._wanted.get(op_id)
        order: list[PeerId] = []
        seen: set[PeerId] = set()

        def take(ps: Iterable[PeerId]) -> None:
            for p in ps:
                if p in peers and p not in seen:
                    seen.add(p)
                    order.append(p)

        if e is not None:
            if e.origin is not None:
                take((e.origin,))
            take(sorted(e.announcers))
            take(sorted(e.relays))
        rest = [p for p in peers if p not in seen]

        def hint(p: PeerId) -> tuple[bool, int, PeerId]:
            v = peers[p]
            maybe = v.bloom is not None and bloom_may_contain(v.bloom, op_id)
            return (not maybe, -v.watermark, p)

        take(sorted(rest, key=hint))
        return order

    def plan(
        self, peers: Mapping[PeerId, PeerView], have: Callable[[bytes], bool], now: float
    ) -> list[PlannedFetch]:
        """Requests for every wanted id that is not stored, not in flight and not held, where an
        eligible peer exists.

        Stored ids are dropped from the table, and holds whose requests have all ended. Ids
        without an eligible peer, or whose best eligible peer has no free slot, stay wanted
        and are retried by a later call. Never more than ``free_slots`` new requests per peer.
        """
        stored = [x for x in self._wanted if have(x)]
        self.forget(stored)
        held = self._held
        if held:
            shut: dict[frozenset[int], bool] = {}  # ids of one ``hold`` share their set
            released = []
            for x, owners in held.items():
                closed = shut.get(owners)
                if closed is None:
                    closed = shut[owners] = any(r in self._requests for r in owners)
                if not closed:
                    released.append(x)
            for x in released:
                del held[x]
        todo = sorted(x for x in self._wanted if x not in self._in_flight and x not in held)
        if not todo:
            return []
        slots = {p: v.free_slots for p, v in peers.items() if v.available}
        open_req: dict[PeerId, list[bytes]] = {}
        out: list[tuple[PeerId, list[bytes]]] = []
        for x in todo:
            p = self._first_eligible(x, peers, slots)
            if p is None:
                continue
            cur = open_req.get(p)
            if cur is not None and len(cur) < self.max_want_ids:
                cur.append(x)
            elif slots[p] > 0:
                slots[p] -= 1
                cur = [x]
                open_req[p] = cur
                out.append((p, cur))
            # else the best eligible peer is busy: x waits for it (asking another peer
            # now would resend the ancestry that the running request is delivering)
        return [PlannedFetch(p, tuple(ids)) for p, ids in out]

    def _first_eligible(
        self, op_id: bytes, peers: Mapping[PeerId, PeerView], available: Mapping[PeerId, int]
    ) -> PeerId | None:
        """The first of ``candidates(op_id, peers)`` that is available and not marked unavailable for
        ``op_id``, without building the whole list: announcers and relays are intersected with the
        connected peers (an id announced by every node of a large network has that many announcers),
        and the hint order of the rest is only a minimum over the eligible ones."""
        gone = self._unavailable

        def skip(p: PeerId) -> bool:
            if p not in available:
                return True
            marked = gone.get(p)
            return marked is not None and op_id in marked

        e = self._wanted.get(op_id)
        if e is not None:
            if e.origin is not None and e.origin in peers and not skip(e.origin):
                return e.origin
            for group in (e.announcers, e.relays):
                small, big = (group, peers) if len(group) <= len(peers) else (peers, group)
                for p in sorted(p for p in small if p in big):
                    if not skip(p):
                        return p
        best: tuple[bool, int, PeerId] | None = None
        for p in available:
            if skip(p):
                continue
            v = peers[p]
            maybe = v.bloom is not None and bloom_may_contain(v.bloom, op_id)
            key = (not maybe, -v.watermark, p)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]
