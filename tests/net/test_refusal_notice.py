"""Refusal notices in ``ecac.net.hello.PeerAccess`` (``/ecac/refused/1``), over a fake host and stream:
when a strict node sends one and how it is bounded; what a receiver accepts, records and ignores."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from ecac.core.keys import key_pair, public_key
from ecac.core.liveness import LiveSubjects
from ecac.net.hello import MAX_NOTICES_IN_FLIGHT, MAX_NOTICES_PER_PEER, NOTICE_TIMEOUT, PeerAccess
from ecac.net.p2perrors import ProtocolNotSupportedError, StreamResetError
from ecac.sync.hello import Identity
from ecac.sync.refusal import MAX_REFUSAL_FRAME, REFUSED_PROTOCOL_ID, RefusalNotice, make_notice
from ecac.sync.wire import encode_frame

GENESIS = bytes(range(32))
STRICT = Identity("strict", GENESIS)
ADMIN = public_key(key_pair(1, b"notice/admin"))
READER = public_key(key_pair(1, b"notice/reader"))
GONE = public_key(key_pair(1, b"notice/revoked"))
MALLORY = public_key(key_pair(1, b"notice/mallory"))
OURS = SigningKey(bytes([7]) * 32)  # the subject this node speaks for
LIVE = LiveSubjects(frozenset([ADMIN]), {READER: ("reader",)}, {GONE: "revoked"}, ops=5)


class FakeStream:
    """Reads ``incoming`` chunk by chunk, then EOF (or waits forever with ``hang``)."""

    def __init__(self, peer_id: str, incoming: list[bytes] | None = None, hang: bool = False) -> None:
        self.peer_id = peer_id
        self.incoming = list(incoming or [])
        self.hang = hang
        self.written = bytearray()
        self.closed = False
        self.was_reset = False

    async def read(self, n: int) -> bytes:
        if self.was_reset:
            raise StreamResetError("stream was reset")
        if self.incoming:
            return self.incoming.pop(0)
        if self.hang:
            await trio.sleep_forever()
        return b""

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


class FakeHost:
    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.unsupported: set[str] = set()
        self.hang = False
        self.opened: list[tuple[str, str, FakeStream]] = []

    def is_connected(self, peer: str) -> bool:
        return peer in self.connected

    async def open_stream(self, peer: str, protocol: str, *, timeout: float | None = None) -> FakeStream:
        if peer in self.unsupported:
            raise ProtocolNotSupportedError(f"{peer} does not speak {protocol}")
        s = FakeStream(peer, hang=self.hang)
        self.opened.append((peer, protocol, s))
        return s


Task = Callable[[], Awaitable[None]]


def strict_access(spawned: list[Task] | None) -> tuple[PeerAccess, FakeHost]:
    host = FakeHost()

    def spawn(fn: Task) -> bool:
        assert spawned is not None
        spawned.append(fn)
        return True

    access = PeerAccess(
        host, STRICT, LIVE, OURS, lambda p: None, lambda p, r: None, None if spawned is None else spawn
    )
    return access, host


def verified(access: PeerAccess, host: FakeHost, peer: str, subject: bytes) -> None:
    """``peer``'s hello was verified (what ``_admit`` records)."""
    host.connected.add(peer)
    access.subjects[peer] = subject


async def run_all(spawned: list[Task]) -> None:
    while spawned:
        await spawned.pop(0)()


def frame_of(what: str, reason: str, subject: bytes) -> bytes:
    return encode_frame(make_notice(what, reason, subject).encode(), MAX_REFUSAL_FRAME)


# --------------------------------------------------------------------------- sending


def test_a_refused_peer_gets_one_notice_per_what_and_reason() -> None:
    spawned: list[Task] = []
    access, host = strict_access(spawned)
    verified(access, host, "M", MALLORY)
    for _ in range(3):  # three refused sync streams: one log line, one notice
        access.refuse_stream("M", "sync", access.refusal("M") or "")
    assert access.counters.access_refused_sync == 3 and len(spawned) == 1
    trio.run(run_all, spawned)
    [(peer, proto, stream)] = host.opened
    assert (peer, proto) == ("M", REFUSED_PROTOCOL_ID)
    assert bytes(stream.written) == frame_of("sync", "no_grant", MALLORY)
    assert stream.closed and not stream.was_reset  # written, half-closed, the receiver's EOF read
    assert access.counters.refusal_notice_sent == 1 and access.counters.refusal_notice_failed == 0
    # reconcile and announces are told separately, once each
    access.refuse_stream("M", "reconcile", access.refusal("M") or "")
    assert access.announce_from("M") is False and access.announce_from("M") is False
    trio.run(run_all, spawned)
    got = [RefusalNotice.decode(bytes(s.written)[4:]) for _, _, s in host.opened[1:]]
    assert [(n.what, n.reason) for n in got] == [("reconcile", "no_grant"), ("announces", "no_grant")]
    # the same subject is revoked later: a new reason, a new notice
    access.subjects["M"] = GONE
    access.refuse_stream("M", "sync", access.refusal("M") or "")
    trio.run(run_all, spawned)
    assert bytes(host.opened[-1][2].written) == frame_of("sync", "revoked", GONE)
    assert access.counters.refusal_notice_sent == 4


