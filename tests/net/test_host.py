"""Real py-libp2p hosts on 127.0.0.1 (ephemeral ports): identity, streams, gossip, dial errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import blake3
import pytest
import trio
from libp2p import new_host
from libp2p.exceptions import ValidationError
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp import tcp as tcp_module

from ecac.net.gossip import EcacPubsub, Gossip, SizedQueues, build_pubsub, build_router, gossip_message_id
from ecac.net.host import (
    DialError,
    GossipMessage,
    HostConfig,
    P2PError,
    P2PHost,
    P2PStream,
    PeerEvent,
    StreamClosedError,
    StreamResetError,
    peer_id_from_public_key,
    peer_id_from_seed,
    public_key_from_peer_id,
    public_key_from_seed,
    quiet_libp2p_logging,
)
from ecac.net.p2pkeys import key_pair

pytestmark = pytest.mark.anyio

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
TOPIC = "ecac/v1/proj/announce"
SYNC = "/ecac/sync/1"
CFG = HostConfig(heartbeat_interval=0.2)


@pytest.fixture
def anyio_backend() -> str:
    """py-libp2p is trio-only."""
    return "trio"


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def read_all(stream: P2PStream) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(65536):
        buf += chunk
    return bytes(buf)


# ---- identity ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_same_seed_gives_same_peer_id_across_instances() -> None:
    ids = []
    for _ in range(2):
        host = P2PHost(seed(7), config=CFG)
        async with host.run(LOCAL):
            addr = host.listen_addrs()[0]
            assert addr.startswith("/ip4/127.0.0.1/tcp/")
            assert addr.endswith(f"/p2p/{host.peer_id}")
            assert int(addr.split("/")[4]) > 0
            ids.append(host.peer_id)
    assert ids[0] == ids[1] == peer_id_from_seed(seed(7))
    assert ids[0].startswith("12D3KooW")
    assert peer_id_from_seed(seed(8)) != ids[0]
    vk = public_key_from_seed(seed(7))
    assert len(vk) == 32
    assert public_key_from_peer_id(ids[0]) == vk == P2PHost(seed(7)).public_key
    assert peer_id_from_public_key(vk) == ids[0]
    with pytest.raises(ValueError):
        P2PHost(b"short")


# ---- streams -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_one_mib_each_way_over_noise_yamux_with_eof() -> None:
    request = os.urandom(1 << 20)
    response = os.urandom(1 << 20)
    served: dict[str, object] = {}

    async def serve(stream: P2PStream) -> None:
        data = await read_all(stream)  # the requester half-closed: we reach EOF
        served["digest"] = hashlib.sha256(data).digest()
        served["again"] = await stream.read(10)  # EOF is sticky
        served["peer"] = stream.peer_id
        served["protocol"] = stream.protocol
        await stream.write(response)
        await stream.close()

    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    b.set_stream_handler(SYNC, serve)
    events: list[PeerEvent] = []
    b.add_peer_listener(events.append)
    async with a.run(LOCAL), b.run(LOCAL):
        assert await a.dial(b.listen_addrs()[0]) == b.peer_id
        assert a.connected_peers() == [b.peer_id]
        await wait_until(lambda: b.is_connected(a.peer_id))
        stream = await a.open_stream(b.peer_id, SYNC)
        assert stream.peer_id == b.peer_id
        await stream.write(request)
        await stream.close()  # half-close: b sees EOF, we can still read
        with pytest.raises(StreamClosedError):
            await stream.write(b"late")
        got = await read_all(stream)
        assert got == response
        assert await stream.read(1) == b""
        assert served == {
            "digest": hashlib.sha256(request).digest(),
            "again": b"",
            "peer": a.peer_id,
            "protocol": SYNC,
        }
        await wait_until(lambda: events[:1] == [PeerEvent("connected", a.peer_id)])
    assert len(served) == 4


@pytest.mark.timeout(60)
async def test_handler_error_resets_stream_and_keeps_connection() -> None:
    async def broken(stream: P2PStream) -> None:
        await stream.read(100)
        raise RuntimeError("handler bug")

    async def echo(stream: P2PStream) -> None:
        await stream.write(await read_all(stream))

    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    b.set_stream_handler("/broken", broken)
    b.set_stream_handler("/echo", echo)
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, "/broken")
        await stream.write(b"x")
        with pytest.raises(StreamResetError), trio.fail_after(10):
            await read_all(stream)
        echo_stream = await a.open_stream(b.peer_id, "/echo")
        await echo_stream.write(b"still connected")
        await echo_stream.close()
        assert await read_all(echo_stream) == b"still connected"


# ---- gossip ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_gossip_is_forwarded_along_a_line_only_after_validation() -> None:
    a, b, c = (P2PHost(seed(n), config=CFG) for n in (1, 2, 3))
    got: dict[str, list[GossipMessage]] = {h.peer_id: [] for h in (a, b, c)}
    seen_by_b: list[tuple[bytes, bytes]] = []

    def b_validator(data: bytes, originator_key: bytes) -> bool:
        seen_by_b.append((data, originator_key))
        return not data.startswith(b"bad")

    for host in (a, b, c):
        await host.subscribe(
            TOPIC,
            got[host.peer_id].append,
            validator=b_validator if host is b else (lambda data, key: True),
        )
    async with a.run(LOCAL), b.run(LOCAL), c.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        await c.dial(b.listen_addrs()[0])
        assert not a.is_connected(c.peer_id)
        await wait_until(
            lambda: (
                len(b.mesh_peers(TOPIC)) == 2
                and a.mesh_peers(TOPIC) == [b.peer_id]
                and c.mesh_peers(TOPIC) == [b.peer_id]
            )
        )

        assert await a.publish(TOPIC, b"good-1")
        await wait_until(lambda: len(got[c.peer_id]) == 1)
        msg = got[c.peer_id][0]
        assert msg.data == b"good-1"
        assert msg.msg_id == blake3.blake3(b"good-1").digest()
        assert msg.originator == a.peer_id
        assert msg.originator_public_key == a.public_key
        assert msg.forwarder == b.peer_id  # multi-hop: relayed by B
        assert not msg.local
        assert got[b.peer_id][0].forwarder == a.peer_id
        assert got[a.peer_id] == []  # own publications are not delivered by default
        assert (b"good-1", a.public_key) in seen_by_b

        assert await a.publish(TOPIC, b"bad-1")  # A's validator accepts it, B's rejects it
        assert not await a.publish(TOPIC, b"bad-1")  # identical bytes: deduplicated
        assert await a.publish(TOPIC, b"good-2")
        await wait_until(lambda: len(got[c.peer_id]) == 2)
        await trio.sleep(1.0)  # several heartbeats: no late copy of bad-1 via gossip either
        assert [m.data for m in got[c.peer_id]] == [b"good-1", b"good-2"]
        assert [m.data for m in got[b.peer_id]] == [b"good-1", b"good-2"]
        assert (b"bad-1", a.public_key) in seen_by_b

        assert await c.publish(TOPIC, b"from-c")  # and the other way round
        await wait_until(lambda: [m.data for m in got[a.peer_id]] == [b"from-c"])


@pytest.mark.timeout(60)
async def test_spec_vector_announce_gets_the_spec_message_id_and_originator_key(vectors: Any) -> None:
    """The node key signs announces, so the gossip originator's key must equal the announce vk."""
    wire = vectors.expected["wire"]
    data = bytes.fromhex(wire["signed_announce_cbor_hex"])
    signer = bytes.fromhex(wire["announce_signer_seed_hex"])
    a, b = P2PHost(signer, config=CFG), P2PHost(seed(2), config=CFG)
    assert a.public_key == bytes.fromhex(wire["announce_signer_vk_hex"])
    got: list[GossipMessage] = []
    keys: list[bytes] = []
    await a.subscribe(TOPIC, lambda m: None)

    def record_key(data: bytes, key: bytes) -> bool:
        keys.append(key)
        return True

    await b.subscribe(TOPIC, got.append, validator=record_key)
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        await wait_until(lambda: a.mesh_peers(TOPIC) == [b.peer_id])
        assert await a.publish(TOPIC, data)
        await wait_until(lambda: len(got) == 1)
    assert got[0].data == data and len(data) == wire["signed_announce_len"]
    assert got[0].msg_id.hex() == wire["gossip_message_id_hex"]
    assert got[0].originator_public_key == keys[0] == a.public_key


