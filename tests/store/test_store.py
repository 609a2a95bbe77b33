"""RocksDB store: byte-exact rows, put validation, orphans, reopen, integrity, keyring, checkpoints."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as st_settings
from hypothesis import strategies as st_

from conftest import vectors_dir
from ecac.core.codec import dumps, loads
from ecac.core.dag import Dag
from ecac.core.errors import StoreError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.opcodec import decode_op, read_log
from ecac.core.replay import replay_full
from ecac.store.memory import OpStore, PutRejectedError
from ecac.store.resume import replay_store
from ecac.store.rocks import Store, open_rdict
from ecac.store.rows import (
    CF_NAMES,
    CheckpointBlob,
    EdgeVal,
    ResumeRecord,
    by_author_key,
    checkpoint_key,
    keyring_key,
    resume_key,
)

VECTORS = vectors_dir()
EXPECTED = json.loads((VECTORS / "expected.json").read_text())
STORE_V = EXPECTED["store"]
FIXTURES = [
    "fixtures/ops.cbor",
    "fixtures/hb_chain.cbor",
    "fixtures/mv_concurrent.cbor",
    "fixtures/orset_races.cbor",
]


def hb_chain(seed: int, n: int):
    sk = key_pair(seed, b"hb")
    ops, prev = [], []
    for i in range(n):
        op = make_op(sk, prev, Hlc(1000 + i, 0, i + 1), Data("mv:o:x", f"v{i}".encode()))
        ops.append(op)
        prev = [op.op_id]
    return ops


def raw_rows(path: Path) -> dict[str, dict[bytes, bytes]]:
    """Every row of every CF, read through a separate raw handle (the store must be closed)."""
    db = open_rdict(path)
    out = {}
    for name in CF_NAMES:
        cf = db.get_column_family(name)
        out[name] = {bytes(k): bytes(v) for k, v in cf.items()}
        del cf
    gc.collect()
    db.close()
    del db
    gc.collect()
    return out


def raw_edit(path: Path, cf_name: str, key: bytes, value: bytes | None) -> None:
    db = open_rdict(path)
    cf = db.get_column_family(cf_name)
    if value is None:
        del cf[key]
    else:
        cf[key] = value
    del cf
    gc.collect()
    db.close()
    del db
    gc.collect()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "db"


def test_vector_rows_byte_exact(db):
    ops = hb_chain(42, 3)
    assert [op.op_id.hex() for op in ops] == STORE_V["topo_ids"]
    with Store.open(db) as st:
        assert isinstance(st, OpStore)
        res = st.put_many([op.cbor for op in ops])
        assert res.stored == [op.op_id for op in ops]
        assert [h.hex() for h in st.heads(8)] == STORE_V["heads_k8"]
        assert [x.hex() for x in st.topo_ids()] == STORE_V["topo_ids"]
        for n, want in STORE_V["recent_bloom_hex"].items():
            assert st.recent_bloom(int(n)).hex() == want
        st.put_tag_key("confidential", 1, bytes(range(32)))
        cid = st.checkpoint_create_raw(b"\xa0", bytes(32), 3)
        assert cid == STORE_V["checkpoint_key_hex"]["checkpoint_id"]
    rows = raw_rows(db)
    assert set(rows) == set(CF_NAMES)
    for op in ops:
        hx = op.op_id.hex()
        assert rows["ops"][op.op_id] == op.cbor
        assert rows["edges"][op.op_id].hex() == STORE_V["edges_value_hex"][hx]
        assert EdgeVal.decode(rows["edges"][op.op_id]) == EdgeVal.of(op)
        assert by_author_key(op).hex() == STORE_V["by_author_key_hex"][hx]
        assert rows["by_author"][by_author_key(op)] == b""
    kr = STORE_V["keyring_key_hex"]
    assert keyring_key(kr["tag"], kr["version"]).hex() == kr["key_hex"]
    assert rows["keys"][bytes.fromhex(kr["key_hex"])] == bytes(range(32))
    assert checkpoint_key(1).hex() == STORE_V["checkpoint_key_hex"]["key_hex"]
    assert bytes.fromhex(STORE_V["checkpoint_key_hex"]["key_hex"]) in rows["checkpoints"]
    assert rows["meta"][b"schema_version"].hex() == STORE_V["meta_values"]["schema_version_hex"]
    assert len(rows["meta"][b"db_uuid"]) == 16
    assert rows["meta"][b"last_checkpoint_id"] == (1).to_bytes(8, "big")


def test_checkpoint_blob_layout_matches_vectors():
    for name, v in EXPECTED["state_snapshot"].items():
        if not isinstance(v, dict) or "checkpoint_blob_hex" not in v:
            continue
        blob = CheckpointBlob(
            v["topo_idx"], bytes.fromhex(v["state_digest_hex"]), bytes.fromhex(v["state_cbor_hex"])
        )
        assert blob.encode().hex() == v["checkpoint_blob_hex"], name
        assert CheckpointBlob.decode(blob.encode()) == blob


@pytest.mark.parametrize("fixture", FIXTURES)
def test_put_round_trip_fixtures(db, fixture):
    data = (VECTORS / fixture).read_bytes()
    ops = read_log(data, fixture)
    log = EXPECTED["op_logs"][fixture]
    assert b"".join(op.cbor for op in ops) in data  # canonical input
    with Store.open(db) as st:
        for op in ops:
            assert st.put(op.cbor) == op.op_id
        assert [op.op_id.hex() for op in ops] == [o["op_id_hex"] for o in log["ops_in_file_order"]]
        assert [x.hex() for x in st.topo_ids()] == log["topo_order"]
        for op in ops:
            assert st.get_op_bytes(op.op_id) == op.cbor
            assert st.get_op(op.op_id) == op
        assert list(st.iter_topo_ops()) == [st.get_op(x) for x in st.topo_ids()]
        st.verify_integrity(verify_sigs=True)


def test_reopen_keeps_index_orphans_and_uuid(db):
    a, b, c = hb_chain(3, 3)
    with Store.open(db) as st:
        st.put(c.cbor)
        st.put(b.cbor)
        uuid = st.db_uuid()
        assert st.topo_ids() == [] and st.heads(8) == []
        assert st.op_count() == 2 and st.complete_count() == 0
    with Store.open(db) as st:
        assert st.db_uuid() == uuid
        assert st.op_count() == 2 and st.contains(b.op_id) and st.missing_parents() == {a.op_id}
        assert st.topo_ids() == [] and st.heads(8) == []
        res = st.put_many([a.cbor])
        assert res.completed == [a.op_id, b.op_id, c.op_id]
        assert st.topo_ids() == [a.op_id, b.op_id, c.op_id]
        assert st.heads(8) == [c.op_id]
    with Store.open(db) as st:
        assert st.topo_ids() == [a.op_id, b.op_id, c.op_id]
        st.verify_integrity()


def test_heads_and_missing_parents(db):
    sk = key_pair(1, b"heads")
    a = make_op(sk, [], Hlc(10, 0, 1), Data("mv:o:x", b"a"))
    b = make_op(sk, [a.op_id], Hlc(11, 0, 1), Data("mv:o:x", b"b"))
    c = make_op(sk, [], Hlc(12, 0, 1), Data("mv:o:x", b"c"))
    d = make_op(sk, [b"\x55" * 32], Hlc(13, 0, 1), Data("mv:o:x", b"d"))
    with Store.open(db) as st:
        st.put_many([a, b, c, d])
        heads = st.heads(10)
        assert b.op_id in heads and c.op_id in heads
        assert a.op_id not in heads and d.op_id not in heads
        report = st.verify_integrity()  # an orphan is not corruption: the store is incomplete
        assert (report.ops, report.complete, report.waiting) == (4, 3, 1)
        assert (report.missing_parents, report.missing_refs) == (1, 1) and report.incomplete
        assert report.describe() == (
            "incomplete: 1 ops wait for missing parents (1 missing ops, 1 missing parent references)"
        )


def test_parent_arrives_later_and_duplicates(db):
    ops = hb_chain(9, 6)
    with Store.open(db) as st:
        st.put_many([op.cbor for op in ops[3:]])
        assert st.topo_ids() == []
        res = st.put_many([op.cbor for op in ops])
        assert res.duplicates == 3 and res.stored == [op.op_id for op in ops[:3]]
        order = st.topo_ids()
        assert order == [op.op_id for op in ops]
        pos = {x: i for i, x in enumerate(order)}
        assert all(pos[p] < pos[op.op_id] for op in ops for p in op.parents)


def test_bloom_covers_last_n(db):
    sk = key_pair(2, b"bloom")
    ops = [make_op(sk, [], Hlc(100 + t, 0, 1), Data("mv:o:x", bytes([t]))) for t in range(20)]
    with Store.open(db) as st:
        st.put_many(ops)
        v = int.from_bytes(st.recent_bloom(8), "little")
        from ecac.core.opindex import bloom_lanes

        for op in ops[-8:]:
            assert all(v >> i & 1 for i in bloom_lanes(op.op_id))


def bad_inputs(op):
    obj = loads(op.cbor)
    flipped = loads(op.cbor)
    flipped["sig"][0] ^= 1
    changed = loads(op.cbor)
    changed["header"]["payload"]["Data"]["value"] = [9]
    flat = dict(obj["header"], sig=obj["sig"], op_id=obj["op_id"])
    hx = op.op_id.hex()
    return [
        (dumps(flipped), f"invalid signature for op {hx}"),
        (dumps(changed), "op_id mismatch (header hash != embedded op_id)"),
        (b"\xb9\x00\x03" + op.cbor[1:], f"non-canonical op encoding for {hx}"),
        (dumps(flat), "decode Op CBOR: op: missing field `header`"),
        (op.cbor + b"\x00", "decode Op CBOR: op: 1 trailing bytes after the CBOR item"),
    ]


def test_put_rejects_leave_no_rows(db):
    op = hb_chain(4, 1)[0]
    with Store.open(db) as st:
        for data, msg in bad_inputs(op):
            with pytest.raises(PutRejectedError) as e:
                st.put(data)
            assert str(e.value) == msg
            with pytest.raises(PutRejectedError):
                st.put_many([hb_chain(5, 1)[0].cbor, data])
        assert st.op_count() == 0
    rows = raw_rows(db)
    assert rows["ops"] == {} and rows["edges"] == {} and rows["by_author"] == {}


def test_put_many_skip_mode(db):
    ops = hb_chain(6, 2)
    bad = [d for d, _ in bad_inputs(ops[1])]
    with Store.open(db) as st:
        res = st.put_many([ops[0].cbor, *bad], on_invalid="skip")
        assert res.stored == [ops[0].op_id] and len(res.rejected) == 5
    rows = raw_rows(db)
    assert set(rows["ops"]) == {ops[0].op_id} and set(rows["edges"]) == {ops[0].op_id}
    assert len(rows["by_author"]) == 1


def _corrupt_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def test_integrity_flipped_op_byte(db):
    ops = hb_chain(7, 4)
    with Store.open(db) as st:
        st.put_many(ops)
        st.verify_integrity(verify_sigs=True)
    victim = ops[2]
    raw_edit(db, "ops", victim.op_id, _corrupt_last_byte(victim.cbor))
    with Store.open(db) as st, pytest.raises(StoreError, match=victim.op_id.hex()):
        st.verify_integrity()


def test_integrity_flipped_signature_needs_verify_sigs(db):
    ops = hb_chain(8, 3)
    with Store.open(db) as st:
        st.put_many(ops)
    obj = loads(ops[1].cbor)
    obj["sig"][5] ^= 1
    raw_edit(db, "ops", ops[1].op_id, dumps(obj))
    with Store.open(db) as st:
        st.verify_integrity()  # ids still match: signatures are only checked on request
        with pytest.raises(StoreError, match=f"signature invalid for {ops[1].op_id.hex()}"):
            st.verify_integrity(verify_sigs=True)


def test_integrity_edges_problems(db):
    ops = hb_chain(10, 3)
    with Store.open(db) as st:
        st.put_many(ops)
    # parents list that does not match the op
    wrong = EdgeVal((*ops[0].parents, b"\x01" * 32), ops[0].author_pk, 1000, 0, 1).encode()
    raw_edit(db, "edges", ops[0].op_id, wrong)
    with (
        Store.open(db) as st,
        pytest.raises(StoreError, match=f"edges parents mismatch for {ops[0].op_id.hex()}"),
    ):
        st.verify_integrity()
    raw_edit(db, "edges", ops[0].op_id, EdgeVal.of(ops[0]).encode())
    # an edges row whose op row is gone
    raw_edit(db, "ops", ops[2].op_id, None)
    with Store.open(db) as st, pytest.raises(StoreError, match=f"edge without op {ops[2].op_id.hex()}"):
        st.verify_integrity()


def test_missing_edges_row_is_adopted_or_named(db):
    ops = hb_chain(11, 3)
    orphan = make_op(key_pair(1, b"o"), [b"\x77" * 32], Hlc(5, 0, 1), Data("mv:o:y", b"z"))
    with Store.open(db) as st:
        st.put_many([*ops, orphan])
    raw_edit(db, "edges", ops[1].op_id, None)
    raw_edit(db, "edges", orphan.op_id, None)
    with Store.open(db) as st:  # adopt_ready re-creates the row of the op whose parents are stored
        assert st.topo_ids() == [op.op_id for op in ops]
        with pytest.raises(StoreError, match=f"op without edges row {orphan.op_id.hex()}"):
            st.verify_integrity()
    rows = raw_rows(db)
    assert rows["edges"][ops[1].op_id] == EdgeVal.of(ops[1]).encode()


def test_wrong_schema_is_refused(db):
    Store.open(db).close()
    raw_edit(db, "meta", b"schema_version", b"ecac:v9")
    with pytest.raises(StoreError, match=r"^unknown schema_version; expected ecac:v1$"):
        Store.open(db)


def test_missing_store_without_create(db):
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(db, create_if_missing=False)


def test_locked_by_another_process(db):
    Store.open(db).close()
    code = textwrap.dedent(
        f"""
        import sys, time
        from ecac.store.rocks import Store
        st = Store.open({str(db)!r})
        print("ready", flush=True)
        sys.stdin.readline()
        st.close()
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=f"^store {db} is locked by another process$"):
            Store.open(db)
    finally:
        p.communicate("\n", timeout=30)
    Store.open(db).close()  # released again


