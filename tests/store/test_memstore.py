"""MemoryOpStore and the shared put validation (store §1.4): round trip, rejects, duplicates, orphans."""

from __future__ import annotations

import pytest

from conftest import vectors_dir
from ecac.core.codec import dumps, loads
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.opcodec import read_log
from ecac.store.memory import MemoryOpStore, OpStore, PutRejectedError, validate_ops

VECTORS = vectors_dir()
SK = key_pair(7, b"memstore")


def chain(n: int, seed: int = 42):
    sk = key_pair(seed, b"hb")
    ops, prev = [], []
    for i in range(n):
        op = make_op(sk, prev, Hlc(1000 + i, 0, i + 1), Data("mv:o:x", f"v{i}".encode()))
        ops.append(op)
        prev = [op.op_id]
    return ops


def bad_inputs(op):
    """The five refused encodings of store §1.16 'put rejects', with the expected message."""
    obj = loads(op.cbor)
    flipped = loads(op.cbor)
    flipped["sig"][0] ^= 1
    changed = loads(op.cbor)
    changed["header"]["payload"]["Data"]["value"] = [1, 2, 3]
    flat = dict(obj["header"])
    flat["sig"] = obj["sig"]
    flat["op_id"] = obj["op_id"]
    hx = op.op_id.hex()
    return [
        (dumps(flipped), f"invalid signature for op {hx}"),
        (dumps(changed), "op_id mismatch (header hash != embedded op_id)"),
        (b"\xb9\x00\x03" + op.cbor[1:], f"non-canonical op encoding for {hx}"),
        (dumps(flat), "decode Op CBOR: op: missing field `header`"),
        (op.cbor + b"\x00", "decode Op CBOR: op: 1 trailing bytes after the CBOR item"),
    ]


def test_fixture_round_trip_and_protocol():
    data = (VECTORS / "fixtures/ops.cbor").read_bytes()
    ops = read_log(data)
    st = MemoryOpStore()
    assert isinstance(st, OpStore)
    res = st.put_many([op.cbor for op in ops])
    assert res.stored == [op.op_id for op in ops] and res.duplicates == 0 and res.rejected == []
    for op in ops:
        assert st.get_op_bytes(op.op_id) == op.cbor
        assert st.get_op(op.op_id) == op
    assert st.op_count() == st.complete_count() == 5
    assert sorted(res.completed) == sorted(op.op_id for op in ops)
    assert st.load_ops_cbor([ops[1].op_id, ops[0].op_id]) == [ops[1].cbor, ops[0].cbor]
    assert [op.op_id for op in st.iter_topo_ops()] == st.topo_ids()
    assert [op.op_id for op in st.iter_topo_ops(3)] == st.topo_ids()[3:]


@pytest.mark.parametrize("case", range(5))
def test_put_rejects_with_message_and_writes_nothing(case):
    op = chain(1)[0]
    data, msg = bad_inputs(op)[case]
    st = MemoryOpStore()
    with pytest.raises(PutRejectedError) as e:
        st.put(data)
    assert str(e.value) == msg
    assert st.op_count() == 0 and not st.contains(op.op_id)
    # in a batch with a valid op, "raise" writes nothing at all
    other = chain(2, seed=5)
    with pytest.raises(PutRejectedError):
        st.put_many([other[0].cbor, data])
    assert st.op_count() == 0


def test_put_many_skip_reports_rejections_and_stores_the_rest():
    ops = chain(3)
    items = [ops[0].cbor] + [d for d, _ in bad_inputs(ops[1])] + [ops[2].cbor]
    st = MemoryOpStore()
    res = st.put_many(items, on_invalid="skip")
    assert res.stored == [ops[0].op_id, ops[2].op_id]
    assert [r.index for r in res.rejected] == [1, 2, 3, 4, 5]
    assert [r.message for r in res.rejected] == [m for _, m in bad_inputs(ops[1])]
    assert res.completed == [ops[0].op_id]  # op2 waits for op1
    assert st.topo_ids() == [ops[0].op_id] and st.pending_count() == 1
    res2 = st.put_many([ops[1]])
    assert res2.completed == [ops[1].op_id, ops[2].op_id]


def test_duplicates_first_copy_wins_and_are_counted():
    ops = chain(2)
    st = MemoryOpStore()
    assert st.put(ops[0].cbor) == ops[0].op_id
    res = st.put_many([ops[0].cbor, ops[1].cbor, ops[1]])
    assert res.stored == [ops[1].op_id] and res.duplicates == 2
    assert st.put(ops[0]) == ops[0].op_id
    assert st.op_count() == 2


def test_duplicate_with_forged_signature_is_still_rejected():
    op = chain(1)[0]
    st = MemoryOpStore([op])
    forged, _ = bad_inputs(op)[0]
    with pytest.raises(PutRejectedError, match="invalid signature"):
        st.put(forged)
    assert st.get_op_bytes(op.op_id) == op.cbor