@pytest.mark.timeout(60)
async def test_gossip_burst_is_not_silently_dropped() -> None:
    """libp2p's defaults deliver 10 of 200 here (spam limit, 32-entry queues)."""
    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    got: list[bytes] = []
    await a.subscribe(TOPIC, lambda m: None)
    await b.subscribe(TOPIC, lambda m: got.append(m.data))
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        await wait_until(lambda: a.mesh_peers(TOPIC) == [b.peer_id])
        for i in range(300):
            await a.publish(TOPIC, b"burst-%d" % i)
        await wait_until(lambda: len(got) == 300, timeout=30)
        assert sorted(got) == sorted(b"burst-%d" % i for i in range(300))


# ---- dial errors and lifecycle -----------------------------------------------------------


@pytest.mark.timeout(60)
async def test_dial_closed_port_fails_fast_with_dial_error() -> None:
    a = P2PHost(seed(1), config=CFG)
    target = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{peer_id_from_seed(seed(9))}"
    async with a.run(LOCAL):
        for _ in range(2):  # the second attempt really dials again (no 60 s negative cache)
            start = time.monotonic()
            with pytest.raises(DialError):
                await a.dial(target)
            assert time.monotonic() - start < 5
        assert a.connected_peers() == []
        with pytest.raises(ValueError):
            await a.dial("/ip4/127.0.0.1/tcp/1")  # no /p2p/ part