def test_close_then_reopen_same_process(db):
    for _ in range(3):
        st = Store.open(db)
        list(st.iter_topo_ops())
        st.close()
        st.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        st.db_uuid()


def test_keyring_round_trip_and_max_version(db):
    k1, k2 = os.urandom(32), os.urandom(32)
    with Store.open(db) as st:
        st.put_tag_key("confidential", 1, k1)
        st.put_tag_key("confidential", 2, k2)
    with Store.open(db) as st:
        assert st.get_tag_key("confidential", 1) == k1
        assert st.get_tag_key("confidential", 2) == k2
        assert st.get_tag_key("other_tag", 1) is None
        assert st.get_tag_key("confidential", 3) is None
        assert st.max_key_version_for_tag("confidential") == 2
    db2 = db.parent / "db2"
    with Store.open(db2) as st:
        st.put_tag_key("confidential", 5, k1)
        st.put_tag_key("confidential", 7, k1)
        st.put_tag_key("hv", 3, k2)
        assert st.max_key_version_for_tag("confidential") == 7
        assert st.max_key_version_for_tag("hv") == 3
        assert st.max_key_version_for_tag("nope") is None
        with pytest.raises(StoreError, match="must be 32 bytes, got 3"):
            st.put_tag_key("hv", 1, b"abc")
        with pytest.raises(StoreError, match="longer than 255"):
            st.put_tag_key("x" * 256, 1, k1)
    db3 = db.parent / "db3"
    with Store.open(db3) as st:
        st.put_tag_key("confidential", 1, k1)
        st.put_tag_key("confidential", 1, k2)
        assert st.get_tag_key("confidential", 1) == k2
        assert st.max_key_version_for_tag("confidential") == 1
    raw_edit(db3, "keys", keyring_key("bad", 1), b"short")
    raw_edit(db3, "keys", b"\x09xx", b"")  # malformed key: skipped by the scan
    with Store.open(db3) as st:
        with pytest.raises(StoreError, match=r"key for \(bad, 1\) must be 32 bytes, got 5"):
            st.get_tag_key("bad", 1)
        assert st.max_key_version_for_tag("confidential") == 1


