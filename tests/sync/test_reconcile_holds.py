"""Ids set reconciliation finds wait for the running requests that stream them as ancestry.

A session names the whole difference with a peer; when a request already running (to that peer
or another) fetches one of those ids, typically an announced head, it streams the head's missing
ancestry. The rest of the ids are then held (``SyncPlanner.hold``) instead of being asked for by
id from a second peer at the same time, which would bring the same ops twice; a request that
fails releases them, and what it stored is not asked again.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig
from ecac.sync.effects import SendRequest
from ecac.sync.planner import PeerView, PlannedFetch, SyncPlanner
from sim.dags import chain

from .test_coordinator import Node, announce_of, respond

OPS = chain(40, b"holds")
LOCAL = 10  # the requester holds the first ones
IDS = [op.op_id for op in OPS]
FOUND = IDS[LOCAL:]  # what a session with P finds: everything P has beyond the requester's ops


def _setup(config: SyncConfig | None = None) -> tuple[Node, MemoryOpStore, SendRequest]:
    """The requester fetches Q's head (announce-driven), then a session with P finds ``FOUND``."""
    node = Node(config, OPS[:LOCAL])
    server = MemoryOpStore(OPS)
    for p in ("P", "Q"):
        node.run(node.coord.peer_connected(p, 0.0))
    sends = node.sends(node.run(node.coord.announce_received("Q", announce_of(server), "Q", 0.0)))
    assert [(s.peer, s.request.want) for s in sends] == [("Q", (IDS[-1],))]
    return node, server, sends[0]


def test_found_ids_streamed_as_ancestry_are_not_asked_again_while_the_request_runs() -> None:
    node, server, to_q = _setup()
    effects = node.run(node.coord.reconciled("P", FOUND, 0.1), 0.1)
    assert node.sends(effects) == []  # P is idle, but Q's request streams these as the head's ancestry
    assert node.coord.planner.held_by(FOUND[0]) == {to_q.request_id}
    assert node.coord.check_invariants() == []
    # Q's answer brings them all (parent-first): nothing is left to ask P, nothing came twice
    effects = node.run(node.coord.frames_received(to_q.request_id, respond(server, to_q), 0.2), 0.2)
    assert node.sends(effects) == []
    assert all(node.store.contains(x) for x in IDS)
    assert node.coord.counters.ops_duplicates_dropped == 0
    assert node.coord.idle() and node.coord.check_invariants() == []


def test_a_failed_request_releases_the_held_ids() -> None:
    node, server, to_q = _setup()
    assert node.sends(node.run(node.coord.reconciled("P", FOUND, 0.1), 0.1)) == []
    effects = node.run(node.coord.request_failed(to_q.request_id, "reset", 0.2), 0.2)
    sends = node.sends(effects)
    # Q backs off; P, which holds them all, is asked for everything still missing (the head too)
    assert [(s.peer, set(s.request.want)) for s in sends] == [("P", set(FOUND))]
    assert node.coord.planner.held_ids() == []
    node.run(node.coord.frames_received(sends[0].request_id, respond(server, sends[0]), 0.3), 0.3)
    assert all(node.store.contains(x) for x in IDS) and node.coord.idle()
    assert node.coord.check_invariants() == []


def test_after_a_partial_answer_only_the_missing_ids_are_asked_for() -> None:
    """Q's stream ends early (EOF before a trailer) after delivering part of the ancestry."""
    node, server, to_q = _setup(SyncConfig(batch_ops=4, batch_bytes=4096, max_held_ops=64))
    assert node.sends(node.run(node.coord.reconciled("P", FOUND, 0.1), 0.1)) == []
    bodies = respond(server, to_q, server_max_ops=12)  # the first 12 missing ops, then More
    node.run(node.coord.frames_received(to_q.request_id, bodies[:-1], 0.2), 0.2)  # no trailer yet
    got = [x for x in FOUND if node.store.contains(x)]
    assert len(got) == 12
    sends = node.sends(node.run(node.coord.stream_closed(to_q.request_id, 0.3), 0.3))
    assert [(s.peer, set(s.request.want)) for s in sends] == [("P", set(FOUND) - set(got))]
    assert node.coord.check_invariants() == []


