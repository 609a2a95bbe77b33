"""Server side of /ecac/sync/1: the response set S (paint-down), its order, the cap and trailer, batches.

The server reads the monotone facts of the live index, a snapshot and an op loader; never the store.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.errors import DecodeError, StoreError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.opcodec import decode_op
from ecac.core.snapshot import SNAPSHOT_HEADS_MAX, StoreSnapshot, boundary_positions, take_snapshot
from ecac.store.memory import MemoryOpStore
from ecac.sync.syncserve import (
    BATCH_OPS,
    SERVER_MAX_OPS,
    build_boundary,
    plan_response,
    response_blobs,
    response_set,
    serve_fetch_missing,
    serve_sync,
)
from ecac.sync.wire import END, MORE, FetchMissing, FrameReader, OpBytes, SyncRequest, decode_rpc_frame
from sim.dags import ancestors_or_self, chain, random_dag


def snap(store: MemoryOpStore) -> StoreSnapshot:
    return take_snapshot(store.index, 0)


def rs(store: MemoryOpStore, want, boundary) -> tuple[list[bytes], int]:
    return response_set(store.index, snap(store), want, boundary)


def plan(store: MemoryOpStore, request: SyncRequest, **kw):
    return plan_response(store.index, snap(store), request, **kw)


def serve(store: MemoryOpStore, body: bytes, **kw):
    return serve_sync(store.index, snap(store), store.load_ops_cbor, body, **kw)


def expected_s(ops, store: MemoryOpStore, want, boundary) -> set[bytes]:
    by_id = {o.op_id: o for o in ops if store.is_complete(o.op_id)}
    k = [b for b in boundary if store.is_complete(b)]
    seeds = [w for w in want if store.is_complete(w)] if want else list(by_id)
    return ancestors_or_self(by_id, seeds) - ancestors_or_self(by_id, k)


def assert_parent_first(store: MemoryOpStore, ids, excluded: set[bytes]) -> None:
    seen: set[bytes] = set()
    last = None
    for x in ids:
        for p in store.parents(x):
            assert p in seen or p in excluded, "parent neither earlier nor excluded"
        key = (store.gen(x), store.index.key(x))
        assert last is None or last < key, "not in (gen, sort key) order"
        last = key
        seen.add(x)


@given(st.integers(0, 10_000), st.integers(1, 60), st.data())
@settings(max_examples=60, deadline=None)
def test_response_set_matches_definition(seed: int, n: int, data) -> None:
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    # leave some ops out so that the store has orphans (incomplete ops are never served or used)
    held = [o for o in ops if rng.random() < 0.9]
    store = MemoryOpStore(held)
    ids = [o.op_id for o in ops]
    want = data.draw(st.lists(st.sampled_from(ids), max_size=5))
    boundary = data.draw(st.lists(st.sampled_from(ids), max_size=8))
    s, visited = rs(store, want, boundary)
    assert set(s) == expected_s(ops, store, want, boundary)
    assert len(s) == len(set(s))
    excluded = ancestors_or_self(
        {o.op_id: o for o in held if store.is_complete(o.op_id)},
        [b for b in boundary if store.is_complete(b)],
    )
    assert_parent_first(store, s, excluded)
    assert visited >= len(s)


def test_want_empty_means_everything_complete_minus_boundary() -> None:
    ops = chain(30)
    store = MemoryOpStore(ops)
    s, _ = rs(store, [], [])
    assert s == [o.op_id for o in ops]
    s, _ = rs(store, [], [ops[19].op_id])
    assert s == [o.op_id for o in ops[20:]]
    s, _ = rs(store, [], [ops[-1].op_id])
    assert s == []


def test_unknown_and_incomplete_ids_are_ignored() -> None:
    ops = chain(10)
    store = MemoryOpStore(ops[:3] + ops[5:])  # ops 5.. are orphans (4 missing)
    assert not store.is_complete(ops[7].op_id)
    assert rs(store, [ops[7].op_id, b"\x00" * 32], [])[0] == []
    assert rs(store, [ops[2].op_id], [ops[9].op_id])[0] == [o.op_id for o in ops[:3]]


def test_cost_is_proportional_to_visited_ops_near_the_heads() -> None:
    ops = chain(3000)
    store = MemoryOpStore(ops)
    s, visited = rs(store, [], [ops[-4].op_id])
    assert s == [o.op_id for o in ops[-3:]]
    assert visited == 3
    # concurrent branches above a shared boundary: only the branches are visited
    left, right = chain(5, b"left", ops[-1]), chain(7, b"right", ops[-1])
    store.put_many(left + right)
    s, visited = rs(store, [left[-1].op_id, right[-1].op_id], [ops[-1].op_id])
    assert set(s) == {o.op_id for o in left + right}
    assert visited == 12


def test_plan_caps_and_trailers() -> None:
    ops = chain(50)
    store = MemoryOpStore(ops)
    full = plan(store, SyncRequest())
    assert full.trailer == END and full.total == 50 and len(full.ids) == 50
    cut = plan(store, SyncRequest(max_ops=20))
    assert cut.trailer == MORE and cut.ids == full.ids[:20] and cut.total == 50
    server_cut = plan(store, SyncRequest(max_ops=40), server_max_ops=10)
    assert server_cut.trailer == MORE and len(server_cut.ids) == 10
    exact = plan(store, SyncRequest(max_ops=50))
    assert exact.trailer == END
    # the continuation (boundary = what was received) carries on where the cut was
    nxt = plan(store, SyncRequest(max_ops=20, boundary=(cut.ids[-1],)))
    assert nxt.ids == full.ids[20:40] and nxt.trailer == MORE
    assert SERVER_MAX_OPS == 65_536
    with pytest.raises(ValueError):
        plan(store, SyncRequest(), server_max_ops=0)


def read_stream(blobs: list[bytes]) -> list:
    r = FrameReader()
    frames = [decode_rpc_frame(b) for blob in blobs for b in r.feed(blob)]
    r.eof()
    return frames


def test_batches_are_coalesced_and_end_with_the_trailer() -> None:
    ops = chain(1100)
    store = MemoryOpStore(ops)
    blobs = list(serve(store, SyncRequest().encode()))
    assert len(blobs) == 3  # 512 + 512 + 76 ops, trailer in the last blob
    per_blob = [len(read_stream([b])) for b in blobs]
    assert per_blob == [BATCH_OPS, BATCH_OPS, 1100 - 2 * BATCH_OPS + 1]
    frames = read_stream(blobs)
    assert frames[-1] == END
    assert [decode_op(f.data).op_id for f in frames[:-1]] == [o.op_id for o in ops]
    assert all(isinstance(f, OpBytes) and f.data == o.cbor for f, o in zip(frames, ops, strict=False))
    small = list(serve(store, SyncRequest(max_ops=10).encode(), batch_ops=4))
    assert [len(read_stream([b])) for b in small] == [4, 4, 3]
    assert read_stream(small)[-1] == MORE


def test_empty_response_is_just_the_trailer() -> None:
    store = MemoryOpStore(chain(3))
    p = plan(store, SyncRequest(want=(b"\x07" * 32,)))
    assert list(response_blobs(p, store.load_ops_cbor)) == [bytes.fromhex("0000000463456e64")]


def test_serve_rejects_malformed_request() -> None:
    store = MemoryOpStore(chain(3))
    with pytest.raises(DecodeError):
        serve(store, b"\xa0")


def test_fetch_missing_compat_endpoint() -> None:
    ops = chain(3)
    store = MemoryOpStore(ops)

    def fetch(want: tuple[bytes, ...]) -> bytes:
        return serve_fetch_missing(store.index, snap(store), store.load_ops_cbor, FetchMissing(want).encode())

    assert decode_rpc_frame(fetch((b"\x01" * 32, ops[1].op_id, ops[2].op_id))) == OpBytes(ops[1].cbor)
    assert fetch((b"\x01" * 32,)) == END.encode()


def test_boundary_positions() -> None:
    assert boundary_positions(0) == []
    assert boundary_positions(1) == []
    assert boundary_positions(2) == [0]
    assert boundary_positions(20) == [18, 17, 15, 11, 3]
    assert len(boundary_positions(10**9)) == 30


def test_build_boundary_heads_extra_samples_and_limits() -> None:
    ops = chain(100)
    store = MemoryOpStore(ops)
    b = build_boundary(snap(store), store.index)
    topo = store.topo_ids()
    assert b == (ops[-1].op_id, *[topo[p] for p in boundary_positions(100)])
    # many concurrent heads: at most 128 heads, at most 256 ids in total
    base = ops[-1]
    sk = key_pair(1, b"heads")
    tips = [make_op(sk, [base.op_id], Hlc(5000, i, 0), Data("mv:o:x", b"t")) for i in range(300)]
    store.put_many(tips)
    b = build_boundary(snap(store), store.index)
    heads = store.heads(128)
    topo = store.topo_ids()
    samples = [topo[p] for p in boundary_positions(400) if topo[p] not in heads]
    assert len(samples) == 2  # the other samples are among the newest heads already
    assert b == (*heads, *samples)
    extra = [t.op_id for t in tips] + [b"\x00" * 32]
    b = build_boundary(snap(store), store.index, extra=extra)
    assert len(b) == 256 and len(set(b)) == 256
    assert b"\x00" * 32 not in b  # unknown ids are never claimed
    with pytest.raises(ValueError):
        build_boundary(snap(store), store.index, max_heads=300)


def test_facts_ahead_of_the_snapshot() -> None:
    """A server whose writer committed after its snapshot: the walk uses the newer facts consistently."""
    ops = chain(20)
    store = MemoryOpStore(ops[:10])
    old = snap(store)
    store.put_many(ops[10:])  # the writer moved on; the reader still holds ``old``
    s, _ = response_set(store.index, old, [], [])
    assert s == [o.op_id for o in ops[:10]]  # anti-entropy: seeded from the snapshot's heads
    s, _ = response_set(store.index, old, [ops[-1].op_id], [ops[4].op_id])
    assert s == [o.op_id for o in ops[5:]]  # a wanted id stored since: served with its ancestry
    b = build_boundary(old, store.index, extra=[ops[15].op_id])
    assert b[0] == ops[9].op_id and ops[15].op_id in b  # snapshot heads, newer complete extras


def test_anti_entropy_from_a_store_with_more_heads_than_the_snapshot_lists() -> None:
    """The snapshot keeps at most SNAPSHOT_HEADS_MAX heads: an anti-entropy answer seeded from them is
    partial, so it ends with More, never with a false End."""
    ops = chain(3)
    store = MemoryOpStore(ops)
    full = snap(store)
    cut = StoreSnapshot(complete_count=3, head_count=2, heads=full.heads)  # pretend one head is unlisted
    p = plan_response(store.index, cut, SyncRequest())
    assert p.partial and p.trailer == MORE and p.ids == tuple(o.op_id for o in ops)
    assert not plan_response(store.index, full, SyncRequest()).partial
    assert plan_response(store.index, cut, SyncRequest(want=(ops[-1].op_id,))).trailer == END
    assert SNAPSHOT_HEADS_MAX >= 128


def test_a_loader_that_loses_ops_is_a_store_error() -> None:
    store = MemoryOpStore(chain(3))
    p = plan(store, SyncRequest())
    with pytest.raises(StoreError):
        list(response_blobs(p, lambda ids: store.load_ops_cbor(ids)[:-1]))
    with pytest.raises(ValueError):
        build_boundary(snap(store), store.index, max_heads=300)
