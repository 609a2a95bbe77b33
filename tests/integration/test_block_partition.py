"""A partition on demand (POST /peers/block): no ops cross while blocked; sync resumes when it ends."""

from __future__ import annotations

import time

import pytest

from ecac.core.errors import EcacError
from ecac.net.procs import wait_converged

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_block_then_heal(nodes: Nodes) -> None:
    a = nodes.start("a")
    b = nodes.start("b", peers=[a.addr])
    assert a.inject(10, seed=1)["stored"] == 10
    wait_converged([a, b], timeout=15, min_ops=10)
    failed_before = b.status()["counters"]["requests_failed"]

    assert a.block_peer(b.peer_id, 4) == {"ok": True, "peer_id": b.peer_id, "seconds": 4}
    t0 = time.monotonic()
    assert a.status()["blocked"] == [b.peer_id]
    assert a.inject(20, seed=2)["stored"] == 20
    assert b.inject(5, seed=3)["stored"] == 5
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    sa, sb = a.status(), b.status()
    assert (sa["op_count"], sb["op_count"]) == (30, 15)  # nothing crossed the partition
    assert sb["counters"]["requests_failed"] > failed_before  # B's pulls were refused
    assert sa["blocked"] == [b.peer_id]

    statuses = wait_converged([a, b], timeout=30, min_ops=35)  # the block expires, sync resumes
    assert time.monotonic() - t0 >= 4
    assert statuses[0]["blocked"] == []

    with pytest.raises(EcacError, match='"seconds" must be a number'):
        a.block_peer(b.peer_id, -1)
    a.block_peer(b.peer_id, 30)
    assert a.inject(3, seed=4)["stored"] == 3
    time.sleep(1.0)
    assert b.status()["op_count"] == 35
    a.block_peer(b.peer_id, 0)  # lifted early
    wait_converged([a, b], timeout=30, min_ops=38)
