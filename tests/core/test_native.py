"""ecac._native: the C bulk decoder of stored canonical Data ops used by the store replay.

Its contract: a row it places is exactly what the strict decoder reads from those bytes
(with the header equal to the ``edges`` row); every other row is handed back untouched.
"""

from __future__ import annotations

import random
import sys

import pytest

from conftest import vectors_dir
from ecac import _native
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.core.opcodec import decode_op, read_log
from ecac.core.sig import check_sigs
from ecac.store.rows import EdgeVal
from ecac.testing.workloads import OTHER_KINDS, gen_hb_chain, gen_random_dag

SK = key_pair(3, b"test/native")


def _ops() -> list[Op]:
    rng = random.Random(7)
    ops = read_log((vectors_dir() / "fixtures/ops.cbor").read_bytes())
    ops += gen_hb_chain(5, 20)
    ops += gen_random_dag(
        rng, 60, max_parents=4, random_hlc=True, other_kinds=OTHER_KINDS, other_fraction=0.3
    )
    big = [
        make_op(SK, [], Hlc(2**64 - 1, 2**32 - 1, 2**32 - 1), Data("k" * 300, bytes(range(256)) * 2)),
        make_op(SK, [bytes([i]) * 32 for i in range(30)], Hlc(24, 255, 256), Data("", b"")),
        make_op(SK, [b"\x18" * 32], Hlc(65535, 65536, 23), Data("mv:o:é", b"\x18" * 40)),
    ]
    return ops + big


def _scan(ops: list[Op], rows: list[tuple[bytes, bytes]] | None = None):
    edges = {op.op_id: EdgeVal.of(op) for op in ops}
    positions = {op.op_id: i for i, op in enumerate(ops)}
    out: list[Op | None] = [None] * len(ops)
    placed, rest = _native.scan(
        rows if rows is not None else [(op.op_id, op.cbor) for op in ops], edges, positions, out
    )
    return placed, rest, out


def test_intact_rows_decode_exactly_as_the_strict_decoder():
    ops = _ops()
    placed, rest, out = _scan(ops)
    data_ops = [op for op in ops if type(op.payload) is Data]
    assert placed == len(data_ops) and placed + len(rest) == len(ops)
    assert [r[0] for r in rest] == [op.op_id for op in ops if type(op.payload) is not Data]
    for op, got in zip(ops, out, strict=True):
        if type(op.payload) is Data:
            strict = decode_op(op.cbor)
            assert type(got) is Op and got == strict and got.sig == strict.sig and got.cbor is op.cbor
            assert type(got.hlc) is Hlc and type(got.payload) is Data
            assert got.payload.key is sys.intern(op.payload.key)  # interned, as the Python decoders do
        else:
            assert got is None


def test_rows_outside_positions_are_skipped_and_a_missing_edge_is_handed_back():
    ops = [op for op in _ops() if type(op.payload) is Data][:5]
    edges = {op.op_id: EdgeVal.of(op) for op in ops[1:]}
    positions = {op.op_id: i for i, op in enumerate(ops[:4])}
    out: list[Op | None] = [None] * 4
    placed, rest = _native.scan([(op.op_id, op.cbor) for op in ops], edges, positions, out)
    assert placed == 3 and rest == [(ops[0].op_id, ops[0].cbor)]  # ops[4] is not in positions
    assert out[0] is None and out[1:] == ops[1:4]


def test_every_single_byte_corruption_is_handed_back_or_read_as_the_strict_decoder_reads_it():
    ops = [op for op in _ops() if type(op.payload) is Data]
    rng = random.Random(11)
    for op in rng.sample(ops, 12) + ops[-3:]:
        data = op.cbor
        for i in range(len(data)):
            for v in {data[i] ^ 1, data[i] ^ 0x80, 0x00, 0x17, 0x18, 0x19, 0x60, 0x78, 0x98, 0xFF}:
                bad = data[:i] + bytes([v]) + data[i + 1 :]
                if bad == data:
                    continue
                placed, rest, out = _scan([op], [(op.op_id, bad)])
                if placed == 0:
                    assert rest == [(op.op_id, bad)] and out == [None]
                    continue
                strict = decode_op(bad)  # must accept: the scanner only places canonical rows
                got = out[0]
                assert got == strict and got.sig == strict.sig and got.cbor is bad


