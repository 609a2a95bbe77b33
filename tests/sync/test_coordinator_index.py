"""The coordinator's peer index (connected peers, deadline heaps, eviction order) against a naive walk.

``SyncCoordinator`` answers ``next_wakeup``, ``peer_views``, ``connected_peers``, the anti-entropy
choice, the timer's resets and the eviction of idle peer states from an index instead of walking
every remembered peer (docs/decisions.md). A Hypothesis state machine drives one coordinator with
many peers and announce originators and a small ``max_peer_states`` (so states are evicted and
re-created), real responses, failures (backoff), violations (bans), ingest-quota cuts, time jumps,
anti-entropy rounds and restarts; after every step each indexed answer must equal the walk over all
peer states (``check_invariants`` compares the internal ones, this test the public ones), and the
index heaps must stay within their bound.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ecac.core.keys import key_pair
from ecac.core.snapshot import StoreSnapshot, take_snapshot
from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig, SyncCoordinator, local_announce
from ecac.sync.effects import CancelRequest, CommitOps, Disconnect, Effect, SendRequest
from ecac.sync.planner import PeerView, PlannedFetch, SyncPlanner
from ecac.sync.syncserve import serve_sync
from ecac.sync.wire import FrameReader
from sim.dags import chain
from sim.simnet import apply_commit

from .test_coordinator import Node, announce_of, respond

OPS = chain(48, b"index")
SERVERS = tuple(f"S{i}" for i in range(4))  # connect, serve, fail, get banned
ORIGINS = tuple(f"Z{i}" for i in range(8))  # announce only (gossip originators we never connect to)
CFG = SyncConfig(
    max_peer_states=len(SERVERS) + 1,  # servers are never evicted (connected or banned): originators are
    batch_ops=4,
    batch_bytes=4096,
    max_held_ops=64,
    request_max_ops=12,
    announce_debounce=0.05,
    anti_entropy_period=1.0,
    idle_timeout=0.7,
    request_deadline=2.0,
    backoff_base=0.1,
    backoff_max=0.8,
    ban_period=1.5,
    peer_ingest_ops_per_s=3.0,
    quota_burst_s=1.0,
)
LOCAL_SK = key_pair(7, b"index-local")
# the deadline heaps may hold this many entries per peer state or request (see SyncCoordinator._push)
HEAP_GROWTH, HEAP_SLACK = 4, 64


def snap(store: MemoryOpStore, seq: int = 0) -> StoreSnapshot:
    return take_snapshot(store.index, seq)


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.seq = 0
        self.local = MemoryOpStore()
        self.coord = SyncCoordinator(LOCAL_SK, self.local.index, CFG, self.snap())
        self.stores = {p: MemoryOpStore() for p in (*SERVERS, *ORIGINS)}
        self.linked: set[str] = set()  # the host's view: which servers are connected
        self.open: dict[int, SendRequest] = {}
        self.max_load = 0

    def snap(self) -> StoreSnapshot:
        self.seq += 1
        return snap(self.local, self.seq)

    @initialize(sizes=st.lists(st.integers(0, len(OPS)), min_size=12, max_size=12))
    def setup(self, sizes: list[int]) -> None:
        for store, k in zip(self.stores.values(), sizes, strict=True):
            store.put_many(OPS[:k])
        self.take(self.coord.start(self.now))

    # ------------------------------------------------------------------ effects

    def take(self, effects: list[Effect]) -> None:
        queue = list(effects)
        closed: list[str] = []
        while queue:
            e = queue.pop(0)
            if isinstance(e, CommitOps):  # the writer commits at once
                queue = self.coord.commit_finished(apply_commit(self.local, e), self.snap(), self.now) + queue
            elif isinstance(e, SendRequest):
                assert e.peer in self.linked, "a request to a peer that is not connected"
                self.open[e.request_id] = e
            elif isinstance(e, CancelRequest):
                self.open.pop(e.request_id, None)
            elif isinstance(e, Disconnect):
                event("banned" if e.reason != "banned" else "ban refused a reconnect")
                if e.peer in self.linked:
                    self.linked.discard(e.peer)
                    closed.append(e.peer)
                for rid in [r for r, s in self.open.items() if s.peer == e.peer]:
                    del self.open[rid]
        for p in closed:
            self.take(self.coord.peer_disconnected(p, self.now))

    # ------------------------------------------------------------------ rules

    @rule(i=st.integers(0, len(SERVERS) - 1))
    def connect(self, i: int) -> None:
        p = SERVERS[i]
        if p in self.linked:
            return
        self.linked.add(p)
        self.take(self.coord.peer_connected(p, self.now))
        if p in self.linked:
            self.take(self.coord.peer_subscribed(p, self.now))

    @rule(i=st.integers(0, len(SERVERS) - 1))
    def disconnect(self, i: int) -> None:
        p = SERVERS[i]
        if p not in self.linked:
            return
        self.linked.discard(p)
        for rid in [r for r, s in self.open.items() if s.peer == p]:
            del self.open[rid]
        self.take(self.coord.peer_disconnected(p, self.now))

    @rule(i=st.integers(0, len(SERVERS) + len(ORIGINS) - 1), relay=st.integers(0, len(SERVERS) - 1))
    def announce(self, i: int, relay: int) -> None:
        """An announce of any peer (originators create peer states: eviction at max_peer_states)."""
        names = (*SERVERS, *ORIGINS)
        p = names[i]
        store = self.stores[p]
        known = {q for q in names if self.coord.peer(q) is not None}
        sa = local_announce(snap(store), key_pair(100 + i, b"index-peer"))
        self.take(self.coord.announce_received(p, sa, SERVERS[relay], self.now))
        if known - {q for q in names if self.coord.peer(q) is not None}:
            event("a peer state was evicted")

    @rule(first=st.integers(0, len(ORIGINS) - 1), k=st.integers(1, 4))
    def gossip_burst(self, first: int, k: int) -> None:
        """Announces of ``k`` originators in a row (gossip from far away)."""
        for j in range(k):
            self.announce(len(SERVERS) + (first + j) % len(ORIGINS), j % len(SERVERS))

    @rule(i=st.integers(0, len(SERVERS) - 1))
    def reconciled(self, i: int) -> None:
        """A reconciliation session with a server found what it holds that we lack (held while a
        request fetching some of it runs: ``check_invariants`` checks the holds)."""
        p = SERVERS[i]
        need = [
            op.op_id for op in OPS if self.stores[p].contains(op.op_id) and not self.local.contains(op.op_id)
        ]
        self.take(self.coord.reconciled(p, need, self.now))
        if self.coord.planner.held_ids():
            event("reconciled ids held")

    def pick(self, i: int) -> SendRequest:
        rids = sorted(self.open)
        return self.open[rids[i % len(rids)]]

    @precondition(lambda self: self.open)
    @rule(i=st.integers(0, 9), upto=st.integers(0, 20))
    def respond(self, i: int, upto: int) -> None:
        """The first ``upto`` frames of the server's answer (all of them: the stream ends)."""
        send = self.pick(i)
        store = self.stores[send.peer]
        reader = FrameReader()
        blobs = serve_sync(store.index, snap(store), store.load_ops_cbor, send.request.encode())
        bodies = [b for blob in blobs for b in reader.feed(blob)]
        cuts = self.coord.counters.quota_ingest_cuts
        if upto >= len(bodies):
            del self.open[send.request_id]
            self.take(self.coord.frames_received(send.request_id, bodies, self.now))
        else:
            self.take(self.coord.frames_received(send.request_id, bodies[:upto], self.now))
        if self.coord.counters.quota_ingest_cuts > cuts:
            event("ingest quota cut")

    @precondition(lambda self: self.open)
    @rule(i=st.integers(0, 9), how=st.sampled_from(["closed", "failed", "violation"]))
    def end(self, i: int, how: str) -> None:
        send = self.pick(i)
        del self.open[send.request_id]
        if how == "closed":
            self.take(self.coord.stream_closed(send.request_id, self.now))
        else:
            failed = self.coord.request_failed(
                send.request_id, "reset", self.now, violation=how == "violation"
            )
            self.take(failed)

    @rule(dt=st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.4, 1.1]))
    def tick(self, dt: float) -> None:
        """Time passes; 0: jump to the next wakeup (timeouts, backoff and quota ends, rounds)."""
        if dt == 0.0:
            t = self.coord.next_wakeup()
            if t is None:
                return
            self.now = max(self.now, t)
        else:
            self.now += dt
        self.take(self.coord.timer(self.now))
        for p in (*SERVERS, *ORIGINS):  # the timer reset every expired deadline, connected or not
            s = self.coord.peer(p)
            assert s is None or not (0 < s.backoff_until <= self.now or 0 < s.quota_until <= self.now)
        w = self.coord.next_wakeup()
        assert w is None or w > self.now, "timer left its own work undone"

    @rule()
    def anti_entropy(self) -> None:
        self.take(self.coord.anti_entropy_tick(self.now))

    @rule()
    def restart(self) -> None:
        self.coord, effects = self.coord.restarted(self.snap(), self.now)
        self.open.clear()  # every active request was reset
        self.take(effects)

    # ------------------------------------------------------------------ the index against a walk

    @invariant()
    def index_matches_a_walk(self) -> None:
        coord = self.coord
        assert coord.check_invariants() == []  # the internal answers (next_wakeup, eviction, heaps)
        states = {p: s for p in (*SERVERS, *ORIGINS) if (s := coord.peer(p)) is not None}
        connected = sorted(p for p, s in states.items() if s.connected)
        assert coord.connected_peers() == connected
        views = coord.peer_views(self.now)
        assert sorted(views) == connected
        for p, v in views.items():
            s = states[p]
            assert v == PeerView(s.available(self.now), v.free_slots, s.watermark, s.bloom)
        assert len(states) <= CFG.max_peer_states or all(not s.evictable() for s in states.values())
        assert coord.quota_status(self.now)["waiting"] == sorted(
            p for p, s in states.items() if s.quota_until > self.now
        )
        self.max_load = max(self.max_load, len(states) + len(coord.requests()))
        for name, size in coord.index_sizes().items():
            assert size <= HEAP_GROWTH * self.max_load + HEAP_SLACK, name


IndexMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_coordinator_index_matches_a_walk = IndexMachine.TestCase


# --------------------------------------------------------------------------- targeted cases


def test_a_deadline_counts_again_when_its_peer_reconnects() -> None:
    """Backoff and quota deadlines of a disconnected peer leave ``next_wakeup`` and come back with it."""
    cfg = SyncConfig(
        peer_ingest_ops_per_s=100,
        peer_ingest_bytes_per_s=10**9,
        quota_burst_s=4,
        server_max_ops=10**6,
    )
    ops = chain(500)
    server = MemoryOpStore(ops)
    node = Node(cfg)  # not started: no anti-entropy round or announce to wait for
    node.coord.ingest_quota.charge("H", 1, 100, 0.0)  # contended: P is held to its quota
    node.run(node.coord.peer_connected("P", 0.0))
    (send,) = node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.0)))
    node.run(node.coord.frames_received(send.request_id, respond(server, send, server_max_ops=10**6), 0.0))
    p = node.coord.peer("P")
    assert p is not None and p.quota_until == 4.0 and node.coord.next_wakeup() == 4.0
    node.run(node.coord.peer_disconnected("P", 1.0), 1.0)
    assert node.coord.next_wakeup() is None
    node.run(node.coord.peer_connected("P", 2.0), 2.0)
    assert node.coord.next_wakeup() == 4.0
    (again,) = node.sends(node.run(node.coord.timer(4.0), 4.0))
    assert p.quota_until == 0.0
    node.run(node.coord.request_failed(again.request_id, "reset", 4.0), 4.0)
    assert p.backoff_until == 4.5 and node.coord.next_wakeup() == 4.5  # ids still wanted from P
    node.run(node.coord.peer_disconnected("P", 4.1), 4.1)
    assert node.coord.next_wakeup() is None
    node.run(node.coord.peer_connected("P", 4.2), 4.2)
    assert node.coord.next_wakeup() == 4.5
    assert node.coord.check_invariants() == []


