"""StoreWriter: FIFO order, back-pressure, errors to the caller, fatal failures, snapshots per commit."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from ecac.core.errors import EcacError, StoreError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.core.replay import replay_full
from ecac.core.snapshot import boundary_positions, take_snapshot
from ecac.store.memory import IndexedOpStore, MemoryOpStore, PutRejectedError
from ecac.store.rocks import Store
from ecac.store.writer import (
    FATAL_WRITE_FAILURES,
    CommitEvent,
    StoreWriter,
    WriterBusyError,
    WriterClosedError,
    WriterFailedError,
)


def chain(n: int, seed: int = 1, start: int = 1000, parents: Sequence[bytes] = ()) -> list[Op]:
    sk = key_pair(seed, b"writer")
    ops: list[Op] = []
    prev = list(parents)
    for i in range(n):
        op = make_op(sk, prev, Hlc(start + i, 0, seed), Data(f"mv:o{seed}:x", f"v{i}".encode()))
        ops.append(op)
        prev = [op.op_id]
    return ops


@pytest.fixture
def writer():
    w = StoreWriter(MemoryOpStore(), queue_max=4)
    w.start()
    yield w
    w.stop()


def check_consistent(event: CommitEvent, store: IndexedOpStore) -> None:
    """On the writer thread: the published snapshot is exactly the index's state now."""
    s = event.snapshot
    assert s == take_snapshot(store.index, s.seq, s.digest, s.digest_ops)
    assert s.complete_count + s.pending_count == s.op_count
    assert len(s.samples) == len(boundary_positions(s.complete_count))
    assert all(store.index.is_complete(h) for h in s.heads)


# --------------------------------------------------------------------------- order and snapshots


def test_requests_run_in_submission_order_and_each_commit_publishes_a_consistent_snapshot():
    events: list[CommitEvent] = []
    seen: list[int] = []
    w2 = StoreWriter(MemoryOpStore(), queue_max=64)
    w2.subscribe(events.append)
    w2.subscribe(lambda e: check_consistent(e, w2.store))
    w2.start()
    try:
        ops = chain(30)
        futs = []
        for i in range(0, 30, 3):  # children of later batches arrive before their parents
            batch = ops[27 - i : 30 - i]
            futs.append(w2.submit_put(batch, source="sync"))
            futs.append(w2.submit_call(lambda _st, i=i: seen.append(i)))
        results = [f.result() for f in futs[::2]]
        assert seen == list(range(0, 30, 3))  # FIFO, interleaved with the commits
        assert [tuple(r.result.stored) for r in results] == [
            tuple(op.op_id for op in ops[27 - i : 30 - i]) for i in range(0, 30, 3)
        ]
        assert [e.snapshot.seq for e in events] == list(range(1, 11))
        assert [r.snapshot.seq for r in results] == list(range(1, 11))
        assert [e.snapshot.complete_count for e in events] == [0] * 9 + [30]
        assert [e.snapshot.pending_count for e in events] == [3 * k for k in range(1, 10)] + [0]
        assert events[-1].snapshot.heads == (ops[-1].op_id,)
        assert w2.snapshot is events[-1].snapshot
        assert w2.stats.commits == 10 and w2.stats.ops_stored == 30
    finally:
        w2.stop()


def test_duplicates_only_do_not_publish_a_new_snapshot(writer):
    ops = chain(3)
    first = writer.submit_put(ops).result()
    again = writer.submit_put(ops).result()
    assert again.result.stored == [] and again.result.duplicates == 3
    assert again.snapshot is first.snapshot and writer.snapshot.seq == 1


def test_local_write_builds_from_the_heads_the_put_extends(writer):
    base = chain(2)
    writer.submit_put(base).result()

    def build(store: IndexedOpStore) -> list[Op]:
        return chain(1, seed=2, start=5000, parents=store.heads(16))

    done = writer.submit_local(build).result()
    assert done.ops[0].parents == (base[-1].op_id,)
    assert done.result.stored == [done.ops[0].op_id]
    assert done.snapshot.heads == (done.ops[0].op_id,) and done.snapshot.op_count == 3


def test_publish_digest_is_carried_to_later_snapshots_and_never_goes_back(writer):
    ops = chain(4)
    writer.submit_put(ops[:2]).result()
    snap = writer.publish_digest(b"\x01" * 32, 2)
    assert (snap.digest, snap.digest_ops, snap.seq) == (b"\x01" * 32, 2, 1)
    assert writer.publish_digest(b"\x02" * 32, 1).digest == b"\x01" * 32  # older: ignored
    after = writer.submit_put(ops[2:]).result().snapshot
    assert (after.seq, after.digest, after.digest_ops, after.complete_count) == (2, b"\x01" * 32, 2, 4)


def test_checkpoint_on_a_rocksdb_store(tmp_path: Path):
    ops = chain(5)
    with Store.open(tmp_path / "db") as st, StoreWriter(st) as w:
        w.submit_put(ops).result()
        state, digest = replay_full(ops)
        cid = w.submit_checkpoint(state, len(ops), ops).result()
        assert cid == 1 and w.stats.checkpoints == 1
        assert st.checkpoint_latest() == (1, 5)
        loaded, topo = st.checkpoint_load(1)
        assert loaded.digest() == digest and topo == 5
    with pytest.raises(TypeError, match="no checkpoints"):
        StoreWriter(MemoryOpStore()).submit_checkpoint(state, 5)