def test_no_notice_without_a_verified_hello_or_for_a_served_peer() -> None:
    spawned: list[Task] = []
    access, host = strict_access(spawned)
    host.connected.add("X")  # connected, no hello
    access.refuse_stream("X", "sync", access.refusal("X") or "")
    assert access.counters.access_refused_sync == 1 and spawned == []
    verified(access, host, "R", READER)
    assert access.refusal("R") is None and access.announce_from("R") is True
    assert spawned == []
    # before the state is loaded, a granted subject is refused as state_not_loaded
    access.set_live(LiveSubjects.admins_only([ADMIN]))
    access.refuse_stream("R", "sync", access.refusal("R") or "")
    trio.run(run_all, spawned)
    assert bytes(host.opened[-1][2].written) == frame_of("sync", "state_not_loaded", READER)


def test_sending_is_bounded_and_never_blocks_the_caller() -> None:
    spawned: list[Task] = []
    access, host = strict_access(spawned)
    for i in range(MAX_NOTICES_IN_FLIGHT + 3):
        verified(access, host, f"P{i}", MALLORY)
        access.refuse_stream(f"P{i}", "sync", access.refusal(f"P{i}") or "")
    assert len(spawned) == MAX_NOTICES_IN_FLIGHT  # the rest are not sent: counted
    assert access.counters.refusal_notice_failed == 3
    trio.run(run_all, spawned)
    assert access.counters.refusal_notice_sent == MAX_NOTICES_IN_FLIGHT
    # the slots are free again
    verified(access, host, "Q", MALLORY)
    access.refuse_stream("Q", "sync", access.refusal("Q") or "")
    assert len(spawned) == 1


def test_a_peer_gone_or_without_the_protocol_and_a_stuck_one() -> None:
    spawned: list[Task] = []
    access, host = strict_access(spawned)
    verified(access, host, "G", MALLORY)
    access.refuse_stream("G", "sync", access.refusal("G") or "")
    host.connected.discard("G")  # gone before the task ran: never dialled
    trio.run(run_all, spawned)
    assert host.opened == [] and access.counters.refusal_notice_failed == 1
    # a peer that does not speak /ecac/refused/1 is not asked again on this connection
    verified(access, host, "U", MALLORY)
    host.unsupported.add("U")
    access.refuse_stream("U", "sync", access.refusal("U") or "")
    trio.run(run_all, spawned)
    access.refuse_stream("U", "reconcile", access.refusal("U") or "")
    assert spawned == [] and access.counters.refusal_notice_failed == 2
    access.forget("U")  # a new connection may speak it: asked again (this one does not either)
    verified(access, host, "U", MALLORY)
    access.refuse_stream("U", "reconcile", access.refusal("U") or "")
    assert len(spawned) == 1
    trio.run(run_all, spawned)
    assert host.opened == [] and access.counters.refusal_notice_failed == 3
    # a receiver that never closes: given up after NOTICE_TIMEOUT (virtual time), stream reset
    verified(access, host, "S", MALLORY)
    host.hang = True
    access.refuse_stream("S", "sync", access.refusal("S") or "")

    async def timed() -> float:
        start = trio.current_time()
        await run_all(spawned)
        return trio.current_time() - start

    took = trio.run(timed, clock=trio.testing.MockClock(autojump_threshold=0))
    stuck = host.opened[-1][2]
    assert stuck.was_reset and took == pytest.approx(NOTICE_TIMEOUT)
    assert access.counters.refusal_notice_sent == 1  # it was written, then given up


def test_no_spawn_no_notices() -> None:
    access, host = strict_access(None)
    verified(access, host, "M", MALLORY)
    access.refuse_stream("M", "sync", access.refusal("M") or "")
    assert access.counters.access_refused_sync == 1 and access.counters.refusal_notice_failed == 0


