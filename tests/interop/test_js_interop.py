"""Interop with js-libp2p 2.x (issue 13 item 6): a real ``ecac node`` against ``interop/js/peer.mjs``.

The JS peer is an independent implementation of the wire protocol of docs/protocol.md on
js-libp2p's stack (TCP, Noise, yamux, identify, ping, @chainsafe/libp2p-gossipsub with BLAKE3
message ids and strict signing): it signs and verifies announces (§3.2, rules 1–8), serves
``/ecac/sync/1`` from an op log ecac wrote, and fetches from the ecac node checking every op
(canonical bytes, op id = BLAKE3("ECAC_OP_V1" ‖ header), signature, parent-first, trailer).

Evidence comes from both sides: the JS peer's events and the node's ``/status``. Everything on
127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecac.core.opcodec import encode_ops
from ecac.net.host import HostConfig
from ecac.net.procs import NodeProc, wait_for
from integration.conftest import PROJECT, Nodes, spec_dag

from .conftest import JsPeer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JS_OPS = 20  # the JS peer's own ops (spec_dag: a DAG with merges, so parent-first order matters)
ECAC_OPS = 7
HEARTBEAT_S = 0.2  # the test node's --heartbeat-ms (integration conftest) and the JS peers'
DEBOUNCE_S = 0.25  # announce debounce (docs/protocol.md §3.2)
SLACK_S = 1.5  # scheduling on a loaded 2-core machine
SLOW_AE = 60_000  # anti-entropy beyond the test: only the path under test can deliver in time


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def js_log(tmp_path: Path) -> Path:
    """An op log written by ecac (``encode_ops``) for the JS peer to hold and serve."""
    path = tmp_path / "js-ops.cbor"
    path.write_bytes(encode_ops(spec_dag(JS_OPS, seed=11)))
    return path


def js_args(*extra: str) -> list[str]:
    return ["--project", PROJECT, "--heartbeat-ms", str(int(HEARTBEAT_S * 1000)), *extra]


def is_(kind: str, **match: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in match.items())


def announce_from(peer: str, watermark: int) -> Callable[[dict[str, Any]], bool]:
    """An announce event from ``peer``'s node (its gossip originator) for ``watermark`` complete ops."""
    return lambda e: (
        e.get("event") == "announce" and e.get("from") == peer and e["topo_watermark"] == watermark
    )


def holds(node: NodeProc, n: int) -> Callable[[], dict[str, Any] | None]:
    """``node``'s status once it holds ``n`` complete ops and its state digest covers them."""
    return lambda: s if (s := node.status())["complete_count"] == n and s["digest_ops"] == n else None


def ecac_ids(node: NodeProc) -> set[str]:
    return {o["op_id"] for o in node.client().get("/api/ops?limit=1000")["ops"]}


def test_js_peer_matches_the_spec_vectors(js_peers: Callable[..., JsPeer], vectors: Any) -> None:
    """The JS codec agrees with ecac's byte for byte: op ids of a fixture log, the signed announce vector."""
    p = js_peers("ids", "--op-ids", str(vectors.path("fixtures/ops.cbor")))
    got = [e["op_id"] for e in p.wait(lambda e: "op_id" in e, 10, "op ids", count=5)]
    assert got == [o["op_id_hex"] for o in vectors.op_logs["fixtures/ops.cbor"]["ops_in_file_order"]]
    v = js_peers("vector", "--announce-vector").wait(lambda e: "signed_announce_hex" in e, 10, "vector")[0]
    assert v["signed_announce_hex"] == vectors.expected["wire"]["signed_announce_cbor_hex"]
    assert v["msg_id"] == vectors.expected["wire"]["gossip_message_id_hex"]


