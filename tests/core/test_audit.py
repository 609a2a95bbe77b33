"""The pure audit module (core §14): record bytes, strict decoding, the chain verifier, audited replay."""

from __future__ import annotations

import dataclasses

import pytest
from nacl.signing import SigningKey

from ecac.core import policy
from ecac.core.audit import (
    ZERO_HASH,
    AppliedOp,
    AuditEntry,
    AuditRecord,
    BadNodeId,
    BadSig,
    ChainBuilder,
    ChainVerifier,
    Checkpoint,
    HeadMismatch,
    IngestedOp,
    MemorySink,
    PrevHash,
    SeqGap,
    SkippedOp,
    SyncEvent,
    ViewEvent,
    cat_line,
    compare_decisions,
    decision_of,
    decisions,
    decode_event,
    decode_record,
    event_json,
    event_obj,
    export_line,
    frame,
    replay_audited,
    sign_entry,
    split_frames,
    tail_is_one_append,
    verify_chain,
)
from ecac.core.codec import dumps, loads
from ecac.core.errors import DecodeError
from ecac.core.hlc import Hlc
from ecac.core.keys import public_key
from ecac.core.op import Data, make_op
from ecac.core.replay import dag_of_verified, replay_full
from ecac.testing import scenarios
from ecac.testing.workloads import gen_hb_chain

NODE_ID = b"\xab" * 32
SK = SigningKey(bytes(range(32)))


@pytest.fixture(scope="module")
def vec(vectors):
    return vectors.expected["audit"]


def vector_entry(vec) -> tuple[SigningKey, AuditEntry]:
    sk = SigningKey(bytes.fromhex(vec["node_sk_seed_hex"]))
    cp = vec["event"]["Checkpoint"]
    event = Checkpoint(cp["checkpoint_id"], cp["topo_idx"], bytes.fromhex(cp["state_digest_hex"]))
    entry = AuditEntry(
        vec["seq"],
        vec["ts_monotonic"],
        bytes.fromhex(vec["prev_hash_hex"]),
        bytes.fromhex(vec["node_id_hex"]),
        event,
    )
    return sk, entry


def chain(n: int, sk: SigningKey = SK, node_id: bytes = NODE_ID) -> list[AuditRecord]:
    b = ChainBuilder(sk, node_id)
    out = []
    for i in range(n):
        rec, h, _ = b.make(Checkpoint(i + 1, i + 1, bytes([i % 256]) * 32))
        b.advance(rec, h)
        out.append(rec)
    return out


def resign(rec: AuditRecord, sk: SigningKey = SK, **changes) -> AuditRecord:
    return sign_entry(dataclasses.replace(rec.entry, **changes), sk)[0]


# --------------------------------------------------------------------------- the vector


def test_vector_byte_for_byte(vec):
    sk, entry = vector_entry(vec)
    assert public_key(sk).hex() == vec["node_pk_hex"]
    assert entry.preimage().hex() == vec["preimage_cbor_hex"]
    rec, h, wire = sign_entry(entry, sk)
    assert h.hex() == vec["entry_hash_hex"] == entry.entry_hash().hex()
    assert rec.signature.hex() == vec["signature_hex"]
    assert wire.hex() == vec["wire_record_hex"] == rec.encode().hex()
    assert len(wire) == vec["wire_record_len"] == 361
    assert wire[0] == 0xBF and wire[-1] == 0xFF
    assert frame(wire).hex() == vec["segment_frame_hex"]


def test_vector_decodes_to_the_same_record(vec):
    sk, entry = vector_entry(vec)
    rec = decode_record(bytes.fromhex(vec["wire_record_hex"]))
    assert rec.entry == entry
    assert rec.signature.hex() == vec["signature_hex"]
    assert verify_chain([rec], entry.node_id, public_key(sk)).hex() == vec["entry_hash_hex"]


def test_chain_builder_reproduces_the_vector(vec):
    sk, entry = vector_entry(vec)
    b = ChainBuilder(sk, entry.node_id)
    _, h, wire = b.make(entry.event)
    assert wire.hex() == vec["wire_record_hex"]
    assert b.seq == 0  # make does not advance
    b.advance(decode_record(wire), h)
    assert (b.seq, b.ts, b.prev_hash) == (1, 1, h)


# --------------------------------------------------------------------------- events


