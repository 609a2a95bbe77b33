"""Every core vector of the spec (vectors/expected.json and the fixture files).

Covers: op logs (ids, signatures, re-encoding, file hashes, per-op fields, topo order,
state JSON and digest, insertion-order independence), the key-independent state rows of
core §16.1, the negative digest, BLAKE3 examples, state snapshots and checkpoint blobs,
key derivation, the data-key grammar, the annotated ops of core §3.4, gen_hb_chain(42, 3)
and the op-make-min op.
"""

from __future__ import annotations

import hashlib
import itertools
import random

import blake3
import pytest
from nacl.signing import SigningKey

from ecac.core.codec import dumps
from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, key_seed, public_key
from ecac.core.op import Data, Revoke, header_obj, make_op
from ecac.core.opcodec import decode_op, encode_ops, read_log
from ecac.core.replay import replay_full
from ecac.core.resources import derive_action_and_tags
from ecac.core.sig import check_op
from ecac.core.state import STATE_DOMAIN, State, checkpoint_blob, load_checkpoint_blob
from ecac.testing.workloads import gen_hb_chain

OP_LOGS = [
    "fixtures/ops.cbor",
    "fixtures/hb_chain.cbor",
    "fixtures/mv_concurrent.cbor",
    "fixtures/orset_races.cbor",
    "fixtures_m5/hb_chain.cbor",
    "fixtures_m5/mv_concurrent.cbor",
    "fixtures_m5/orset_races.cbor",
]


def _digest_of_json(text: str) -> str:
    return blake3.blake3(STATE_DOMAIN + text.encode("utf-8")).hexdigest()


def test_op_log_list_is_complete(vectors):
    assert sorted(vectors.op_logs) == sorted(OP_LOGS)


@pytest.mark.parametrize("name", OP_LOGS)
def test_op_log_file_facts(vectors, name):
    exp = vectors.op_logs[name]
    data = vectors.read(name)
    assert len(data) == exp["file_size"]
    assert hashlib.sha256(data).hexdigest() == exp["sha256_hex"]
    assert blake3.blake3(data).hexdigest() == exp["blake3_hex"]
    ops = read_log(data, name)
    assert len(ops) == exp["op_count"]
    # every op verifies and the file re-encodes byte for byte
    assert all(check_op(op) is None for op in ops) is exp["all_ops_verify"]
    assert (encode_ops(ops) == data) is exp["reencodes_byte_for_byte"]
    assert sorted({op.author_pk.hex() for op in ops}) == sorted(exp["author_pks"])
    for op, e in zip(ops, exp["ops_in_file_order"], strict=True):
        assert op.op_id.hex() == e["op_id_hex"]
        assert [p.hex() for p in op.parents] == e["parents"]
        assert op.hlc == Hlc(**e["hlc"])
        assert op.kind == e["payload"] == "Data"
        assert isinstance(op.payload, Data)
        assert op.payload.key == e["key"]
        assert op.payload.value.hex() == e["value_hex"]
        assert len(op.cbor) == e["op_cbor_len"]
        assert decode_op(op.cbor) == op  # each op is canonical on its own too


@pytest.mark.parametrize("name", OP_LOGS)
def test_op_log_replay(vectors, name):
    exp = vectors.op_logs[name]
    dag = Dag()
    assert dag.admit_and_insert(vectors.ops(name)) == []
    assert [i.hex() for i in dag.topo_ids()] == exp["topo_order"]
    state, digest = replay_full(dag)
    assert state.to_json() == exp["state_json"]
    assert digest.hex() == exp["state_digest_hex"]


@pytest.mark.parametrize("name", OP_LOGS)
def test_op_log_every_insertion_order_gives_the_same_result(vectors, name):
    exp = vectors.op_logs[name]
    ops = vectors.ops(name)
    for perm in itertools.permutations(ops):
        dag = Dag.from_ops(perm)
        assert [i.hex() for i in dag.topo_ids()] == exp["topo_order"]
        assert replay_full(dag)[1].hex() == exp["state_digest_hex"]