def test_truncated_extended_and_header_mismatched_rows_are_handed_back():
    op = next(op for op in _ops() if type(op.payload) is Data and op.parents)
    for bad in (op.cbor[:-1], op.cbor + b"\x00", op.cbor[: len(op.cbor) // 2], b"", b"\xa3"):
        assert _scan([op], [(op.op_id, bad)])[0] == 0
    h = op.hlc
    for edge in (
        EdgeVal(op.parents, op.author_pk, h.physical_ms + 1, h.logical, h.node_id),
        EdgeVal(op.parents, bytes(32), h.physical_ms, h.logical, h.node_id),
        EdgeVal((), op.author_pk, h.physical_ms, h.logical, h.node_id),
        EdgeVal(op.parents * 2, op.author_pk, h.physical_ms, h.logical, h.node_id),
    ):
        out: list[Op | None] = [None]
        placed, rest = _native.scan([(op.op_id, op.cbor)], {op.op_id: edge}, {op.op_id: 0}, out)
        assert placed == 0 and rest == [(op.op_id, op.cbor)]
    other = make_op(SK, [], Hlc(1, 0, 0), Data("x", b"y"))
    assert _scan([op], [(op.op_id, other.cbor)])[0] == 0  # the trailing id must be the row's key


def test_a_key_that_is_not_utf8_is_handed_back():
    op = make_op(SK, [], Hlc(1, 0, 0), Data("ab", b"v"))
    bad = op.cbor.replace(b"\x62ab", b"\x62\xff\xfe", 1)
    assert bad != op.cbor
    placed, rest, _ = _scan([op], [(op.op_id, bad)])
    assert placed == 0 and rest == [(op.op_id, bad)]


def test_bad_calls_raise_clear_errors_and_change_nothing():
    op = make_op(SK, [], Hlc(1, 0, 0), Data("k", b"v"))
    edges = {op.op_id: EdgeVal.of(op)}
    assert _native.scan([(op.op_id, op.cbor)], edges, {op.op_id: 5}, [None]) == (0, [])  # not this snapshot's
    with pytest.raises(ValueError, match="negative position"):
        _native.scan([(op.op_id, op.cbor)], edges, {op.op_id: -1}, [None])
    filled = [op]
    with pytest.raises(ValueError, match="already filled"):
        _native.scan([(op.op_id, op.cbor)], edges, {op.op_id: 0}, filled)
    assert filled == [op]
    with pytest.raises(TypeError, match="pairs"):
        _native.scan([op.cbor], edges, {op.op_id: 0}, [None])
    with pytest.raises(TypeError):
        _native.scan([], [], {}, [])


def test_scan_interns_data_keys_without_module_state():
    """Keys are interned (one object per distinct key) through a per-call table, more keys than it holds."""
    ops = [make_op(SK, [], Hlc(i, 0, 0), Data(f"native:{i % 5000}", b"v")) for i in range(6000)]
    placed, _, out = _scan(ops)
    assert placed == 6000
    assert [o.payload.key for o in out] == [op.payload.key for op in ops]
    assert all(sys.intern(o.payload.key) is o.payload.key for o in out)
    assert out[0].payload.key is out[5000].payload.key
    with pytest.raises(TypeError):
        _native.configure_ops(Op, Hlc, Data, {}, 4096)  # the old shared-table form is gone


def test_skeletons_carry_the_edges_header_and_the_given_payload():
    ops = [op for op in _ops() if op.parents][:20]
    edges = {op.op_id: EdgeVal.of(op) for op in ops}
    marker = Data("", b"")
    got = _native.skeletons([op.op_id for op in ops], edges, marker, b"", b"")
    assert [(g.parents, g.hlc, g.author_pk, g.op_id) for g in got] == [
        (op.parents, op.hlc, op.author_pk, op.op_id) for op in ops
    ]
    assert all(type(g) is Op and g.payload is marker and g.sig == b"" and g.cbor == b"" for g in got)
    missing = b"\x01" * 32
    with pytest.raises(KeyError) as e:
        _native.skeletons([ops[0].op_id, missing], edges, marker, b"", b"")
    assert e.value.args[0] == missing


# --------------------------------------------------------------------------- batch Ed25519


def test_verify_batch_agrees_with_pynacl_on_valid_forged_and_malformed_triples():
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    rng = random.Random(5)
    triples = []
    for i in range(300):
        sk = key_pair(i % 7, b"test/verify")
        msg = rng.randbytes(rng.choice([0, 1, 32, 100]))
        sig = sk.sign(msg).signature
        pk = bytes(sk.verify_key)
        kind = i % 5
        if kind == 1:
            sig = bytes([sig[0] ^ (1 << rng.randrange(8))]) + sig[1:]
        elif kind == 2:
            msg = msg + b"x"
        elif kind == 3:
            pk = bytes(key_pair(99, b"other").verify_key)
        triples.append((pk, sig, msg))

    def nacl_ok(pk: bytes, sig: bytes, msg: bytes) -> bool:
        try:
            crypto_sign_open(sig + msg, pk)
        except BadSignatureError:
            return False
        return True

    want = [nacl_ok(*t) for t in triples]
    assert 0 < sum(want) < len(want)
    assert _native.verify_batch(triples) == want
    assert check_sigs(triples) == want  # the core's serial check is this call
    pk, sig, msg = triples[0]
    assert (
        _native.verify_batch([(pk[:31], sig, msg), (pk, sig + b"\x00", msg), (pk, sig, None), (1, 2, 3)])
        == [False] * 4
    )
    assert _native.verify_batch([]) == []
    with pytest.raises(TypeError, match="item 1 is not a"):
        _native.verify_batch([(pk, sig, msg), (pk, sig)])


_LAZY_SODIUM = """
import sys, threading
from ecac import _native
assert "nacl._sodium" not in sys.modules and "nacl" not in sys.modules, "libsodium loaded at import"
from nacl.signing import SigningKey
sk = SigningKey(bytes(32))
sig = sk.sign(b"m").signature
pk = bytes(sk.verify_key)
out, start = [], threading.Barrier(4)
def run():
    start.wait()
    out.append(_native.verify_batch([(pk, sig, b"m"), (pk, sig, b"x")]))
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert out == [[True, False]] * 4, out
print("ok")
"""


def test_verify_batch_resolves_libsodium_on_first_call_not_at_import():
    """Importing the C module loads no libsodium; concurrent first calls all resolve it."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", _LAZY_SODIUM], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# --------------------------------------------------------------------------- DAG chain extension


def test_extend_chains_extends_tails_and_hands_back_everything_else():
    from ecac.core.dag import _UNPLACED, Dag, _Node

    sk = key_pair(4, b"test/native-dag")
    root = make_op(sk, [], Hlc(1, 0, 0), Data("k", b"0"))
    a1 = make_op(sk, [root.op_id], Hlc(2, 0, 0), Data("k", b"1"))
    a2 = make_op(sk, [a1.op_id], Hlc(3, 0, 0), Data("k", b"2"))
    fork = make_op(sk, [a1.op_id], Hlc(4, 0, 1), Data("k", b"f"))  # a1 is no longer its chain's tail
    merge = make_op(sk, [a2.op_id, fork.op_id], Hlc(5, 0, 0), Data("k", b"m"))
    orphan = make_op(sk, [b"\x05" * 32], Hlc(6, 0, 0), Data("k", b"o"))
    dag = Dag()
    dag.extend_ordered([root])
    nodes, chains = dag._nodes, dag._chains
    order = list(dag.topo_order())
    ops = [a1, a2, fork, merge, orphan]
    assert _native.extend_chains(ops, 0, nodes, chains, order, _UNPLACED) == 2  # stops at the fork
    n_root, n1, n2 = nodes[root.op_id], nodes[a1.op_id], nodes[a2.op_id]
    assert [type(n) for n in (n1, n2)] == [_Node, _Node] and order == [root, a1, a2]
    assert (n1.chain, n1.idx, n1.gen, n1.pos, n1.deg, n1.op) == (0, 1, 1, 1, 0, a1)
    assert (n2.chain, n2.idx, n2.gen, n2.pos, n2.children) == (0, 2, 2, 2, None)
    assert n2.summary is n_root.summary and n2.filt == n_root.filt and n2.floor == n_root.floor
    assert n_root.children is n1 and n1.children is n2 and chains[0] == [n_root, n1, n2]
    for start, why in ((2, "fork"), (3, "two parents"), (4, "unknown parent")):
        assert _native.extend_chains(ops, start, nodes, chains, order, _UNPLACED) == start, why
    assert _native.extend_chains([a1], 0, nodes, chains, order, _UNPLACED) == 0  # already activated
    assert _native.extend_chains([b"not an op"], 0, nodes, chains, order, _UNPLACED) == 0
    b3 = make_op(sk, [a2.op_id], Hlc(7, 0, 2), Data("k", b"3"))
    assert _native.extend_chains([b3], 0, nodes, chains, None, _UNPLACED) == 1  # unplaced: not ordered
    assert nodes[b3.op_id].pos == _UNPLACED and len(order) == 3 and n2.children is nodes[b3.op_id]
    b4 = make_op(sk, [a2.op_id], Hlc(8, 0, 3), Data("k", b"4"))  # a2 is no longer a tail: not extended
    assert _native.extend_chains([b4], 0, nodes, chains, None, _UNPLACED) == 0
    assert _native.extend_chains([], 0, nodes, chains, order, _UNPLACED) == 0
    with pytest.raises(TypeError, match="order must be a list or None"):
        _native.extend_chains([b4], 0, nodes, chains, (), _UNPLACED)


def test_dags_built_by_insert_and_by_extend_ordered_have_equal_indexes():
    """Both activation paths go through extend_chains for chain extensions and through
    Python for the rest; the per-node index data must come out the same either way."""
    from ecac.core.dag import Dag
    from ecac.testing.workloads import gen_random_dag

    rng = random.Random(13)
    for n_writers in (1, 3, 8):
        ops = gen_random_dag(rng, 300, max_parents=3, n_authors=n_writers, random_hlc=True)
        order = Dag.from_ops(ops).topo_order()
        by_insert = Dag.from_ops(order)  # the same activation order, so the same chain ids
        by_extend = Dag()
        by_extend.extend_ordered(order)
        assert by_extend.topo_order() == by_insert.topo_order()
        for op in ops:
            a, b = by_insert._nodes[op.op_id], by_extend._nodes[op.op_id]
            assert (a.chain, a.idx, a.gen, a.floor, a.filt, a.summary) == (
                b.chain,
                b.idx,
                b.gen,
                b.floor,
                b.filt,
                b.summary,
            )
        sample = ops[::17]
        assert all(
            by_insert.hb(x.op_id, y.op_id) == by_extend.hb(x.op_id, y.op_id) for x in sample for y in sample
        )