@pytest.mark.timeout(60)
async def test_dial_with_wrong_peer_id_fails_noise_handshake() -> None:
    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    async with a.run(LOCAL), b.run(LOCAL):
        transport = b.listen_addrs()[0].rsplit("/p2p/", 1)[0]
        with pytest.raises(DialError):
            await a.dial(f"{transport}/p2p/{peer_id_from_seed(seed(9))}")
        assert await a.dial(b.listen_addrs()[0]) == b.peer_id


@pytest.mark.timeout(60)
async def test_busy_port_is_refused_and_body_errors_pass_through() -> None:
    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    async with a.run(LOCAL):
        port = a.listen_addrs()[0].split("/")[4]
        with pytest.raises(P2PError):
            async with b.run([f"/ip4/127.0.0.1/tcp/{port}"]):
                pass  # pragma: no cover
    with pytest.raises(KeyError):
        async with b.run(LOCAL):
            raise KeyError("from the body")
    async with b.run(LOCAL):  # a host can be restarted after an error
        assert b.listen_addrs()


@pytest.mark.timeout(60)
async def test_stopped_host_releases_its_port_for_a_restart() -> None:
    a = P2PHost(seed(1), config=CFG)
    async with a.run(LOCAL):
        port = int(a.listen_addrs()[0].split("/")[4])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))  # libp2p alone leaves the listener accepting
    async with a.run([f"/ip4/127.0.0.1/tcp/{port}"]):
        assert a.listen_addrs() == [f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.peer_id}"]


@pytest.mark.timeout(60)
async def test_restarted_peer_with_same_seed_reconnects_and_gossips() -> None:
    a = P2PHost(seed(1), config=CFG)
    got_a: list[bytes] = []
    await a.subscribe(TOPIC, lambda m: got_a.append(m.data))
    async with a.run(LOCAL):
        for round_ in range(3):  # no pause: A may not have processed the old disconnect yet
            await _restart_round(a, got_a, round_)


async def _restart_round(a: P2PHost, got_a: list[bytes], round_: int) -> None:
    b = P2PHost(seed(2), config=CFG)
    got_b: list[bytes] = []
    await b.subscribe(TOPIC, lambda m: got_b.append(m.data))
    async with b.run(LOCAL):  # a new port each time; A's peerstore still has the old one
        assert await a.dial(b.listen_addrs()[0]) == b.peer_id
        await wait_until(lambda: a.mesh_peers(TOPIC) == [b.peer_id] and bool(b.mesh_peers(TOPIC)))
        await a.publish(TOPIC, b"to-b-%d" % round_)
        await b.publish(TOPIC, b"to-a-%d" % round_)
        # got_b may also hold A's previous message: gossipsub replays its recent-message
        # cache (a few heartbeats) to a peer that (re)subscribes.
        await wait_until(lambda: b"to-b-%d" % round_ in got_b and b"to-a-%d" % round_ in got_a)


