"""The sans-I/O coordinator: ingestion rules, trailers, failures, backoff, anti-entropy, announces,
snapshots, budgets and restarts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ecac.core.codec import b2l, dumps
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, header_obj
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
from ecac.sync.frames import DecodedFrames, decode_frames
from ecac.sync.syncserve import serve_sync
from ecac.sync.wire import END, MORE, FrameReader, OpBytes, SignedAnnounce
from sim.dags import chain
from sim.simnet import apply_commit

SERVER_SK = key_pair(1, b"server")


def snap(store: MemoryOpStore, seq: int = 0) -> StoreSnapshot:
    return take_snapshot(store.index, seq)


class Node:
    """A coordinator whose commits are applied at once (the I/O layer in its simplest form)."""

    def __init__(self, config: SyncConfig | None = None, ops: Sequence[Op] = ()) -> None:
        self.store = MemoryOpStore(ops)
        self.seq = 0
        self.coord = SyncCoordinator(key_pair(2, b"requester"), self.store.index, config, self.snap())
        self.log: list[Effect] = []

    def snap(self) -> StoreSnapshot:
        """The snapshot the writer publishes after each commit."""
        self.seq += 1
        return snap(self.store, self.seq)

    def finish(self, commit: CommitOps, now: float = 0.0) -> list[Effect]:
        """Commit through the store and report it, as the node's writer does."""
        return self.coord.commit_finished(apply_commit(self.store, commit), self.snap(), now)

    def local_write(self, now: float, ops: Sequence[Op] = ()) -> list[Effect]:
        if ops:
            self.store.put_many(list(ops))
        return self.coord.snapshot_changed(self.snap(), now, local=True)

    def run(self, effects: Sequence[Effect], now: float = 0.0) -> list[Effect]:
        """Carry out commits (recursively); return every other effect, in order."""
        out: list[Effect] = []
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            if isinstance(e, CommitOps):
                self.log.append(e)
                queue = self.finish(e, now) + queue
            else:
                out.append(e)
        self.log += out
        return out

    def sends(self, effects: Sequence[Effect]) -> list[SendRequest]:
        return [e for e in effects if isinstance(e, SendRequest)]

    def commits(self) -> list[CommitOps]:
        return [e for e in self.log if isinstance(e, CommitOps)]


def respond(store: MemoryOpStore, send: SendRequest, **kw) -> list[bytes]:
    """The server's answer to ``send`` as frame bodies."""
    reader = FrameReader()
    blobs = serve_sync(store.index, snap(store), store.load_ops_cbor, send.request.encode(), **kw)
    return [b for blob in blobs for b in reader.feed(blob)]


def announce_of(store: MemoryOpStore, sk=SERVER_SK) -> SignedAnnounce:
    return local_announce(snap(store), sk)


def start_fetch(node: Node, server: MemoryOpStore, peers: Sequence[str] = ("P",), now: float = 0.0):
    for p in peers:
        node.run(node.coord.peer_connected(p, now), now)
    sends = node.sends(
        node.run(node.coord.announce_received(peers[0], announce_of(server), peers[0], now), now)
    )
    assert len(sends) == 1
    return sends[0]


def forged(op: Op) -> bytes:
    """The op with a new payload under its old id and signature (canonical CBOR, fails verification)."""
    header = header_obj(op.parents, op.hlc, op.author_pk, Data("mv:o:x", b"forged"))
    return dumps({"header": header, "sig": b2l(op.sig), "op_id": b2l(op.op_id)})


# --------------------------------------------------------------------------- ingestion rules


def test_parent_first_enforced() -> None:
    """A child before its parent is a protocol violation: nothing from it on is committed; peer penalised."""
    ops = chain(10)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    assert send.peer == "P" and send.request.want == (ops[-1].op_id,)
    bodies = respond(server, send)
    bodies[3], bodies[4] = bodies[4], bodies[3]  # op4 (child of op3) before op3
    effects = node.run(node.coord.frames_received(send.request_id, bodies, 1.0), 1.0)
    assert node.store.topo_ids() == [o.op_id for o in ops[:3]]  # the valid prefix is kept
    assert [len(c.ops) for c in node.commits()] == [3]
    assert not node.store.contains(ops[3].op_id) and not node.store.contains(ops[4].op_id)
    kinds = [type(e) for e in effects]
    assert CancelRequest in kinds and Penalise in kinds and Disconnect in kinds
    pen = next(e for e in effects if isinstance(e, Penalise))
    assert pen.peer == "P" and "before its parent" in pen.reason
    assert node.coord.counters.peers_penalised == 1
    # the wanted head is asked from the other peer at once
    retry = node.sends(effects)
    assert [(s.peer, s.request.want) for s in retry] == [("Q", (ops[-1].op_id,))]
    # late frames of the failed request change nothing
    assert node.run(node.coord.frames_received(send.request_id, bodies[5:], 1.1), 1.1) == []
    assert node.store.op_count() == 3
    # the Q answer completes the sync, resending nothing that is already held
    node.run(node.coord.frames_received(retry[0].request_id, respond(server, retry[0]), 1.2), 1.2)
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.counters.ops_fetched == 10