def test_checkpoints_raw_and_resume_records(db):
    rec = ResumeRecord(3, bytes(range(32)), False, (b"\x09" * 32,))
    with Store.open(db) as st:
        assert st.checkpoint_latest() is None and st.checkpoint_list() == []
        assert st.checkpoint_create_raw(b"\x01", b"\x02" * 32, 3, rec) == 1
        assert st.checkpoint_create_raw(b"\x03", b"\x04" * 32, 5) == 2
        assert st.checkpoint_latest() == (2, 5)
        assert st.checkpoint_list() == [(1, 3), (2, 5)]
        assert st.resume_record(1) == rec and st.resume_record(2) is None
        assert st.checkpoint_blob(1) == CheckpointBlob(3, b"\x02" * 32, b"\x01")
        with pytest.raises(StoreError, match=r"^checkpoint 9 not found$"):
            st.checkpoint_blob(9)
    rows = raw_rows(db)
    assert rows["meta"][resume_key(1)] == rec.encode()
    assert resume_key(1) == b"resume/0000000000000001"
    assert ResumeRecord.decode(rec.encode()) == rec


def test_topo_watermark(db):
    with Store.open(db) as st:
        assert st.topo_watermark() is None
        st.set_topo_watermark(42)
    with Store.open(db) as st:
        assert st.topo_watermark() == 42


