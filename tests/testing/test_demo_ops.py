"""Demo op generator: deterministic, chained, HLCs after the store's, verifiable, bounded."""

from __future__ import annotations

import itertools

import pytest

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.sig import admit
from ecac.store.memory import MemoryOpStore
from ecac.testing.demo_ops import MAX_DEMO_OPS, check_frame, demo_ops, demo_ops_for, max_physical_ms


def test_chain_layout_and_payloads() -> None:
    parents = [bytes([1]) * 32, bytes([2]) * 32]
    ops = demo_ops(parents, 500, 6, seed=11)
    assert ops[0].parents == tuple(sorted(parents))
    for prev, op in itertools.pairwise(ops):
        assert op.parents == (prev.op_id,)
    assert [op.hlc for op in ops] == [Hlc(501, i, 11) for i in range(6)]
    assert [op.payload for op in ops] == [
        Data(f"mv:c3:param{i % 4}", f"demo-11-{i}".encode()) for i in range(6)
    ]
    assert {op.author_pk for op in ops} == {bytes(key_pair(11, b"demo").verify_key)}
    good, bad = admit(ops)
    assert len(good) == 6 and bad == []


def test_deterministic() -> None:
    a = demo_ops([], 0, 20, seed=3)
    b = demo_ops([], 0, 20, seed=3)
    assert [op.cbor for op in a] == [op.cbor for op in b]
    assert [op.op_id for op in demo_ops([], 0, 20, seed=4)] != [op.op_id for op in a]


def test_continues_a_store() -> None:
    sk = key_pair(1, b"x")
    root = make_op(sk, [], Hlc(9_000, 0, 1), Data("mv:o:x", b"r"))
    orphan = make_op(sk, [bytes(32)], Hlc(12_000, 0, 1), Data("mv:o:x", b"o"))
    store = MemoryOpStore([root, orphan])
    assert max_physical_ms(store) == 12_000  # pending ops count too
    ops = demo_ops_for(store, 3, seed=1)
    assert ops[0].parents == (root.op_id,)
    assert ops[0].hlc == Hlc(12_001, 0, 1)
    assert max_physical_ms(MemoryOpStore()) == 0
    store.put_many(ops)
    again = demo_ops_for(store, 1, seed=1)
    assert again[0].parents == (ops[-1].op_id,) and again[0].hlc == Hlc(12_002, 0, 1)


@pytest.mark.parametrize(("count", "seed"), [(0, 1), (MAX_DEMO_OPS + 1, 1), (1, -1), (1, 2**64), (True, 1)])
def test_bad_arguments(count: int, seed: int) -> None:
    with pytest.raises(EcacError):
        demo_ops([], 0, count, seed)


def test_refuses_ops_over_max_frame() -> None:
    op = make_op(key_pair(1, b"x"), [], Hlc(1, 0, 0), Data("mv:o:x", bytes(range(24, 256)) * 10))
    check_frame(op, max_frame=1 << 20)
    with pytest.raises(EcacError, match="MAX_FRAME"):
        check_frame(op, max_frame=len(op.cbor))
