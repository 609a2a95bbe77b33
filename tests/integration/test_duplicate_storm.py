"""A storm of duplicate announces, full re-fetches and re-uploads: no duplicate ingest, bounded
memory, no penalty, no crash."""

from __future__ import annotations

import functools

import pytest
import trio

from ecac.core.opcodec import encode_ops
from ecac.net.procs import wait_converged, wait_for
from ecac.sync.coordinator import SyncConfig
from ecac.sync.wire import (
    SYNC_PROTOCOL_ID,
    FrameReader,
    OpBytes,
    SyncRequest,
    announce_topic,
    decode_rpc_frame,
)

from .conftest import PROJECT, Nodes, spec_dag
from .handpeer import HandPeer, announce

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

TOTAL = 1060
RSS_LIMIT = 250 * 1024 * 1024  # measured ~125 MiB (libp2p alone is ~90 MiB)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def blocking(fn, *args, **kw):  # type: ignore[no-untyped-def]
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


async def fetch_all(peer: HandPeer, target: str, want: list[bytes]) -> tuple[int, str]:
    """One full /ecac/sync/1 request; returns the number of ops and the trailer."""
    stream = await peer.host.open_stream(target, SYNC_PROTOCOL_ID)
    await stream.write(SyncRequest(tuple(want), (), 0).frame())
    await stream.close()
    reader = FrameReader()
    frames = []
    while chunk := await stream.read(65536):
        frames += [decode_rpc_frame(b) for b in reader.feed(chunk)]
    assert frames and frames[-1].NAME in ("End", "More")
    return sum(1 for f in frames if isinstance(f, OpBytes)), frames[-1].NAME


async def test_duplicate_storm(nodes: Nodes) -> None:
    ops = spec_dag()
    log_bytes = encode_ops(ops)
    a = await blocking(nodes.start, "a")
    assert (await blocking(a.append_ops, log_bytes))["stored"] == 60
    assert (await blocking(a.inject, 1000, 3))["stored"] == 1000
    b = await blocking(nodes.start, "b", peers=[a.addr])
    await blocking(wait_converged, [a, b], 30, TOTAL)

    storm = HandPeer(bytes([7]) * 32, announce_topic(PROJECT))
    async with storm.run():
        await storm.host.dial(a.addr)
        await storm.wait_mesh(a.peer_id)
        s0 = await blocking(a.status)
        heads = [bytes.fromhex(h) for h in s0["heads"]]
        # 300 valid, distinct announces of heads A already holds, plus one announce published 50 times
        for i in range(300):
            assert await storm.host.publish(storm.topic, announce(storm.sk, heads, TOTAL + i))
        same = announce(storm.sk, heads, 1)
        published = [await storm.host.publish(storm.topic, same) for _ in range(50)]
        assert published.count(True) == 1  # the gossip layer deduplicates identical bytes

        # 60 full re-fetches of everything, as many at a time as A serves one peer: while B also
        # takes from A, the storm is held to its serve quota, so some answers end with More (a
        # parent-first prefix) instead of End
        counts: list[tuple[int, str]] = []
        parallel = SyncConfig().max_serves_per_peer

        async def fetcher() -> None:
            for _ in range(60 // parallel):
                counts.append(await fetch_all(storm, a.peer_id, heads))

        async with trio.open_nursery() as nursery:
            for _ in range(parallel):
                nursery.start_soon(fetcher)
        assert len(counts) == 60
        assert all(n == TOTAL for n, trailer in counts if trailer == "End")
        assert all(n < TOTAL for n, trailer in counts if trailer == "More")
        cut = sum(1 for _, trailer in counts if trailer == "More")
        s1 = await blocking(a.status)
        assert s1["counters"]["quota_serve_cuts"] - s0["counters"]["quota_serve_cuts"] >= cut
        print(f"{cut} of 60 storm re-fetches cut by the serve quota")

        # the same log uploaded to B 20 times: all duplicates
        for _ in range(20):
            r = await blocking(b.append_ops, log_bytes)
            assert (r["stored"], r["duplicates"], r["rejected"]) == (0, 60, [])

        def announces_in() -> dict | None:
            s = a.status()
            return (
                s
                if s["counters"]["announces_received"] >= s0["counters"]["announces_received"] + 301
                else None
            )

        sa = await blocking(wait_for, announces_in, 20)
        assert sa["counters"]["announces_rejected"] == 0
        assert sa["counters"]["requests_served"] >= s0["counters"]["requests_served"] + 60
        assert sa["counters"]["serves_refused"] == 0
        rss = await blocking(a.rss_bytes)
        print(f"node A RSS after the storm: {rss / 2**20:.0f} MiB")
        assert rss < RSS_LIMIT, f"node A uses {rss / 2**20:.0f} MiB"

    sa, sb = await blocking(wait_converged, [a, b], 20, TOTAL)
    assert sa["op_count"] == sb["op_count"] == TOTAL
    assert sa["counters"]["ops_fetched"] == 0  # the storm's announces named nothing new
    assert sb["counters"]["ops_fetched"] == TOTAL  # every op ingested exactly once
    for s in (sa, sb):
        assert s["counters"]["peers_penalised"] == 0
        assert s["counters"]["commit_rejections"] == 0
    assert a.alive and b.alive
    assert await blocking(a.stop) == 0 and await blocking(b.stop) == 0
