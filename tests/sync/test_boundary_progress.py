"""A requester that writes local ops on top of synced heads between capped responses still converges.

Regression for the stall the threaded stress test found: the local op hides the synced heads
from the requester's own heads (the server does not know the local op, so it ignores it), the
exponentially spaced samples only cover one chain of a concurrent DAG each, so every capped
answer was full of duplicates; the ``More`` chain stopped after ``no_progress_limit`` such
answers and each anti-entropy round repeated the same duplicates. The boundary sent to a peer
now also carries what that peer certainly has: the heads it announced that we hold complete,
and the frontier of the ops we received from it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ecac.core.keys import key_pair
from ecac.core.op import Op
from ecac.core.snapshot import StoreSnapshot, take_snapshot
from ecac.net.writeio import apply_commit
from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig, SyncCoordinator, local_announce
from ecac.sync.effects import CommitOps, SendRequest
from ecac.sync.syncserve import serve_sync
from ecac.sync.wire import FrameReader
from ecac.testing.demo_ops import demo_ops_for
from ecac.testing.workloads import gen_concurrent

CAP = 50


class Requester:
    """Node A: its store, a coordinator with default settings except ``request_max_ops``."""

    def __init__(self, cfg: SyncConfig) -> None:
        self.store = MemoryOpStore()
        self.seq = 0
        self.coord = SyncCoordinator(key_pair(3, b"a"), self.store.index, cfg, self.snap())
        self.local_ops = 0

    def snap(self) -> StoreSnapshot:
        self.seq += 1
        return take_snapshot(self.store.index, self.seq)

    def local_write(self, seed: int) -> None:
        """Ops on A's current heads (a user writing while A catches up), stored by A's writer."""
        ops = demo_ops_for(self.store, 2, seed)
        self.store.put_many(ops)
        self.local_ops += len(ops)


def pull(
    server_ops: list[Op],
    cfg: SyncConfig,
    between: Callable[[Requester, int], None] | None,
    announce: bool,
    max_requests: int,
) -> tuple[Requester, int, int]:
    """Sync A from B (anti-entropy rounds of ``More`` chains) until A holds all of B's ops.

    ``between`` runs after every commit, before the coordinator hears of it (A's writer
    took a local write right after the commit, so the snapshot reported with the commit
    has the local ops on top of the synced heads). Returns A, the requests it sent and
    the anti-entropy rounds it needed.
    """
    b = MemoryOpStore(server_ops)
    b_snap = take_snapshot(b.index, 1)
    a = Requester(cfg)
    now = 0.0
    todo = a.coord.start(now) + a.coord.peer_connected("B", now)
    if announce:
        todo += a.coord.announce_received("B", local_announce(b_snap, key_pair(4, b"b")), "B", now)
    todo += a.coord.anti_entropy_tick(now)
    requests = rounds = commits = 0
    wanted = [op.op_id for op in server_ops]
    while not all(a.store.index.contains(x) for x in wanted):
        assert requests < max_requests, (requests, rounds, sum(map(a.store.index.contains, wanted)))
        if not todo:
            rounds += 1
            now += cfg.anti_entropy_period
            todo = a.coord.anti_entropy_tick(now)
            continue
        e = todo.pop(0)
        now += 0.001
        if isinstance(e, SendRequest):
            assert e.peer == "B"
            requests += 1
            reader = FrameReader()
            blobs = serve_sync(b.index, b_snap, b.load_ops_cbor, e.request.encode())
            bodies = [x for blob in blobs for x in reader.feed(blob)]
            todo = a.coord.frames_received(e.request_id, bodies, now) + todo
        elif isinstance(e, CommitOps):
            outcome = apply_commit(a.store, e)
            commits += 1
            if between is not None:
                between(a, commits)
            todo = a.coord.commit_finished(outcome, a.snap(), now) + todo
    assert a.coord.check_invariants() == []
    return a, requests, rounds


@pytest.mark.parametrize("announce", [False, True], ids=["no-announce", "announced"])
def test_local_writes_between_capped_responses_do_not_stall_the_pull(announce: bool) -> None:
    ops = gen_concurrent(11, 1200, 4)  # four concurrent chains: a sample covers one chain
    cfg = SyncConfig(request_max_ops=CAP)  # default no_progress_limit
    assert cfg.no_progress_limit == 2
    a, requests, rounds = pull(ops, cfg, lambda a, i: a.local_write(100 + i), announce, 200)
    # every response but the last carries CAP new ops: no duplicate-only answers, one round
    assert requests <= len(ops) // CAP + 2, requests
    assert rounds == 0
    assert a.coord.counters.ops_fetched == len(ops)
    assert a.coord.counters.ops_duplicates_dropped < CAP, a.coord.counters
    assert a.store.op_count() == len(ops) + a.local_ops


def test_without_local_writes_the_pull_is_exact() -> None:
    ops = gen_concurrent(12, 600, 3)
    a, requests, rounds = pull(ops, SyncConfig(request_max_ops=CAP), None, False, 100)
    assert (requests, rounds) == (len(ops) // CAP + 1, 0) or (requests, rounds) == (len(ops) // CAP, 0)
    assert a.coord.counters.ops_duplicates_dropped == 0


def test_boundary_stays_within_the_wire_limits_with_many_heads() -> None:
    """Own heads, the peer's heads and frontier, duplicates and samples: ≤ 256 ids, ≤ 128 own heads."""
    ops = gen_concurrent(13, 2000, 8)
    cfg = SyncConfig(request_max_ops=CAP)
    sizes: list[int] = []

    def between(a: Requester, i: int) -> None:
        sizes.append(len(a.coord.boundary_for("B")))
        a.local_write(200 + i)

    pull(ops, cfg, between, True, 200)
    assert sizes and max(sizes) <= 256
