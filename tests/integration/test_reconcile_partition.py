"""Two real nodes diverge during a partition, heal, and reconcile (/ecac/reconcile/1).

Both nodes block each other (POST /peers/block), so when the block ends each sees the other
connect again and the one with the smaller PeerId starts a session at once. The round-trip
bound and the ids found are asserted from the reconcile counters in /status, not from time.
"""

from __future__ import annotations

import pytest

from ecac.net.procs import wait_converged, wait_for

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROUND_TRIPS_MAX = 4  # issue 13: ≤ 4 round trips for a small difference


def test_a_partition_heals_by_reconciliation_within_the_round_trip_bound(nodes: Nodes) -> None:
    # a long anti-entropy period: the pull of today's path must not get there first
    a = nodes.start("a", anti_entropy_ms=3000)
    b = nodes.start("b", peers=[a.addr], anti_entropy_ms=3000)
    assert a.inject(40, seed=1)["stored"] == 40
    wait_converged([a, b], timeout=15, min_ops=40)
    before = [n.status()["counters"] for n in (a, b)]

    a.block_peer(b.peer_id, 4)
    b.block_peer(a.peer_id, 4)
    assert a.inject(20, seed=2)["stored"] == 20
    assert b.inject(7, seed=3)["stored"] == 7
    assert (a.status()["op_count"], b.status()["op_count"]) == (60, 47)  # nothing crossed

    statuses = wait_converged([a, b], timeout=30, min_ops=67)  # the blocks expire, they reconcile
    assert statuses[0]["state_digest"] == statuses[1]["state_digest"]

    def reconciled() -> list[dict[str, int]]:
        cs = [n.status()["counters"] for n in (a, b)]
        return (
            cs
            if all(
                c["reconcile_sessions"] > o["reconcile_sessions"] for c, o in zip(cs, before, strict=False)
            )
            else []
        )

    after = wait_for(reconciled, timeout=15, what="a reconciliation session on both nodes")
    found = sum(
        c["reconcile_ids_found"] - o["reconcile_ids_found"] for c, o in zip(after, before, strict=False)
    )
    assert found >= 27  # the session at the heal found the whole difference (20 + 7), seen from each side
    for c in after:
        assert c["reconcile_round_trips_max"] <= ROUND_TRIPS_MAX
        assert c["reconcile_rounds"] <= ROUND_TRIPS_MAX * c["reconcile_sessions"]
        assert c["reconcile_bytes_sent"] > 0 and c["reconcile_bytes_received"] > 0