def test_invalid_op_is_penalised_and_valid_prefix_kept() -> None:
    ops = chain(10)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    bodies = respond(server, send)
    bodies[5] = OpBytes(forged(ops[5])).encode()
    effects = node.run(node.coord.frames_received(send.request_id, bodies, 1.0), 1.0)
    assert node.store.topo_ids() == [o.op_id for o in ops[:5]]
    # first commit refused as a whole by the store, then its valid prefix committed again
    assert [len(c.ops) for c in node.commits()] == [10, 5]
    pen = [e for e in effects if isinstance(e, Penalise)]
    assert len(pen) == 1 and pen[0].peer == "P" and "invalid op" in pen[0].reason
    assert ops[5].op_id.hex() in pen[0].reason
    assert [s.peer for s in node.sends(effects)] == ["Q"]
    assert node.coord.peer("P").connected is False


def test_undecodable_and_non_canonical_frames_are_violations() -> None:
    ops = chain(4)
    server = MemoryOpStore(ops)
    for bad in (b"\xff", dumps({"OpBytes": [1, 2]}), OpBytes(ops[1].cbor + b"\x00").encode()):
        node = Node()
        send = start_fetch(node, server)
        bodies = respond(server, send)
        bodies[1] = bad
        effects = node.run(node.coord.frames_received(send.request_id, bodies, 1.0), 1.0)
        assert node.store.topo_ids() == [ops[0].op_id]
        assert any(isinstance(e, Penalise) for e in effects)


def test_frames_after_trailer_are_a_violation() -> None:
    d = decode_frames([END.encode(), OpBytes(b"\x01").encode()])
    assert d.trailer == END and d.error == "frame after the trailer"
    ok = decode_frames([MORE.encode()])
    assert ok == DecodedFrames((), MORE, None)


def test_duplicates_are_dropped_and_counted() -> None:
    ops = chain(6)
    server = MemoryOpStore(ops)
    node = Node(ops=ops[:3])
    send = start_fetch(node, server)
    bodies = respond(server, send)
    assert len(bodies) == 4  # the boundary excluded what we hold
    resend = [OpBytes(o.cbor).encode() for o in ops[:3]] + bodies[:1] + bodies  # held, then a repeat
    node.run(node.coord.frames_received(send.request_id, resend, 1.0), 1.0)
    assert node.store.topo_ids() == server.topo_ids()
    c = node.coord.counters
    assert c.ops_fetched == 3 and c.ops_duplicates_dropped == 4 and c.peers_penalised == 0


def test_commits_are_parent_first_batches_of_at_most_512() -> None:
    ops = chain(1300)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    node.run(node.coord.frames_received(send.request_id, respond(server, send), 1.0), 1.0)
    sizes = [len(c.ops) for c in node.commits()]
    assert sizes == [512, 512, 276]
    seen: set[bytes] = set()
    for c in node.commits():
        for op in c.ops:
            assert all(p in seen for p in op.parents)
            seen.add(op.op_id)
    assert node.coord.counters.fetch_batches == 3
    assert node.coord.idle()


def test_back_pressure_while_a_commit_is_outstanding() -> None:
    ops = chain(1200)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    bodies = respond(server, send)
    rid = send.request_id
    first = node.coord.frames_received(rid, bodies[:600], 1.0)  # not run: the commit stays outstanding
    assert [len(e.ops) for e in first if isinstance(e, CommitOps)] == [512]
    assert node.coord.accepting(rid)  # 88 buffered < 512
    assert node.coord.frames_received(rid, bodies[600:1100], 1.0) == []  # waits for the first commit
    assert not node.coord.accepting(rid)
    nxt = node.run(first, 1.0)
    assert node.store.op_count() == 1024 and nxt == []
    node.run(node.coord.frames_received(rid, bodies[1100:], 1.0), 1.0)
    assert node.store.topo_ids() == server.topo_ids()
    assert not node.coord.accepting(rid)  # finished


def test_local_store_failure_is_not_the_peers_fault() -> None:
    ops = chain(3)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    effects = node.coord.frames_received(send.request_id, respond(server, send), 1.0)
    (commit,) = [e for e in effects if isinstance(e, CommitOps)]
    failed = CommitOutcome(commit.commit_id, error="store error: disk full")
    after = node.coord.commit_finished(failed, node.snap(), 1.0)
    assert not any(isinstance(e, Penalise | Disconnect) for e in after)
    assert node.coord.peer("P").failures == 0 and node.coord.counters.requests_failed == 1
    # the head is wanted again and re-requested from the same (healthy) peer
    assert [s.peer for s in node.sends(after)] == ["P"]