def test_checked_decoding_equals_strict_and_rejects_garbage(db):
    """The ``--verify-sigs`` read path (C scan + id recomputed, strict decoder for the rest):
    a row decodes exactly as the strict decoder, every single-bit corruption is refused with a
    StoreError except a changed signature byte (left to the signature check), and a row whose
    ``edges`` row disagrees is refused."""
    ops = read_log((VECTORS / "fixtures/ops.cbor").read_bytes()) + hb_chain(12, 3)
    with Store.open(db) as st:
        st.put_many(ops)
        for op in ops:
            at = {op.op_id: 0}
            (got,) = st._decoded([op.op_id], [(op.op_id, op.cbor)], at, checked=True)
            assert got == decode_op(op.cbor) and got.sig == op.sig
            accepted = 0
            for i in range(len(op.cbor)):  # every single-bit corruption
                bad = op.cbor[:i] + bytes([op.cbor[i] ^ 1]) + op.cbor[i + 1 :]
                try:
                    (got,) = st._decoded([op.op_id], [(op.op_id, bad)], at, checked=True)
                except StoreError:
                    continue
                accepted += 1  # only a changed signature byte passes: same as the strict decoder
                strict = decode_op(bad)
                assert got == strict and got.sig == strict.sig and strict.computed_id() == op.op_id
                assert got.sig != op.sig
            assert accepted <= 64
            e = st._edges[op.op_id]
            st._edges[op.op_id] = EdgeVal(
                e.parents, e.author_pk, e.hlc_ms + 1000000, e.hlc_logical, e.hlc_node
            )
            try:
                with pytest.raises(StoreError, match=f"edges parents mismatch for {op.op_id.hex()}"):
                    st._decoded([op.op_id], [(op.op_id, op.cbor)], at, checked=True)
            finally:
                st._edges[op.op_id] = e


def test_vc_cache_parity(db, tmp_path, monkeypatch):
    from ecac.core.vc import cred_hash, editor_claims, mint_vc, verify_vc_file
    from ecac.store.rows import verified_vc_persist
    from ecac.store.trustfiles import load_file_trust

    issuer = key_pair(1, b"issuer")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "issuers.toml").write_text(f'[issuers]\nissuer-1 = "{bytes(issuer.verify_key).hex()}"\n')
    jwt = mint_vc(issuer, editor_claims(b"\x01" * 32, nbf_ms=0, exp_ms=10**12))
    h = cred_hash(jwt)
    claims = verify_vc_file(jwt, *load_file_trust(trust))
    with Store.open(db) as st:
        st.persist_vc_raw(h, jwt)
        st.verify_integrity(trust_dir=tmp_path / "absent")  # no trust file: parity skipped
        with pytest.raises(StoreError, match=f"missing vc_verified for {h.hex()}"):
            st.verify_integrity(trust_dir=trust)
        st.persist_vc_verified(h, verified_vc_persist(claims))
        st.verify_integrity(trust_dir=trust)
        st.persist_vc_verified(h, b"\xa0")
        with pytest.raises(StoreError, match=f"vc_verified mismatch for {h.hex()}"):
            st.verify_integrity(trust_dir=trust)
        st.persist_vc_verified(b"\x05" * 32, b"\xa0")
        st.persist_vc_verified(h, verified_vc_persist(claims))
        with pytest.raises(StoreError, match=f"vc_verified without vc_raw for {'05' * 32}"):
            st.verify_integrity(trust_dir=trust)
        st.persist_vc_raw(b"\x06" * 32, b"not a jwt")
        with pytest.raises(StoreError, match=f"vc_raw failed to verify for {'06' * 32}"):
            st.verify_integrity(trust_dir=trust)
    monkeypatch.chdir(tmp_path)  # the default trust dir is ./trust, relative to the working directory
    with Store.open(db) as st, pytest.raises(StoreError, match="vc_raw failed to verify"):
        st.verify_integrity()