OP_ID = bytes(range(32))
PK = bytes(range(32, 64))
EVENTS = [
    IngestedOp(OP_ID, PK, (b"\x01" * 32, b"\x02" * 32), True),
    IngestedOp(OP_ID, PK, (), False),
    AppliedOp(OP_ID, 7),
    SkippedOp(OP_ID, 2**64 - 1, "out_of_scope"),
    ViewEvent(PK, "o", "x", b"\xff" * 32),
    Checkpoint(3, 4, b"\x09" * 32),
    SyncEvent(PK, 2**32 - 1, 0),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.NAME)
def test_event_round_trip_and_field_order(event):
    obj = event_obj(event)
    assert list(obj) == [event.NAME]
    assert list(obj[event.NAME]) == list(event.FIELDS)
    data = dumps(obj)
    assert decode_event(loads(data)) == event
    rec = sign_entry(AuditEntry(1, 1, ZERO_HASH, NODE_ID, event), SK)[0]
    assert decode_record(rec.encode()) == rec


def test_event_cbor_shapes_exact():
    # externally tagged, struct fields in declaration order, byte arrays as arrays of ints
    ids = "9820" + "".join(f"{b:02x}" if b < 24 else f"18{b:02x}" for b in OP_ID)
    assert dumps(event_obj(AppliedOp(OP_ID, 7))).hex() == (
        "a1" + "69" + b"AppliedOp".hex() + "a3" + "65" + b"op_id".hex() + ids
        + "68" + b"topo_idx".hex() + "07" + "66" + b"reason".hex() + "6a" + b"authorized".hex()
    )  # fmt: skip
    assert dumps(event_obj(SyncEvent(bytes(32), 1, 2))).hex() == (
        "a1" + "69" + b"SyncEvent".hex() + "a3" + "67" + b"peer_id".hex() + "9820" + "00" * 32
        + "67" + b"fetched".hex() + "01" + "6a" + b"duplicates".hex() + "02"
    )  # fmt: skip
    ing = dumps(event_obj(IngestedOp(bytes(32), bytes(32), (), True)))
    assert ing.endswith(b"\x67parents\x80\x6cverified_sig\xf5")


def test_event_json_is_serde_json_shape():
    assert event_json(Checkpoint(1, 2, bytes(32))) == (
        '{"Checkpoint":{"checkpoint_id":1,"topo_idx":2,"state_digest":[' + ",".join(["0"] * 32) + "]}}"
    )
    assert event_json(ViewEvent(bytes(32), "ö", 'a"b', bytes(32))).count('"obj":"ö","field":"a\\"b"') == 1


@pytest.mark.parametrize(
    ("obj", "msg"),
    [
        ({"Nope": {}}, "unknown variant 'Nope'"),
        ({"AppliedOp": {"op_id": list(OP_ID), "topo_idx": 1}}, "missing field `reason`"),
        ({"AppliedOp": {"op_id": list(OP_ID), "topo_idx": 1, "reason": "ok"}}, "expected 'authorized'"),
        ({"SkippedOp": {"op_id": list(OP_ID), "topo_idx": 1, "reason": "because"}}, "is not one of"),
        ({"Checkpoint": {"checkpoint_id": 1, "topo_idx": -1, "state_digest": [0] * 32}}, "out of range"),
        ({"Checkpoint": {"checkpoint_id": 1, "topo_idx": 1, "state_digest": [0] * 31}}, "expected 32 bytes"),
        ({"Checkpoint": {"checkpoint_id": 1, "topo_idx": 1, "state_digest": bytes(32)}}, "array of ints"),
        ({"SyncEvent": {"peer_id": [0] * 32, "fetched": 2**32, "duplicates": 0}}, "out of range"),
        (
            {"IngestedOp": {"op_id": [0] * 32, "author_pk": [0] * 32, "parents": [], "verified_sig": 1}},
            "bool",
        ),
        ({"AppliedOp": {"op_id": [0] * 32, "topo_idx": 1, "reason": "authorized", "x": 1}}, "unknown field"),
        ([1, 2], "expected a map"),
    ],
)
def test_decode_event_rejects_with_a_clear_message(obj, msg):
    with pytest.raises(DecodeError, match=msg.replace("(", r"\(")):
        decode_event(obj)


# --------------------------------------------------------------------------- strict record decoding


def _wire(vec) -> bytes:
    return bytes.fromhex(vec["wire_record_hex"])


def test_definite_map_record_is_not_canonical(vec):
    wire = _wire(vec)
    definite = b"\xa6" + wire[1:-1]
    assert loads(definite) == loads(wire)  # same content ...
    with pytest.raises(DecodeError, match="not the canonical encoding"):  # ... but not the wire form
        decode_record(definite)


