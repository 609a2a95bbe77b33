"""Audit log files and the audit CLI (store §1.13, §1.16, §3.3)."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from nacl.signing import SigningKey

from conftest import cli_ok as ok
from conftest import cli_run as run
from ecac.core.audit import (
    ZERO_HASH,
    AppliedOp,
    AuditChainError,
    AuditError,
    BadSig,
    ChainBuilder,
    Checkpoint,
    HeadMismatch,
    IngestedOp,
    SeqGap,
    SkippedOp,
    Truncated,
    cat_line,
    decode_record,
    export_line,
    frame,
    replay_audited,
    split_frames,
)
from ecac.core.codec import dumps, loads
from ecac.core.errors import EcacError
from ecac.core.keys import public_key
from ecac.core.opcodec import encode_ops
from ecac.core.replay import dag_of_verified
from ecac.store.auditlog import (
    INDEX,
    MIB,
    AuditReader,
    AuditWriter,
    open_default,
    parse_index,
    rotate_bytes_from_env,
    store_writer,
)
from ecac.testing.workloads import gen_hb_chain

NODE_ID = b"\xab" * 32
SEG1 = "segment-00000001.log"


@pytest.fixture(scope="module")
def vec(vectors):
    return vectors.expected["audit"]


@pytest.fixture(scope="module")
def sk(vec) -> SigningKey:
    return SigningKey(bytes.fromhex(vec["node_sk_seed_hex"]))


class Reports(list):
    """Collects the messages a writer or reader prints to stderr."""

    def __call__(self, msg: str) -> None:
        self.append(msg)


def cp(i: int) -> Checkpoint:
    return Checkpoint(i, i, bytes([i % 256]) * 32)


def write_log(d: Path, sk: SigningKey, n: int, rotate_bytes: int = MIB) -> bytes | None:
    with AuditWriter(d, sk, NODE_ID, rotate_bytes=rotate_bytes) as w:
        assert w.append_many([cp(i + 1) for i in range(n)]) == list(range(1, n + 1))
        return w.head_digest


def frames_of(path: Path) -> list[tuple[int, bytes]]:
    return split_frames(path.read_bytes()).records


# --------------------------------------------------------------------------- writer and reader


def test_writer_reproduces_the_vector_segment(tmp_path, vec, sk):
    w = AuditWriter(tmp_path, sk, NODE_ID)
    assert w.head_digest is None
    assert w.append(Checkpoint(1, 1, ZERO_HASH)) == 1
    assert w.head_digest.hex() == vec["entry_hash_hex"]
    w.close()
    assert (tmp_path / SEG1).read_bytes().hex() == vec["segment_frame_hex"]
    assert (tmp_path / "node_pk.bin").read_bytes().hex() == vec["node_pk_hex"]
    assert (tmp_path / "node_id.bin").read_bytes() == NODE_ID
    res = AuditReader(tmp_path).verify()
    assert (res.count, res.head.hex(), res.segments) == (1, vec["entry_hash_hex"], 1)


def test_two_appends_then_resume(tmp_path, sk):
    with AuditWriter(tmp_path, sk, NODE_ID) as w:
        assert w.append(cp(1)) == 1
        assert w.append(cp(2)) == 2
    with AuditWriter(tmp_path, sk, NODE_ID) as w:
        assert w.seq == 2
        assert w.append(cp(3)) == 3
    recs = [decode_record(b) for _, b in frames_of(tmp_path / SEG1)]
    assert [r.seq for r in recs] == [1, 2, 3]
    assert [r.entry.ts_monotonic for r in recs] == [1, 2, 1]  # the counter restarts per writer
    assert AuditReader(tmp_path).verify().count == 3


def test_index_json_exact_shape(tmp_path, sk):
    h = write_log(tmp_path, sk, 2)
    recs = [decode_record(b) for _, b in frames_of(tmp_path / SEG1)]
    text = (tmp_path / INDEX).read_text()
    lines = ["{", '  "segments": [', "    {", '      "segment_id": 1,', f'      "path": "{SEG1}",']
    lines += ['      "first_seq": 1,', '      "last_seq": 2,', '      "first_hash": [']
    lines += [f"        {b}," for b in recs[0].entry_hash()[:-1]] + [
        f"        {recs[0].entry_hash()[-1]}",
        "      ],",
    ]
    lines += ['      "last_hash": [']
    lines += [f"        {b}," for b in h[:-1]] + [f"        {h[-1]}", "      ]"]
    lines += ["    }", "  ]", "}"]
    assert text == "\n".join(lines)
    assert not (tmp_path / "index.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX, "node_id.bin", "node_pk.bin", SEG1]


def test_fresh_log_has_segment_one_with_zero_hashes(tmp_path, sk):
    AuditWriter(tmp_path, sk, NODE_ID).close()
    obj = json.loads((tmp_path / INDEX).read_text())
    assert obj == {
        "segments": [
            {
                "segment_id": 1,
                "path": SEG1,
                "first_seq": 0,
                "last_seq": 0,
                "first_hash": [0] * 32,
                "last_hash": [0] * 32,
            }
        ]
    }
    res = AuditReader(tmp_path).verify()
    assert (res.count, res.head) == (0, ZERO_HASH)
    (tmp_path / INDEX).write_text('{"segments": []}')
    assert AuditReader(tmp_path).verify().head == ZERO_HASH  # an empty index is accepted


def test_replay_with_auditing_over_a_50_op_hb_chain(tmp_path, sk):
    dag = dag_of_verified(gen_hb_chain(42, 50))
    with AuditWriter(tmp_path, sk, NODE_ID) as w:
        _, digest = replay_audited(dag, w)
        head = w.head_digest
    res = AuditReader(tmp_path).verify_against_head(head)
    assert res.count == 51
    recs = [decode_record(b) for _, b in frames_of(tmp_path / SEG1)]
    assert recs[-1].entry.event == Checkpoint(50, 50, digest)
    assert all(isinstance(r.entry.event, AppliedOp) for r in recs[:-1])


# --------------------------------------------------------------------------- tampering (store §1.16)


def test_flip_a_byte_mid_payload_of_record_2(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    (off, body) = frames_of(seg)[1]
    data = bytearray(seg.read_bytes())
    data[off + 4 + len(body) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises((BadSig, Truncated)) as ei:
        AuditReader(tmp_path).verify()
    if isinstance(ei.value, BadSig):
        assert ei.value.seq == 2


def test_delete_record_1(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    fr = frames_of(seg)
    seg.write_bytes(seg.read_bytes()[fr[1][0] :])
    with pytest.raises(SeqGap) as ei:
        AuditReader(tmp_path).verify()
    assert (ei.value.expected, ei.value.found) == (1, 2)
    assert f"{seg} offset 0" in str(ei.value)


def _edit(seg: Path, how: str) -> None:
    fr = frames_of(seg)
    data = seg.read_bytes()
    parts = [frame(b) for _, b in fr]
    if how == "flip":
        b = bytearray(data)
        b[-20] ^= 0x04  # inside the last record's signature
        seg.write_bytes(bytes(b))
    elif how == "delete-last":
        seg.write_bytes(b"".join(parts[:-1]))
    elif how == "swap":
        seg.write_bytes(b"".join([parts[0], parts[2], parts[1], *parts[3:]]))


@pytest.mark.parametrize("how", ["flip", "delete-last", "swap"])
def test_pinned_head_catches_every_tamper(tmp_path, sk, how):
    head = write_log(tmp_path, sk, 4)
    assert AuditReader(tmp_path).verify_against_head(head).count == 4
    _edit(tmp_path / SEG1, how)
    with pytest.raises(AuditChainError):
        AuditReader(tmp_path).verify_against_head(head)
    if how == "delete-last":  # without a pinned head a removed last record goes unnoticed (spec)
        assert AuditReader(tmp_path).verify().count == 3
        with pytest.raises(HeadMismatch):
            AuditReader(tmp_path).verify_against_head(head)


def test_malformed_record_is_a_clear_error_and_nothing_else_is_lost(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    fr = frames_of(seg)
    off, body = fr[1]
    data = bytearray(seg.read_bytes())
    data[off + 4 : off + 4 + len(body)] = b"\xff" * len(body)  # framing intact, CBOR garbage
    seg.write_bytes(bytes(data))
    with pytest.raises(Truncated) as ei:
        AuditReader(tmp_path).verify()
    assert ei.value.where == f"{seg} offset {off}"
    assert "malformed CBOR" in str(ei.value)
    assert seg.read_bytes() == bytes(data)  # verification did not touch the file
    reader = AuditReader(tmp_path)
    got = []
    with pytest.raises(Truncated):
        for _, rec in reader.segment_records(seg):
            got.append(rec.seq)
    assert got == [1]
    assert decode_record(split_frames(bytes(data)).records[2][1]).seq == 3


def test_signature_of_the_wrong_length_is_truncated(tmp_path, sk):
    write_log(tmp_path, sk, 1)
    seg = tmp_path / SEG1
    obj = loads(frames_of(seg)[0][1])
    obj["signature"] = obj["signature"][:63]
    body = b"\xbf" + dumps(obj)[1:] + b"\xff"
    seg.write_bytes(frame(body))
    with pytest.raises(Truncated, match="expected 64 bytes, got 63"):
        AuditReader(tmp_path).verify()


# --------------------------------------------------------------------------- rotation


def test_rotation_spans_segments_and_verifies(tmp_path, sk):
    head = write_log(tmp_path, sk, 10, rotate_bytes=1000)  # ~365-byte frames: 3 per segment
    segs = parse_index((tmp_path / INDEX).read_text(), "index")
    assert [(s.segment_id, s.first_seq, s.last_seq) for s in segs] == [
        (1, 1, 3),
        (2, 4, 6),
        (3, 7, 9),
        (4, 10, 10),
    ]
    for a, b in itertools.pairwise(segs):
        assert b.first_seq == a.last_seq + 1
        assert decode_record(frames_of(tmp_path / b.path)[0][1]).entry.prev_hash == a.last_hash
    assert segs[-1].last_hash == head
    assert all(os.path.getsize(tmp_path / s.path) >= 1000 for s in segs[:-1])
    res = AuditReader(tmp_path).verify_against_head(head)
    assert (res.count, res.segments) == (10, 4)
    with AuditWriter(tmp_path, sk, NODE_ID, rotate_bytes=1000) as w:  # resumes across segments
        assert w.append(cp(11)) == 11
    assert AuditReader(tmp_path).verify().count == 11
    # a record removed from a middle segment breaks the chain
    mid = tmp_path / segs[1].path
    fr = frames_of(mid)
    mid.write_bytes(mid.read_bytes()[: fr[2][0]])
    with pytest.raises(SeqGap) as ei:
        AuditReader(tmp_path).verify()
    assert (ei.value.expected, ei.value.found) == (6, 7)


def test_rotate_mb_from_env():
    assert rotate_bytes_from_env({}) == 8 * MIB
    assert rotate_bytes_from_env({"ECAC_AUDIT_ROTATE_MB": " 3 "}) == 3 * MIB
    for bad in ("0", "-1", "0.5", "1e3", "x"):
        with pytest.raises(AuditError, match="ECAC_AUDIT_ROTATE_MB must be a positive whole number"):
            rotate_bytes_from_env({"ECAC_AUDIT_ROTATE_MB": bad})


# --------------------------------------------------------------------------- tail repair and recovery


def test_crash_tail_of_the_last_segment_is_repaired(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    good = seg.read_bytes()
    b = ChainBuilder(sk, NODE_ID, 3, bytes(32))
    torn = frame(b.make(cp(4))[2])[:100]  # a crash mid-append
    seg.write_bytes(good + torn)
    rep = Reports()
    assert AuditReader(tmp_path, report=rep).verify().count == 3
    assert rep == [f"truncated tail repaired at {seg} (offset {len(good)})"]
    assert seg.read_bytes() == good
    with AuditWriter(tmp_path, sk, NODE_ID) as w:
        assert w.append(cp(4)) == 4
    assert AuditReader(tmp_path).verify().count == 4


def test_truncated_last_record_is_repaired_and_the_writer_continues(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    fr = frames_of(seg)
    data = seg.read_bytes()
    seg.write_bytes(data[: fr[2][0] + 50])
    rep = Reports()
    res = AuditReader(tmp_path, report=rep).verify()
    assert res.count == 2 and res.head == decode_record(fr[1][1]).entry_hash()
    assert rep == [f"truncated tail repaired at {seg} (offset {fr[2][0]})"]
    assert seg.read_bytes() == data[: fr[2][0]]  # records 1 and 2 intact
    wrep = Reports()
    with AuditWriter(tmp_path, sk, NODE_ID, report=wrep) as w:  # the index still says seq 3
        assert w.append(cp(9)) == 3
    assert "continuing the chain from seq 2" in wrep[0]
    assert AuditReader(tmp_path).verify().count == 3


def test_partial_length_prefix_is_repaired(tmp_path, sk):
    write_log(tmp_path, sk, 2)
    seg = tmp_path / SEG1
    good = seg.read_bytes()
    seg.write_bytes(good + b"\x00\x00")
    rep = Reports()
    assert AuditReader(tmp_path, report=rep).verify().count == 2
    assert rep == [f"truncated tail repaired at {seg} (offset {len(good)})"]
    assert seg.read_bytes() == good


def test_torn_record_in_a_non_last_segment_is_truncated(tmp_path, sk):
    write_log(tmp_path, sk, 5, rotate_bytes=1000)
    s1 = tmp_path / SEG1
    data = s1.read_bytes()
    s1.write_bytes(data[:-30])
    with pytest.raises(Truncated, match="only the last segment may end mid-record"):
        AuditReader(tmp_path).verify()
    assert s1.read_bytes() == data[:-30]  # not repaired
    s1.write_bytes(data + b"\x01\x02")  # 1-3 stray bytes in an older segment are ignored
    assert AuditReader(tmp_path).verify().count == 5


def test_damaged_length_prefix_is_not_cut_off(tmp_path, sk):
    write_log(tmp_path, sk, 3)
    seg = tmp_path / SEG1
    fr = frames_of(seg)
    data = bytearray(seg.read_bytes())
    data[fr[1][0] : fr[1][0] + 4] = (5000).to_bytes(4, "big")
    seg.write_bytes(bytes(data))
    with pytest.raises(Truncated, match="further records follow"):
        AuditReader(tmp_path).verify()
    assert seg.read_bytes() == bytes(data)
    with pytest.raises(AuditError, match="damaged length prefix"):
        AuditWriter(tmp_path, sk, NODE_ID)


def test_writer_adopts_a_record_missing_from_the_index(tmp_path, sk):
    head = write_log(tmp_path, sk, 2)
    b = ChainBuilder(sk, NODE_ID, 2, head)
    _, h, wire = b.make(cp(3))
    with open(tmp_path / SEG1, "ab") as f:  # a crash after fsync, before the index rename
        f.write(frame(wire))
    assert AuditReader(tmp_path).verify().head == h
    rep = Reports()
    with AuditWriter(tmp_path, sk, NODE_ID, report=rep) as w:
        assert w.seq == 3 and w.head_digest == h
        assert w.append(cp(4)) == 4
    assert rep == ["adopted 1 audit record(s) up to seq 3 missing from index.json"]
    assert parse_index((tmp_path / INDEX).read_text(), "i")[-1].last_seq == 4
    assert AuditReader(tmp_path).verify().count == 4


def test_one_writer_at_a_time_and_no_repair_under_a_live_writer(tmp_path, sk):
    with AuditWriter(tmp_path, sk, NODE_ID) as w:
        w.append(cp(1))
        with pytest.raises(AuditError, match="in use by another writer"):
            AuditWriter(tmp_path, sk, NODE_ID)
        seg = tmp_path / SEG1
        with open(seg, "ab") as f:
            f.write(b"\x00\x00\x01\x00\xbf")
        rep = Reports()
        assert AuditReader(tmp_path, report=rep).verify().count == 1
        assert "left in place" in rep[0] and seg.stat().st_size == 365 + 5
    AuditWriter(tmp_path, sk, NODE_ID, report=Reports()).close()  # the lock was released


def test_writer_refuses_a_log_of_another_node(tmp_path, sk):
    write_log(tmp_path, sk, 1)
    with pytest.raises(AuditError, match="written by another node"):
        AuditWriter(tmp_path, SigningKey(b"\x07" * 32), NODE_ID)
    with pytest.raises(AuditError, match="written by another node"):
        AuditWriter(tmp_path, sk, b"\xcd" * 32)
    assert (tmp_path / "node_id.bin").read_bytes() == NODE_ID  # untouched
    assert AuditReader(tmp_path).verify().count == 1


def test_reader_errors_name_the_problem(tmp_path, sk):
    with pytest.raises(AuditError, match=r"index\.json is missing"):
        AuditReader(tmp_path).verify()
    write_log(tmp_path, sk, 1)
    idx = json.loads((tmp_path / INDEX).read_text())
    idx["segments"][0]["path"] = "../elsewhere.log"
    (tmp_path / INDEX).write_text(json.dumps(idx))
    with pytest.raises(AuditError, match=r"`path` must be 'segment-00000001.log'"):
        AuditReader(tmp_path).verify()
    (tmp_path / INDEX).write_text("{")
    with pytest.raises(AuditError, match="not valid JSON"):
        AuditReader(tmp_path).verify()


# --------------------------------------------------------------------------- default hook, store writer


def test_open_default_creates_and_keeps_its_identity(tmp_path):
    d = tmp_path / "hook"
    env = {"ECAC_AUDIT_DIR": str(d)}
    with open_default(env) as w:
        w.append(cp(1))
    sk_file = d / "node_sk.bin"
    assert len(sk_file.read_bytes()) == 32 and stat.S_IMODE(sk_file.stat().st_mode) == 0o600
    pk, node_id = (d / "node_pk.bin").read_bytes(), (d / "node_id.bin").read_bytes()
    assert pk == public_key(SigningKey(sk_file.read_bytes()))
    with open_default(env) as w:
        assert w.append(cp(2)) == 2
    assert (d / "node_pk.bin").read_bytes() == pk and (d / "node_id.bin").read_bytes() == node_id
    assert AuditReader(d).verify().count == 2


def test_store_writer_follows_ecac_node_sk_hex(tmp_path):
    assert store_writer(tmp_path, {}) is None
    rep = Reports()
    assert store_writer(tmp_path, {"ECAC_NODE_SK_HEX": "abc"}, report=rep) is None
    assert rep == ["audit disabled: bad ECAC_NODE_SK_HEX (expected 64 hex chars for ed25519 secret key)"]
    with store_writer(tmp_path, {"ECAC_NODE_SK_HEX": "11" * 32}) as w:
        assert w.dir == tmp_path / "audit"
        assert w.node_id == blake3.blake3(public_key(SigningKey(b"\x11" * 32))).digest()


# --------------------------------------------------------------------------- CLI


def test_cli_verify_chain(tmp_path, sk):
    head = write_log(tmp_path, sk, 3)
    d = str(tmp_path)
    assert ok("audit-verify-chain", "--dir", d).stdout == f"OK: audit chain verified at {d}\n"
    r = ok("audit-verify-chain", "--dir", d, "--print-head", "--expect-head", head.hex())
    assert r.stdout == f"OK: audit chain verified at {d}\nhead={head.hex()} records=3\n"
    r = run("audit-verify-chain", "--dir", d, "--expect-head", "00" * 32)
    assert r.exit_code == 1 and isinstance(r.exception, HeadMismatch) and r.stdout == ""
    r = run("audit-verify-chain", "--dir", d, "--expect-head", "zz")
    assert r.exit_code == 1 and str(r.exception) == "expected 64 hex chars for audit head"
    assert run("audit-verify-chain", "--bogus").exit_code == 2


def test_cli_export(tmp_path, sk):
    write_log(tmp_path / "log", sk, 3)
    out = tmp_path / "out.jsonl"
    r = ok("audit-export", "--dir", str(tmp_path / "log"), "--out", str(out))
    assert r.stdout == f"wrote deterministic JSONL to {out}\n"
    recs = [decode_record(b) for _, b in frames_of(tmp_path / "log" / SEG1)]
    assert out.read_text() == "".join(export_line(rec) + "\n" for rec in recs)
    first = json.loads(out.read_text().splitlines()[0])
    assert list(first) == ["seq", "ts_monotonic", "prev_hash_hex", "node_id_hex", "event", "signature_hex"]
    _edit(tmp_path / "log" / SEG1, "swap")
    r = run("audit-export", "--dir", str(tmp_path / "log"), "--out", str(tmp_path / "x.jsonl"))
    assert isinstance(r.exception, SeqGap) and not (tmp_path / "x.jsonl").exists()


def test_cli_cat(tmp_path, sk):
    d = tmp_path / "log"
    write_log(d, sk, 4, rotate_bytes=1000)
    segs = [d / SEG1, d / "segment-00000002.log"]
    recs = [[decode_record(b) for _, b in frames_of(p)] for p in segs]
    want = "".join(
        f"=== {p} ===\n" + "".join(cat_line(r) + "\n" for r in rs) for p, rs in zip(segs, recs, strict=True)
    )
    assert ok("audit-cat", "--dir", str(d)).stdout == want
    r = ok("audit-cat", "--dir", str(d), "--segment", str(segs[1]))
    assert r.stdout == f"=== {segs[1]} ===\n" + cat_line(recs[1][0]) + "\n"


def _ops_files(tmp_path: Path) -> tuple[list, Path]:
    ops = gen_hb_chain(5, 4)
    bad = loads(ops[2].cbor)
    bad["sig"][0] ^= 1
    f = tmp_path / "ops.cbor"
    f.write_bytes(b"\x84" + ops[0].cbor + ops[1].cbor + dumps(bad) + ops[3].cbor)
    return ops, f


def test_cli_op_append_audited(tmp_path):
    ops, f = _ops_files(tmp_path)
    audit_dir = tmp_path / "audit"
    db = tmp_path / "db"
    env = {"ECAC_AUDIT_DIR": str(audit_dir), "ECAC_NODE_SK_HEX": "22" * 32}
    r = ok("op-append-audited", "-d", str(db), str(f), env=env)
    bad_id = ops[2].op_id.hex()
    assert r.stderr.splitlines() == [
        f"appended {ops[0].op_id.hex()}",
        f"appended {ops[1].op_id.hex()}",
        f"append failed for {bad_id}: invalid signature for op {bad_id}",
        f"appended {ops[3].op_id.hex()}",
    ]
    sink = [rec.entry.event for _, _, rec in AuditReader(audit_dir).iter_records()]
    assert sink == [SkippedOp(ops[2].op_id, 0, "invalid_sig")]
    # the store's own log (ECAC_NODE_SK_HEX) got one IngestedOp per op, the rejected one included
    store_log = [rec.entry.event for _, _, rec in AuditReader(db / "audit").iter_records()]
    assert store_log == [IngestedOp.of(op, i != 2) for i, op in enumerate(ops)]
    assert AuditReader(db / "audit").verify().count == 4
    # the two logs are separate chains with separate keys
    assert (db / "audit" / "node_id.bin").read_bytes() != (audit_dir / "node_id.bin").read_bytes()


def test_cli_op_append_audited_sink_unavailable(tmp_path):
    _, f = _ops_files(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("op-append-audited", "-d", str(tmp_path / "db"), str(f), env={"ECAC_AUDIT_DIR": str(blocker)})
    assert r.exit_code == 1
    assert str(r.exception).startswith("audit sink unavailable: set ECAC_NODE_SK_HEX\n\nCaused by:\n    ")


def test_cli_record_and_verify_full(tmp_path):
    ops = gen_hb_chain(6, 12)
    f = tmp_path / "ops.cbor"
    f.write_bytes(encode_ops(ops))
    db = str(tmp_path / "db")
    audit_dir = tmp_path / "audit"
    env = {"ECAC_AUDIT_DIR": str(audit_dir)}
    ok("op-append", "-d", db, "-q", str(f))
    assert ok("audit-record", "-d", db, env=env).stdout == "OK: wrote decision events to the audit sink\n"
    assert AuditReader(audit_dir).verify().count == 13
    r = ok("audit-verify-full", "-d", db, env=env)
    assert r.stdout == "OK: replay decisions match audit (12 entries)\n"
    with open_default(env) as w:  # a decision the replay does not make
        w.append(SkippedOp(ops[0].op_id, 0, "deny_wins"))
    r = run("audit-verify-full", "-d", db, env=env)
    assert r.exit_code == 1 and str(r.exception) == "audit decisions diverge"
    assert r.stderr.splitlines() == [
        "first difference at sorted entry 12:",
        "  replay: (none)",
        f"  audit:  Skipped {ops[0].op_id.hex()} topo_idx=0 reason=deny_wins",
        "replay reasons: authorized=12",
        "audit reasons:  authorized=12 deny_wins=1",
    ]


def test_cli_rotation_from_env(tmp_path):
    ops = gen_hb_chain(7, 3000)  # ~400-byte records: 1 MiB after ~2620
    f = tmp_path / "ops.cbor"
    f.write_bytes(encode_ops(ops))
    db = str(tmp_path / "db")
    env = {"ECAC_AUDIT_DIR": str(tmp_path / "audit"), "ECAC_AUDIT_ROTATE_MB": "1"}
    ok("op-append", "-d", db, "-q", str(f))
    ok("audit-record", "-d", db, env=env)
    segs = parse_index((tmp_path / "audit" / INDEX).read_text(), "i")
    assert len(segs) == 2 and os.path.getsize(tmp_path / "audit" / SEG1) >= MIB
    assert (segs[0].last_seq + 1, segs[1].last_seq) == (segs[1].first_seq, 3001)
    assert (
        ok("audit-verify-full", "-d", db, env=env).stdout
        == "OK: replay decisions match audit (3000 entries)\n"
    )


@pytest.mark.parametrize(
    "cmd",
    [
        "op-append-audited",
        "audit-verify-chain",
        "audit-export",
        "audit-verify-full",
        "audit-cat",
        "audit-record",
    ],
)
def test_cli_help(cmd):
    r = ok(cmd, "--help")
    usage = r.stdout.split("\n", 1)[0]
    assert usage.endswith(f" {cmd} [OPTIONS]" + (" INPUTS..." if cmd == "op-append-audited" else ""))
    assert "-h, --help" in r.stdout and "audit feature is not enabled" not in r.stdout


def test_cli_subprocess_exit_codes(tmp_path, sk):
    write_log(tmp_path, sk, 2)
    cmd = [sys.executable, "-m", "ecac", "audit-verify-chain", "--dir", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"OK: audit chain verified at {tmp_path}\n", "")
    seg = tmp_path / SEG1
    seg.write_bytes(seg.read_bytes()[frames_of(seg)[1][0] :])  # record 1 deleted
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith(
        f"Error: audit chain broken at {tmp_path / SEG1} offset 0: expected seq 1, found 2"
    )
    p = subprocess.run([*cmd, "--nope"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "No such option" in p.stderr


def test_errors_are_ecac_errors():
    assert issubclass(AuditError, EcacError) and issubclass(AuditChainError, AuditError)


# --------------------------------------------------------------------------- the store's own log


def _store_events(db: Path) -> list:
    reader = AuditReader(db / "audit")
    res = reader.verify()
    events = [rec.entry.event for _, _, rec in reader.iter_records()]
    assert res.count == len(events)
    return events


def test_store_logs_every_decoded_put_and_checkpoint_to_db_audit(tmp_path, monkeypatch):
    from ecac.core.audit import Checkpoint, IngestedOp
    from ecac.core.codec import dumps, loads
    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full
    from ecac.store.memory import PutRejectedError
    from ecac.store.rocks import Store
    from ecac.testing.workloads import gen_hb_chain

    monkeypatch.setenv("ECAC_NODE_SK_HEX", "01" * 32)
    db = tmp_path / "db"
    ops = gen_hb_chain(21, 6)
    bad = loads(ops[5].cbor)
    bad["sig"][0] ^= 1
    with Store.open(db) as st:
        assert st.audit is not None
        st.put_many(ops[:3])
        res = st.put_many([ops[3], dumps(bad), b"\x00not cbor", ops[0]], on_invalid="skip")
        assert len(res.rejected) == 2
        with pytest.raises(PutRejectedError):
            st.put(dumps(bad))  # logged before it is refused
        state, digest = replay_full(Dag.from_ops(ops[:4]))
        cid = st.checkpoint_create(state, 4)
    want = [IngestedOp.of(op, True) for op in ops[:4]]
    want += [IngestedOp.of(ops[5], False), IngestedOp.of(ops[0], True), IngestedOp.of(ops[5], False)]
    want.append(Checkpoint(cid, 4, digest))
    assert _store_events(db) == want  # the undecodable input has no event
    with Store.open(db) as st:  # a reopened store continues the same chain
        st.put(ops[4])
    assert _store_events(db) == [*want, IngestedOp.of(ops[4], True)]


def test_store_without_or_with_a_bad_node_key_keeps_working_without_audit(tmp_path, monkeypatch, capfd):
    from ecac.store.rocks import Store
    from ecac.testing.workloads import gen_hb_chain

    ops = gen_hb_chain(22, 2)
    monkeypatch.delenv("ECAC_NODE_SK_HEX", raising=False)
    with Store.open(tmp_path / "a") as st:
        st.put_many(ops)
        assert st.audit is None
    assert not (tmp_path / "a" / "audit").exists()
    monkeypatch.setenv("ECAC_NODE_SK_HEX", "zz")
    with Store.open(tmp_path / "b") as st:
        st.put_many(ops)
        assert st.audit is None and st.complete_count() == 2
    assert "audit disabled: bad ECAC_NODE_SK_HEX" in capfd.readouterr().err
    monkeypatch.setenv("ECAC_NODE_SK_HEX", "02" * 32)
    with Store.open(tmp_path / "a", read_only=True) as st:  # a reader never writes a log
        assert st.audit is None and st.complete_count() == 2
    assert not (tmp_path / "a" / "audit").exists()
