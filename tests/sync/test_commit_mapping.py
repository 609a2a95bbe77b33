"""The net layer maps CommitOps → generic put → CommitOutcome (the store writer knows no sync effects)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from ecac.core.errors import StoreError
from ecac.core.op import Op
from ecac.net.writeio import AsyncWriter, apply_commit, error_outcome
from ecac.store.memory import MemoryOpStore
from ecac.store.writer import StoreWriter, WriterFailedError
from ecac.sync.effects import CommitOps
from sim.dags import chain


def forged(op: Op) -> Op:
    return Op(op.parents, op.hlc, op.author_pk, op.payload, b"\x00" * 64, op.op_id, op.cbor)


def test_apply_commit_maps_stored_duplicates_and_refusals() -> None:
    st = MemoryOpStore()
    ops = chain(3)
    assert apply_commit(st, CommitOps(1, "P", 1, tuple(ops[:2]))).stored == (ops[0].op_id, ops[1].op_id)
    again = apply_commit(st, CommitOps(2, "P", 1, tuple(ops)))
    assert (again.commit_id, again.stored, again.duplicates, again.error) == (2, (ops[2].op_id,), 2, None)
    bad = apply_commit(MemoryOpStore(), CommitOps(3, "P", 1, (ops[0], forged(ops[1]))))
    assert bad.rejected_index == 1 and bad.error is not None and bad.stored == ()


def test_a_stopped_writer_is_not_a_commit_outcome() -> None:
    c = CommitOps(1, "P", 1, ())
    assert error_outcome(c, StoreError("disk")).error == "store error: disk"
    with pytest.raises(WriterFailedError):
        error_outcome(c, WriterFailedError("stopped"))


def test_async_writer_commit_gives_outcomes_for_success_refusal_and_store_errors() -> None:
    store = MemoryOpStore()
    real = store._write
    calls = {"n": 0}

    def flaky(batch: Sequence[Op]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("injected")
        real(batch)

    store._write = flaky  # type: ignore[method-assign]
    ops = chain(4)

    async def main() -> None:
        with StoreWriter(store) as w:
            aw = AsyncWriter(w)
            ok = await aw.commit(CommitOps(1, "P", 1, tuple(ops[:2])))
            assert ok.outcome.stored == (ops[0].op_id, ops[1].op_id) and ok.snapshot.op_count == 2
            failed = await aw.commit(CommitOps(2, "P", 1, (ops[2],)))
            assert failed.outcome.error == "store error: injected" and failed.outcome.rejected_index is None
            refused = await aw.commit(CommitOps(3, "P", 1, (ops[2], forged(ops[3]))))
            assert refused.outcome.rejected_index == 1 and refused.snapshot.op_count == 2
            assert w.failure is None

    trio.run(main)
