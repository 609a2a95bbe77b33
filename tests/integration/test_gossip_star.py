"""Announces reach every subscriber of a star with more than D_high leaves (issue 13 item 6).

A real ``ecac node`` process is the hub; 13 libp2p peers with our gossip stack (``HandPeer``:
``P2PHost``, subscribed to the project topic, hosted in the test process so that 14 peers start
within seconds on a small machine) dial it, as in the issue's report. With py-libp2p 0.8.1's own
router the hub prunes its mesh to D = 6, keeps the other leaves in backoff and sends them
neither its announces nor IHAVE gossip: only the anti-entropy round (here 60 s) would reach them.
With ``ecac.net.gossippatch`` in the hub:

1. the hub's announce (after a local write) reaches every leaf within one heartbeat plus slack
   (flood publish of its own messages);
2. a leaf's announce, relayed by the hub, reaches every other leaf within one heartbeat plus
   slack: the hub's mesh at once, the rest through IHAVE → IWANT at the hub's next heartbeat;
3. the IHAVE ids the hub sends are BLAKE3(data), the configured message id (not from‖seqno).

Evidence: the announces each leaf received (decoded and matched by originator), the hub's
``announces_received`` counter, and the IHAVE ids the leaves' routers were handed.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import blake3
import pytest
import trio

from ecac.net.host import HostConfig, public_key_from_peer_id
from ecac.net.procs import NodeProc
from ecac.sync.wire import SignedAnnounce, announce_topic

from .conftest import PROJECT, Nodes
from .handpeer import HandPeer, announce

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]

LEAVES = 13  # > D_high = 12: the hub has to prune its mesh down to D = 6
HEARTBEAT_S = 0.2  # the test nodes' --heartbeat-ms (conftest) and the leaves' HandPeer config
DEBOUNCE_S = 0.25  # announce debounce (docs/protocol.md §3.2)
SLACK_S = 1.5  # scheduling on a loaded 2-core machine
SLOW_AE = 60_000  # anti-entropy far beyond the test: only gossip can deliver in time


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def blocking(fn: Any, *args: Any, **kw: Any) -> Any:
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


def originators(leaf: HandPeer) -> dict[bytes, int]:
    """Announces ``leaf`` received: signer key → highest watermark."""
    out: dict[bytes, int] = {}
    for data in leaf.received:
        sa = SignedAnnounce.decode(data)
        out[sa.vk] = max(out.get(sa.vk, -1), sa.announce.topo_watermark)
    return out


async def wait_all(leaves: list[HandPeer], vk: bytes, watermark: int, within: float) -> float:
    """Seconds until every leaf received an announce signed by ``vk`` with ``watermark``."""
    t0 = time.monotonic()
    with trio.move_on_after(within):
        while not all(originators(x).get(vk, -1) >= watermark for x in leaves):
            await trio.sleep(0.01)
    missing = [i for i, x in enumerate(leaves) if originators(x).get(vk, -1) < watermark]
    assert not missing, f"leaves {missing} of {len(leaves)} lack the announce {within:g} s after it"
    return time.monotonic() - t0


def record_ihave(leaf: HandPeer, sink: list[bytes]) -> None:
    """Record the IHAVE message ids ``leaf``'s router is handed (then let it handle them)."""
    router: Any = leaf.host._gossip._router
    original = router.handle_ihave

    async def handle_ihave(msg: Any, sender: Any) -> None:
        sink.extend(bytes(m) for m in msg.messageIDs)
        await original(msg, sender)

    router.handle_ihave = handle_ihave


async def test_every_leaf_of_a_star_gets_announces_within_a_heartbeat(nodes: Nodes) -> None:
    assert LEAVES > HostConfig().gossip_degree_high > HostConfig().gossip_degree
    hub: NodeProc = await blocking(nodes.start, "hub", anti_entropy_ms=SLOW_AE)
    hub_vk = public_key_from_peer_id(hub.peer_id)  # the key that signs its announces
    topic = announce_topic(PROJECT)
    leaves = [HandPeer(bytes([10 + i]) * 32, topic) for i in range(LEAVES)]
    ihave: list[bytes] = []
    async with trio.open_nursery() as nursery:
        ready = trio.Semaphore(0)
        done = trio.Event()

        async def run_leaf(leaf: HandPeer) -> None:
            async with leaf.run():
                record_ihave(leaf, ihave)
                await leaf.host.dial(hub.addr)
                ready.release()
                await done.wait()

        for leaf in leaves:
            nursery.start_soon(run_leaf, leaf)
        for _ in leaves:
            await ready.acquire()
        ids = {x.host.peer_id for x in leaves}
        with trio.fail_after(20):
            while set((await blocking(hub.status))["gossip_peers"]) != ids:
                await trio.sleep(0.05)
        # the hub's first heartbeats prune its mesh (13 > D_high) and backoffs settle
        await trio.sleep(10 * HEARTBEAT_S)
        before = (await blocking(hub.status))["counters"]

        # 1. the hub writes one op: its announce (watermark 1) reaches every leaf
        assert (await blocking(hub.inject, 1, 1))["stored"] == 1
        took1 = await wait_all(leaves, hub_vk, 1, HEARTBEAT_S + DEBOUNCE_S + SLACK_S)

        # 2. leaf 0 announces: the hub accepts and relays it; every other leaf gets it
        ihave.clear()
        leaf0 = leaves[0]
        data = announce(leaf0.sk, [], 0)
        await leaf0.host.publish(topic, data)
        took2 = await wait_all(leaves[1:], bytes(leaf0.sk.verify_key), 0, HEARTBEAT_S + SLACK_S)
        after = (await blocking(hub.status))["counters"]
        assert after["announces_received"] > before["announces_received"]

        # 3. the hub's IHAVE gossip (at least every leaf outside its mesh got one) names messages
        #    by BLAKE3(data): leaf 0's announce is among them, under that id
        with trio.fail_after(5):
            while blake3.blake3(data).digest() not in ihave:
                await trio.sleep(0.02)
        assert all(len(mid) == 32 for mid in ihave)
        done.set()
    print(
        f"star of {LEAVES}: the hub's announce at every leaf in {took1 * 1000:.0f} ms, "
        f"a leaf's in {took2 * 1000:.0f} ms"
    )