#: more than yamux's largest receive window (16 MiB): py-libp2p grows the window as data
#: arrives, timing-dependently, so a smaller transfer may fit without the reader reading
STALL_BYTES = 20 << 20


async def _stalled_transfer(stall: float, cfg: HostConfig) -> tuple[BaseException | None, object]:
    """A writes ``STALL_BYTES`` to a reader that waits ``stall`` seconds before reading; returns
    (writer error, reader result)."""
    a, b = P2PHost(seed(1), config=cfg), P2PHost(seed(2), config=cfg)
    outcome: dict[str, object] = {}

    async def stalling(stream: P2PStream) -> None:
        await trio.sleep(stall)
        try:
            n = len(await read_all(stream))
            outcome["reader"] = n
        except StreamResetError as exc:
            outcome["reader"] = exc

    b.set_stream_handler("/stall", stalling)
    writer_error: BaseException | None = None
    async with a.run(LOCAL), b.run(LOCAL):
        await a.dial(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, "/stall")
        try:
            await stream.write(os.urandom(STALL_BYTES))
            await stream.close()
        except StreamResetError as exc:
            writer_error = exc
        await wait_until(lambda: "reader" in outcome, timeout=stall + 10)
    return writer_error, outcome["reader"]


@pytest.mark.timeout(60)
async def test_writer_resets_a_stream_whose_reader_stalls() -> None:
    error, reader = await _stalled_transfer(4.0, HostConfig(heartbeat_interval=0.2, write_stall_timeout=1.0))
    assert isinstance(error, StreamResetError)
    assert isinstance(reader, StreamResetError)  # the reader learns it too instead of hanging


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_reader_may_pause_longer_than_yamux_five_seconds() -> None:
    error, reader = await _stalled_transfer(6.0, HostConfig(heartbeat_interval=0.2, write_stall_timeout=15.0))
    assert error is None
    assert reader == STALL_BYTES


# ---- py-libp2p contracts -----------------------------------------------------------------
#
# Each patch of py-libp2p behaviour (ecac.net.gossip, ecac.net.streams, ecac.net.host; table in
# docs/libp2p-notes.md) relies on internals of py-libp2p 0.8.1 and works around a behaviour
# of it. These tests pin both: they fail when py-libp2p renames what a patch touches (the
# patch would silently do nothing) or changes the behaviour it works around (the patch may
# be removable). On failure, re-read the patch's docstring and the notes before changing it.

LIBP2P_VERSION = "0.8.1"


def changed(what: str) -> str:
    return f"py-libp2p changed: {what}; re-check the patch (docs/libp2p-notes.md)"


def offline_pubsub(ours: bool, events: list[tuple[ID, str, bool]] | None = None) -> Pubsub:
    """A Pubsub (libp2p's own, or ours) on a host that is built but never started."""
    host = new_host(key_pair=key_pair(seed(1)))
    router = build_router(CFG)
    if ours:
        sink = events if events is not None else []
        return build_pubsub(host, router, CFG, lambda p, t, s: sink.append((p, t, s)))
    return Pubsub(host, router, strict_signing=True, msg_id_constructor=gossip_message_id)


def peer(n: int) -> ID:
    return ID.from_base58(peer_id_from_seed(seed(n)))


class FakeStream:
    """Just enough of an INetStream for Pubsub's handlers: a peer, a connection, reset()."""

    def __init__(self, peer_id: ID) -> None:
        self.muxed_conn = SimpleNamespace(peer_id=peer_id, is_closed=False)
        self.resets = 0

    async def reset(self) -> None:
        self.resets += 1


def test_contract_libp2p_version_is_the_one_the_patches_were_written_for() -> None:
    assert importlib.metadata.version("libp2p") == LIBP2P_VERSION, changed(
        "the installed version; re-run every contract below and update LIBP2P_VERSION"
    )


