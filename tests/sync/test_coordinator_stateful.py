"""A Hypothesis state machine drives ``SyncCoordinator`` through random event sequences and checks it against
a naive model.

The machine plays the node and three peers. Each peer holds a prefix of one random DAG (parent-first,
so every prefix is closed under parents) and answers requests with the real server
(``syncserve.serve_sync``). Rules deliver response frames (valid, duplicated, child-first, garbage,
forged ops), close or fail streams, finish commits (success through the real validating store,
rejection, local store error) in FIFO order, connect and disconnect peers, deliver announces, write
locally, advance time, run anti-entropy and restart the coordinator. Every effect is checked as it is
emitted (well-formed, and allowed by the model), and after every step:

* the coordinator reports no internal inconsistency (``check_invariants``);
* no peer has more open streams than ``max_in_flight_per_peer``; held ops and bytes are within budget;
* every id a peer announced and we do not store is wanted (in flight or waiting), and no wanted id is stored;
* planner state is consistent: a wanted id that is not in flight has no eligible first-choice peer
  with a free slot (otherwise the coordinator should have requested it).

At the end, with faults off and bans expired, the local store catches up with every peer and the
coordinator goes idle.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ecac.core.codec import b2l, dumps
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, header_obj, make_op
from ecac.core.snapshot import StoreSnapshot, take_snapshot
from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig, SyncCoordinator, local_announce
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
from ecac.sync.frames import decode_frames
from ecac.sync.syncserve import serve_sync
from ecac.sync.wire import MAX_BOUNDARY, FrameReader, OpBytes, validate_signed_announce
from sim.dags import random_dag
from sim.simnet import apply_commit

CFG = SyncConfig(
    batch_ops=4,
    batch_bytes=700,
    max_held_ops=10,
    max_held_bytes=2500,
    max_held_bytes_total=2500,
    max_want_per_request=6,
    request_max_ops=9,
    announce_debounce=0.05,
    anti_entropy_period=1.0,
    idle_timeout=2.0,
    request_deadline=6.0,
    backoff_base=0.1,
    backoff_max=0.8,
    ban_period=3.0,
    want_ttl=10_000.0,
)
PEERS = ("P0", "P1", "P2")


def chainy_dag(seed: int, n: int) -> list[Op]:
    """``n`` ops, parent-first: mostly a chain (so consecutive response frames are parent and child),
    with merges of older ops and a few new roots."""
    rng = random.Random(seed)
    sk = key_pair(seed, b"stateful-dag")
    ops: list[Op] = []
    for i in range(n):
        parents = [ops[i - 1].op_id] if i and rng.random() > 0.1 else []
        if i > 2 and rng.random() < 0.3:
            parents.append(ops[rng.randrange(i - 1)].op_id)
        hlc = Hlc(1000 + i, rng.randrange(2), rng.randrange(3))
        ops.append(make_op(sk, parents, hlc, Data("mv:o:x", b"%d" % i)))
    return ops


DAGS = [chainy_dag(0, 36), chainy_dag(1, 36), random_dag(random.Random(2), 36, max_parents=2)]
LOCAL_SK = key_pair(2, b"stateful-local")


def snap(store: MemoryOpStore, seq: int = 0) -> StoreSnapshot:
    return take_snapshot(store.index, seq)


def forged(op: Op) -> bytes:
    """The op with a new payload under its old id and signature: canonical, decodes, fails verification."""
    header = header_obj(op.parents, op.hlc, op.author_pk, Data("mv:o:x", b"forged"))
    return dumps({"header": header, "sig": b2l(op.sig), "op_id": b2l(op.op_id)})


@dataclass
class Peer:
    name: str
    store: MemoryOpStore
    sk_seed: int
    connected: bool = False
    banned_until: float = 0.0

    def holds(self, ops: list[Op]) -> set[bytes]:
        return {op.op_id for op in ops if self.store.contains(op.op_id)}


@dataclass
class Stream:
    rid: int
    peer: str
    want: tuple[bytes, ...]
    frames: list[bytes]
    pos: int = 0
    sent: list[bytes] = field(default_factory=list)


class CoordinatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.seq = 0
        self.local = MemoryOpStore()
        self.coord = SyncCoordinator(LOCAL_SK, self.local.index, CFG, snap(self.local))
        self.ops: list[Op] = []
        self.peers: dict[str, Peer] = {}
        self.streams: dict[int, Stream] = {}  # open, from the node's point of view
        self.seen_rids: set[int] = set()
        self.cancelled: set[int] = set()
        self.cross_duplicates = 0
        self.commits: deque[CommitOps] = deque()
        self.seen_cids: set[int] = set()
        self.guilty: set[str] = set()
        self.announced: set[bytes] = set()  # heads peers announced (the model's want table)
        self.last_publish: float | None = None
        self.local_writes = 0

    # ------------------------------------------------------------------ set-up

    @initialize(dag=st.integers(0, len(DAGS) - 1), cuts=st.lists(st.integers(0, 36), min_size=4, max_size=4))
    def setup(self, dag: int, cuts: list[int]) -> None:
        self.ops = DAGS[dag]
        self.local.put_many(self.ops[: cuts[0] // 2])
        for i, name in enumerate(PEERS):
            self.peers[name] = Peer(name, MemoryOpStore(self.ops[: cuts[i + 1]]), 10 + i)
        self.take(self.coord.snapshot_changed(self.snap(), self.now, local=True))
        self.take(self.coord.start(self.now))
        for i in range(len(PEERS) - 1):
            self.connect(i)

    def snap(self) -> StoreSnapshot:
        self.seq += 1
        return snap(self.local, self.seq)

    # ------------------------------------------------------------------ effects: checked against the model

    def take(self, effects: list[Effect]) -> None:
        follow: list[str] = []
        penalised: set[str] = set()
        for e in effects:
            if isinstance(e, SendRequest):
                self.check_send(e)
            elif isinstance(e, CancelRequest):
                # the stream may have ended on the node's side already (all frames read): a harmless reset
                assert e.request_id in self.seen_rids and e.request_id not in self.cancelled, e
                self.cancelled.add(e.request_id)
                st_ = self.streams.pop(e.request_id, None)
                assert st_ is None or st_.peer == e.peer
            elif isinstance(e, CommitOps):
                self.check_commit(e)
            elif isinstance(e, PublishAnnounce):
                sa = validate_signed_announce(e.data, expected_vk=self.coord.vk)
                assert sa.announce.topo_watermark == self.coord.snapshot.complete_count
                if self.last_publish is not None:
                    assert self.now >= self.last_publish + CFG.announce_debounce - 1e-9, "not debounced"
                self.last_publish = self.now
            elif isinstance(e, Penalise):
                assert e.peer in self.guilty, f"honest peer penalised: {e}"
                penalised.add(e.peer)
            elif isinstance(e, Disconnect):
                p = self.peers.get(e.peer)
                assert p is not None
                if e.reason == "banned":
                    assert e.ban_until is not None and self.now < e.ban_until
                else:
                    assert e.peer in penalised, "disconnect without a penalty"
                    assert e.ban_until == self.now + CFG.ban_period
                    p.banned_until = e.ban_until
                if p.connected:
                    p.connected = False
                    follow.append(e.peer)
                for rid in [r for r, s in self.streams.items() if s.peer == e.peer]:
                    del self.streams[rid]  # the connection is closed: its streams with it
            else:  # pragma: no cover
                raise AssertionError(f"unknown effect {e!r}")
        for peer in follow:  # the host reports the closed connection
            self.take(self.coord.peer_disconnected(peer, self.now))

    def check_send(self, e: SendRequest) -> None:
        p = self.peers[e.peer]
        assert p.connected and self.now >= p.banned_until, f"request to an unusable peer {e.peer}"
        assert e.request_id not in self.seen_rids, "request id reused"
        self.seen_rids.add(e.request_id)
        want, boundary = e.request.want, e.request.boundary
        assert list(want) == sorted(set(want)) and len(want) <= CFG.max_want_per_request
        assert e.request.max_ops == CFG.request_max_ops
        assert len(boundary) <= MAX_BOUNDARY and len(set(boundary)) == len(boundary)
        assert all(self.local.is_complete(b) for b in boundary), "boundary claims an op we lack"
        assert not any(self.local.contains(x) for x in want), "asked for a stored op"
        flying = {x for s in self.streams.values() for x in s.want}
        assert not flying & set(want), "an id requested twice at once"
        open_to_peer = sum(1 for s in self.streams.values() if s.peer == e.peer)
        assert open_to_peer < CFG.max_in_flight_per_peer, "too many requests to one peer"
        reader = FrameReader()
        blobs = serve_sync(p.store.index, snap(p.store), p.store.load_ops_cbor, e.request.encode())
        frames = [b for blob in blobs for b in reader.feed(blob)]
        self.streams[e.request_id] = Stream(e.request_id, e.peer, want, frames)

    def check_commit(self, e: CommitOps) -> None:
        assert e.commit_id not in self.seen_cids, "commit id reused"
        self.seen_cids.add(e.commit_id)
        assert 1 <= len(e.ops) <= CFG.batch_ops
        assert len(e.ops) == 1 or e.nbytes <= CFG.batch_bytes
        assert not any(c.request_id == e.request_id for c in self.commits), "two commits outstanding"
        earlier = {op.op_id for c in self.commits for op in c.ops}
        assert len({op.op_id for op in e.ops}) == len(e.ops), "an op twice in one commit"
        for op in e.ops:
            assert not self.local.contains(op.op_id), "commit of a stored op"
            # two requests may both deliver an op before either commit lands (the store counts the
            # second copy as a duplicate); parents are always stored, or committed earlier or here
            self.cross_duplicates += op.op_id in earlier
            for par in op.parents:
                assert self.local.contains(par) or par in earlier, "commit before its parent"
            earlier.add(op.op_id)
        self.commits.append(e)

    # ------------------------------------------------------------------ peers and announces

    @rule(i=st.integers(0, 2))
    def connect(self, i: int) -> None:
        p = self.peers[PEERS[i]]
        if p.connected:
            return
        effects = self.coord.peer_connected(p.name, self.now)
        if self.now < p.banned_until:
            assert [type(e) for e in effects] == [Disconnect]
            return
        p.connected = True
        self.take(effects)
        self.take(self.coord.peer_subscribed(p.name, self.now))

    @rule(i=st.integers(0, 2))
    def disconnect(self, i: int) -> None:
        p = self.peers[PEERS[i]]
        if not p.connected:
            return
        p.connected = False
        for rid in [r for r, s in self.streams.items() if s.peer == p.name]:
            del self.streams[rid]
        self.take(self.coord.peer_disconnected(p.name, self.now))

    @rule(i=st.integers(0, 2), relay=st.integers(0, 2), grow=st.integers(0, 8))
    def announce(self, i: int, relay: int, grow: int) -> None:
        if grow == 0 and relay == i:  # our own announce, relayed back to us: ignored
            own = local_announce(self.coord.snapshot, LOCAL_SK)
            assert self.coord.announce_received("me", own, None, self.now) == []
        p = self.peers[PEERS[i]]
        have = p.store.op_count()
        if grow:
            p.store.put_many(self.ops[have : have + grow])
        sa = local_announce(snap(p.store), key_pair(p.sk_seed, b"peer"))
        data = sa.encode()
        assert self.coord.validate_announce(data) == sa
        self.announced.update(h for h in sa.announce.head_ids if not self.local.contains(h))
        self.take(self.coord.announce_received(p.name, sa, PEERS[relay], self.now))

    # ------------------------------------------------------------------ streams

    def open_rids(self) -> list[int]:
        return sorted(self.streams)

    def pick(self, i: int) -> Stream:
        rids = self.open_rids()
        return self.streams[rids[i % len(rids)]]

    def deliver(self, s: Stream, bodies: list[bytes]) -> None:
        before = self.coord.held_bytes_total()
        s.sent += bodies
        self.take(self.coord.frames_received(s.rid, bodies, self.now))
        after = self.coord.held_bytes_total()
        assert after <= max(before, CFG.max_held_bytes_total) + sum(map(len, bodies))

    @precondition(lambda self: self.streams)
    @rule(i=st.integers(0, 5), k=st.integers(1, 8))
    def frames(self, i: int, k: int) -> None:
        """Valid frames, only while the coordinator accepts (a reader that obeys back-pressure)."""
        s = self.pick(i)
        if not self.coord.accepting(s.rid) or s.pos >= len(s.frames):
            return
        bodies = s.frames[s.pos : s.pos + k]
        s.pos += len(bodies)
        if s.pos >= len(s.frames):
            del self.streams[s.rid]  # the trailer is read: the node closes the stream
        self.deliver(s, bodies)

    @precondition(lambda self: self.streams)
    @rule(i=st.integers(0, 5), garbage=st.booleans())
    def flood(self, i: int, garbage: bool) -> None:
        """Every remaining frame at once, ignoring back-pressure: at worst the request fails (no penalty,
        unless a garbage frame ends the flood)."""
        s = self.pick(i)
        bodies = s.frames[s.pos :]
        s.pos = len(s.frames)
        del self.streams[s.rid]
        if garbage:
            self.guilty.add(s.peer)
            bodies = [*bodies[:-1], b"\xff"]
        if bodies:
            self.deliver(s, bodies)

    @precondition(lambda self: self.cancelled)
    @rule(i=st.integers(0, 50))
    def late_frames(self, i: int) -> None:
        """Frames and EOF of a request the coordinator cancelled change nothing."""
        rid = sorted(self.cancelled)[i % len(self.cancelled)]
        before = self.coord.requests()
        assert self.coord.frames_received(rid, [b"\xff"], self.now) == []
        assert self.coord.stream_closed(rid, self.now) == []
        assert self.coord.request_failed(rid, "late", self.now, violation=True) == []
        assert self.coord.requests() == before

    @precondition(lambda self: self.streams)
    @rule(i=st.integers(0, 5), how=st.sampled_from(["dup", "stored", "child_first", "garbage", "forged"]))
    def bad_frames(self, i: int, how: str) -> None:
        s = self.pick(i)
        if how == "dup":  # a frame sent before, again: a duplicate, never a fault
            bodies = s.sent[-1:] if s.sent else []
        elif how == "stored":  # an op we hold: a duplicate
            held = [op for op in self.ops if self.local.contains(op.op_id)]
            bodies = [OpBytes(held[i % len(held)].cbor).encode()] if held else []
        else:
            self.guilty.add(s.peer)
            rest = s.frames[s.pos : -1]  # op frames still to come (the last frame is the trailer)
            if how == "garbage":
                bodies = [b"\xff"]
            elif how == "forged" and rest:
                (op,) = decode_frames(rest[:1]).ops
                bodies = [OpBytes(forged(op)).encode()]
                s.pos += 1
            elif how == "child_first" and len(rest) >= 2:
                bodies = [rest[1], rest[0]]
                s.pos += 2
            else:
                bodies = []
        if bodies:
            self.deliver(s, bodies)

    @precondition(lambda self: self.streams)
    @rule(i=st.integers(0, 5))
    def close(self, i: int) -> None:
        s = self.pick(i)
        del self.streams[s.rid]
        self.take(self.coord.stream_closed(s.rid, self.now))

    @precondition(lambda self: self.streams)
    @rule(i=st.integers(0, 5), violation=st.booleans())
    def fail(self, i: int, violation: bool) -> None:
        s = self.pick(i)
        del self.streams[s.rid]
        if violation:
            self.guilty.add(s.peer)
        self.take(self.coord.request_failed(s.rid, "reset", self.now, violation=violation))

    # ------------------------------------------------------------------ commits

    @precondition(lambda self: self.commits)
    @rule(mode=st.sampled_from(["ok", "all", "reject", "error"]), j=st.integers(0, 3))
    def commit(self, mode: str, j: int) -> None:
        """Finish the oldest outstanding commit (FIFO, like the writer): stored, refused, failed; or all."""
        if mode == "all":
            while self.commits:
                self.commit("ok", 0)
            return
        c = self.commits.popleft()
        event(f"commit {mode}")
        if mode == "ok":
            outcome = apply_commit(self.local, c)
            if outcome.rejected_index is not None:
                assert c.peer in self.guilty, "the store refused an honest op"
        elif mode == "reject":
            self.guilty.add(c.peer)
            outcome = CommitOutcome(c.commit_id, rejected_index=j % len(c.ops), error="refused (test)")
        else:
            outcome = CommitOutcome(c.commit_id, error="store error: injected")
        self.take(self.coord.commit_finished(outcome, self.snap(), self.now))

    # ------------------------------------------------------------------ local writes, time, restarts

    @rule(n=st.integers(1, 3))
    def local_write(self, n: int) -> None:
        heads = list(self.coord.snapshot.top_heads(2))
        for _ in range(n):
            self.local_writes += 1
            op = make_op(LOCAL_SK, heads[:2], Hlc(50_000 + self.local_writes, 0, 9), Data("mv:l:x", b"w"))
            self.local.put_many([op])
            heads = [op.op_id]
        self.take(self.coord.snapshot_changed(self.snap(), self.now, local=True))

    @rule(dt=st.sampled_from([0.0, 0.01, 0.06, 0.3, 1.0, 2.5]))
    def tick(self, dt: float) -> None:
        """Time passes; 0: jump to the next wakeup (idle timeouts, deadlines, backoff, debounce, rounds)."""
        if dt == 0.0:
            t = self.coord.next_wakeup()
            if t is None:
                return
            self.now = max(self.now, t)
            self.take(self.coord.timer(self.now))
            assert (w := self.coord.next_wakeup()) is None or w > self.now, "timer left its own work undone"
            return
        self.now += dt
        self.take(self.coord.timer(self.now))

    @rule()
    def anti_entropy(self) -> None:
        self.take(self.coord.anti_entropy_tick(self.now))

    @rule()
    def restart(self) -> None:
        before = self.coord.counters.as_dict()
        old = set(self.streams)
        self.coord, effects = self.coord.restarted(self.snap(), self.now)
        self.take(effects)
        assert not old & set(self.streams), "a restart resets every open stream"
        assert all(r not in self.seen_rids - old or r in self.streams for r in self.coord.active_requests())
        assert self.coord.counters.coordinator_restarts == before["coordinator_restarts"] + 1
        self.announced.clear()  # the new coordinator forgot the want table (anti-entropy covers it)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def consistent(self) -> None:
        assert self.coord.check_invariants() == []

    @invariant()
    def bounded(self) -> None:
        for name in PEERS:
            assert sum(1 for s in self.streams.values() if s.peer == name) <= CFG.max_in_flight_per_peer
        for info in self.coord.requests():
            assert info.held_ops <= CFG.max_held_ops and info.held_bytes <= CFG.max_held_bytes
        open_ids = {r for r, _ in self.streams.items()}
        active = set(self.coord.active_requests())
        assert open_ids <= active | set(self.seen_rids), "a stream the coordinator forgot"

    @invariant()
    def wanted_ids_are_tracked(self) -> None:
        planner = self.coord.planner
        self.announced = {x for x in self.announced if not self.local.contains(x)}
        for x in self.announced:
            assert planner.is_wanted(x), f"announced id {x.hex()[:8]} was dropped"
        for x in planner.wanted_ids():
            assert not self.local.contains(x), "a stored id is still wanted"

    @invariant()
    def nothing_left_unplanned(self) -> None:
        """Every wanted id not in flight waits for a reason: no eligible peer, or its first choice is busy."""
        planner = self.coord.planner
        views = self.coord.peer_views(self.now)
        for x in planner.wanted_ids():
            if planner.in_flight(x):
                continue
            for p in planner.candidates(x, views):
                if not views[p].available or planner.unavailable_at(p, x):
                    continue
                assert views[p].free_slots == 0, f"id {x.hex()[:8]} could go to {p} now"
                break

    def teardown(self) -> None:
        """Faults off, bans expired, peers connected: the node catches up with every peer and goes idle."""
        if not self.peers:
            return
        union = set().union(*(p.holds(self.ops) for p in self.peers.values()))
        self.now += CFG.ban_period
        for _ in range(200):
            for i in range(len(PEERS)):
                self.connect(i)
            busy = True
            while busy:  # deliver everything honestly, committing as the coordinator asks
                busy = False
                while self.commits:
                    self.commit("ok", 0)
                    busy = True
                for rid in self.open_rids():
                    s = self.streams.get(rid)
                    if s is not None and self.coord.accepting(rid):
                        self.frames(self.open_rids().index(rid), 5)
                        busy = True
                self.consistent()
            caught_up = all(self.local.contains(x) for x in union)
            if caught_up and self.coord.idle() and not self.streams:
                return
            self.tick(0.3)
        raise AssertionError("the node did not catch up with its peers")


CoordinatorMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    report_multiple_bugs=False,
)
test_coordinator_state_machine = CoordinatorMachine.TestCase