# --------------------------------------------------------------------------- trailers and continuation


def test_more_continues_with_same_want_and_updated_boundary() -> None:
    ops = chain(50)
    server = MemoryOpStore(ops)
    node = Node(SyncConfig(request_max_ops=20))
    send = start_fetch(node, server)
    assert send.request.max_ops == 20
    want = send.request.want
    rounds = 0
    while send is not None:
        rounds += 1
        nxt = node.sends(
            node.run(node.coord.frames_received(send.request_id, respond(server, send), 1.0), 1.0)
        )
        if nxt:
            (cont,) = nxt
            assert cont.peer == "P" and cont.request.want == want
            assert cont.request.boundary[0] == node.store.heads(1)[0]
            send = cont
        else:
            send = None
    assert rounds == 3
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.idle()


def test_end_without_the_id_marks_it_unavailable_at_that_peer() -> None:
    ops = chain(5)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    head = ops[-1].op_id
    effects = node.run(node.coord.frames_received(send.request_id, [END.encode()], 1.0), 1.0)
    assert node.coord.planner.unavailable_at("P", head)
    (retry,) = node.sends(effects)
    assert retry.peer == "Q" and retry.request.want == (head,)
    # Q also lacks it: no one left this round, the id stays wanted
    assert node.sends(node.run(node.coord.frames_received(retry.request_id, [END.encode()], 1.1), 1.1)) == []
    assert node.coord.planner.is_wanted(head)
    # a new announce from P starts a new round for P
    more_ops = chain(1, b"x", ops[-1])
    server.put_many(more_ops)
    sends = node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 2.0), 2.0))
    assert [s.peer for s in sends] == ["P"]
    assert sends[0].request.want == tuple(sorted((head, more_ops[0].op_id)))  # the old want is retried too
    assert node.coord.peer("P").failures == 0  # End is a success, not a failure


def test_more_chain_without_progress_stops() -> None:
    ops = chain(5)
    node = Node(ops=ops)
    node.run(node.coord.peer_connected("P", 0.0))
    (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(0.0)))
    assert ae.request.want == ()
    resend = [OpBytes(o.cbor).encode() for o in ops] + [MORE.encode()]
    (cont,) = node.sends(node.run(node.coord.frames_received(ae.request_id, resend, 0.1), 0.1))
    assert set(ops[i].op_id for i in range(4)) <= set(
        cont.request.boundary
    )  # the duplicates join the boundary
    assert node.sends(node.run(node.coord.frames_received(cont.request_id, resend, 0.2), 0.2)) == []
    assert node.coord.active_requests() == []


# --------------------------------------------------------------------------- failures, timeouts, backoff


def test_stream_without_trailer_fails_and_is_retried_elsewhere() -> None:
    ops = chain(10)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    bodies = respond(server, send)
    node.run(node.coord.frames_received(send.request_id, bodies[:4], 1.0), 1.0)
    effects = node.run(node.coord.stream_closed(send.request_id, 1.1), 1.1)
    assert node.store.op_count() == 4  # committed ops are kept
    assert not any(isinstance(e, Penalise) for e in effects)
    (retry,) = node.sends(effects)
    assert retry.peer == "Q"
    assert ops[3].op_id in retry.request.boundary
    assert node.coord.peer("P").failures == 1 and node.coord.counters.requests_failed == 1


def test_idle_timeout_and_deadline() -> None:
    ops = chain(10)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    assert node.coord.next_wakeup() == 15.0  # the idle timeout of the request
    assert not any(isinstance(e, CancelRequest) for e in node.run(node.coord.timer(14.9), 14.9))
    effects = node.run(node.coord.timer(15.0), 15.0)
    cancels = [e for e in effects if isinstance(e, CancelRequest)]
    assert [(c.request_id, c.reason) for c in cancels] == [(send.request_id, "idle timeout")]
    (retry,) = [s for s in node.sends(effects) if s.request.want]
    assert retry.peer == "Q"
    # a peer that keeps trickling frames still hits the 120 s deadline
    bodies = respond(server, retry)
    t = 15.0
    for i in range(8):
        t += 14.0
        node.run(node.coord.frames_received(retry.request_id, bodies[i : i + 1], t), t)
        node.run(node.coord.timer(t), t)
    assert retry.request_id in node.coord.active_requests()
    effects = node.run(node.coord.timer(135.0), 135.0)
    assert any(isinstance(e, CancelRequest) and e.reason == "request deadline exceeded" for e in effects)