def test_contract_gossipsub_defaults_we_turn_off() -> None:
    params = inspect.signature(GossipSub.__init__).parameters
    for name in ("spam_protection_enabled", "adaptive_gossip_enabled", "eclipse_protection_enabled"):
        assert params[name].default is True, changed(f"GossipSub {name} default (drop our override?)")
        assert getattr(build_router(CFG), name) is False, changed(f"GossipSub.{name} attribute")
    assert params["heartbeat_interval"].annotation in (int, "int"), changed("heartbeat_interval type")


def test_contract_outbound_rpc_queue_holds_32_and_is_registered_by_item() -> None:
    queue = RpcQueue()
    assert queue._queue.max_size == 32, changed("RpcQueue default size")
    assert all(queue.push(rpc_pb2.RPC()) for _ in range(32))
    assert not queue.push(rpc_pb2.RPC()), changed("a full RpcQueue no longer rejects")
    # SizedQueues only sees queues stored with `peer_queues[peer_id] = queue`
    assert "self.peer_queues[peer_id] = queue" in inspect.getsource(Pubsub._handle_new_peer), changed(
        "how Pubsub registers a peer's RpcQueue"
    )
    assert type(offline_pubsub(ours=False).peer_queues) is dict
    queues = offline_pubsub(ours=True).peer_queues
    assert isinstance(queues, SizedQueues)
    queues[peer(2)] = RpcQueue()
    assert queues[peer(2)]._queue.max_size == CFG.rpc_queue_size


async def test_contract_subscription_channel_size_is_read_at_subscribe_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = inspect.getsource(pubsub_module)
    assert re.search(r"^SUBSCRIPTION_CHANNEL_SIZE = 32$", source, re.M), changed("subscription channel size")
    monkeypatch.setattr(pubsub_module, "SUBSCRIPTION_CHANNEL_SIZE", 3)
    theirs = offline_pubsub(ours=False)
    sub = await theirs.subscribe(TOPIC)
    assert isinstance(sub, TrioSubscriptionAPI), changed("the subscription type")
    assert sub.receive_channel.statistics().max_buffer_size == 3, changed("size no longer read at subscribe")
    for i in range(5):
        theirs.notify_subscriptions(rpc_pb2.Message(data=b"%d" % i, topicIDs=[TOPIC]))
    assert sub.receive_channel.statistics().current_buffer_used == 3, changed(
        "a full channel no longer drops"
    )
    ours = await offline_pubsub(ours=True).subscribe(TOPIC)
    assert isinstance(ours, TrioSubscriptionAPI)
    assert ours.receive_channel.statistics().max_buffer_size == CFG.subscription_buffer


async def test_contract_validation_cache_is_keyed_by_message_id() -> None:
    """A cached accept for BLAKE3(data) skips libp2p's validators, whoever the originator is."""
    msg = rpc_pb2.Message(data=b"announce", topicIDs=[TOPIC])
    accepted = ValidationResult(is_valid=True, timestamp=time.time())
    theirs = offline_pubsub(ours=False)
    assert type(theirs.validation_cache) is ValidationCache, changed("Pubsub.validation_cache")
    theirs.set_topic_validator(TOPIC, lambda fwd, m: False, False)
    theirs.validation_cache.put(gossip_message_id(msg), accepted)
    await theirs.validate_msg(peer(2), msg)  # the rejecting validator never ran
    ours = offline_pubsub(ours=True)
    ours.set_topic_validator(TOPIC, lambda fwd, m: False, False)
    ours.validation_cache.put(gossip_message_id(msg), accepted)
    with pytest.raises(ValidationError):
        await ours.validate_msg(peer(2), msg)