def test_state_digest_rows(vectors):
    rows = vectors.expected["state_digests"]
    assert len(rows) == 10
    by_file = {}
    for row in rows:
        # the digest is the domain-separated BLAKE3 of exactly this JSON
        assert _digest_of_json(row["state_json"]) == row["digest_hex"]
        for src in row["source"].split(", "):
            by_file[src] = row
    for name in OP_LOGS:
        state, digest = replay_full(Dag.from_ops(vectors.ops(name)))
        assert state.to_json() == by_file[name]["state_json"]
        assert digest.hex() == by_file[name]["digest_hex"]
    empty = next(r for r in rows if r["source"] == "empty state")
    assert State().to_json() == empty["state_json"]
    assert State().digest().hex() == empty["digest_hex"]
    chain_row = next(r for r in rows if r["source"].startswith("gen_hb_chain"))
    for seed in (0, 1, 42, 2**64 - 1):
        state, digest = replay_full(gen_hb_chain(seed, 3))
        assert state.to_json() == chain_row["state_json"]
        assert digest.hex() == chain_row["digest_hex"]


def test_state_digest_negative(vectors):
    neg = vectors.expected["state_digest_negative"]
    assert _digest_of_json(neg["wrong_state_json"]) == neg["wrong_digest_hex"]
    state, digest = replay_full(Dag.from_ops(vectors.ops("fixtures/ops.cbor")))
    assert state.to_json() != neg["wrong_state_json"]
    assert digest.hex() != neg["wrong_digest_hex"]


def test_blake3_examples(vectors):
    ex = vectors.expected["blake3_examples"]
    for text in ("A", "B", "v1", "v2"):
        assert blake3.blake3(text.encode()).hexdigest() == ex[text]
    # projection order of core §9: A before B, v1 before v2
    assert ex["A"] < ex["B"] and ex["v1"] < ex["v2"]


@pytest.mark.parametrize("name", ["fixtures/ops.cbor", "fixtures/hb_chain.cbor"])
def test_state_snapshot_and_checkpoint_blob(vectors, name):
    exp = vectors.expected["state_snapshot"][name]
    state, digest = replay_full(Dag.from_ops(vectors.ops(name)))
    snap = state.snapshot_cbor()
    assert snap.hex() == exp["state_cbor_hex"]
    assert len(snap) == exp["state_cbor_len"]
    blob = checkpoint_blob(state, exp["topo_idx"])
    assert blob.hex() == exp["checkpoint_blob_hex"]
    assert len(blob) == exp["checkpoint_blob_len"]
    assert digest.hex() == exp["state_digest_hex"]
    restored = State.from_snapshot_cbor(bytes.fromhex(exp["state_cbor_hex"]))
    assert restored == state
    assert restored.snapshot_cbor() == snap
    loaded, idx = load_checkpoint_blob(bytes.fromhex(exp["checkpoint_blob_hex"]))
    assert idx == exp["topo_idx"]
    assert loaded == state
    assert loaded.digest() == digest


def test_key_pair(vectors):
    cases = vectors.expected["key_pair"]["cases"]
    assert len(cases) == 6
    for c in cases:
        label = c["label"].encode()
        assert key_seed(c["seed"], label).hex() == c["ed25519_seed_hex"]
        assert public_key(key_pair(c["seed"], label)).hex() == c["public_key_hex"]


def test_key_grammar(vectors):
    cases = vectors.expected["key_grammar"]["cases"]
    assert len(cases) == 24
    for c in cases:
        got = derive_action_and_tags(c["key"])
        want = c["result"]
        if want is None:
            assert got is None, c["key"]
        else:
            assert got is not None, c["key"]
            assert (got.action, got.obj, got.field, got.elem) == (
                want["action"],
                want["obj"],
                want["field"],
                want["elem"],
            )
            assert sorted(got.tags) == want["tags"]