def test_backoff_schedule_and_reset() -> None:
    cfg = SyncConfig()
    assert [cfg.backoff(n) for n in range(8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert cfg.backoff(100) == 30.0
    ops = chain(3)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    node.run(node.coord.request_failed(send.request_id, "reset", 1.0), 1.0)
    p = node.coord.peer("P")
    assert p.failures == 1 and p.backoff_until == 1.5 and not p.available(1.4)
    assert node.coord.next_wakeup() == 1.5
    assert node.sends(node.run(node.coord.timer(1.4), 1.4)) == []  # P is the only peer: wait
    (again,) = node.sends(node.run(node.coord.timer(1.5), 1.5))
    node.run(node.coord.request_failed(again.request_id, "reset", 1.6), 1.6)
    assert p.failures == 2 and p.backoff_until == pytest.approx(2.6)
    (third,) = node.sends(node.run(node.coord.timer(2.6), 2.6))
    node.run(node.coord.frames_received(third.request_id, respond(server, third), 2.7), 2.7)
    assert p.failures == 0 and p.backoff_until == 0.0  # reset on success
    assert node.store.topo_ids() == server.topo_ids()


def test_disconnect_fails_requests_and_switches_peer() -> None:
    ops = chain(4)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server, ("P", "Q"))
    effects = node.run(node.coord.peer_disconnected("P", 1.0), 1.0)
    assert [s.peer for s in node.sends(effects)] == ["Q"]
    assert not any(isinstance(e, CancelRequest) for e in effects)  # the stream is gone already
    assert node.coord.active_requests() != [send.request_id]


def test_banned_peer_is_disconnected_again() -> None:
    ops = chain(3)
    server = MemoryOpStore(ops)
    node = Node(SyncConfig(ban_period=10.0))
    send = start_fetch(node, server)
    node.run(node.coord.request_failed(send.request_id, "oversized frame", 1.0, violation=True), 1.0)
    assert node.coord.counters.peers_penalised == 1
    assert node.run(node.coord.peer_connected("P", 5.0), 5.0) == [Disconnect("P", "banned", 11.0)]
    assert node.run(node.coord.peer_connected("P", 11.0), 11.0) != [Disconnect("P", "banned", 11.0)]
    assert node.coord.peer("P").connected


# --------------------------------------------------------------------------- announces and anti-entropy


def publishes(effects: Sequence[Effect]) -> list[bytes]:
    return [e.data for e in effects if isinstance(e, PublishAnnounce)]


def test_announce_on_start_debounced_and_only_when_changed() -> None:
    node = Node(ops=chain(2))
    (first,) = publishes(node.run(node.coord.start(0.0)))
    sa = SignedAnnounce.decode(first)
    assert sa.announce.topo_watermark == 2 and sa.announce.head_ids == tuple(node.store.heads(16))
    assert sa.vk == node.coord.vk
    more = chain(1, b"more", node.store.get_op(node.store.heads(1)[0]))
    assert publishes(node.run(node.local_write(0.1, more), 0.1)) == []  # within 250 ms
    assert node.coord.next_wakeup() == pytest.approx(0.25)
    (second,) = publishes(node.run(node.coord.timer(0.25), 0.25))
    assert SignedAnnounce.decode(second).announce.topo_watermark == 3
    assert publishes(node.run(node.coord.timer(1.0), 1.0)) == []
    assert publishes(node.run(node.coord.anti_entropy_tick(6.0), 6.0)) == []  # unchanged: not re-published
    assert publishes(node.run(node.local_write(7.0), 7.0)) == []  # nothing new to say
    assert publishes(node.run(node.coord.peer_subscribed("P", 8.0), 8.0)) == [second]  # a new peer
    assert node.coord.counters.announces_sent == 3


def test_own_and_duplicate_announces() -> None:
    ops = chain(3)
    server = MemoryOpStore(ops)
    node = Node()
    node.run(node.coord.peer_connected("P", 0.0))
    own = announce_of(server, node.coord.sk)
    assert node.run(node.coord.announce_received("me", own, "P", 0.0)) == []
    sa = announce_of(server)
    sends: list[SendRequest] = []
    for _ in range(50):
        sends += node.sends(node.run(node.coord.announce_received("P", sa, "P", 0.0)))
    assert len(sends) == 1
    assert node.coord.counters.announces_received == 51


def test_validate_announce_counts_rejections() -> None:
    node = Node()
    good = announce_of(MemoryOpStore(chain(1))).encode()
    assert node.coord.validate_announce(good) is not None
    assert node.coord.validate_announce(good[:-1]) is None
    assert node.coord.validate_announce(good, expected_vk=b"\x01" * 32) is None
    assert node.coord.counters.announces_rejected == 2


def test_anti_entropy_round_robin_and_more() -> None:
    ops = chain(30)
    server = MemoryOpStore(ops)
    node = Node(SyncConfig(request_max_ops=12))
    for p in ("c", "a", "b"):
        node.run(node.coord.peer_connected(p, 0.0))
    node.run(node.coord.start(0.0))
    assert node.coord.next_wakeup() == 5.0
    (r1,) = node.sends(node.run(node.coord.timer(5.0), 5.0))
    assert r1.peer == "a" and r1.request.want == () and r1.request.max_ops == 12
    # More => the same peer is asked again with the updated boundary, until End
    (r1b,) = node.sends(node.run(node.coord.frames_received(r1.request_id, respond(server, r1), 5.1), 5.1))
    assert r1b.peer == "a" and r1b.request.want == () and r1b.request.boundary[0] == ops[11].op_id
    (r1c,) = node.sends(node.run(node.coord.frames_received(r1b.request_id, respond(server, r1b), 5.2), 5.2))
    assert (
        node.sends(node.run(node.coord.frames_received(r1c.request_id, respond(server, r1c), 5.3), 5.3)) == []
    )
    assert node.store.topo_ids() == server.topo_ids()
    order = []
    t = 10.0
    for _ in range(4):
        (r,) = node.sends(node.run(node.coord.timer(t), t))
        order.append(r.peer)
        node.run(node.coord.frames_received(r.request_id, [END.encode()], t), t)
        t += 5.0
    assert order == ["b", "c", "a", "b"]


def test_anti_entropy_skips_busy_and_backed_off_peers() -> None:
    node = Node()
    for p in ("a", "b"):
        node.run(node.coord.peer_connected(p, 0.0))
    (r,) = node.sends(node.run(node.coord.anti_entropy_tick(0.0)))
    assert r.peer == "a"
    # the previous round's chain is still running: no second anti-entropy request
    assert node.sends(node.run(node.coord.anti_entropy_tick(1.0), 1.0)) == []
    node.run(node.coord.request_failed(r.request_id, "reset", 1.0), 1.0)
    (r2,) = node.sends(node.run(node.coord.anti_entropy_tick(1.1), 1.1))
    assert r2.peer == "b"
    node.run(node.coord.frames_received(r2.request_id, [END.encode()], 1.2), 1.2)
    (r3,) = node.sends(node.run(node.coord.anti_entropy_tick(1.3), 1.3))
    assert r3.peer == "b"  # "a" is still backing off


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SyncConfig(max_frame=1000)
    with pytest.raises(ValueError):
        SyncConfig(max_want_per_request=300)
    with pytest.raises(ValueError):
        SyncConfig(max_held_ops=10)
    with pytest.raises(ValueError):
        SyncConfig(idle_timeout=0)
    with pytest.raises(ValueError):
        SyncConfig(batch_bytes=1000, max_held_bytes=999)
    with pytest.raises(ValueError):
        SyncConfig(max_held_bytes_total=SyncConfig().max_held_bytes - 1)
    with pytest.raises(ValueError):
        SyncConfig(max_serves_per_peer=0)
    with pytest.raises(ValueError):
        SyncConfig(bloom_window=128)  # the snapshot's bloom covers 256 ids
    with pytest.raises(ValueError):
        SyncConfig(announce_heads=65)
    cfg = SyncConfig()
    assert (cfg.max_held_bytes, cfg.max_held_bytes_total, cfg.max_serves_per_peer) == (64 << 20, 256 << 20, 2)
    with pytest.raises(ValueError):
        local_announce(StoreSnapshot(), SERVER_SK, bloom_window=128)
    with pytest.raises(ValueError):
        CommitOutcome(1, rejected_index=0)  # a refusal names the store's error
    with pytest.raises(ValueError):
        CommitOutcome(1, stored=(b"\x00" * 32,), error="store error")


def test_counters_dict() -> None:
    d = Node().coord.counters.as_dict()
    for name in (
        "ops_fetched",
        "fetch_batches",
        "ops_duplicates_dropped",
        "announces_sent",
        "announces_received",
        "announces_rejected",
        "requests_failed",
        "peers_penalised",
    ):
        assert d[name] == 0


def test_peer_states_are_bounded() -> None:
    node = Node(SyncConfig(max_peer_states=3))
    node.run(node.coord.peer_connected("A", 0.0))
    for i in range(6):
        store = MemoryOpStore(chain(1, b"o%d" % i))
        node.run(node.coord.announce_received(f"far{i}", announce_of(store, key_pair(i, b"o")), "A", 0.0))
    assert node.coord.peer("A") is not None and node.coord.peer("A").connected
    remembered = [f"far{i}" for i in range(6) if node.coord.peer(f"far{i}") is not None]
    assert remembered == ["far4", "far5"]


# --------------------------------------------------------------------------- one request per peer, lean pulls


def test_one_request_per_peer_and_the_next_one_excludes_what_the_first_delivered() -> None:
    """A second announce while a fetch runs waits for it: started at once, its boundary could not list
    the ops in flight and the server would send them again."""
    ops = chain(40)
    server = MemoryOpStore(ops[:30])
    node = Node()
    first = start_fetch(node, server)
    server.put_many(ops[30:])
    assert node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.1), 0.1)) == []
    assert node.coord.planner.is_wanted(ops[-1].op_id)
    (second,) = node.sends(
        node.run(node.coord.frames_received(first.request_id, respond(server, first), 0.2), 0.2)
    )
    assert second.peer == "P" and second.request.want == (ops[-1].op_id,)
    assert second.request.boundary[0] == ops[29].op_id
    node.run(node.coord.frames_received(second.request_id, respond(server, second), 0.3), 0.3)
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.counters.ops_duplicates_dropped == 0


