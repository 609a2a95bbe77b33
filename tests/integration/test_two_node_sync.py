"""Two real nodes: B starts empty and converges to A's ops (counts, heads, digests)."""

from __future__ import annotations

import pytest

from ecac.core.opcodec import encode_ops
from ecac.core.replay import replay_full
from ecac.net.procs import wait_converged
from ecac.sync.wire import op_frame_size
from ecac.testing.demo_ops import demo_ops

from .conftest import Nodes, spec_dag

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_two_node_sync(nodes: Nodes) -> None:
    ops = spec_dag()
    a = nodes.start("a")
    r = a.append_ops(encode_ops(ops))
    assert r["ok"] and r["stored"] == 60 and r["rejected"] == []
    inj = a.inject(300, seed=11)
    assert inj["ok"] and inj["stored"] == 300 and inj["op_count"] == 360

    b = nodes.start("b", peers=[a.addr])
    sa, sb = wait_converged([a, b], timeout=30, min_ops=360)
    assert sa["op_count"] == sb["op_count"] == 360
    assert sa["heads"] == sb["heads"]
    assert sa["state_digest"] == sb["state_digest"]
    assert sb["peers"] == [a.peer_id] and sa["peers"] == [b.peer_id]
    assert sb["counters"]["ops_fetched"] == 360
    assert b.client().get("/api/node/peers") == {
        "peers": [{"peer_id": a.peer_id, "connected": True}],
        "networking_enabled": True,
    }
    assert sb["bootstrap"] == [a.addr]
    # lean: every op crossed once (no duplicates), and the byte counters saw it
    ca, cb = sa["counters"], sb["counters"]
    assert cb["ops_duplicates_dropped"] == 0 and ca["ops_duplicates_dropped"] == 0
    frames = sum(op_frame_size(op.cbor) for op in ops + demo_ops([ops[-1].op_id], 10_059, 300, 11))
    assert frames <= cb["sync_bytes_received"] < 1.2 * frames
    assert frames <= ca["sync_bytes_sent"] < 1.2 * frames
    assert cb["sync_bytes_sent"] > 0 and ca["sync_bytes_received"] > 0  # requests
    assert ca["gossip_messages_out"] >= 1 and ca["gossip_bytes_out"] > 0
    assert cb["gossip_messages_in"] >= 1 and cb["gossip_bytes_in"] > 0
    # the digest both report is the full replay digest of exactly these ops, computed offline
    demo = demo_ops([ops[-1].op_id], 10_059, 300, 11)
    assert [demo[0].op_id.hex(), demo[-1].op_id.hex()] == inj["op_ids"]
    assert sa["heads"] == [demo[-1].op_id.hex()]
    assert sa["state_digest"] == replay_full(ops + demo)[1].hex()
    assert a.stop() == 0 and b.stop() == 0
