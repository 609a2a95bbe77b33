"""Per-peer quotas (issue 10 item 3): the token buckets, and the coordinator cutting a flooding
peer's response at its ingest budget, fetching the rest parent-first at the quota rate, while
another peer's requests are not held up."""

from __future__ import annotations

import math

import pytest

from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig
from ecac.sync.effects import CancelRequest, Penalise
from ecac.sync.quota import QuotaLimits, QuotaTable
from sim.dags import chain

from .test_coordinator import Node, announce_of, respond

# --------------------------------------------------------------------------- buckets


def test_bucket_refills_up_to_its_burst_and_allows_debt() -> None:
    t = QuotaTable(QuotaLimits(ops_per_s=100, bytes_per_s=1000, burst_s=2))
    t.charge("q", 1, 1, 0.0)  # another peer is taking: p is held to its quota
    assert t.allowance("p", 0.0).ops == 200 and t.allowance("p", 0.0).bytes == 2000
    t.charge("p", 250, 500, 0.0)  # more than the burst: debt
    a = t.allowance("p", 0.0)
    assert (a.ops, a.bytes) == (-50, 1500)
    assert t.ready_in("p", 100, 0, 0.0) == pytest.approx(1.5)
    assert t.allowance("p", 1.0).ops == pytest.approx(50)
    t.charge("q", 1, 1, 100.0)
    assert t.allowance("p", 100.0).ops == 200  # capped at the burst
    assert t.ready_in("p", 10_000, 0, 100.0) == 0.0  # a need above the burst is clamped to it
    assert t.counters.ops == 252 and t.counters.bytes == 502
    t.charge("p", 10_000, 0, 100.0)
    assert t.allowance("p", 100.0).ops == -200  # debt is capped at one burst


def test_a_peer_alone_is_not_held_back_but_pays_once_another_comes() -> None:
    """Work-conserving: alone, a peer takes everything (a bulk sync at full speed); its debt makes
    it the one that waits as soon as another peer takes from the table."""
    t = QuotaTable(QuotaLimits(ops_per_s=100, burst_s=2))
    t.charge("flood", 5000, 0, 0.0)
    assert t.allowance("flood", 0.5).ops == math.inf and t.ready_in("flood", 100, 0, 0.5) == 0.0
    assert not t.contended("flood", 0.5)
    t.charge("honest", 1, 0, 1.0)
    assert t.contended("flood", 1.0) and t.contended("honest", 1.0)
    assert t.allowance("flood", 1.0).ops == pytest.approx(-200 + 100)  # capped debt, 1 s of refill
    assert t.allowance("honest", 1.0).ops == pytest.approx(199)  # flood charged within the burst
    assert t.ready_in("flood", 100, 0, 1.0) == pytest.approx(2.0)
    assert not t.contended("flood", 3.5)  # honest quiet for more than a burst: flood runs free again


def test_unlimited_and_validation() -> None:
    t = QuotaTable(QuotaLimits())
    t.charge("p", 10**9, 10**12, 0.0)
    assert t.allowance("p", 0.0).ops == math.inf and len(t) == 0
    with pytest.raises(ValueError):
        QuotaLimits(ops_per_s=-1)
    with pytest.raises(ValueError):
        QuotaLimits(ops_per_s=10, burst_s=0.5)
    with pytest.raises(ValueError):
        SyncConfig(peer_ingest_ops_per_s=float("nan"))


def test_table_is_bounded_and_forgets_full_buckets_first() -> None:
    t = QuotaTable(QuotaLimits(ops_per_s=10, burst_s=1), max_peers=3)
    t.charge("a", 10, 0, 0.0)
    t.charge("b", 10, 0, 0.0)
    t.charge("c", 5, 0, 5.0)  # a and b have refilled by now: nothing lost by forgetting them
    t.charge("d", 1, 0, 5.0)
    assert len(t) == 3
    assert t.allowance("c", 5.0).ops == 5  # the one in debt is kept
    t.charge("e", 1, 0, 5.0)
    t.charge("f", 1, 0, 5.0)  # none full: the least recently charged goes
    assert len(t) == 3


# --------------------------------------------------------------------------- coordinator


CFG = SyncConfig(
    peer_ingest_ops_per_s=100, peer_ingest_bytes_per_s=10**9, quota_burst_s=4, server_max_ops=10**6
)