# --------------------------------------------------------------------------- receiving


def receive(access: PeerAccess, peer: str, chunks: list[bytes]) -> FakeStream:
    stream = FakeStream(peer, chunks)
    trio.run(access.handle_refused, stream)
    return stream


def test_a_notice_from_a_verified_peer_is_logged_counted_and_shown(caplog: pytest.LogCaptureFixture) -> None:
    access, host = strict_access([])
    verified(access, host, "A", ADMIN)
    ours = bytes(OURS.verify_key)
    with caplog.at_level(logging.INFO, logger="ecac.node"):
        s = receive(access, "A", [frame_of("sync", "no_grant", ours)])
    assert s.closed and not s.was_reset
    assert access.counters.refused_by_peer == 1
    assert access.status()["peer_subjects"]["A"]["refused_us"] == {"sync": "no_grant"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"peer A refuses to serve us sync: subject {ours.hex()} holds no live role (no_grant)"]
    # a later one replaces that what's reason; others add up
    f = frame_of("sync", "revoked", ours)
    receive(access, "A", [f[:3], f[3:50], f[50:]])  # in pieces
    receive(access, "A", [frame_of("announces", "revoked", ours)])
    assert access.status()["peer_subjects"]["A"]["refused_us"] == {"announces": "revoked", "sync": "revoked"}
    assert access.counters.refused_by_peer == 3
    access.forget("A")  # the connection ended: so did what it told us
    assert access.refused_us == {} and access.status()["peer_subjects"] == {}


def test_notices_from_unverified_peers_and_past_the_cap_are_ignored() -> None:
    access, host = strict_access([])
    ours = bytes(OURS.verify_key)
    s = receive(access, "X", [frame_of("sync", "no_grant", ours)])  # no verified hello from X
    assert s.was_reset and access.counters.refusal_notice_ignored == 1
    assert access.counters.refused_by_peer == 0 and access.refused_us == {}
    verified(access, host, "A", ADMIN)
    for _ in range(MAX_NOTICES_PER_PEER):
        assert not receive(access, "A", [frame_of("sync", "no_grant", ours)]).was_reset
    s = receive(access, "A", [frame_of("sync", "revoked", ours)])
    assert s.was_reset and access.counters.refusal_notice_ignored == 2
    assert access.counters.refused_by_peer == MAX_NOTICES_PER_PEER
    assert access.refused_us["A"] == {"sync": "no_grant"}  # the ignored one changed nothing
    access.forget("A")
    verified(access, host, "A", ADMIN)
    assert not receive(access, "A", [frame_of("sync", "revoked", ours)]).was_reset  # a new connection


@pytest.mark.parametrize(
    ("chunks", "why"),
    [
        ([encode_frame(b"\xa4garbage")], "not a canonical RefusalNotice"),
        ([frame_of("sync", "no_grant", MALLORY)], "judges subject"),  # not the subject we speak for
        (
            [encode_frame(RefusalNotice(1, "sync", "banned", bytes(OURS.verify_key)).encode())],
            "reason 'banned'",
        ),
        ([(MAX_REFUSAL_FRAME + 1).to_bytes(4, "big")], "exceeds the 512-byte limit"),
        (
            [frame_of("sync", "no_grant", bytes(OURS.verify_key))[:20]],
            "ended inside the refusal notice frame",
        ),
        ([frame_of("sync", "no_grant", bytes(OURS.verify_key)) * 2], "more than one refusal notice frame"),
    ],
)
def test_a_malformed_notice_is_one_line_and_a_counter(
    chunks: list[bytes], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    access, host = strict_access([])
    verified(access, host, "A", ADMIN)
    before = access.counters.as_dict()
    with caplog.at_level(logging.DEBUG, logger="ecac.node"):
        s = receive(access, "A", chunks)
    assert s.was_reset
    after = access.counters.as_dict()
    assert after.pop("refusal_notice_invalid") == before.pop("refusal_notice_invalid") + 1
    assert after == before  # nothing else changes
    assert access.refused_us == {} and "A" in access.subjects and access.admitted("A")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("invalid refusal notice from A: ") and why in lines[0]


def test_a_stream_without_a_frame_is_no_notice_and_no_error() -> None:
    access, host = strict_access([])
    verified(access, host, "A", ADMIN)
    s = receive(access, "A", [])  # EOF at once
    assert s.was_reset
    assert access.counters.refusal_notice_invalid == 0 and access.counters.refused_by_peer == 0
