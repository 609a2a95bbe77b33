"""``/ecac/reconcile/1`` over real libp2p hosts on loopback: both sides learn the difference in one
session, the frames on the wire are the counted bytes, and a garbage frame only ends the session."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import trio

from ecac.core.rangefp import RangeTree
from ecac.core.snapshot import StoreSnapshot
from ecac.net.host import HostConfig, P2PHost
from ecac.net.reconcile import RECONCILE_PROTOCOL_ID, ReconcileService
from ecac.sync.reconcile_sched import ReconcileSchedule
from ecac.sync.wire import encode_frame

pytestmark = pytest.mark.anyio

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
CFG = HostConfig(heartbeat_interval=0.2)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def _key(n: int) -> tuple[int, int, int, bytes]:
    return (1_700_000_000_000 + n, 0, 1, hashlib.blake2b(n.to_bytes(8, "little"), digest_size=32).digest())


def _service(
    host: P2PHost, keys: list[tuple[int, int, int, bytes]], found: dict[str, list[bytes]]
) -> ReconcileService:
    snap = StoreSnapshot(complete_count=len(keys), ranges=RangeTree.from_keys(keys))
    return ReconcileService(
        host,
        lambda: snap,
        lambda peer, need: found.setdefault(peer, []).extend(need),
        lambda _peer: None,
        lambda _peer: False,
        period=5.0,
    )


@pytest.mark.timeout(60)
async def test_one_session_tells_both_sides_what_they_lack() -> None:
    shared = [_key(i) for i in range(20_000)]
    only_a = [_key(50_000 + i) for i in range(7)]
    only_b = [_key(60_000 + i) for i in range(5)]
    a, b = P2PHost(bytes([1]) * 32, config=CFG), P2PHost(bytes([2]) * 32, config=CFG)
    found_a: dict[str, list[bytes]] = {}
    found_b: dict[str, list[bytes]] = {}
    sa = _service(a, shared + only_a, found_a)
    sb = _service(b, shared + only_b, found_b)
    a.set_stream_handler(RECONCILE_PROTOCOL_ID, sa.handle)
    b.set_stream_handler(RECONCILE_PROTOCOL_ID, sb.handle)
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        with trio.fail_after(30):
            rec = await sa.initiate(b.peer_id)
            while sb.counters.reconcile_sessions == 0:
                await trio.sleep(0.01)
    assert rec is not None and rec.complete
    assert set(found_a[b.peer_id]) == {k[3] for k in only_b}
    assert set(found_b[a.peer_id]) == {k[3] for k in only_a}
    ca, cb = sa.counters, sb.counters
    assert ca.reconcile_sessions == cb.reconcile_sessions == 1
    assert ca.reconcile_rounds == cb.reconcile_rounds <= 4
    assert ca.reconcile_bytes_sent == cb.reconcile_bytes_received
    assert cb.reconcile_bytes_sent == ca.reconcile_bytes_received
    # the counted bytes are the frames: body plus a 4-byte prefix each
    assert ca.reconcile_bytes_sent == rec.bytes_sent + 4 * rec.frames_sent
    assert ca.reconcile_bytes_sent + cb.reconcile_bytes_sent <= 8192
    assert ca.reconcile_ids_found == cb.reconcile_ids_found == 12
    assert ca.reconcile_failures == cb.reconcile_failures == 0


@pytest.mark.timeout(60)
async def test_a_garbage_frame_ends_the_session_and_is_counted() -> None:
    a, b = P2PHost(bytes([3]) * 32, config=CFG), P2PHost(bytes([4]) * 32, config=CFG)
    found: dict[str, list[bytes]] = {}
    sb = _service(b, [_key(i) for i in range(100)], found)
    b.set_stream_handler(RECONCILE_PROTOCOL_ID, sb.handle)
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, RECONCILE_PROTOCOL_ID)
        await stream.write(encode_frame(b"\xa1\x00\x00"))
        with trio.fail_after(10):
            while sb.counters.reconcile_failures == 0:
                await trio.sleep(0.01)
        assert not sb.schedule.active  # the session is over; a new one may start
        await stream.reset()
    assert found == {}


def test_heads_decide_whether_a_session_is_due() -> None:
    snap = StoreSnapshot(complete_count=3, heads=(b"h" * 32,))
    state: dict[str, object] = {}
    svc = ReconcileService(
        SimpleNamespace(connected_peers=list), lambda: snap, lambda *_: None, state.get, lambda _p: False, 5.0
    )
    assert svc.wants_session("p", 0.0)  # never announced
    state["p"] = SimpleNamespace(announced_at=1.0, watermark=3, heads=(b"h" * 32,))
    assert not svc.wants_session("p", 0.0)  # same heads and count
    state["p"] = SimpleNamespace(announced_at=1.0, watermark=4, heads=(b"g" * 32,))
    assert svc.wants_session("p", 0.0)
    svc.schedule.last["p"] = 0.0
    assert not svc.wants_session("p", 1.0)  # one session per period
    assert svc.wants_session("p", 6.0)


def test_the_schedule_starts_on_connect_by_the_smaller_id_and_on_the_tick() -> None:
    """The pure policy the service and the simulator share (``ecac.sync.reconcile_sched``)."""
    snap = StoreSnapshot(complete_count=3, heads=(b"h" * 32,))
    same = SimpleNamespace(announced_at=1.0, watermark=3, heads=(b"h" * 32,))
    states: dict[str, object] = {"a": same, "c": same, "d": same}
    s = ReconcileSchedule(period=5.0, max_sessions=3)
    s.start("b", first_tick=10.0)
    # connect: only the peers with a larger id; "a" (smaller) will initiate to us
    assert s.poll(1.0, ["a", "c", "d"], states.get, snap) == ["c", "d"]
    assert s.initiating == {"c", "d"}
    assert s.poll(2.0, ["a", "c", "d"], states.get, snap) == []  # nothing new, no tick yet
    assert not s.accept("c")  # one session per peer: we initiate to c (and c > b keeps ours)
    assert s.accept("a") and s.responding == {"a"}
    assert not s.accept("e")  # at most max_sessions at once
    for p in ("a", "c", "d"):
        s.ended(p, 3.0, initiator=p != "a")
    # the tick: equal announces are not due, nor a peer whose session ended less than a period ago
    states["e"] = SimpleNamespace(announced_at=2.0, watermark=2, heads=(b"g" * 32,))
    assert s.poll(10.0, ["a", "c", "d", "e", "f"], states.get, snap) == ["e", "f"]  # f never announced
    assert s.next_tick == 15.0
    s.ended("e", 10.5, initiator=True)
    s.ended("f", 10.5, initiator=True)
    assert s.poll(15.0, ["a", "c", "d", "e", "f"], states.get, snap) == []  # e, f: within a period
    assert s.poll(20.0, ["a", "c", "d", "e", "f"], states.get, snap) == ["e", "f"]
    s.ended("f", 20.5, initiator=True)
    # a tie: both started at once; the session of the smaller id goes on
    assert s.accept("a")  # we initiate nothing to a: we answer
    s.ended("a", 21.0, initiator=False)
    assert s.begin("a") and s.accept("a")  # a < b: its session wins, ours will be reset
    assert not s.begin("a")
    # a peer without the protocol: not asked again until it reconnects
    s.ended("a", 22.0, initiator=False)
    s.ended("a", 22.0, initiator=True)
    assert s.refused_protocol("e", 22.0) and not s.refused_protocol("e", 22.0)
    assert not s.active
    assert "e" not in s.poll(40.0, ["a", "c", "d", "e", "f"], states.get, snap)
    assert s.poll(41.0, ["a", "c", "d", "f"], states.get, snap) == []  # e disconnected: forgotten
    assert s.unsupported == set() and "e" not in s.last
    assert s.poll(42.0, ["a", "c", "d", "e", "f"], states.get, snap) == ["e"]  # reconnected: fresh


@pytest.mark.timeout(60)
async def test_two_sessions_started_at_once_leave_one_that_serves_both() -> None:
    shared = [_key(i) for i in range(500)]
    a, b = P2PHost(bytes([5]) * 32, config=CFG), P2PHost(bytes([6]) * 32, config=CFG)
    found_a: dict[str, list[bytes]] = {}
    found_b: dict[str, list[bytes]] = {}
    sa = _service(a, [*shared, _key(9001)], found_a)
    sb = _service(b, [*shared, _key(9002)], found_b)
    sa.schedule.my_id, sb.schedule.my_id = a.peer_id, b.peer_id
    a.set_stream_handler(RECONCILE_PROTOCOL_ID, sa.handle)
    b.set_stream_handler(RECONCILE_PROTOCOL_ID, sb.handle)
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(sa.initiate, b.peer_id)
                n.start_soon(sb.initiate, a.peer_id)
            while not (found_a and found_b):
                await trio.sleep(0.01)
    assert found_a[b.peer_id] == [_key(9002)[3]]
    assert found_b[a.peer_id] == [_key(9001)[3]]
    winner, loser = (sa, sb) if a.peer_id < b.peer_id else (sb, sa)
    assert loser.counters.reconcile_failures == 1  # its session was reset: the other one went on
    assert winner.counters.reconcile_failures == 0


@pytest.mark.timeout(60)
async def test_a_peer_without_the_protocol_is_asked_once_until_it_reconnects() -> None:
    """A peer that answers ``na`` (another implementation) is not a failure and is not asked again
    every period; the pull path serves it."""
    a, b = P2PHost(bytes([7]) * 32, config=CFG), P2PHost(bytes([8]) * 32, config=CFG)
    sa = _service(a, [_key(i) for i in range(10)], {})
    # b registers no reconcile handler
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        with trio.fail_after(20):
            assert await sa.initiate(b.peer_id) is None
        assert sa.counters.reconcile_unsupported == 1
        assert sa.counters.reconcile_failures == 0
        assert not sa.wants_session(b.peer_id, 1e9)  # not even a period later
        with trio.fail_after(20):
            assert await sa.initiate(b.peer_id) is None
        assert sa.counters.reconcile_unsupported == 1  # counted per peer, not per attempt