# --------------------------------------------------------------------------- replay from the store


def _full(ops):
    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full

    return replay_full(Dag.from_ops(ops))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_replay_from_store_matches_vectors(db, fixture):
    from ecac.store.resume import replay_from_store

    ops = read_log((VECTORS / fixture).read_bytes())
    log = EXPECTED["op_logs"][fixture]
    with Store.open(db) as st:
        st.put_many(list(reversed(ops)))
    with Store.open(db) as st:
        for kw in ({}, {"verify_sigs": True}, {"from_checkpoint": True}):
            state, digest = replay_from_store(st, **kw)
            assert state.to_json() == log["state_json"]
            assert digest.hex() == log["state_digest_hex"]


def test_replay_verify_sigs_detects_flipped_signature(db):
    from ecac.store.resume import replay_from_store

    ops = hb_chain(13, 4)
    with Store.open(db) as st:
        st.put_many(ops)
    obj = loads(ops[2].cbor)
    obj["sig"][0] ^= 1
    raw_edit(db, "ops", ops[2].op_id, dumps(obj))
    with Store.open(db) as st:
        assert replay_from_store(st)[1] == _full(ops)[1]  # not re-verified by default
        with pytest.raises(StoreError, match=f"invalid signature for op {ops[2].op_id.hex()}"):
            replay_from_store(st, verify_sigs=True)


def test_replay_trusts_verified_rows_and_checked_replay_names_a_tampered_one(db):
    """A row rewritten behind the store's back with a well-formed but different payload: the
    default replay trusts rows that put verified (decisions.md, D35), while ``verify-store``
    and the ``--verify-sigs`` replay recompute the op id and name the op; nothing is lost."""
    from ecac.store.resume import replay_from_store

    ops = hb_chain(14, 4)
    with Store.open(db) as st:
        st.put_many(ops)
    changed = loads(ops[1].cbor)
    changed["header"]["payload"]["Data"]["value"] = [1]
    raw_edit(db, "ops", ops[1].op_id, dumps(changed))
    hx = ops[1].op_id.hex()
    with Store.open(db) as st:
        with pytest.raises(StoreError, match=f"op_id mismatch for {hx}"):
            st.verify_integrity()
        with pytest.raises(StoreError, match=f"op_id mismatch for {hx}"):
            replay_from_store(st, verify_sigs=True)
        assert st.complete_count() == len(ops)  # every other row is intact and still served
        assert [st.get_op_bytes(op.op_id) for op in ops if op is not ops[1]] == [
            op.cbor for op in ops if op is not ops[1]
        ]


def test_replay_names_a_row_that_does_not_parse(db):
    from ecac.store.resume import replay_from_store

    ops = hb_chain(16, 4)
    with Store.open(db) as st:
        st.put_many(ops)
    raw_edit(db, "ops", ops[2].op_id, ops[2].cbor[:-5])  # truncated: the trailing op_id is cut
    with Store.open(db) as st, pytest.raises(StoreError, match=ops[2].op_id.hex()):
        replay_from_store(st)


def test_checkpoint_resume_used_only_when_valid(db):
    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full
    from ecac.store.resume import replay_store

    ops = hb_chain(15, 60)
    with Store.open(db) as st:
        st.put_many(ops[:50])
        dag = Dag.from_ops(ops[:50])
        state, _ = replay_full(dag)
        cid = st.checkpoint_create(state, 50, dag.topo_order())
        assert st.checkpoint_load(cid)[0] == state and st.checkpoint_load(cid)[1] == 50
        st.put_many(ops[50:])
        res = replay_store(st, from_checkpoint=True)
        assert (res.start, res.checkpoint_id) == (50, cid)
        assert res.digest == _full(ops)[1] and res.state == _full(ops)[0]
        # an op that sorts before the checkpoint position invalidates it
        early = make_op(key_pair(1, b"early"), [], Hlc(5, 0, 0), Data("mv:o:x", b"early"))
        st.put(early)
        res = replay_store(st, from_checkpoint=True)
        assert res.start == 0 and res.checkpoint_id is None
        assert res.digest == _full([*ops, early])[1]
        # a checkpoint without a resume record is never used
        state2, _ = replay_full(Dag.from_ops([*ops, early]))
        st.checkpoint_create(state2, 61)
        assert replay_store(st, from_checkpoint=True).start == 0


def test_checkpoint_digest_mismatch_and_missing(db):
    from ecac.core.state import State

    with Store.open(db) as st:
        cid = st.checkpoint_create_raw(State().snapshot_cbor(), b"\x00" * 32, 0)
        with pytest.raises(StoreError, match=r"^checkpoint digest mismatch$"):
            st.checkpoint_load(cid)
        with pytest.raises(StoreError, match=r"^checkpoint 7 not found$"):
            st.checkpoint_load(7)