def test_js_dials_ecac_gossip_and_sync_both_ways(
    nodes: Nodes, js_peers: Callable[..., JsPeer], js_log: Path
) -> None:
    """JS dials ecac; identify, ping, verified announces both ways; ``/ecac/sync/1`` both ways."""
    a = nodes.start("a", anti_entropy_ms=SLOW_AE)
    a.inject(ECAC_OPS, seed=3)
    own, status = ecac_ids(a), a.status()
    js = js_peers("js", *js_args("--dial", a.addr, "--ops", str(js_log)))
    me = js.ready()[0]
    assert me["ops"] == JS_OPS

    # (a) connection: Noise + yamux up, gossipsub subscriptions exchanged (needs identify), ping
    js.wait(is_("connected", peer=a.peer_id), 10, "connected to ecac")
    ident = js.wait(is_("identified", peer=a.peer_id), 10, "identify of the ecac node")[0]
    assert {"/ecac/sync/1", "/ecac/reconcile/1", "/meshsub/1.1.0", "/ipfs/ping/1.0.0"} <= set(
        ident["protocols"]
    )
    js.wait(is_("subscribed", peer=a.peer_id), 10, "ecac subscribed to the topic")
    wait_for(lambda: me["peer_id"] in a.status()["gossip_peers"], 10, what="ecac sees the JS subscriber")
    js.send(cmd="ping", peer=a.peer_id)
    assert js.wait(is_("ping", peer=a.peer_id), 10, "ping")[0]["rtt_ms"] >= 0

    # (b) ecac → JS: ecac's announce (forced when the JS peer subscribed), verified by the JS validator
    ann = js.wait(announce_from(a.peer_id, ECAC_OPS), 10, "ecac announce")
    assert ann[0]["valid"] is True, ann
    assert ann[0]["head_ids"] == status["heads"][:16]
    assert not js.find(is_("announce", valid=False))

    # (c) JS ← ecac: an anti-entropy request (want = [], boundary = the JS heads); every op checked
    js.send(cmd="fetch", peer=a.peer_id)
    fetched = js.wait(is_("fetched", peer=a.peer_id), 15, "fetch from ecac")[0]
    assert fetched["trailer"] == "End" and fetched["parent_first"] and fetched["ids_verified"]
    # exactly ecac's own ops, whatever it already pulled from us: our boundary excluded our ops
    assert set(fetched["ids"]) == own and fetched["ops"] == ECAC_OPS
    assert fetched["store_ops"] == JS_OPS + ECAC_OPS

    # (b) JS → ecac: the JS announce (its heads now include ecac's) passes ecac's topic validator ...
    before = a.status()["counters"]
    js.send(cmd="publish")
    pub = js.wait(is_("published"), 10, "publish")[0]
    assert a.peer_id in pub["recipients"]
    wait_for(
        lambda: a.status()["counters"]["announces_received"] > before["announces_received"],
        10,
        what="ecac accepts the JS announce",
    )
    # (c) ecac ← JS: ecac fetches the JS peer's ops over /ecac/sync/1 (after that announce, or in the
    # anti-entropy round it runs 500 ms after a peer subscribes, whichever comes first)
    served = js.wait(lambda e: is_("served", peer=a.peer_id)(e) and e["ops"] > 0, 15, "ecac fetched")[0]
    assert len(served["ids"]) == JS_OPS  # exactly what ecac lacked: its boundary excluded its own ops
    final = wait_for(holds(a, JS_OPS + ECAC_OPS), 15, what="ecac holds both sides' ops")
    c = final["counters"]
    assert c["announces_rejected"] == 0 and c["peers_penalised"] == 0 and c["commit_rejections"] == 0
    assert c["ops_fetched"] >= JS_OPS and final["state_digest"] != status["state_digest"]


def test_ecac_dials_js_and_pulls_its_ops(nodes: Nodes, js_peers: Callable[..., JsPeer], js_log: Path) -> None:
    """ecac dials the JS peer (``POST /peers`` through the token-protected gateway) and syncs from it."""
    a = nodes.start("a", anti_entropy_ms=1000)
    js = js_peers("js", *js_args("--ops", str(js_log)))
    me = js.ready()[0]
    addr = next(x for x in me["addrs"] if x.startswith("/ip4/127.0.0.1/tcp/"))
    a.add_peer(addr)
    js.wait(is_("connected", peer=a.peer_id), 10, "ecac connected")
    wait_for(lambda: me["peer_id"] in a.status()["peers"], 10, what="ecac lists the JS peer")
    js.wait(is_("subscribed", peer=a.peer_id), 10, "ecac subscribed")
    js.send(cmd="publish")
    js.wait(lambda e: is_("served", peer=a.peer_id)(e) and e["ops"] > 0, 15, "ecac fetched from JS")
    s = wait_for(holds(a, JS_OPS), 15, what="ecac holds the JS ops")
    assert s["counters"]["peers_penalised"] == 0
    ann = js.wait(announce_from(a.peer_id, JS_OPS), 10, "ecac's announce after the sync")
    assert ann[0]["valid"] and set(ann[0]["head_ids"]) == set(s["heads"])


def test_star_of_more_than_d_js_subscribers_all_get_the_announce(
    nodes: Nodes, js_peers: Callable[..., JsPeer]
) -> None:
    """More than D_high JS subscribers around one ecac node all get its announce within one heartbeat.

    Needs ``ecac.net.gossippatch`` (flood publish of own messages, IHAVE to every non-mesh
    subscriber with BLAKE3 ids): py-libp2p 0.8.1's own router reached only its 3–6 mesh peers.
    """
    leaves = HostConfig().gossip_degree_high + 1
    a = nodes.start("hub", anti_entropy_ms=SLOW_AE)
    js = js_peers("star", *js_args("--nodes", str(leaves), "--dial", a.addr))
    ids = {e["node"]: e["peer_id"] for e in js.ready(timeout=25)}
    wait_for(lambda: set(ids.values()) <= set(a.status()["gossip_peers"]), 15, what="all leaves subscribed")
    time.sleep(3 * HEARTBEAT_S)  # let the hub's mesh settle to D (it prunes the rest)
    t0 = time.monotonic()
    a.inject(1, seed=5)
    got = js.wait(announce_from(a.peer_id, 1), 10, "the hub's announce at every leaf", count=leaves)
    assert all(e["valid"] for e in got) and {e["node"] for e in got} == set(ids)
    late = max(t for t, _ in js.find(announce_from(a.peer_id, 1))) - t0
    assert late <= DEBOUNCE_S + HEARTBEAT_S + SLACK_S, f"last leaf after {late:.2f} s"
    # IHAVE from the hub carries our message ids (32-byte BLAKE3), never from‖seqno, and asks nothing
    time.sleep(3 * HEARTBEAT_S)
    ihaves = [e for _, e in js.find(is_("ihave", **{"from": a.peer_id}))]
    assert ihaves, "no IHAVE from the hub: its non-mesh leaves get gossip at every heartbeat"
    assert all(e["id_lens"] in ([32], []) for e in ihaves), ihaves
    assert sum(e["iwant"] for e in ihaves) == 0, ihaves