def test_record_decode_errors(vec):
    wire = _wire(vec)
    obj = loads(wire)
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode_record(wire + b"\x00")
    with pytest.raises(DecodeError, match=r"truncated|malformed"):
        decode_record(wire[:-1])
    short = dict(obj, signature=obj["signature"][:63])
    with pytest.raises(DecodeError, match="signature: expected 64 bytes, got 63"):
        decode_record(dumps(short))
    missing = {k: v for k, v in obj.items() if k != "ts_monotonic"}
    with pytest.raises(DecodeError, match="missing field `ts_monotonic`"):
        decode_record(dumps(missing))
    with pytest.raises(DecodeError, match="unknown field 'extra'"):
        decode_record(dumps(dict(obj, extra=1)))
    with pytest.raises(DecodeError, match="expected a map"):
        decode_record(dumps([1, 2, 3]))
    # a non-shortest integer for seq (0x18 0x01 instead of 0x01)
    nonmin = wire.replace(b"\x63seq\x01", b"\x63seq\x18\x01", 1)
    with pytest.raises(DecodeError, match="first difference at byte 5"):
        decode_record(nonmin)


def test_every_single_byte_change_is_rejected_or_changes_the_entry(vec):
    sk, entry = vector_entry(vec)
    wire = _wire(vec)
    pk = public_key(sk)
    rejected = 0
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        try:
            rec = decode_record(bytes(bad))
        except DecodeError:
            rejected += 1
            continue
        with pytest.raises((BadSig, SeqGap, BadNodeId, PrevHash)):
            verify_chain([rec], entry.node_id, pk)
    assert 0 < rejected < len(wire)  # both paths were taken


# --------------------------------------------------------------------------- framing


def test_split_frames_complete_stray_and_torn():
    recs = [r.encode() for r in chain(3)]
    data = b"".join(frame(w) for w in recs)
    fr = split_frames(data)
    assert [b for _, b in fr.records] == recs
    assert (fr.end, fr.tail) == (len(data), "")
    assert [o for o, _ in fr.records] == [0, 4 + len(recs[0]), 8 + len(recs[0]) + len(recs[1])]
    stray = split_frames(data + b"\x00\x00")
    assert (len(stray.records), stray.end, stray.tail) == (3, len(data), "stray")
    torn = split_frames(data[:-10])
    assert (len(torn.records), torn.tail, torn.want) == (2, "torn", len(recs[2]))
    assert torn.end == fr.records[2][0]
    assert tail_is_one_append(data[:-10], torn)
    assert split_frames(b"") == split_frames(b"")
    assert split_frames(b"").records == [] and split_frames(b"").tail == ""


def test_damaged_length_prefix_is_not_a_torn_append():
    recs = [frame(r.encode()) for r in chain(3)]
    data = bytearray(b"".join(recs))
    data[len(recs[0]) : len(recs[0]) + 4] = (10**6).to_bytes(4, "big")  # record 2's prefix claims 1 MB
    fr = split_frames(bytes(data))
    assert (len(fr.records), fr.tail) == (1, "torn")
    assert not tail_is_one_append(bytes(data), fr)  # record 3 follows: a damaged prefix


# --------------------------------------------------------------------------- the chain verifier


def test_round_trip_and_head():
    recs = chain(5)
    head = verify_chain(recs, NODE_ID, public_key(SK))
    assert head == recs[-1].entry_hash()
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].entry.prev_hash == ZERO_HASH
    assert all(recs[i].entry.prev_hash == recs[i - 1].entry_hash() for i in range(1, 5))
    assert verify_chain([], NODE_ID, public_key(SK)) == ZERO_HASH
    assert verify_chain(recs, NODE_ID, public_key(SK), expected_head=head) == head


def test_tamper_event_gives_bad_sig():
    recs = chain(3)
    forged = AuditRecord(
        dataclasses.replace(recs[1].entry, event=Checkpoint(9, 9, bytes(32))), recs[1].signature
    )
    with pytest.raises(BadSig) as ei:
        verify_chain([recs[0], forged, recs[2]], NODE_ID, public_key(SK))
    assert ei.value.seq == 2
    assert "seq 2" in str(ei.value) and "node_pk.bin" in str(ei.value)


def test_deleted_first_record_is_a_seq_gap():
    with pytest.raises(SeqGap) as ei:
        verify_chain(chain(3)[1:], NODE_ID, public_key(SK))
    assert (ei.value.expected, ei.value.found) == (1, 2)


