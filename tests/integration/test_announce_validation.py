"""Announce validation on real nodes (store §2.3.3): bad announces from a hand-driven peer H are
rejected by A and never forwarded to C (line H—A—C); a valid one is forwarded (multi-hop)."""

from __future__ import annotations

import functools

import pytest
import trio
from nacl.signing import SigningKey

from ecac.net.procs import wait_for
from ecac.sync.wire import Announce, SignedAnnounce, announce_topic, node_id_of

from .conftest import PROJECT, Nodes
from .handpeer import HandPeer, announce

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(90)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def blocking(fn, *args, **kw):  # type: ignore[no-untyped-def]
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


def bad_announces(sk: SigningKey, heads: list[bytes]) -> dict[str, bytes]:
    vk = bytes(sk.verify_key)
    good = Announce(node_id_of(vk), 5, tuple(heads), b"\x00\x01")
    other = SigningKey(bytes([42]) * 32)
    signed = SignedAnnounce.sign(sk, good)
    many = [bytes([i % 256, i // 256]) * 16 for i in range(2100)]
    return {
        "unsigned": SignedAnnounce(good, b"", vk).encode(),
        "wrong signature": SignedAnnounce(good, bytes(64), vk).encode(),
        "wrong node_id": SignedAnnounce.sign(sk, Announce(bytes(32), 5, tuple(heads), b"\x00\x01")).encode(),
        "65 heads": SignedAnnounce.sign(
            sk, Announce(node_id_of(vk), 5, tuple(many[:65]), b"\x00\x01")
        ).encode(),
        "oversized": SignedAnnounce.sign(sk, Announce(node_id_of(vk), 5, tuple(many), b"\x00\x01")).encode(),
        "malformed": b"\xa3not an announce",
        "trailing byte": signed.encode() + b"\x00",
        "not the originator's key": SignedAnnounce.sign(
            other, Announce(node_id_of(bytes(other.verify_key)), 5, tuple(heads), b"\x00\x01")
        ).encode(),
    }


async def test_bad_announces_rejected_and_not_forwarded(nodes: Nodes) -> None:
    a = await blocking(nodes.start, "a")
    c = await blocking(nodes.start, "c", peers=[a.addr])
    await blocking(a.inject, 5, 1)
    h = HandPeer(bytes([3]) * 32, announce_topic(PROJECT))
    async with h.run():
        await h.host.dial(a.addr)
        await h.wait_mesh(a.peer_id)
        await blocking(wait_for, lambda: c.status()["complete_count"] == 5, 20)
        a0, c0 = await blocking(a.status), await blocking(c.status)
        heads = [bytes.fromhex(x) for x in a0["heads"]]
        bad = bad_announces(h.sk, heads)
        assert len(bad["oversized"]) > 65_536
        for data in bad.values():
            await h.host.publish(h.topic, data)
        # a valid announce from H, after the bad ones: A accepts and forwards it to C
        await h.host.publish(h.topic, announce(h.sk, heads, 99))

        def forwarded() -> tuple[dict, dict] | None:
            sa, sc = a.status(), c.status()
            done = sc["counters"]["announces_received"] > c0["counters"]["announces_received"]
            return (sa, sc) if done and sa["counters"]["announces_rejected"] >= len(bad) else None

        sa, sc = await blocking(wait_for, forwarded, 20)
        await trio.sleep(0.5)  # anything still in flight would arrive now
        sa, sc = await blocking(a.status), await blocking(c.status)
    assert sa["counters"]["announces_rejected"] - a0["counters"]["announces_rejected"] == len(bad)
    assert sc["counters"]["announces_rejected"] == 0  # nothing bad was forwarded
    assert sc["counters"]["announces_received"] - c0["counters"]["announces_received"] >= 1
    assert h.host.peer_id not in sc["peers"]  # C got H's announce through A only
    assert sa["counters"]["peers_penalised"] == 0
    assert a.log_text().count("rejected an announce") >= len(bad)


async def test_line_multi_hop(nodes: Nodes) -> None:
    """A—B—C, gossip only (anti-entropy 60 s): an op written on A reaches C through B."""
    a = await blocking(nodes.start, "a", anti_entropy_ms=60_000)
    b = await blocking(nodes.start, "b", peers=[a.addr], anti_entropy_ms=60_000)
    c = await blocking(nodes.start, "c", peers=[b.addr], anti_entropy_ms=60_000)
    await blocking(wait_for, lambda: len(b.status()["gossip_peers"]) == 2, 20)
    await trio.sleep(0.5)  # let the gossip mesh form (heartbeat 200 ms)
    r = await blocking(a.inject, 20, 5)

    def arrived() -> dict | None:
        s = c.status()
        return s if s["complete_count"] == 20 and s["digest_ops"] == 20 else None

    sc = await blocking(wait_for, arrived, 20)
    sa = await blocking(a.status)
    assert sc["state_digest"] == sa["state_digest"]
    assert sc["heads"] == [r["op_ids"][1]]
    assert sc["peers"] == [b.peer_id]
    assert sc["counters"]["ops_fetched"] == 20