async def test_contract_validator_exceptions_escape_pubsub() -> None:
    """libp2p lets a sync validator's exception out (it kills the service); ours rejects."""
    msg = rpc_pb2.Message(data=b"x", topicIDs=[TOPIC], from_id=peer(3).to_bytes())
    theirs = offline_pubsub(ours=False)

    def broken(data: bytes, key: bytes) -> bool:
        raise RuntimeError("validator bug")

    theirs.set_topic_validator(TOPIC, lambda fwd, m: broken(m.data, b""), False)
    with pytest.raises(RuntimeError):
        await theirs.validate_msg(peer(2), msg)
    gossip = Gossip(peer(1))
    await gossip.subscribe(TOPIC, lambda m: None, validator=broken)  # not running: just registered
    assert gossip._make_validator(TOPIC)(peer(2), msg) is False
    await gossip.subscribe(
        "other", lambda m: None, validator=lambda d, key: key == public_key_from_seed(seed(3))
    )
    assert gossip._make_validator("other")(peer(2), msg) is True


def test_contract_seqno_counter_starts_at_whole_seconds() -> None:
    theirs = offline_pubsub(ours=False)
    assert abs(theirs.counter - time.time()) < 3600, changed("the seqno counter start")
    start = theirs.counter
    assert theirs._next_seqno() == (start + 1).to_bytes(8, "big"), changed("seqno = counter + 1")
    assert offline_pubsub(ours=True).counter > 10**18  # nanoseconds


async def test_contract_new_peer_with_a_known_stream_is_skipped() -> None:
    """libp2p keeps a dead connection's gossip stream and skips the new connection; ours replaces it."""
    for fn in (Pubsub._handle_new_peer_safe, Pubsub._handle_new_peer_with_retry):
        assert "self._handle_new_peer(peer_id)" in inspect.getsource(fn), changed(
            "who calls _handle_new_peer"
        )
    theirs = offline_pubsub(ours=False)
    stale: Any = FakeStream(peer(2))
    theirs.peers[peer(2)] = stale
    await theirs._handle_new_peer(peer(2))
    assert stale.resets == 0
    assert theirs.peers[peer(2)] is stale, changed("a known stream is no longer kept")

    ours = offline_pubsub(ours=True)
    stale = FakeStream(peer(2))
    ours.peers[peer(2)] = stale
    ours.peer_queues[peer(2)] = queue = RpcQueue()
    with pytest.raises(SwarmException):  # then it opens a new stream: no address known here
        await ours._handle_new_peer(peer(2))
    assert peer(2) not in ours.peers and peer(2) not in ours.peer_queues
    assert queue.closed and stale.resets == 1


async def test_contract_pubsub_stream_handler_lets_other_errors_escape() -> None:
    async def closing_nursery(stream: Any) -> None:
        raise RuntimeError("Nursery is closed to new arrivals")

    theirs = offline_pubsub(ours=False)
    theirs.continuously_read_stream = closing_nursery  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await theirs.stream_handler(FakeStream(peer(2)))  # type: ignore[arg-type]

    ours = offline_pubsub(ours=True)
    registered = ours.host.get_mux().handlers[PROTOCOL_ID_V11]
    assert getattr(registered, "__func__", None) is EcacPubsub.stream_handler, changed("handler registration")
    ours.continuously_read_stream = closing_nursery  # type: ignore[method-assign]
    stream = FakeStream(peer(2))
    async with background_trio_service(ours):
        await ours.stream_handler(stream)  # type: ignore[arg-type]
    assert stream.resets == 1


async def test_contract_handle_subscription_updates_peer_topics() -> None:
    assert "self.handle_subscription(peer_id, message)" in inspect.getsource(Pubsub.continuously_read_stream)
    events: list[tuple[ID, str, bool]] = []
    ours = offline_pubsub(ours=True, events=events)
    sub, unsub = (rpc_pb2.RPC.SubOpts(subscribe=s, topicid=TOPIC) for s in (True, False))
    async with background_trio_service(ours):
        for opts in (sub, sub, unsub, unsub):
            ours.handle_subscription(peer(2), opts)
            assert (peer(2) in ours.peer_topics.get(TOPIC, ())) is opts.subscribe, changed("peer_topics")
    assert events == [(peer(2), TOPIC, True), (peer(2), TOPIC, False)]