@st_settings(max_examples=25, deadline=None)
@given(
    seed=st_.integers(0, 2**32),
    n=st_.integers(2, 40),
    splits=st_.lists(st_.floats(0, 1), min_size=1, max_size=3),
    other_fraction=st_.sampled_from([0.0, 0.15, 0.4]),
    random_hlc=st_.booleans(),
    late=st_.sampled_from([0.0, 0.2, 1.0]),
)
def test_checkpoint_parity_random_splits_and_orders(
    tmp_path_factory, seed, n, splits, other_fraction, random_hlc, late
):
    """Checkpoints at random points; ops arrive in generation order except a fraction
    ``late`` that arrives in random order at the end (many then sort before a checkpoint
    position); policy and retroactive kinds included: resume == full replay."""
    import random

    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full
    from ecac.store.resume import replay_store
    from ecac.testing.workloads import OTHER_KINDS, gen_random_dag

    rng = random.Random(seed)
    ops = gen_random_dag(
        rng, n, random_hlc=random_hlc, other_kinds=OTHER_KINDS, other_fraction=other_fraction
    )
    moved = [op for op in ops if rng.random() < late]
    rng.shuffle(moved)
    arrival = [op for op in ops if op not in moved] + moved
    cuts = sorted({int(f * n) for f in splits} | {n})
    path = tmp_path_factory.mktemp("parity") / "db"
    with Store.open(path) as st:
        lo = 0
        for cut in cuts:
            st.put_many(arrival[lo:cut])
            lo = cut
            res = replay_store(st, from_checkpoint=True)
            dag = Dag.from_ops(arrival[:cut])
            full_state, full_digest = replay_full(dag)
            assert res.digest == full_digest and res.state == full_state
            assert st.topo_ids() == dag.topo_ids()
            st.checkpoint_create(res.state, len(dag), dag.topo_order())


def test_checkpoint_resume_happens_for_in_order_arrival(db):
    """The property test above must not pass by always replaying in full."""
    import random

    from ecac.core.dag import Dag
    from ecac.store.resume import replay_store
    from ecac.testing.workloads import gen_random_dag

    ops = gen_random_dag(random.Random(3), 40)
    with Store.open(db) as st:
        starts = []
        for cut in (10, 20, 30, 40):
            st.put_many(ops[cut - 10 : cut])
            res = replay_store(st, from_checkpoint=True)
            starts.append(res.start)
            dag = Dag.from_ops(ops[:cut])
            assert res.digest == _full(ops[:cut])[1]
            st.checkpoint_create(res.state, len(dag), dag.topo_order())
        assert starts == [0, 10, 20, 30]


def test_resume_with_policy_ops_in_the_prefix(db):
    """S1 (grant, writes, revoke, writes): checkpoint after the revoke, then more writes by the
    revoked user and by nobody else: the resumed replay reads the prefix's policy ops in full
    and equals the full replay (the later writes stay denied)."""
    from ecac.core.dag import Dag
    from ecac.store.resume import replay_store
    from ecac.testing.scenarios import add, s1_revoke_closes_epochs

    ops = s1_revoke_closes_epochs()
    more = [add(ops[-1], Hlc(1060, 0, 1), "E")]
    more.append(add(more[-1], Hlc(1070, 0, 1), "F"))
    with Store.open(db) as st:
        st.put_many(ops)
        dag = Dag.from_ops(ops)
        res = replay_store(st)
        st.checkpoint_create(res.state, len(dag), dag.topo_order())
        rec = st.resume_record(1)
        # issuer key, credential, grant and revoke are the non-Data ops
        assert rec is not None and rec.has_policy and len(rec.non_data) == 4
        st.put_many(more)
        resumed = replay_store(st, from_checkpoint=True)
        assert (resumed.start, resumed.checkpoint_id) == (len(ops), 1)
        full = _full([*ops, *more])
        assert resumed.digest == full[1] and resumed.state == full[0]
        assert replay_store(st, from_checkpoint=True, verify_sigs=True).digest == full[1]


def test_read_only_open(db):
    ops = hb_chain(16, 3)
    with Store.open(db) as st:
        st.put_many(ops)
    with Store.open(db, read_only=True) as st:
        assert st.topo_ids() == [op.op_id for op in ops]
        with pytest.raises(StoreError, match="read-only"):
            st.put_tag_key("t", 1, bytes(32))
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(db.parent / "nope", read_only=True)


# --------------------------------------------------------------------------- replay path


def _random_ops(seed: int, n: int):
    import random

    from ecac.testing.workloads import gen_random_dag

    kinds = ("Credential", "Grant", "Revoke", "IssuerKey", "StatusListChunk", "_Reserved")
    rng = random.Random(seed)
    return gen_random_dag(rng, n, max_parents=4, random_hlc=True, other_kinds=kinds, other_fraction=0.2)


def test_load_dag_scans_the_store_and_equals_an_in_memory_dag(db, monkeypatch):
    import random

    import ecac.store.rocks as store_mod
    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full
    from ecac.store.resume import load_dag

    ops = _random_ops(5, 300)
    orphan = make_op(key_pair(1, b"o"), [b"\x07" * 32], Hlc(5, 0, 0), Data("mv:o:x", b"o"))
    shuffled = [*ops, orphan]
    random.Random(1).shuffle(shuffled)
    with Store.open(db) as st:
        st.put_many(shuffled)
    monkeypatch.setattr(store_mod, "_SCAN_MIN", 0)  # the full-scan read path even for a small store
    want = Dag.from_ops(ops)
    with Store.open(db) as st:
        for verify in (False, True):
            dag = load_dag(st, verify_sigs=verify)
            assert dag.topo_order() == want.topo_order()
            assert [op.sig for op in dag.topo_order()] == [op.sig for op in want.topo_order()]
            sample = ops[::7]
            for a in sample:
                for b in sample:
                    assert dag.hb(a.op_id, b.op_id) == want.hb(a.op_id, b.op_id)
            assert replay_full(dag)[1] == replay_full(want)[1]
        assert orphan.op_id not in load_dag(st)
    raw_edit(db, "ops", ops[0].op_id, None)
    with Store.open(db) as st, pytest.raises(StoreError, match=f"missing op {ops[0].op_id.hex()}"):
        load_dag(st)