def test_no_fetch_to_a_peer_while_an_anti_entropy_pull_from_it_runs() -> None:
    ops = chain(20)
    server = MemoryOpStore(ops)
    node = Node()
    node.run(node.coord.peer_connected("P", 0.0))
    (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(0.0)))
    assert ae.request.want == ()
    # the announce arrives while the pull runs: the pull delivers the head already
    assert node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.1), 0.1)) == []
    after = node.run(node.coord.frames_received(ae.request_id, respond(server, ae), 0.2), 0.2)
    assert node.sends(after) == []  # the head arrived: nothing left to fetch
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.counters.ops_duplicates_dropped == 0
    assert node.coord.idle()


def test_anti_entropy_skips_a_peer_whose_fresh_announce_shows_nothing_we_lack() -> None:
    """A peer catching up from us does not know our heads: pulling from it would bring back what it
    received from us. Its announce says so; the hint lasts one anti-entropy period."""
    ops = chain(10)
    node = Node(ops=ops)
    for p in ("behind", "other"):
        node.run(node.coord.peer_connected(p, 0.0))
    behind = MemoryOpStore(ops[:4])
    sa = announce_of(behind, key_pair(5, b"b"))
    assert node.sends(node.run(node.coord.announce_received("behind", sa, "behind", 1.0), 1.0)) == []
    (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(1.5), 1.5))
    assert ae.peer == "other"  # round robin would have picked "behind"
    node.run(node.coord.frames_received(ae.request_id, [END.encode()], 1.6), 1.6)
    # one period (5 s) after that announce the hint has expired: "behind" is pulled from again
    (ae2,) = node.sends(node.run(node.coord.anti_entropy_tick(6.0), 6.0))
    assert ae2.peer == "behind"
    node.run(node.coord.frames_received(ae2.request_id, [END.encode()], 6.1), 6.1)
    # an announce with a head we lack: fetched at once; once we hold it, the same announce is a skip reason
    ahead = MemoryOpStore([*ops, *chain(1, b"new", ops[-1])])
    sa2 = announce_of(ahead, key_pair(5, b"b"))
    (fetch,) = node.sends(node.run(node.coord.announce_received("behind", sa2, "behind", 7.0), 7.0))
    assert fetch.peer == "behind" and fetch.request.want
    node.run(node.coord.frames_received(fetch.request_id, respond(ahead, fetch), 7.1), 7.1)
    for t in (7.2, 7.4):
        (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(t), t))
        assert ae.peer == "other"
        node.run(node.coord.frames_received(ae.request_id, [END.encode()], t + 0.1), t + 0.1)
    (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(12.0), 12.0))
    assert ae.peer == "behind"