def test_eviction_forgets_the_oldest_idle_peer_and_keeps_connected_and_banned_ones() -> None:
    node = Node(SyncConfig(max_peer_states=3))
    sa = announce_of(MemoryOpStore(chain(2)))
    node.run(node.coord.peer_connected("A", 0.0))
    for p in ("B", "C"):
        node.run(node.coord.announce_received(p, sa, "A", 0.0))
    node.run(node.coord.announce_received("D", sa, "A", 0.0))  # full: B (oldest idle) goes
    assert [p for p in "ABCD" if node.coord.peer(p) is not None] == ["A", "C", "D"]
    node.run(node.coord.peer_disconnected("A", 0.0))  # A is idle now, and still the oldest
    node.run(node.coord.announce_received("E", sa, "C", 0.0))
    assert [p for p in "ABCDE" if node.coord.peer(p) is not None] == ["C", "D", "E"]
    node.run(node.coord.peer_connected("C", 0.0))
    node.run(node.coord.peer_disconnected("C", 0.0))
    node.run(node.coord.announce_received("F", sa, "D", 0.0))  # C reconnected meanwhile: still the oldest
    assert [p for p in "CDEF" if node.coord.peer(p) is not None] == ["D", "E", "F"]
    assert node.coord.check_invariants() == []