def test_a_more_continuation_keeps_the_hold() -> None:
    node, server, to_q = _setup()
    assert node.sends(node.run(node.coord.reconciled("P", FOUND, 0.1), 0.1)) == []
    bodies = respond(server, to_q, server_max_ops=12)
    sends = node.sends(node.run(node.coord.frames_received(to_q.request_id, bodies, 0.2), 0.2))
    # the More continues at Q for the head, and the rest of the ancestry still waits for it
    assert [(s.peer, s.request.want) for s in sends] == [("Q", (IDS[-1],))]
    missing = [x for x in FOUND if not node.store.contains(x) and x != IDS[-1]]
    assert missing and all(node.coord.planner.held_by(x) == {sends[0].request_id} for x in missing)
    node.run(node.coord.frames_received(sends[0].request_id, respond(server, sends[0]), 0.3), 0.3)
    assert all(node.store.contains(x) for x in IDS) and node.coord.idle()
    assert node.coord.counters.ops_duplicates_dropped == 0


def test_without_a_related_request_in_flight_the_found_ids_are_fetched_at_once() -> None:
    node = Node(None, OPS[:LOCAL])
    for p in ("P", "Q"):
        node.run(node.coord.peer_connected(p, 0.0))
    sends = node.sends(node.run(node.coord.reconciled("P", FOUND, 0.1), 0.1))
    assert [(s.peer, set(s.request.want)) for s in sends] == [("P", set(FOUND))]


# --------------------------------------------------------------------------- the planner alone

KEYS = [bytes([i]) * 32 for i in range(1, 9)]


@settings(max_examples=200, deadline=None)
@given(
    flying=st.lists(st.sampled_from(KEYS), max_size=4, unique=True),
    found=st.lists(st.sampled_from(KEYS), min_size=1, max_size=8, unique=True),
    end_first=st.booleans(),
)
def test_held_ids_wait_exactly_while_a_request_owning_a_related_id_runs(
    flying: list[bytes], found: list[bytes], end_first: bool
) -> None:
    """Requests 1 and 2 (to Q) own ``flying``; a session with P finds ``found``."""
    planner = SyncPlanner()
    peers = {"P": PeerView(free_slots=1), "Q": PeerView(free_slots=1)}
    planner.add_wants(flying, 0.0, origin="Q")
    planner.start(1, flying[:2])
    planner.start(2, flying[2:])
    planner.add_wants(found, 0.0, origin="P")
    related = sorted({r for x in found if (r := planner.owner(x)) is not None}, reverse=end_first)
    waiting = sorted(x for x in found if not planner.in_flight(x))
    assert planner.hold(found) == (len(waiting) if related else 0)
    if not related:  # nothing related in flight: fetched from P at once
        assert planner.plan(peers, never, 0.0) == _expected(waiting, flying)
        return
    assert planner.plan(peers, never, 0.0) == []  # everything else is in flight
    for rid in related[:-1]:
        planner.finish(rid)
        planned = {x for f in planner.plan(peers, never, 0.0) for x in f.want}
        assert not planned & set(waiting)  # another related request still runs
        assert all(planner.held_by(x) == {related[-1]} for x in waiting)
    planner.finish(related[-1])
    left = sorted(x for x in planner.wanted_ids() if not planner.in_flight(x))
    assert set(waiting) <= set(left)
    assert planner.plan(peers, never, 0.0) == _expected(left, flying)
    assert planner.held_ids() == []


def never(_x: bytes) -> bool:
    return False


def _expected(ids: list[bytes], flying: list[bytes]) -> list[PlannedFetch]:
    """Each id from its origin (Q announced ``flying``, P found the rest), requests in order of their
    first id."""
    by_peer: dict[str, list[bytes]] = {}
    for x in sorted(ids):
        by_peer.setdefault("Q" if x in flying else "P", []).append(x)
    return [PlannedFetch(p, tuple(want)) for p, want in by_peer.items()]