def test_anti_entropy_hint_needs_every_head_listed() -> None:
    """An announce with as many heads as the cap may omit some: it never skips the pull."""
    roots = [chain(1, b"r%d" % i)[0] for i in range(16)]
    node = Node(ops=roots)
    node.run(node.coord.peer_connected("P", 0.0))
    peer = MemoryOpStore(roots)
    sa = announce_of(peer, key_pair(7, b"p"))
    assert len(sa.announce.head_ids) == 16
    node.run(node.coord.announce_received("P", sa, "P", 1.0), 1.0)
    (ae,) = node.sends(node.run(node.coord.anti_entropy_tick(1.1), 1.1))
    assert ae.peer == "P" and ae.request.want == ()
    # with fewer heads than the cap, all of them held: skipped
    node.run(node.coord.frames_received(ae.request_id, [END.encode()], 1.2), 1.2)
    few = announce_of(MemoryOpStore(roots[:3]), key_pair(7, b"p"))
    node.run(node.coord.announce_received("P", few, "P", 1.3), 1.3)
    assert node.sends(node.run(node.coord.anti_entropy_tick(1.4), 1.4)) == []


# --------------------------------------------------------------------------- budgets in bytes


def test_commits_are_cut_by_bytes_too() -> None:
    ops = chain(12)
    size = max(len(o.cbor) for o in ops[1:])  # the root has no parent: shorter
    server = MemoryOpStore(ops)
    node = Node(SyncConfig(batch_ops=8, batch_bytes=3 * size + 10, max_held_bytes=20 * size))
    send = start_fetch(node, server)
    node.run(node.coord.frames_received(send.request_id, respond(server, send), 1.0), 1.0)
    assert [len(c.ops) for c in node.commits()] == [3, 3, 3, 3]
    assert all(c.nbytes <= 3 * size + 10 for c in node.commits())
    assert node.store.topo_ids() == server.topo_ids()