def test_identical_bytes_of_a_stored_op_are_not_reverified():
    op = chain(1)[0]
    ok, rej = validate_ops([op.cbor], lambda i: op.cbor if i == op.op_id else None)
    assert rej == [] and ok[0][2] is True
    ok, rej = validate_ops([op.cbor])
    assert ok[0][2] is False


def test_orphans_then_parents():
    a, b, c = chain(3)
    st = MemoryOpStore()
    st.put(c.cbor)
    st.put(b.cbor)
    assert st.topo_ids() == [] and st.heads(8) == [] and st.missing_parents() == {a.op_id}
    res = st.put_many([a.cbor])
    assert res.completed == [a.op_id, b.op_id, c.op_id]
    assert st.topo_ids() == [a.op_id, b.op_id, c.op_id] and st.heads(8) == [c.op_id]
    assert [st.gen(x.op_id) for x in (a, b, c)] == [0, 1, 2]
    assert st.parents(c.op_id) == (b.op_id,)


def test_load_missing_op_message():
    st = MemoryOpStore()
    with pytest.raises(Exception, match="missing op " + "ab" * 32):
        st.load_ops_cbor([b"\xab" * 32])


# --------------------------------------------------------------------------- put_stream


def test_put_stream_stores_what_put_many_per_batch_stores():
    ops = chain(50)
    blobs = [op.cbor for op in ops]
    a, b = MemoryOpStore(), MemoryOpStore()
    got = list(a.put_stream(blobs, batch=7))
    want = [b.put_many(blobs[lo : lo + 7]) for lo in range(0, len(blobs), 7)]
    assert len(got) == 8 and [r.stored for r in got] == [r.stored for r in want]
    assert [r.completed for r in got] == [r.completed for r in want]
    assert a.topo_ids() == b.topo_ids() == [op.op_id for op in ops]
    assert list(a.put_stream([])) == []
    with pytest.raises(ValueError, match="batch must be positive"):
        list(a.put_stream(blobs, batch=0))


def test_put_stream_reports_rejections_by_stream_index_and_skips_them():
    ops = chain(20)
    bad = loads(ops[12].cbor)
    bad["sig"][0] ^= 1
    blobs = [op.cbor for op in ops]
    blobs[12] = dumps(bad)
    blobs[3] = b"\x01not an op"
    st = MemoryOpStore()
    results = list(st.put_stream(blobs, batch=5, on_invalid="skip"))
    rejected = [r for res in results for r in res.rejected]
    assert [(r.index, r.op_id) for r in rejected] == [(3, None), (12, ops[12].op_id)]
    assert rejected[1].message == f"invalid signature for op {ops[12].op_id.hex()}"
    assert st.op_count() == 18 and not st.contains(ops[12].op_id)


def test_put_stream_raise_keeps_earlier_batches_and_writes_nothing_of_the_failing_one():
    ops = chain(20)
    blobs = [op.cbor for op in ops]
    blobs[11] = b"\xa0"
    st = MemoryOpStore()
    with pytest.raises(PutRejectedError) as e:
        for _ in st.put_stream(blobs, batch=5):
            pass
    assert e.value.rejection.index == 11
    assert st.topo_ids() == [op.op_id for op in ops[:10]]  # batches 0-4 and 5-9, none of 10-14


def test_put_stream_logs_ingested_ops_in_stream_order():
    from ecac.core.audit import IngestedOp, MemorySink

    ops = chain(12)
    st = MemoryOpStore()
    st.audit = MemorySink()
    blobs = [op.cbor for op in ops]
    blobs[4] = dumps({**loads(ops[4].cbor), "sig": [0] * 64})
    list(st.put_stream(blobs, batch=3, on_invalid="skip"))
    assert st.audit.events == [IngestedOp.of(op, i != 4) for i, op in enumerate(ops)]


# --------------------------------------------------------------------------- snapshot and facts


def test_snapshot_and_facts_of_a_store_with_orphans():
    from ecac.core.snapshot import boundary_positions

    ops = chain(12)
    st = MemoryOpStore(ops[:8] + ops[9:])  # ops 9.. wait for op 8
    snap = st.snapshot(5)
    assert (snap.seq, snap.op_count, snap.complete_count, snap.pending_count) == (5, 11, 8, 3)
    assert snap.heads == (ops[7].op_id,) and snap.head_count == 1 and snap.missing_count == 1
    assert snap.samples == tuple(st.topo_ids()[p] for p in boundary_positions(8))
    assert snap.recent_bloom == st.recent_bloom(256) and snap.digest is None
    facts = st.facts
    assert facts.contains(ops[10].op_id) and not facts.is_complete(ops[10].op_id)
    assert facts.gen(ops[7].op_id) == 7 and facts.parents(ops[1].op_id) == (ops[0].op_id,)
    st.put(ops[8])
    assert st.snapshot().complete_count == 12 and facts.is_complete(ops[11].op_id)  # facts are live
    assert snap.complete_count == 8  # the old snapshot did not change
