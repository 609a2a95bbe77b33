"""Three nodes, a partition with writes on both sides (a Revoke on one), then a heal by dialling."""

from __future__ import annotations

import pytest

from ecac.core.hlc import Hlc
from ecac.core.opcodec import encode_ops
from ecac.core.replay import replay_full
from ecac.net.procs import wait_converged, wait_for
from ecac.store.memory import MemoryOpStore
from ecac.testing.demo_ops import demo_ops_for
from ecac.testing.scenarios import add, grant_pair, issuer_key_op, revoke_op

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_three_way_partition(nodes: Nodes) -> None:
    ik = issuer_key_op(ms=999)
    cred, grant = grant_pair(nbf_ms=1000, exp_ms=100_000)
    first = add(grant, Hlc(1010, 0, 1), "A")
    base = [ik, cred, grant, first]
    # side {A, B}: the user writes W1 at 1040; side {C}: the admin revokes the user at 1030
    w1 = add(first, Hlc(1040, 0, 1), "W1")
    revoke = revoke_op(first, Hlc(1030, 0, 1))

    a = nodes.start("a")
    b = nodes.start("b", peers=[a.addr])
    c = nodes.start("c")  # partitioned: no link to A or B
    assert a.append_ops(encode_ops(base))["stored"] == 4
    assert c.append_ops(encode_ops(base))["stored"] == 4
    wait_converged([a, b], timeout=20, min_ops=4)

    assert a.append_ops(encode_ops([w1]))["stored"] == 1
    wait_converged([a, b], timeout=20, min_ops=5)
    assert b.inject(50, seed=7)["stored"] == 50
    assert c.append_ops(encode_ops([revoke]))["stored"] == 1
    assert c.inject(50, seed=8)["stored"] == 50

    # the demo ops each side wrote, recomputed offline from that side's store contents
    demo_b = demo_ops_for(MemoryOpStore([*base, w1]), 50, 7)
    demo_c = demo_ops_for(MemoryOpStore([*base, revoke]), 50, 8)
    side_ab = replay_full([*base, w1, *demo_b])
    side_c = replay_full([*base, revoke, *demo_c])
    merged = replay_full([*base, w1, revoke, *demo_b, *demo_c])
    assert side_ab[1] != side_c[1] != merged[1]

    sa, _ = wait_converged([a, b], timeout=20, min_ops=55)
    assert sa["state_digest"] == side_ab[1].hex()
    sc = wait_for(lambda: (s := c.status())["digest_ops"] == 55 and s, 20)
    assert sc["state_digest"] == side_c[1].hex()
    assert sc["peers"] == [] and sa["peers"] == [b.peer_id]

    # before the heal W1 is visible on A and B; the Revoke orders before it, so after the heal it is denied
    assert "W1" in side_ab[0].to_json()
    assert "W1" not in merged[0].to_json()

    healed = c.add_peer(a.addr)
    assert healed == {"ok": True, "peer_id": a.peer_id}
    statuses = wait_converged([a, b, c], timeout=30, min_ops=106)
    assert {s["state_digest"] for s in statuses} == {merged[1].hex()}
    assert {s["op_count"] for s in statuses} == {106}
    assert all(s["counters"]["peers_penalised"] == 0 for s in statuses)
    # B never linked to C directly: it got C's ops through A
    assert c.peer_id not in statuses[1]["peers"]
