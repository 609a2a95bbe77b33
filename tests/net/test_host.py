"""Real py-libp2p hosts on 127.0.0.1 (ephemeral ports): identity, streams, gossip, dial errors."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import blake3
import pytest
import trio

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
)

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
    await b.subscribe(TOPIC, got.append, validator=lambda d, key: keys.append(key) is None)
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
