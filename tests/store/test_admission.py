"""Store admission (docs/security.md §2): a strict store refuses what strict replay would void, a
reference store refuses only strict-only payloads, on every put path (put, put_many, put_stream,
the writer), deterministically, counted and logged, losing nothing already stored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Data, Op, make_op
from ecac.core.profile import (
    HLC_REGRESSION,
    INVALID_ANCESTOR,
    MISSING_PARENT,
    REFERENCE_PROFILE,
    genesis_op,
)
from ecac.store.memory import MemoryOpStore, PutRejectedError
from ecac.store.rocks import Store
from ecac.store.writer import StoreWriter

A = key_pair(3, b"admission/a")
B = key_pair(3, b"admission/b")


def _data(parents: list[Op], ms: int, v: bytes = b"1", sk=B) -> Op:  # type: ignore[no-untyped-def]
    return make_op(sk, [p.op_id for p in parents], Hlc(ms, 0, 0), Data("mv:o:x", v))


def _strict_log() -> tuple[Op, Op, Op, Op, Op]:
    """genesis (10) <- good (20) <- bad (15: below its parent) <- child (30); good <- after (25)."""
    g = genesis_op(A, "p", [public_key(A)], Hlc(10, 0, 0))
    good = _data([g], 20)
    bad = _data([good], 15, b"2")
    child = _data([bad], 30, b"3")
    after = _data([good], 25, b"4")
    return g, good, bad, child, after


def test_strict_store_refuses_an_hlc_regression_and_its_descendants(caplog: pytest.LogCaptureFixture) -> None:
    g, good, bad, child, after = _strict_log()
    st = MemoryOpStore([g, good])
    assert st.profile is not None and st.profile.strict and st.profile.genesis_id == g.op_id
    with pytest.raises(PutRejectedError, match=HLC_REGRESSION) as e:
        st.put(bad)
    assert e.value.rejection.op_id == bad.op_id
    assert st.op_count() == 2  # nothing written
    # skip: the refused op and its descendant are reported, the valid op is stored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ecac.store"):
        res = st.put_many([child, bad, after], on_invalid="skip")
    assert res.stored == [after.op_id]
    assert [(r.index, r.op_id) for r in res.rejected] == [(0, child.op_id), (1, bad.op_id)]
    assert INVALID_ANCESTOR in res.rejected[0].message and HLC_REGRESSION in res.rejected[1].message
    assert st.admission_refused == 3
    lines = [r.getMessage() for r in caplog.records if "admission refused" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in m for m in lines)
    assert any(bad.op_id.hex() in m and HLC_REGRESSION in m for m in lines)
    # a descendant offered later: its parent is not stored, so it cannot enter either
    with pytest.raises(PutRejectedError, match=MISSING_PARENT):
        st.put(child)
    assert sorted(st.topo_ids()) == sorted([g.op_id, good.op_id, after.op_id])


def test_strict_store_refuses_a_second_genesis_and_a_foreign_root() -> None:
    g, good, *_ = _strict_log()
    st = MemoryOpStore([g, good])
    other = genesis_op(B, "q", [public_key(B)], Hlc(11, 0, 0))
    with pytest.raises(PutRejectedError, match="second genesis"):
        st.put(other)
    with pytest.raises(PutRejectedError, match="does not descend"):
        st.put(_data([], 40))
    assert st.put(g) == g.op_id  # the genesis itself again: a duplicate, not a refusal
    assert st.op_count() == 2


def test_verdicts_depend_on_the_op_and_its_parents_only() -> None:
    """Any arrival order and batching gives every replica the same stored set."""
    g, good, bad, child, after = _strict_log()
    stores = []
    for batches in (
        [[g, good, bad, child, after]],
        [[after, child, bad, good, g]],
        [[g], [good], [after, bad]],
    ):
        st = MemoryOpStore()
        for b in batches:
            st.put_many(b, on_invalid="skip")
        stores.append(sorted(st.topo_ids()))
    assert stores[0] == stores[1] == stores[2] == sorted([g.op_id, good.op_id, after.op_id])


def test_an_empty_store_takes_the_profile_of_its_first_batch() -> None:
    g, good, *_ = _strict_log()
    root = _data([], 5)
    st = MemoryOpStore()
    assert st.profile is None
    res = st.put_many([root, g, good], on_invalid="skip")  # a genesis in the batch: strict
    assert res.stored == [g.op_id, good.op_id] and [r.index for r in res.rejected] == [0]
    assert st.profile is not None and st.profile.strict


def test_reference_store_refuses_only_a_genesis_and_is_otherwise_unchanged() -> None:
    g, *_ = _strict_log()
    root = _data([], 50)
    back = _data([root], 10)  # an HLC regression: the reference admits it (and replays it)
    orphan = _data([back, _data([], 1, b"missing")], 60)  # a parent that is not stored: admitted
    st = MemoryOpStore([root])
    assert st.profile == REFERENCE_PROFILE
    assert st.put_many([back, orphan]).stored == [back.op_id, orphan.op_id]
    with pytest.raises(PutRejectedError, match="belongs to a strict project"):
        st.put(g)
    assert st.op_count() == 3 and st.admission_refused == 1


def test_rocks_store_keeps_its_profile_across_reopen_and_bulk_import_refuses(tmp_path: Path) -> None:
    g, good, bad, child, after = _strict_log()
    with Store.open(tmp_path / "db") as st:
        st.put_many([g, good])
    with Store.open(tmp_path / "db") as st:
        assert st.profile is not None and st.profile.genesis_id == g.op_id
        results = list(st.put_stream([after, bad, child], batch=1, on_invalid="skip"))
        assert [r.stored for r in results] == [[after.op_id], [], []]
        assert [r.rejected[0].index for r in results[1:]] == [1, 2]
        with pytest.raises(PutRejectedError, match=HLC_REGRESSION):
            list(st.put_stream([bad], batch=8))
        assert st.op_count() == 3
        st.verify_integrity(verify_sigs=True)


def test_writer_refuses_without_failing_and_counts() -> None:
    g, good, bad, child, after = _strict_log()
    with StoreWriter(MemoryOpStore([g, good])) as w:
        with pytest.raises(PutRejectedError, match=HLC_REGRESSION):
            w.submit_put([bad], source="sync").result(10)
        with pytest.raises(PutRejectedError, match=HLC_REGRESSION):
            w.submit_local(lambda store: [bad]).result(10)
        done = w.submit_put([after, bad, child], on_invalid="skip").result(10)
        assert done.result.stored == [after.op_id] and len(done.result.rejected) == 2
        assert w.failure is None and w.stats.ops_refused == 4 and w.stats.as_dict()["ops_refused"] == 4
        assert w.snapshot.op_count == 3
        # the writer goes on: refusals are not write failures
        assert w.submit_put([_data([after], 40, b"5")]).result(10).result.stored


def test_op_append_of_a_regressing_op_is_a_one_line_error(tmp_path: Path) -> None:
    from conftest import cli_run
    from ecac.core.opcodec import encode_ops

    g, good, bad, child, after = _strict_log()
    db = tmp_path / "db"
    with Store.open(db) as st:
        st.put_many([g, good])
    f = tmp_path / "ops.cbor"
    f.write_bytes(encode_ops([after, bad, child]))
    r = cli_run("op-append", "--db", str(db), str(f))
    assert r.exit_code == 1
    msg = str(r.exception)
    assert HLC_REGRESSION in msg and bad.op_id.hex() in msg and "\n" not in msg
    with Store.open(db) as st:
        assert st.op_count() == 3 and st.contains(after.op_id) and not st.contains(bad.op_id)


def test_a_synced_commit_with_a_regressing_op_is_the_peers_fault() -> None:
    """Network ingest ends in the same put: the refusal becomes ``rejected_index``, which the
    coordinator treats like any invalid op (valid prefix kept, peer penalised)."""
    from ecac.net.writeio import apply_commit
    from ecac.sync.effects import CommitOps

    g, good, bad, child, after = _strict_log()
    st = MemoryOpStore([g])
    out = apply_commit(st, CommitOps(1, "peer", 1, (good, after, bad, child)))
    assert out.rejected_index == 2 and HLC_REGRESSION in (out.error or "") and out.stored == ()
    assert st.op_count() == 1


def test_audit_trail_of_a_strict_store_names_strict_reasons(tmp_path: Path) -> None:
    """``op-append-audited`` logs an admission refusal with its code; ``audit-record`` and
    ``audit-verify-full`` replay a strict store with the strict gate's reasons."""
    from conftest import cli_ok
    from ecac.core.audit import SkippedOp
    from ecac.core.opcodec import encode_ops
    from ecac.store.auditlog import AuditReader

    g, good, bad, child, after = _strict_log()
    db, audit_dir = tmp_path / "db", tmp_path / "audit"
    env = {"ECAC_AUDIT_DIR": str(audit_dir), "ECAC_NODE_SK_HEX": "23" * 32}
    with Store.open(db) as st:
        st.put_many([g, good])
    f = tmp_path / "ops.cbor"
    f.write_bytes(encode_ops([after, bad, child]))
    cli_ok("op-append-audited", "-d", str(db), str(f), env=env)
    events = [rec.entry.event for _, _, rec in AuditReader(audit_dir).iter_records()]
    assert events == [SkippedOp(bad.op_id, 0, HLC_REGRESSION), SkippedOp(child.op_id, 0, INVALID_ANCESTOR)]
    env["ECAC_AUDIT_DIR"] = str(tmp_path / "decisions")  # the replay's decisions in a log of their own
    cli_ok("audit-record", "-d", str(db), env=env)
    events = [rec.entry.event for _, _, rec in AuditReader(tmp_path / "decisions").iter_records()]
    assert {e.op_id: e.reason for e in events if isinstance(e, SkippedOp)} == {
        good.op_id: "no_grant_in_past",
        after.op_id: "no_grant_in_past",
    }
    assert "OK: replay decisions match" in cli_ok("audit-verify-full", "-d", str(db), env=env).stdout