def test_swapped_records_are_a_seq_gap():
    r = chain(3)
    with pytest.raises(SeqGap) as ei:
        verify_chain([r[0], r[2], r[1]], NODE_ID, public_key(SK))
    assert (ei.value.expected, ei.value.found) == (2, 3)


def test_bad_node_id_and_prev_hash():
    r = chain(3)
    other = resign(r[1], node_id=b"\xcd" * 32)
    with pytest.raises(BadNodeId) as ei:
        verify_chain([r[0], other, r[2]], NODE_ID, public_key(SK))
    assert ei.value.seq == 2 and ei.value.found == b"\xcd" * 32
    relinked = resign(r[2], prev_hash=b"\x01" * 32)  # validly signed, but not chained
    with pytest.raises(PrevHash) as ei2:
        verify_chain([r[0], r[1], relinked], NODE_ID, public_key(SK))
    assert ei2.value.seq == 3 and ei2.value.expected == r[1].entry_hash()


def test_other_key_gives_bad_sig_on_the_first_record():
    with pytest.raises(BadSig) as ei:
        verify_chain(chain(2), NODE_ID, public_key(SigningKey(b"\x05" * 32)))
    assert ei.value.seq == 1


def test_head_mismatch():
    r = chain(3)
    with pytest.raises(HeadMismatch) as ei:
        verify_chain(r[:2], NODE_ID, public_key(SK), expected_head=r[2].entry_hash())
    assert ei.value.found == r[1].entry_hash()


def test_first_failing_record_wins_despite_batched_signatures():
    r = chain(6)
    forged = AuditRecord(dataclasses.replace(r[1].entry, ts_monotonic=99), r[1].signature)
    recs = [r[0], forged, r[2], r[3], r[5]]  # bad sig at seq 2, seq gap at seq 5
    with pytest.raises(BadSig) as ei:
        verify_chain(recs, NODE_ID, public_key(SK))
    assert ei.value.seq == 2
    v = ChainVerifier(NODE_ID, public_key(SK))
    v.BATCH = 2  # a flush mid-stream still reports in order
    for rec in r:
        v.feed(rec, "x")
    assert v.finish() == r[-1].entry_hash() and v.count == 6


# --------------------------------------------------------------------------- replay with auditing


def test_replay_audited_hb_chain_of_50():
    ops = gen_hb_chain(42, 50)
    dag = dag_of_verified(ops)
    sink = MemorySink()
    state, digest = replay_audited(dag, sink)
    full_state, full_digest = replay_full(dag_of_verified(ops))
    assert digest == full_digest and state == full_state
    order = dag.topo_order()
    assert sink.events[:-1] == [AppliedOp(op.op_id, i, "authorized") for i, op in enumerate(order)]
    assert sink.events[-1] == Checkpoint(50, 50, digest)
    # the events as a signed chain verify
    b = ChainBuilder(SK, NODE_ID)
    recs = []
    for ev in sink.events:
        rec, h, wire = b.make(ev)
        b.advance(rec, h)
        recs.append(decode_record(wire))
    assert verify_chain(recs, NODE_ID, public_key(SK)) == b.prev_hash
    assert len(recs) == 51


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (scenarios.write_before_grant, "deny_wins"),
        (scenarios.revoke_then_write, "revoked_cred"),
        (scenarios.expired_credential, "expired_cred"),
        (scenarios.out_of_scope, "out_of_scope"),
        (scenarios.status_list_revocation, "deny_wins"),
    ],
)
def test_skip_reasons_follow_the_policy_deny_reasons(scenario, reason):
    ops = scenario()
    dag = dag_of_verified(ops)
    sink = MemorySink()
    _, digest = replay_audited(dag, sink)
    assert digest == replay_full(dag_of_verified(ops))[1]
    pos = {op.op_id: i for i, op in enumerate(dag.topo_order())}
    expected = [
        ("Applied", op.op_id, pos[op.op_id], "authorized")
        if verdict == policy.ALLOWED
        else ("Skipped", op.op_id, pos[op.op_id], why)
        for op, verdict, why in policy.explain(dag.topo_order())
    ]
    got = [d for d in map(decision_of, sink.events) if d is not None]
    assert got == expected
    assert reason in {d[3] for d in got if d[0] == "Skipped"}
    assert isinstance(sink.events[-1], Checkpoint) and sink.events[-1].topo_idx == len(dag.topo_order())


def test_no_events_for_non_data_ops_and_keys_outside_the_grammar():
    sk = SigningKey(b"\x03" * 32)
    a = make_op(sk, (), Hlc(1, 0, 1), Data("not-a-key", b"v"))
    b = make_op(sk, (a.op_id,), Hlc(2, 0, 1), Data("mv:o:x", b"v"))
    sink = MemorySink()
    _, digest = replay_audited(dag_of_verified([a, b]), sink)
    assert sink.events == [AppliedOp(b.op_id, 1), Checkpoint(2, 2, digest)]