# --------------------------------------------------------------------------- the planner's choice

NAMES = [f"p{i}" for i in range(5)]
IDS = [bytes([i]) * 32 for i in range(1, 6)]


def plan_by_candidates(planner: SyncPlanner, peers: dict[str, PeerView]) -> list[PlannedFetch]:
    """``SyncPlanner.plan`` as it was written before it stopped building every candidate list."""
    todo = sorted(x for x in planner.wanted_ids() if not planner.in_flight(x))
    slots = {p: v.free_slots for p, v in peers.items() if v.available}
    open_req: dict[str, list[bytes]] = {}
    out: list[tuple[str, list[bytes]]] = []
    for x in todo:
        for p in planner.candidates(x, peers):
            if p not in slots or planner.unavailable_at(p, x):
                continue
            cur = open_req.get(p)
            if cur is not None and len(cur) < planner.max_want_ids:
                cur.append(x)
            elif slots[p] > 0:
                slots[p] -= 1
                cur = [x]
                open_req[p] = cur
                out.append((p, cur))
            break
    return [PlannedFetch(p, tuple(ids)) for p, ids in out]


peer_names = st.sampled_from(NAMES)


@settings(max_examples=300, deadline=None)
@given(
    announces=st.lists(
        st.tuples(st.lists(st.sampled_from(IDS), max_size=4), st.none() | peer_names, st.none() | peer_names),
        max_size=12,
    ),
    views=st.dictionaries(
        peer_names,
        st.builds(
            PeerView,
            st.booleans(),
            st.integers(0, 2),
            st.integers(0, 5),
            st.none() | st.binary(min_size=2, max_size=2),
        ),
    ),
    marks=st.lists(st.tuples(peer_names, st.lists(st.sampled_from(IDS), max_size=4)), max_size=4),
    flying=st.lists(st.sampled_from(IDS), max_size=3),
    max_want=st.integers(1, 3),
)
def test_plan_matches_the_candidate_walk(
    announces: list[tuple[list[bytes], str | None, str | None]],
    views: dict[str, PeerView],
    marks: list[tuple[str, list[bytes]]],
    flying: list[bytes],
    max_want: int,
) -> None:
    """The planner picks, for every id, the first eligible peer of ``candidates`` (origin, announcers,
    relays, then the rest by hint) without building the lists: the same requests for any state."""
    planner = SyncPlanner(max_want_ids=max_want)
    for heads, origin, relay in announces:
        planner.note_announce(heads, origin, relay, 0.0, lambda _x: False)
    for peer, marked in marks:
        planner.mark_unavailable(peer, marked)
    planner.start(10**6, flying)
    expected = plan_by_candidates(planner, views)
    assert planner.plan(views, lambda _x: False, 0.0) == expected
