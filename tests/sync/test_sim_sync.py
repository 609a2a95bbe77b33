"""Sync over a simulated network (tests/sim/simnet.py): convergence under faults; store §2.3.10 behaviours.

Commits run on real writer threads (one per node) while the event loop reads the same stores.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecac.core.replay import replay_full
from ecac.core.sig import check_ops
from ecac.sync.coordinator import local_announce
from ecac.sync.effects import SendRequest
from sim.dags import chain, spec_dag_60
from sim.simnet import SIM_CONFIG, Faults, SimNet


def digest(net: SimNet, name: str) -> bytes:
    store = net.nodes[name].store
    ops = [store.get_op(x) for x in store.topo_ids()]
    return replay_full(ops)[1]


def assert_converged(net: SimNet) -> None:
    names = sorted(net.nodes)
    topo = net.nodes[names[0]].store.topo_ids()
    for n in names:
        store = net.nodes[n].store
        assert store.topo_ids() == topo, f"{n} differs"
        assert store.op_count() == store.complete_count(), f"{n} holds ops with missing ancestors"
        ops = [store.get_op(x) for x in topo]
        assert check_ops(ops) == [None] * len(ops), f"{n} stored an invalid op"
    digests = {digest(net, n) for n in names}
    assert len(digests) == 1


def fetch_requests(net: SimNet, node: str) -> list[SendRequest]:
    return [e for n, e in net.sent_requests if n == node and e.request.want]


# --------------------------------------------------------------------------- the property

step = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 4), st.integers(1, 6)),
    st.tuples(st.just("partition"), st.integers(1, 2**5 - 2), st.just(0)),
    st.tuples(st.just("heal"), st.just(0), st.just(0)),
    st.tuples(st.just("run"), st.integers(0, 3000), st.just(0)),
    st.tuples(st.just("restart"), st.integers(0, 4), st.just(0)),
)


@given(
    n=st.integers(3, 5),
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(step, min_size=2, max_size=14),
    drop=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    dup=st.sampled_from([0.0, 0.3]),
    cut=st.sampled_from([0.0, 0.15, 0.3]),
    stall=st.sampled_from([0.0, 0.1]),
    lost=st.sampled_from([0.0, 0.2]),
    twice=st.sampled_from([0.0, 0.5]),
    final=st.sampled_from(["mesh", "line"]),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_partitions_and_faults_converge(
    n, seed, steps, drop, dup, cut, stall, lost, twice, final
) -> None:
    """Random writes, partitions, heals, lost/duplicated/reordered announces, lost requests, repeated
    batches, failing streams and coordinator restarts (the node's supervisor), with every commit on a
    writer thread: after healing and anti-entropy every replica holds the same ops and the same replay
    digest, and no honest peer was penalised."""
    with SimNet(n, seed=seed, faults=Faults(drop, dup, cut, stall, lost, twice)) as net:
        converge_after(net, n, steps, final)


def converge_after(net: SimNet, n: int, steps: list[tuple[str, int, int]], final: str) -> None:
    names = sorted(net.nodes)
    net.full_mesh()
    written = 0
    for kind, a, b in steps:
        if kind == "write":
            net.write(names[a % n], b)
            written += b
        elif kind == "partition":
            side = [x for i, x in enumerate(names) if a >> i & 1]
            other = [x for x in names if x not in side]
            net.partition([side, other] if side and other else [names])
        elif kind == "heal":
            net.full_mesh()
        elif kind == "restart":
            net.restart(names[a % n])
        else:
            net.run_for(a / 1000)
    net.faults = Faults()
    net.full_mesh() if final == "mesh" else net.line()
    assert net.run_until_converged(60.0), "no convergence within 60 simulated seconds"
    assert_converged(net)
    assert net.nodes[names[0]].store.op_count() == written
    for node in net.nodes.values():
        assert node.penalties == [], "an honest peer was penalised"
        assert node.coord.counters.peers_penalised == 0


# --------------------------------------------------------------------------- scenarios of store §2.3.10


def test_two_nodes_spec_dag() -> None:
    with SimNet(2, seed=1) as net:
        net.preload("n0", spec_dag_60())
        net.full_mesh()
        assert net.run_until_converged(10.0)
        a, b = net.nodes["n0"].store, net.nodes["n1"].store
        assert a.complete_count() == b.complete_count() == 60
        assert a.heads(8) == b.heads(8)
        assert digest(net, "n0") == digest(net, "n1")
        assert net.nodes["n1"].coord.counters.ops_fetched == 60


def test_line_topology_multi_hop() -> None:
    """A—B—C: an op written on A reaches C through B (forwarded announce, fetch from the relay)."""
    with SimNet(3, seed=2) as net:
        net.line()
        ops = net.write("n0", 5)
        assert net.run_until_converged(10.0)
        assert_converged(net)
        assert not net.linked("n0", "n2")
        assert {e.peer for e in fetch_requests(net, "n2")} == {"n1"}
        assert net.nodes["n2"].store.contains(ops[-1].op_id)


def test_anti_entropy_alone_converges() -> None:
    with SimNet(4, seed=3, gossip=False) as net:
        net.line()
        for name in net.nodes:
            net.write(name, 7)
        assert net.run_until_converged(30.0)
        assert_converged(net)
        assert all(not fetch_requests(net, n) for n in net.nodes)  # no announce => only anti-entropy pulls
        assert all(n.coord.counters.announces_received == 0 for n in net.nodes.values())


def test_all_announces_dropped_still_converge() -> None:
    with SimNet(3, seed=4, faults=Faults(drop_announce=1.0)) as net:
        net.full_mesh()
        net.write("n0", 10)
        net.write("n2", 10)
        assert net.run_until_converged(30.0)
        assert_converged(net)


def test_tampering_peer_is_penalised_and_valid_ops_sync_from_others() -> None:
    for how in ("bad_sig", "child_first"):
        with SimNet(3, seed=5) as net:
            ops = chain(30)
            for name in ("n0", "n1"):
                net.preload(name, ops)
            net.nodes["n0"].tamper = how
            victim = net.nodes["n2"]
            net.connect("n0", "n2")  # the tampering peer first: it is asked first
            net.run_for(1.0)
            assert victim.coord.counters.peers_penalised == 1, how
            assert victim.store.op_count() < 30
            assert not net.linked("n0", "n2")
            net.connect("n1", "n2")
            net.connect("n0", "n2")  # refused while banned
            assert net.run_until_converged(20.0), how
            assert victim.store.topo_ids() == net.nodes["n1"].store.topo_ids()
            assert check_ops([victim.store.get_op(x) for x in victim.store.topo_ids()]) == [None] * 30
            assert victim.coord.counters.peers_penalised >= 1, how
            assert {p for p, _ in victim.penalties} == {"n0"}, how
            assert not net.linked("n0", "n2")  # disconnected and banned
            assert net.nodes["n1"].penalties == []


def test_duplicate_announce_storm_causes_no_extra_fetch() -> None:
    with SimNet(2, seed=6) as net:
        net.preload("n0", chain(20))
        net.full_mesh()
        net.gossip = False
        data = local_announce(net.nodes["n0"].coord.snapshot, net.nodes["n0"].coord.sk).encode()
        fetches = []
        for _ in range(50):
            fetches += [
                e for e in net.deliver_announce_directly("n1", "n0", data) if isinstance(e, SendRequest)
            ]
        assert len(fetches) == 1
        net.run_for(1.0)  # the one fetch completes
        assert net.nodes["n1"].store.complete_count() == 20
        for _ in range(50):
            fetches += [
                e for e in net.deliver_announce_directly("n1", "n0", data) if isinstance(e, SendRequest)
            ]
        assert len(fetches) == 1
        c = net.nodes["n1"].coord.counters
        assert c.requests_failed == 0 and c.peers_penalised == 0 and c.announces_received == 100


def test_backlog_of_10000_ops_with_more_continuations() -> None:
    server_cfg = dataclasses.replace(SIM_CONFIG, server_max_ops=1500)
    with SimNet(2, seed=7, server_config=server_cfg) as net:
        ops = chain(10_000)
        net.preload("n0", ops)
        net.full_mesh()
        assert net.run_until_converged(60.0)
        b = net.nodes["n1"]
        assert b.store.topo_ids() == [o.op_id for o in ops]
        c = b.coord.counters
        assert c.ops_fetched == 10_000
        assert c.fetch_batches >= 10_000 // 512
        requests = [e for n, e in net.sent_requests if n == "n1"]
        assert len(requests) >= 7  # 10 000 / 1 500 responses, continued with More
        assert c.ops_duplicates_dropped == 0  # each continuation's boundary excludes what was received
        # the loop handled events while the writers committed (real interleavings, not a serial replay)
        assert sum(n.overlaps for n in net.nodes.values()) > 0


def test_stalled_peer_times_out_and_ids_come_from_another() -> None:
    with SimNet(3, seed=8, faults=Faults(stall_stream=1.0)) as net:
        ops = chain(12)
        for name in ("n0", "n1"):
            net.preload(name, ops)
        net.set_topology([("n0", "n2"), ("n1", "n2")])
        net.run_for(0.5)
        c = net.nodes["n2"].coord.counters
        assert not net.converged() and c.requests_failed == 0  # stalled, idle timeout (1 s) not reached
        net.faults = Faults()  # streams opened from now on complete
        assert net.run_until_converged(20.0)
        assert c.requests_failed >= 1  # the stalled stream hit the idle timeout and was replaced
        assert c.peers_penalised == 0


def test_writers_really_run_concurrently_with_the_loop() -> None:
    """Three nodes serve and commit each other's chains at once: events read a store while its writer is
    changing it, and the result is still the same op set and digest everywhere."""
    with SimNet(3, seed=9, writer_delay=0.0) as net:
        for i, name in enumerate(sorted(net.nodes)):
            net.preload(name, chain(600, b"c%d" % i))
        net.full_mesh()
        assert net.run_until_converged(30.0)
        assert_converged(net)
        assert all(n.store.op_count() == 1800 for n in net.nodes.values())
        assert sum(n.writer.jobs_done for n in net.nodes.values()) >= 3 + 3 * 2 * 600 // 512
        # (each node sees several in a normal run; the sum stays positive on a loaded machine too)
        assert sum(n.overlaps for n in net.nodes.values()) > 0
        for n in net.nodes.values():
            assert n.penalties == [] and n.coord.check_invariants() == []


def test_coordinator_restart_mid_sync_converges() -> None:
    """The supervisor replaces a coordinator while its fetch is streaming and commits are in flight:
    old requests are reset, late reports for them are ignored, and the node still catches up."""
    with SimNet(2, seed=10) as net:
        net.preload("n0", chain(3000))
        net.full_mesh()
        b = net.nodes["n1"]
        for _ in range(100):  # until the fetch streams and has committed something
            net.run_for(0.005)
            if b.coord.requests() and b.coord.counters.fetch_batches:
                break
        assert b.coord.requests(), "a fetch should be running"
        assert 0 < b.store.op_count() < 3000
        before = b.coord.counters.requests_sent
        net.restart("n1")
        assert b.coord.counters.coordinator_restarts == 1
        assert b.coord.counters.requests_sent >= before  # carried over
        assert b.coord.connected_peers() == ["n0"]
        assert net.run_until_converged(30.0)
        assert_converged(net)
        assert b.coord.check_invariants() == []
        assert b.penalties == []