# --------------------------------------------------------------------------- decisions and views


def test_compare_decisions():
    a = [("Applied", b"\x01" * 32, 0, "authorized"), ("Skipped", b"\x02" * 32, 1, "deny_wins")]
    assert compare_decisions(a, list(reversed(a))) is None
    div = compare_decisions(a, a[:1])
    assert div is not None and div.index == 1 and div.recorded is None and div.replayed == a[1]
    assert div.replayed_counts == {"authorized": 1, "deny_wins": 1}
    assert div.recorded_counts == {"authorized": 1}
    lines = div.lines()
    assert lines[0] == "first difference at sorted entry 1:"
    assert lines[1] == f"  replay: Skipped {'02' * 32} topo_idx=1 reason=deny_wins"
    assert lines[2] == "  audit:  (none)"
    assert decisions([Checkpoint(1, 1, bytes(32)), SkippedOp(b"\x02" * 32, 1, "deny_wins")]) == a[1:]


def test_cat_and_export_lines(vec):
    rec = decode_record(_wire(vec))
    ev = '{"Checkpoint":{"checkpoint_id":1,"topo_idx":1,"state_digest":[' + ",".join(["0"] * 32) + "]}}"
    zeros, ab, sig = "00" * 32, "ab" * 32, vec["signature_hex"]
    assert cat_line(rec) == (
        f'{{"seq":1,"ts_monotonic":1,"prev_hash":"{zeros}","node_id":"{ab}","event":{ev},"signature":"{sig}"}}'
    )
    assert export_line(rec) == (
        f'{{"seq":1,"ts_monotonic":1,"prev_hash_hex":"{zeros}","node_id_hex":"{ab}","event":{ev},'
        f'"signature_hex":"{sig}"}}'
    )


# --------------------------------------------------------------------------- the strict profile


@pytest.mark.parametrize("strict_profile", [False, True], ids=["reference", "strict"])
def test_audited_replay_gives_the_profiles_deny_reasons(strict_profile: bool) -> None:
    """A write concurrent with its revoke and an HLC regression: the audit trail records the
    strict gate's reasons under strict (the same as ``explain``), the reference's otherwise."""
    from ecac.core import access, strict
    from ecac.core.dag import Dag
    from ecac.core.replay import replay_full

    from .test_strict import USER, World

    w = World(strict_profile)
    g = w.setup()
    seen = w.write(USER, b"seen", parents=[g], hlc=200)
    w.revoke(USER, parents=[seen], hlc=300)
    conc = w.write(USER, b"conc", parents=[seen], hlc=400)
    back = w.write(USER, b"back", parents=[conc], hlc=350)
    dag = Dag.from_ops(w.ops)
    sink = MemorySink()
    _, digest = replay_audited(dag, sink)
    assert digest == replay_full(Dag.from_ops(w.ops))[1]
    got = {e.op_id: e.reason for e in sink.events if isinstance(e, AppliedOp | SkippedOp)}
    if strict_profile:
        assert got[conc.op_id] == strict.CONCURRENT_WITH_REVOKE
        assert got[back.op_id] == strict.HLC_REGRESSION
    else:
        assert got[conc.op_id] == policy.REVOKED_CRED and got[back.op_id] == policy.REVOKED_CRED
    assert got[seen.op_id] == "authorized"
    explained = {d.op_id: d.reason or "authorized" for d in access.explain_order(dag.topo_order()).decisions}
    assert got == explained
    # strict reasons survive the record's strict decoding
    for e in sink.events:
        if isinstance(e, SkippedOp):
            assert decode_event(e.to_obj()) == e


def test_skipped_op_reasons_are_the_reference_ones_plus_the_strict_ones() -> None:
    from ecac.core import strict
    from ecac.core.audit import REFERENCE_SKIP_REASONS, SKIP_REASONS
    from ecac.core.profile import ADMISSION_CODES

    reference = {"deny_wins", "invalid_sig", "bad_parent", "revoked_cred", "expired_cred", "out_of_scope"}
    assert reference == REFERENCE_SKIP_REASONS
    assert reference | set(strict.STRICT_REASONS) | ADMISSION_CODES == SKIP_REASONS
    with pytest.raises(ValueError, match="is not one of"):
        SkippedOp(bytes(32), 0, "made_up")