def test_edge_bytes_equal_the_encoded_edges_row():
    from dataclasses import replace

    from ecac.store.rows import edge_bytes

    ops = read_log((VECTORS / "fixtures/ops.cbor").read_bytes()) + hb_chain(15, 3) + _random_ops(4, 60)
    sk = key_pair(2, b"e")
    ops.append(
        make_op(sk, [bytes([i]) * 32 for i in range(30)], Hlc(2**64 - 1, 2**32 - 1, 24), Data("k", b""))
    )
    for op in ops:
        e = EdgeVal.of(op)
        assert edge_bytes(op) == e.encode()
        assert EdgeVal.decode(edge_bytes(op)) == e
    odd = replace(ops[0], cbor=b"")  # no canonical bytes to cut from: encoded instead
    assert edge_bytes(odd) == EdgeVal.of(odd).encode()


# ---- open path

_U64_EDGES = (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1)
_IDS = st_.binary(min_size=32, max_size=32) | st_.sampled_from([b"\x18" * 32, bytes(range(32)), b"\xff" * 32])


@st_.composite
def _edge_vals(draw):
    return EdgeVal(
        tuple(draw(st_.lists(_IDS, max_size=3) | st_.lists(_IDS, min_size=22, max_size=26))),
        draw(_IDS),
        draw(st_.sampled_from(_U64_EDGES) | st_.integers(0, 2**64 - 1)),
        draw(st_.sampled_from(_U64_EDGES[:8]) | st_.integers(0, 2**32 - 1)),
        draw(st_.sampled_from(_U64_EDGES[:8]) | st_.integers(0, 2**32 - 1)),
    )


def _or_none(decode, row):
    from ecac.core.errors import DecodeError

    try:
        return decode(row)
    except DecodeError:  # any other exception fails the test
        return None


def test_edge_decoder_reads_stored_rows_directly():
    from ecac.store.rows import _edge_canonical, decode_edge_fast, edge_bytes

    ops = read_log((VECTORS / "fixtures/ops.cbor").read_bytes()) + hb_chain(15, 3) + _random_ops(4, 60)
    for op in ops:
        row, e = edge_bytes(op), EdgeVal.of(op)
        assert _edge_canonical(row) == e  # the direct parse, not the CBOR fallback
        assert decode_edge_fast(row) == e == EdgeVal.decode(row)
    vector_rows = [bytes.fromhex(value) for value in STORE_V["edges_value_hex"].values()]
    assert vector_rows
    for row in vector_rows:
        assert _edge_canonical(row) == decode_edge_fast(row) == EdgeVal.decode(row)


@given(_edge_vals())
@st_settings(max_examples=300, deadline=None)
def test_edge_decoder_equals_the_strict_decoder(e):
    from ecac.store.rows import _edge_canonical, decode_edge_fast

    row = e.encode()
    assert decode_edge_fast(row) == e == EdgeVal.decode(row)
    assert _edge_canonical(row) == e  # the codec's canonical parser reads every canonical row


@given(_edge_vals(), st_.data())
@st_settings(max_examples=500, deadline=None)
def test_edge_decoder_rejects_what_the_strict_decoder_rejects(e, data):
    from ecac.store.rows import _EDGE_KEYS, decode_edge_fast

    row = bytearray(e.encode())
    # anywhere, or on the structure: array heads, the ids' 0x98 0x20 heads, the keys
    marks = [j for j in range(len(row)) if row[j] in b"\x80\x81\x82\x98\x20\x66\x68\x69\x6b\xa5"]
    i = data.draw(st_.integers(0, len(row)) | st_.sampled_from(marks) | st_.integers(0, 12))
    kind = data.draw(st_.sampled_from(["truncate", "set", "insert", "delete", "append"]))
    b = data.draw(st_.integers(0, 255) | st_.sampled_from([0x18, 0x19, 0x1A, 0x1B, 0x98, 0x20, 0x80, 0x81]))
    if kind == "truncate":
        del row[i:]
    elif kind == "set" and i < len(row):
        row[i] = b
    elif kind == "insert":
        row.insert(i, b)
    elif kind == "delete" and i < len(row):
        del row[i]
    else:
        row += bytes([b]) * data.draw(st_.integers(1, 3))
    got = _or_none(decode_edge_fast, bytes(row))
    if got is not None:  # only what the strict decoder reads the same, in the reference's field order
        assert got == EdgeVal.decode(bytes(row))
        assert list(loads(bytes(row))) == _EDGE_KEYS
    if _or_none(EdgeVal.decode, bytes(row)) is None:
        assert got is None


def _check_mutant(row: bytes) -> None:
    from ecac.store.rows import _EDGE_KEYS, decode_edge_fast

    got = _or_none(decode_edge_fast, row)
    if got is not None:  # only what the strict decoder reads the same, in the reference's field order
        assert got == EdgeVal.decode(row)
        assert list(loads(row)) == _EDGE_KEYS
    if _or_none(EdgeVal.decode, row) is None:
        assert got is None