async def test_contract_negative_dial_cache() -> None:
    swarm: Any = new_host(key_pair=key_pair(seed(1))).get_network()
    cache = swarm._negative_peer_cache
    cache.mark_failed(str(peer(2)))
    with pytest.raises(SwarmException, match="negative cache"):
        await swarm.dial_peer(peer(2))
    cache.evict(str(peer(2)))
    with pytest.raises(SwarmException, match="No known addresses"):
        await swarm.dial_peer(peer(2))


def test_contract_swarm_retry_config_and_auto_connector() -> None:
    assert "retry_config" not in inspect.signature(new_host).parameters, changed(
        "new_host takes retry_config"
    )
    swarm: Any = new_host(key_pair=key_pair(seed(1))).get_network()
    assert swarm.retry_config.max_retries == 3, changed("default dial retries")
    assert "self.retry_config.max_retries" in inspect.getsource(type(swarm)), changed("retry config lookup")
    assert "await self.auto_connector.start()" in inspect.getsource(type(swarm).run), changed(
        "auto-connector"
    )


def test_contract_yamux_write_waits_five_seconds_for_the_window() -> None:
    source = inspect.getsource(YamuxStream.write)
    assert "trio.move_on_after(5.0)" in source, changed("yamux's window wait")
    assert "Timed out waiting for window update" in source, changed("yamux's window timeout error")


def test_contract_tcp_listener_sets_so_reuseport() -> None:
    assert "SO_REUSEPORT, 1" in inspect.getsource(tcp_module), changed("TCP listen socket options")


def test_contract_libp2p_pins_its_loggers_at_import() -> None:
    code = (
        "import logging, libp2p, libp2p.network.auto_connector\n"
        "print(logging.getLogger('libp2p').propagate,"
        " logging.getLogger('libp2p.network.auto_connector').level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", str(logging.INFO)], changed("libp2p's logger setup at import")
    quiet_libp2p_logging()
    if not os.environ.get("LIBP2P_DEBUG"):
        assert logging.getLogger("libp2p").propagate
        assert logging.getLogger("libp2p.network.auto_connector").level == logging.WARNING


@pytest.mark.timeout(60)
async def test_contract_running_host_internals() -> None:
    """What the patches read on a live host: swarm, services, yamux streams, queues."""

    async def reset_after_one_byte(stream: P2PStream) -> None:
        await stream.read(1)
        await stream.reset()

    a, b = P2PHost(seed(1), config=CFG), P2PHost(seed(2), config=CFG)
    await a.subscribe(TOPIC, lambda m: None)
    await b.subscribe(TOPIC, lambda m: None)
    b.set_stream_handler("/reset", reset_after_one_byte)
    async with a.run(LOCAL), b.run(LOCAL):
        host: Any = a._host
        swarm = host.get_network()
        assert swarm.auto_connector._started is False and swarm.retry_config.max_retries == 0
        assert isinstance(host._identify_tasks, set), changed("BasicHost._identify_tasks")
        services: tuple[Any, ...] = (a._gossip._pubsub, a._gossip._router)
        assert all(s._manager.is_running for s in services)
        sockets = [x.socket for lst in swarm.listeners.values() for x in lst.listeners]
        assert sockets and all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)

        await a.dial(b.listen_addrs()[0])
        assert list(swarm.connections) == [ID.from_base58(b.peer_id)], changed("Swarm.connections")
        await wait_until(lambda: a.mesh_peers(TOPIC) == [b.peer_id])
        queues = a._gossip._pubsub.peer_queues  # type: ignore[union-attr]
        assert queues[ID.from_base58(b.peer_id)]._queue.max_size == CFG.rpc_queue_size

        stream = await a.open_stream(b.peer_id, "/reset")
        raw: Any = stream._raw
        assert isinstance(raw, NetStream) and callable(raw.close_write), changed("new_stream's stream type")
        muxed = raw.muxed_stream
        assert isinstance(muxed, YamuxStream)
        assert isinstance(muxed.send_window, int) and muxed.closed is False and muxed.reset_received is False
        await stream.write(b"x")
        with pytest.raises(StreamEOF), trio.fail_after(10):
            await raw.read(10)  # libp2p reports the peer's reset as EOF ...
        assert muxed.reset_received, changed("yamux no longer flags a received RST")  # ... but remembers it