def test_held_bytes_budget_fails_a_reader_that_ignores_back_pressure() -> None:
    ops = chain(40)
    size = max(len(o.cbor) for o in ops)
    server = MemoryOpStore(ops)
    cfg = SyncConfig(batch_ops=4, max_held_ops=1000, batch_bytes=4 * size, max_held_bytes=8 * size)
    node = Node(cfg)
    send = start_fetch(node, server, ("P", "Q"))
    rid = send.request_id
    bodies = respond(server, send)
    first = node.coord.frames_received(rid, bodies[:4], 1.0)  # one batch: commit outstanding
    assert [len(e.ops) for e in first if isinstance(e, CommitOps)] == [4]
    assert node.coord.accepting(rid)
    node.coord.frames_received(rid, bodies[4:8], 1.0)  # a full batch waits: stop reading
    assert not node.coord.accepting(rid)
    assert node.coord.request_info(rid).held_bytes == sum(len(o.cbor) for o in ops[4:8])
    flood = node.coord.frames_received(rid, bodies[8:20], 1.0)  # read on anyway: 16 ops held > 8 ops' bytes
    assert any(isinstance(e, CancelRequest) and "back-pressure" in e.reason for e in flood)
    assert not any(isinstance(e, Penalise | Disconnect) for e in flood)
    c = node.coord.counters
    assert c.requests_over_budget == 1 and c.peers_penalised == 0
    assert node.coord.peer("P").failures == 0  # a local fault: no backoff
    assert node.coord.request_info(rid).held_ops == 0  # the buffer is dropped, the commit still pending
    node.run(first, 1.0)  # the outstanding commit lands; the request drains and the id is re-planned
    assert node.store.op_count() == 4
    assert node.coord.check_invariants() == []


def test_total_held_bytes_pause_reading_and_drain_every_buffer() -> None:
    a_ops, b_ops = chain(10, b"a"), chain(10, b"b")
    size = max(len(o.cbor) for o in a_ops + b_ops)
    cfg = SyncConfig(
        batch_ops=8, batch_bytes=8 * size, max_held_bytes=8 * size, max_held_bytes_total=8 * size
    )
    node = Node(cfg)
    pa, pb = MemoryOpStore(a_ops), MemoryOpStore(b_ops)
    for p in ("A", "B"):
        node.run(node.coord.peer_connected(p, 0.0))
    (ra,) = node.sends(node.run(node.coord.announce_received("A", announce_of(pa), "A", 0.0)))
    (rb,) = node.sends(
        node.run(node.coord.announce_received("B", announce_of(pb, key_pair(4, b"b")), "B", 0.0))
    )
    # A's first frames stay below a batch: buffered, no commit
    assert node.coord.frames_received(ra.request_id, respond(pa, ra)[:5], 0.1) == []
    assert node.coord.accepting(rb.request_id)
    # B's frames bring the total to the budget: reading pauses everywhere, and both buffers commit now
    effects = node.coord.frames_received(rb.request_id, respond(pb, rb)[:4], 0.1)
    commits = [e for e in effects if isinstance(e, CommitOps)]
    assert sorted(len(c.ops) for c in commits) == [4, 5]
    assert node.coord.held_bytes_total() == 0
    assert node.coord.check_invariants() == []
    node.run(commits, 0.2)
    assert node.coord.accepting(ra.request_id) and node.coord.accepting(rb.request_id)


# --------------------------------------------------------------------------- snapshots


def test_stale_snapshots_are_ignored_and_new_ones_replan() -> None:
    ops = chain(6)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    head = ops[-1].op_id
    assert node.coord.planner.is_wanted(head)
    newer = node.coord.snapshot
    assert node.run(node.coord.snapshot_changed(StoreSnapshot(seq=0), 1.0), 1.0) == []
    assert node.coord.snapshot is newer  # older than the one it holds
    # the ops arrive by another path (a local import); the snapshot after it drops the want
    node.store.put_many(ops)
    node.run(node.coord.snapshot_changed(node.snap(), 1.0), 1.0)
    assert not node.coord.planner.is_wanted(head)
    assert node.coord.snapshot.complete_count == 6
    node.run(node.coord.frames_received(send.request_id, respond(server, send), 1.1), 1.1)
    assert node.coord.counters.ops_duplicates_dropped == 6 and node.coord.idle()


def test_facts_newer_than_the_snapshot() -> None:
    """The writer stored ops the coordinator was not told about yet: the live facts stop it from
    fetching them, and its boundary comes from the snapshot it has (never a stale claim)."""
    ops = chain(8)
    node = Node()
    old = node.coord.snapshot
    node.store.put_many(ops[:5])  # committed, not reported
    node.run(node.coord.peer_connected("P", 0.0))
    sends = node.sends(
        node.run(node.coord.announce_received("P", announce_of(MemoryOpStore(ops[:5])), "P", 0.0))
    )
    assert sends == [] and node.coord.snapshot is old  # stored: nothing to fetch
    (send,) = node.sends(
        node.run(node.coord.announce_received("P", announce_of(MemoryOpStore(ops)), "P", 0.1))
    )
    assert send.request.want == (ops[-1].op_id,) and send.request.boundary == ()  # the old (empty) snapshot
    server = MemoryOpStore(ops)
    node.run(node.coord.frames_received(send.request_id, respond(server, send), 0.2), 0.2)
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.counters.ops_duplicates_dropped == 5  # sent again, dropped by the facts