def test_annotated_data_op(vectors):
    a = vectors.expected["annotated_op"]
    sk = SigningKey(bytes.fromhex(a["seed_hex"]))
    assert public_key(sk).hex() == a["public_key_hex"]
    d = a["data_op"]
    payload = Data(d["payload"]["Data"]["key"], bytes.fromhex(d["payload"]["Data"]["value_hex"]))
    op = make_op(sk, [bytes.fromhex(p) for p in d["parents"]], Hlc(**d["hlc"]), payload)
    assert op.header_bytes().hex() == d["header_cbor_hex"]
    assert op.op_id.hex() == d["op_id_hex"]
    assert op.sig.hex() == d["sig_hex"]
    assert op.cbor.hex() == d["op_cbor_hex"]
    assert op.cbor.startswith(bytes.fromhex("a366686561646572"))
    assert decode_op(op.cbor) == op
    assert check_op(op) is None


def test_annotated_revoke_op(vectors):
    a = vectors.expected["annotated_op"]
    sk = SigningKey(bytes.fromhex(a["seed_hex"]))
    r = a["revoke_op"]
    rv = r["payload"]["Revoke"]
    payload = Revoke(
        bytes.fromhex(rv["subject_pk_hex"]), rv["role"], tuple(rv["scope_tags"]), Hlc(**rv["at"])
    )
    parents = [bytes.fromhex(p) for p in r["parents_sorted"]]
    # creation sorts parents: giving them in the other order yields the same op
    op = make_op(sk, list(reversed(parents)), Hlc(**r["hlc"]), payload)
    assert list(op.parents) == parents
    assert op.header_bytes().hex() == r["header_cbor_hex"]
    assert dumps(payload.to_obj()).hex() == r["payload_cbor_hex"]
    assert op.op_id.hex() == r["op_id_hex"]
    assert op.sig.hex() == r["sig_hex"]
    assert check_op(op) is None
    assert decode_op(op.cbor) == op


def test_gen_hb_chain_42_3(vectors):
    g = vectors.expected["gen_hb_chain_42_3"]
    assert (g["author_seed"]["seed"], g["author_seed"]["label"]) == (42, "hb")
    ops = gen_hb_chain(42, 3)
    for op, e in zip(ops, g["ops"], strict=True):
        assert op.op_id.hex() == e["op_id_hex"]
        assert len(op.cbor) == e["cbor_len"]
        assert op.cbor.hex() == e["op_cbor_hex"]
        assert dumps(header_obj(op.parents, op.hlc, op.author_pk, op.payload)).hex() == e["header_cbor_hex"]
        assert op.sig.hex() == e["sig_hex"]
    log = encode_ops(ops)
    assert len(log) == g["log_cbor_len"]
    assert blake3.blake3(log).hexdigest() == g["log_blake3_hex"]
    state, digest = replay_full(read_log(log))
    assert state.to_json() == g["replay_state_json"]
    assert digest.hex() == g["replay_digest_hex"]


def test_op_make_min_op(vectors):
    m = vectors.expected["op_make_min"]
    sk = SigningKey(bytes.fromhex(m["author_seed_hex"]))
    assert public_key(sk).hex() == m["author_pk_hex"]
    (op,) = read_log(bytes.fromhex(m["file_cbor_hex"]))
    assert op.op_id.hex() == m["op_id_hex"]
    assert op.author_pk == public_key(sk)
    assert check_op(op) is None
    assert encode_ops([op]).hex() == m["file_cbor_hex"]


def test_fixture_topo_order_is_independent_of_random_shuffles(vectors):
    # the larger fixture again, through random shuffles with a DAG that is queried in between
    exp = vectors.op_logs["fixtures/ops.cbor"]
    ops = vectors.ops("fixtures/ops.cbor")
    rng = random.Random(5)
    for _ in range(20):
        perm = ops[:]
        rng.shuffle(perm)
        dag = Dag()
        for op in perm:
            dag.insert(op)
            dag.topo_order()  # incremental maintenance must not change the final order
        assert [i.hex() for i in dag.topo_ids()] == exp["topo_order"]