def test_edge_decoder_on_every_single_byte_mutation():
    """Each position of rows with 0, 1, 2 and 23 parents: replaced, deleted, doubled, cut there."""
    ids = [bytes([i]) * 31 + b"\x18" for i in range(23)]
    rows = [
        EdgeVal(tuple(ids[:n]), b"\x18" * 32, ms, lg, nd).encode()
        for n, ms, lg, nd in ((0, 5, 0, 1), (1, 2**40, 300, 70000), (2, 24, 2**32 - 1, 255), (23, 0, 0, 0))
    ]
    for row in rows:
        for i in range(len(row)):
            for b in {0x00, 0x17, 0x18, 0x19, 0x1B, 0x20, 0x80, 0x82, 0x98, 0xFF, row[i] ^ 1}:
                _check_mutant(row[:i] + bytes([b]) + row[i + 1 :])
            _check_mutant(row[:i] + row[i + 1 :])
            _check_mutant(row[: i + 1] + row[i:])
            _check_mutant(row[:i])
        _check_mutant(row + b"\x00")


@given(st_.binary(max_size=120))
@st_settings(max_examples=300, deadline=None)
def test_edge_decoder_raises_only_decode_errors(raw):
    from ecac.store.rows import _K_EDGE_PARENTS, decode_edge_fast

    for row in (raw, _K_EDGE_PARENTS + raw):
        got = _or_none(decode_edge_fast, row)
        assert got is None or got == EdgeVal.decode(row)


def test_open_reads_noncanonical_rows_and_adopts_ops_whose_row_is_unreadable(db):
    from ecac.core.codec import encode_uint

    ops = hb_chain(16, 4)
    with Store.open(db) as st:
        st.put_many(ops)
    row = EdgeVal.of(ops[2]).encode()
    assert encode_uint(1002) in row
    long_ms = row.replace(encode_uint(1002), b"\x1b" + (1002).to_bytes(8, "big"))  # not the shortest form
    raw_edit(db, "edges", ops[2].op_id, long_ms)
    raw_edit(db, "edges", ops[1].op_id, EdgeVal.of(ops[1]).encode()[:-1])  # truncated
    with Store.open(db) as st:
        assert st._bad_edge_rows == 1
        assert st.topo_ids() == [op.op_id for op in ops] and st.heads(8) == [ops[3].op_id]
        assert st._edges[ops[2].op_id] == EdgeVal.of(ops[2])
    assert raw_rows(db)["edges"][ops[1].op_id] == EdgeVal.of(ops[1]).encode()  # rewritten by adopt_ready


def test_decoding_a_snapshot_ignores_ops_added_to_the_live_positions_map(db):
    """replay_ops holds the index's live position map after releasing the lock; ops a
    concurrent put appends to it must not break (or join) the snapshot being decoded."""
    ops = hb_chain(23, 12)
    with Store.open(db) as st:
        st.put_many(ops[:8])
        with st._lock:
            ids = st.index.topo_slice(0)
            at = st.index.positions()
        st.put_many(ops[8:])
        st.index.topo_slice(0)  # places the new ops: the live map gains positions 8..11
        assert len(at) == 12 and len(ids) == 8
        got = st._decoded(ids, st._cfv("ops").items(), at)
        assert got == ops[:8]


# --------------------------------------------------------------------------- the total order is verified


def _concurrent_ops(seed: int, n: int):
    """Three writers merging each other's heads now and then, with HLCs that sort children early."""
    rng = random.Random(seed)
    sks = [key_pair(seed + w, b"conc") for w in range(3)]
    heads: list[list[bytes]] = [[], [], []]
    ops = []
    for i in range(n):
        w = rng.randrange(3)
        ps = list(heads[w])
        if rng.random() < 0.3 and heads[(w + 1) % 3]:
            ps += heads[(w + 1) % 3]
        op = make_op(
            sks[w], ps, Hlc(rng.randrange(1000, 1000 + n), 0, w + 1), Data("mv:o:x", bytes([i % 256]))
        )
        ops.append(op)
        heads[w] = [op.op_id]
    return ops


def test_integrity_recomputes_the_order_and_names_the_first_difference(db):
    ops = _concurrent_ops(31, 40)
    with Store.open(db) as st:
        for op in reversed(ops):  # children first: the index completes them out of order
            st.put(op)
        assert st.verify_integrity().complete == 40
        st.verify_order()
        ids = st.index._order._ids
        ids[5], ids[9] = ids[9], ids[5]  # a wrong index order (a bug, or memory gone bad)
        with pytest.raises(StoreError, match=f"order mismatch at position 5: the index has {ids[5].hex()}"):
            st.verify_integrity()
        with pytest.raises(StoreError, match="order mismatch at position 5"):
            st.verify_order()
        with pytest.raises(StoreError, match="order mismatch at position 5"):
            replay_store(st, verify_sigs=True)  # --verify-sigs does not trust the stored order
        replay_store(st)  # a plain replay does: the order was computed by the index at ingest
    with Store.open(db) as st:  # reopened, the bulk load computes the order again: clean
        assert st.verify_integrity().complete == 40
        assert replay_store(st, verify_sigs=True).digest == replay_full(Dag.from_ops(ops))[1]


def test_replay_verify_sigs_of_a_memory_store_orders_the_ops_itself():
    from ecac.store.memory import MemoryOpStore
    from ecac.store.resume import load_dag

    ops = _concurrent_ops(32, 30)
    st = MemoryOpStore(ops)
    assert load_dag(st, verify_sigs=True).topo_order() == Dag.from_ops(ops).topo_order()
    ids = st.index._order._ids
    ids[2], ids[3] = ids[3], ids[2]
    with pytest.raises(StoreError, match="order mismatch at position 2"):
        load_dag(st, verify_sigs=True)