# --------------------------------------------------------------------------- never half-updated, restarts


def state_of(coord: SyncCoordinator) -> tuple:
    return (
        coord.requests(),
        coord.outstanding_commits(),
        coord.planner.wanted_ids(),
        coord.counters.as_dict(),
    )


def test_bad_events_raise_before_changing_anything() -> None:
    ops = chain(6)
    server = MemoryOpStore(ops)
    node = Node()
    send = start_fetch(node, server)
    (commit,) = [
        e
        for e in node.coord.frames_received(send.request_id, respond(server, send), 1.0)
        if isinstance(e, CommitOps)
    ]
    before = state_of(node.coord)
    bad_events = [
        lambda: node.coord.commit_finished(
            CommitOutcome(commit.commit_id, stored=(b"\x01" * 32,)), node.snap(), 1.0
        ),
        lambda: node.coord.commit_finished(
            CommitOutcome(commit.commit_id, rejected_index=9, error="x"), node.snap(), 1.0
        ),
        lambda: node.coord.commit_finished(CommitOutcome(commit.commit_id), "not a snapshot", 1.0),
        lambda: node.coord.decoded_received(send.request_id, [OpBytes(ops[0].cbor).encode()], 1.0),
        lambda: node.coord.timer(float("nan")),
        lambda: node.coord.peer_connected(b"P", 1.0),
        lambda: node.coord.snapshot_changed(None, 1.0),
        lambda: node.coord.announce_received("P", b"announce bytes", None, 1.0),
    ]
    for bad in bad_events:
        with pytest.raises((TypeError, ValueError)):
            bad()
        assert state_of(node.coord) == before
        assert node.coord.check_invariants() == []
    node.run([commit], 1.0)  # still usable: the real outcome completes the sync
    assert node.store.topo_ids() == server.topo_ids() and node.coord.idle()


def test_restart_keeps_counters_bans_and_peers_and_forgets_requests() -> None:
    ops = chain(20)
    server = MemoryOpStore(ops)
    node = Node(SyncConfig(batch_ops=4, ban_period=10.0))
    node.run(node.coord.start(0.0))
    for p in ("B", "P", "Q"):
        node.run(node.coord.peer_connected(p, 0.0))
    (send,) = node.sends(node.run(node.coord.announce_received("P", announce_of(server), "P", 0.0)))
    bad_send = node.sends(node.run(node.coord.anti_entropy_tick(0.0)))  # to B: the first idle peer
    assert [x.peer for x in bad_send] == ["B"]
    node.run(node.coord.request_failed(bad_send[0].request_id, "garbage", 0.0, violation=True))
    effects = node.coord.frames_received(send.request_id, respond(server, send)[:6], 0.5)
    (old_commit,) = [e for e in effects if isinstance(e, CommitOps)]
    counters = node.coord.counters.as_dict()
    old = node.coord
    node.coord, restart_effects = old.restarted(node.snap(), 1.0)
    assert node.coord is not old
    cancels = [e for e in restart_effects if isinstance(e, CancelRequest)]
    assert [c.request_id for c in cancels] == [send.request_id]
    assert node.coord.counters.coordinator_restarts == 1
    carried = node.coord.counters.as_dict()
    assert all(carried[k] >= v for k, v in counters.items())  # kept (the restart pulls and announces)
    assert carried["peers_penalised"] == counters["peers_penalised"] == 1
    assert carried["requests_failed"] == counters["requests_failed"] == 1
    assert node.coord.connected_peers() == ["P", "Q"]
    assert node.run(node.coord.peer_connected("B", 2.0), 2.0) == [Disconnect("B", "banned", 10.0)]
    # the new one pulls at once (anti-entropy), with fresh ids; late reports for the old ones change nothing
    new_sends = node.sends(restart_effects)
    assert [s.request.want for s in new_sends] == [()]
    assert all(s.request_id > send.request_id for s in new_sends)
    assert node.coord.frames_received(send.request_id, [END.encode()], 1.1) == []
    node.run(node.coord.commit_finished(apply_commit(node.store, old_commit), node.snap(), 1.1), 1.1)
    assert node.coord.snapshot.complete_count == 4  # the old commit's snapshot is still news
    node.run(node.coord.frames_received(new_sends[0].request_id, respond(server, new_sends[0]), 1.2), 1.2)
    assert node.store.topo_ids() == server.topo_ids()
    assert node.coord.check_invariants() == [] and node.coord.idle()
