"""SyncPlanner (store §2.3.5): head diff, batching, in-flight limits, peer choice, soft hints."""

from __future__ import annotations

import pytest

from ecac.core.opindex import bloom_may_contain
from ecac.store.memory import MemoryOpStore
from ecac.sync.planner import PeerView, PlannedFetch, SyncPlanner, diff_heads
from sim.dags import chain


def ids(n: int, start: int = 1) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(start, start + n)]


def never(_x: bytes) -> bool:
    return False


def test_planner_diff_small() -> None:
    """The want-list seed: announced heads not stored and not in flight, deduplicated, ascending."""
    a, b, c, d = ids(4)
    stored = {a}
    flying = {c}
    seed = diff_heads([d, a, b, c, b, d], stored.__contains__, flying.__contains__)
    assert seed == [b, d]
    assert diff_heads([], stored.__contains__, flying.__contains__) == []
    assert diff_heads([a, c], stored.__contains__, flying.__contains__) == []
    # the same through the planner: one request for the two missing heads, then nothing while in flight
    p = SyncPlanner()
    p.note_announce([d, a, b, c, b], "P", "P", 0.0, stored.__contains__)
    p.start(99, [c])
    plan = p.plan({"P": PeerView()}, stored.__contains__, 0.0)
    assert plan == [PlannedFetch("P", (b, d))]
    p.start(1, plan[0].want)
    assert p.plan({"P": PeerView()}, stored.__contains__, 0.0) == []


def test_bloom_short_circuit() -> None:
    """A bloom claiming everything is present (ffff, ours or the peer's) never prevents a fetch."""
    ops = chain(300)
    store = MemoryOpStore(ops)
    assert store.recent_bloom(256) == b"\xff\xff"
    missing = b"\x42" * 32
    assert bloom_may_contain(store.recent_bloom(256), missing)  # the bloom "says" we have it
    p = SyncPlanner()
    added = p.note_announce([missing, ops[-1].op_id], "P", "P", 0.0, store.contains)
    assert added == [missing]
    peers = {"P": PeerView(watermark=10**6, bloom=b"\xff\xff"), "Q": PeerView(watermark=0, bloom=b"\x00\x00")}
    plan = p.plan(peers, store.contains, 0.0)
    assert plan == [PlannedFetch("P", (missing,))]
    # and when only a peer whose bloom says "absent" is usable, it is still asked
    p2 = SyncPlanner()
    p2.note_announce([missing], "P", "P", 0.0, store.contains)
    plan = p2.plan({"Q": PeerView(bloom=b"\x00\x00")}, store.contains, 0.0)
    assert plan == [PlannedFetch("Q", (missing,))]


def test_requests_hold_at_most_256_ascending_ids_and_two_per_peer() -> None:
    want = ids(700)
    p = SyncPlanner()
    p.note_announce(reversed(want), "P", None, 0.0, never)
    plan = p.plan({"P": PeerView(free_slots=2)}, never, 0.0)
    assert [len(f.want) for f in plan] == [256, 256]
    assert plan[0].want == tuple(want[:256]) and plan[1].want == tuple(want[256:512])
    for rid, f in enumerate(plan):
        p.start(rid, f.want)
    assert p.plan({"P": PeerView(free_slots=0)}, never, 0.0) == []
    # the originator is busy, not gone: the rest waits for it rather than going to another peer
    # (whose response would resend the ancestry P's running requests are delivering)
    assert p.plan({"P": PeerView(free_slots=0), "Q": PeerView(free_slots=2)}, never, 0.0) == []
    # a second peer takes the rest when the originator cannot be asked (backoff, ban)
    plan2 = p.plan({"P": PeerView(available=False), "Q": PeerView(free_slots=2)}, never, 0.0)
    assert plan2 == [PlannedFetch("Q", tuple(want[512:]))]
    # finishing a request frees its ids for planning again
    assert p.finish(0) == tuple(want[:256])
    again = p.plan({"P": PeerView(free_slots=1)}, never, 0.0)
    assert again[0].want[:3] == tuple(want[:3])
    with pytest.raises(ValueError):
        SyncPlanner(max_want_ids=257)


def test_peer_choice_order() -> None:
    (x,) = ids(1)
    p = SyncPlanner()
    p.note_announce([x], "origin", "relay1", 0.0, never)
    p.note_announce([x], "other", "relay2", 0.0, never)
    views = {n: PeerView() for n in ("zzz", "relay2", "relay1", "other", "origin", "aaa")}
    assert p.candidates(x, views) == ["origin", "other", "relay1", "relay2", "aaa", "zzz"]
    assert p.plan(views, never, 0.0)[0].peer == "origin"
    # originator not connected: the other announcer; then the relays; then anyone
    del views["origin"]
    assert p.plan(views, never, 0.0)[0].peer == "other"
    views["other"] = PeerView(available=False)  # in backoff
    assert p.plan(views, never, 0.0)[0].peer == "relay1"
    p.mark_unavailable("relay1", [x])
    assert p.plan(views, never, 0.0)[0].peer == "relay2"
    p.mark_unavailable("relay2", [x])
    assert p.plan(views, never, 0.0)[0].peer == "aaa"
    # soft hints only order the fallback group: a bloom that may contain x, then a larger watermark
    views["zzz"] = PeerView(watermark=5, bloom=b"\xff\xff")
    assert p.plan(views, never, 0.0)[0].peer == "zzz"
    views["aaa"] = PeerView(watermark=9, bloom=b"\xff\xff")
    assert p.plan(views, never, 0.0)[0].peer == "aaa"
    # unavailability is per round: clearing a peer's marks makes it eligible again
    p.clear_unavailable("relay1")
    assert p.plan(views, never, 0.0)[0].peer == "relay1"
    p.clear_unavailable()
    assert not p.unavailable_at("relay2", x)


def test_no_eligible_peer_keeps_the_want() -> None:
    (x,) = ids(1)
    p = SyncPlanner()
    p.note_announce([x], "P", None, 0.0, never)
    p.mark_unavailable("P", [x])
    assert p.plan({"P": PeerView()}, never, 0.0) == []
    assert p.is_wanted(x)
    assert p.plan({}, never, 0.0) == []
    assert p.wanted_ids() == [x]


def test_stored_ids_are_dropped() -> None:
    a, b = ids(2)
    have = {a}
    p = SyncPlanner()
    p.note_announce([a, b], "P", None, 0.0, never)
    assert p.plan({"P": PeerView()}, have.__contains__, 0.0) == [PlannedFetch("P", (b,))]
    assert p.wanted_ids() == [b]
    p.forget([b])
    assert len(p) == 0


def test_want_table_is_bounded_and_expires() -> None:
    p = SyncPlanner(max_wanted=10, want_ttl=5.0)
    batch = ids(15)
    p.start(1, batch[:2])  # in flight ids are never evicted
    p.note_announce(batch, "P", None, 0.0, never)
    assert len(p) == 10
    assert p.is_wanted(batch[0]) and p.is_wanted(batch[1]) and p.is_wanted(batch[-1])
    p.note_announce(ids(1, 100), "P", None, 4.0, never)
    assert p.expire(5.5) == 7  # the 0.0 entries that are not in flight
    assert p.wanted_ids() == [*batch[:2], *ids(1, 100)]