def test_flooding_response_is_cut_at_the_budget_and_the_rest_comes_later() -> None:
    ops = chain(3000)
    server = MemoryOpStore(ops)
    node = Node(CFG)
    busy = node.coord.ingest_quota  # another peer keeps sending us ops: P is held to its quota
    busy.charge("H", 1, 100, 0.0)
    node.run(node.coord.peer_connected("P", 0.0))
    (send,) = node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.0)))
    # the whole chain in one response, ignoring every cap
    out = node.run(
        node.coord.frames_received(send.request_id, respond(server, send, server_max_ops=10**6), 0.0)
    )
    cancels = [e for e in out if isinstance(e, CancelRequest)]
    assert [c.reason for c in cancels] == ["ingest quota of the peer reached"]
    assert not [e for e in out if isinstance(e, Penalise)]
    assert node.store.op_count() == 400  # the burst: 4 s of 100 ops/s, a parent-first prefix
    assert node.store.topo_ids() == [op.op_id for op in ops[:400]]
    c = node.coord.counters
    assert c.quota_ingest_cuts == 1 and c.quota_ingest_deferred == 2600
    s = node.coord.peer("P")
    # asked again when half the burst, at least a batch (512 > the burst: all of it), is back
    assert s is not None and s.quota_until == pytest.approx(4.0)
    assert s.failures == 0 and s.banned_until == 0.0
    assert not node.sends(node.run(node.coord.timer(3.9), 3.9))  # nothing before the quota allows
    assert node.coord.next_wakeup() == pytest.approx(4.0)
    assert node.coord.check_invariants() == []

    now = 4.0
    rounds = 0
    while node.store.op_count() < 3000:
        busy.charge("H", 1, 100, now)
        sends = node.sends(node.run(node.coord.timer(now), now))
        for send in sends:
            assert send.peer == "P" and ops[node.store.op_count() - 1].op_id in send.request.boundary
            body = respond(server, send, server_max_ops=10**6)
            node.run(node.coord.frames_received(send.request_id, body, now), now)
            rounds += 1
        assert node.coord.check_invariants() == []
        now += 0.5
    # 2600 more ops at 100 ops/s, in pulls of a whole burst each
    assert 26.0 <= now <= 33.0 and 6 <= rounds <= 9
    assert node.store.topo_ids() == [op.op_id for op in ops]


def test_other_peers_keep_flowing_while_one_is_throttled() -> None:
    flood = chain(2000, b"flood")
    honest = chain(3, b"honest")
    fserver, hserver = MemoryOpStore(flood), MemoryOpStore(honest)
    node = Node(CFG)
    node.coord.ingest_quota.charge("H", 1, 100, 0.0)  # H has been sending: F's flood is contended
    for p in ("F", "H"):
        node.run(node.coord.peer_connected(p, 0.0))
    (fs,) = node.sends(node.run(node.coord.announce_received("F", announce_of(fserver), "F", 0.0)))
    body = respond(fserver, fs, server_max_ops=10**6)
    pending = node.sends(node.run(node.coord.frames_received(fs.request_id, body, 0.0)))
    assert node.coord.peer("F").quota_until > 1.0  # type: ignore[union-attr]
    pending += node.sends(node.run(node.coord.announce_received("H", announce_of(hserver), "H", 0.5), 0.5))
    answered = 0
    while pending:  # every request goes to H (F waits for its quota): H answers from its store
        send = pending.pop(0)
        assert send.peer == "H"
        pending += node.sends(
            node.run(node.coord.frames_received(send.request_id, respond(hserver, send), 0.5), 0.5)
        )
        answered += 1
    assert answered <= 3
    assert all(node.store.contains(op.op_id) for op in honest)  # at 0.5 s, long before F's quota is back
    assert node.store.op_count() == 400 + len(honest)


def test_a_lone_peer_syncs_at_full_speed() -> None:
    """No other peer is sending: a late joiner takes a whole large response in one go (the quota
    only decides who waits when peers compete)."""
    ops = chain(3000)
    server = MemoryOpStore(ops)
    node = Node(CFG)
    node.run(node.coord.peer_connected("P", 0.0))
    (send,) = node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.0)))
    out = node.run(
        node.coord.frames_received(send.request_id, respond(server, send, server_max_ops=10**6), 0.0)
    )
    assert not [e for e in out if isinstance(e, CancelRequest)]
    assert node.store.op_count() == 3000 and node.coord.counters.quota_ingest_cuts == 0
