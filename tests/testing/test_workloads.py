"""Workload generators (store §3.4, §5.1)."""

from __future__ import annotations

import random

from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Data
from ecac.core.replay import replay_full
from ecac.core.sig import check_op
from ecac.testing.workloads import (
    OTHER_KINDS,
    concurrent_authors,
    gen_concurrent,
    gen_hb_chain,
    gen_offline_revocation,
    gen_random_dag,
    iter_hb_chain,
    offline_revocation_cut,
    random_payload,
    round_half_away,
)


def test_hb_chain_layout():
    ops = gen_hb_chain(7, 5)
    pk = public_key(key_pair(7, b"hb"))
    for i, op in enumerate(ops):
        assert op.author_pk == pk
        assert op.parents == (() if i == 0 else (ops[i - 1].op_id,))
        assert op.hlc == Hlc(1000 + i, 0, i + 1)
        assert op.payload == Data("mv:o:x", f"v{i}".encode())
        assert check_op(op) is None
    assert list(iter_hb_chain(7, 5)) == ops
    assert gen_hb_chain(7, 0) == []
    assert gen_hb_chain(8, 2) != gen_hb_chain(7, 2)


def test_concurrent_layout():
    ops = gen_concurrent(1, 20, 3)
    keys = [public_key(key_pair(1, b"concurrent/%d" % a)) for a in range(3)]
    assert keys[0].hex() == "781ddb90bae4f3cd56f1187a96f800701a0716a3d5f91dc257ddfe1f177351ce"
    last: dict[int, bytes] = {}
    for i, op in enumerate(ops):
        a = i % 3
        assert op.author_pk == keys[a]
        assert op.parents == ((last[a],) if a in last else ())
        assert op.hlc == Hlc(1000 + i, 0, i + 1)
        assert op.payload == Data("mv:o:x", f"v{i}".encode())
        last[a] = op.op_id
    state, _ = replay_full(ops)
    # the last op of each writer is a concurrent winner
    assert state.get_field("o", "x").values() == sorted(f"v{i}".encode() for i in (17, 18, 19))


def test_concurrent_writer_count_is_clamped():
    assert [concurrent_authors(p) for p in (0, 1, 2, 5, 8, 9, 100)] == [2, 2, 2, 5, 8, 8, 8]
    assert len({op.author_pk for op in gen_concurrent(1, 30, 1)}) == 2
    assert len({op.author_pk for op in gen_concurrent(1, 30, 50)}) == 8


def test_offline_revocation_cut_and_rounding():
    assert round_half_away(10.5) == 11 and round(10.5) == 10
    assert round_half_away(2.4999) == 2
    assert offline_revocation_cut(0) == 1
    assert offline_revocation_cut(1) == 1
    assert offline_revocation_cut(10) == 7
    assert offline_revocation_cut(15) == 11  # 10.5 rounds away from zero, as Rust's f64::round
    ops, revoke_t = gen_offline_revocation(3, 10)
    assert len(ops) == 7 and revoke_t == 1007
    assert ops == gen_hb_chain(3 ^ 0x5EEDCAFE, 7)
    assert gen_offline_revocation(3, 0) == ([], 1001)
    big, _ = gen_offline_revocation(2**64 - 1, 2)
    assert big == gen_hb_chain((2**64 - 1) ^ 0x5EEDCAFE, 1)


def test_random_dag_is_deterministic_and_parent_first():
    a = gen_random_dag(random.Random(5), 25, other_kinds=OTHER_KINDS, other_fraction=0.5, random_hlc=True)
    b = gen_random_dag(random.Random(5), 25, other_kinds=OTHER_KINDS, other_fraction=0.5, random_hlc=True)
    assert a == b
    seen: set[bytes] = set()
    for op in a:
        assert set(op.parents) <= seen
        assert len(op.parents) <= 2
        assert check_op(op) is None
        seen.add(op.op_id)
    assert {op.kind for op in a} - {"Data"}  # some non-data payloads
    assert len(Dag.from_ops(a)) == 25
    plain = gen_random_dag(random.Random(1), 10)
    assert [op.hlc for op in plain] == [Hlc(100 + i, 0, i % 3) for i in range(10)]
    assert all(op.kind == "Data" for op in plain)


def test_random_payload_covers_every_kind():
    rng = random.Random(0)
    for kind in OTHER_KINDS:
        assert kind == random_payload(rng, kind, bytes(32)).NAME