# --------------------------------------------------------------------------- back-pressure


def test_a_full_queue_refuses_non_blocking_submits_and_blocks_blocking_ones():
    w = StoreWriter(MemoryOpStore(), queue_max=2)
    gate = threading.Event()
    running = threading.Event()
    w.start()
    try:
        stuck = w.submit_call(lambda _st: (running.set(), gate.wait()))
        running.wait()
        queued = [w.submit_put(chain(1, seed=s)) for s in (3, 4)]
        assert w.queue_depth == 2 and w.busy
        with pytest.raises(WriterBusyError, match="queue is full"):
            w.submit_put(chain(1, seed=5), block=False)
        late: list[object] = []
        t = threading.Thread(target=lambda: late.append(w.submit_put(chain(1, seed=6))))
        t.start()
        t.join(0.05)
        assert t.is_alive() and not late  # the queue cannot drain while the writer is held
        gate.set()
        t.join()
        stuck.result()
        assert [f.result().result.stored != [] for f in queued] == [True, True]
        assert late[0].result().snapshot.op_count == 3  # type: ignore[attr-defined]
    finally:
        gate.set()
        w.stop()


# --------------------------------------------------------------------------- errors


def test_errors_reach_the_caller_and_the_writer_goes_on(writer):
    def bad_build(_st: IndexedOpStore) -> list[Op]:
        raise EcacError("no such thing")

    with pytest.raises(EcacError, match="no such thing"):
        writer.submit_local(bad_build).result()
    with pytest.raises(ZeroDivisionError):
        writer.submit_call(lambda _st: 1 // 0).result()
    assert writer.submit_put(chain(2)).result().snapshot.op_count == 2
    assert writer.stats.failures == 2 and writer.failure is None


def test_an_invalid_op_in_a_put_is_refused_with_its_index_and_nothing_is_written(writer):
    good = chain(3)
    other = chain(1, seed=9)[0]
    forged = Op(
        other.parents, other.hlc, other.author_pk, other.payload, b"\x00" * 64, other.op_id, other.cbor
    )
    with pytest.raises(PutRejectedError) as e:
        writer.submit_put([good[0], forged], "raise", source="sync").result()
    assert e.value.rejection.index == 1
    assert writer.snapshot.op_count == 0 and writer.failure is None
    assert writer.submit_put(good).result().snapshot.op_count == 3  # a refusal is not a failed write


def test_a_failed_store_write_fails_the_request_and_the_writer_stays_usable():
    store = MemoryOpStore()
    real = store._write
    calls = {"n": 0}

    def flaky(ops: Sequence[Op]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("disk hiccup")
        real(ops)

    store._write = flaky  # type: ignore[method-assign]
    with StoreWriter(store) as w:
        with pytest.raises(StoreError, match="disk hiccup"):
            w.submit_put(chain(2)).result()
        done = w.submit_put(chain(2), source="sync").result()
        assert len(done.result.stored) == 2
        assert w.snapshot.op_count == 2 and w.failure is None


def test_repeated_write_failures_stop_the_writer_and_call_on_fatal():
    store = MemoryOpStore()

    def broken(_ops: Sequence[Op]) -> None:
        raise StoreError("read-only file system")

    store._write = broken  # type: ignore[method-assign]
    reasons: list[str] = []
    with StoreWriter(store, on_fatal=reasons.append) as w:
        for i in range(FATAL_WRITE_FAILURES - 1):
            with pytest.raises(StoreError, match="read-only file system"):
                w.submit_put(chain(1, seed=i + 20), source="sync").result()
        with pytest.raises(WriterFailedError, match="refused 3 writes in a row"):
            w.submit_put(chain(1, seed=40)).result()
        assert reasons == [w.failure] and "read-only file system" in reasons[0]
        with pytest.raises(WriterFailedError):
            w.submit_call(lambda _st: None)


def test_an_index_changed_by_a_failed_write_is_fatal_and_queued_requests_fail():
    store = MemoryOpStore()
    real = store._commit
    gate = threading.Event()

    def half(ops: Sequence[Op]) -> list[bytes]:
        real(ops[:1])
        raise RuntimeError("crash between index updates")

    store._commit = half  # type: ignore[method-assign]
    reasons: list[str] = []
    with StoreWriter(store, on_fatal=reasons.append) as w:
        held = w.submit_call(lambda _st: gate.wait())
        doomed = w.submit_put(chain(3))
        queued = w.submit_put(chain(1, seed=7))
        gate.set()
        held.result()
        with pytest.raises(WriterFailedError, match="index changed during a failed write"):
            doomed.result()
        with pytest.raises(WriterFailedError):
            queued.result()
        assert len(reasons) == 1 and "restart the node" in reasons[0]


def test_a_request_cannot_wait_for_another_on_the_writer_thread(writer):
    with pytest.raises(RuntimeError, match="deadlock"):
        writer.submit_call(lambda _st: writer.submit_call(lambda _s: None)).result()


def test_stop_finishes_queued_requests_then_refuses():
    w = StoreWriter(MemoryOpStore()).start()
    futs = [w.submit_put(chain(1, seed=s)) for s in range(5)]
    w.stop()
    assert all(f.result().snapshot.seq >= 1 for f in futs) and w.snapshot.op_count == 5
    with pytest.raises(WriterClosedError):
        w.submit_put(chain(1, seed=99))
