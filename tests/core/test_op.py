"""The op model (core §3-§4): creation, ids, signatures, strict and tolerant decoding, admission."""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.codec import dumps
from ecac.core.errors import DecodeError, InvalidOpError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import (
    REASON_BAD_SIG,
    REASON_ID_MISMATCH,
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    KeyGrant,
    KeyRotate,
    Op,
    Reserved,
    Revoke,
    StatusListChunk,
    StatusPointer,
    make_op,
    op_id_of,
)
from ecac.core.opcodec import decode_op, decode_op_with_header, encode_ops, read_log
from ecac.core.sig import admit, check_op, check_ops, check_sigs, verify_op
from ecac.testing.workloads import gen_hb_chain

SK = key_pair(11, b"test/op")
OTHER = key_pair(12, b"test/op")
PK = bytes(SK.verify_key)

ALL_PAYLOADS = [
    Data("mv:o:x", b"A"),
    Data("", b""),
    Credential("cred-1", b"a.b.c"),
    Grant(PK, bytes(range(32))),
    Revoke(PK, "editor", ("hv", "mech"), Hlc(11, 3, 2)),
    KeyGrant(PK, "confidential", 7, bytes(32)),
    KeyRotate("confidential", 2, bytes(range(32))),
    IssuerKey("issuer-1", "k1", "EdDSA", PK, 0, 2**64 - 1),
    IssuerKey("issuer-1", "k2", "EdDSA", PK, 5, 6, "k1"),
    IssuerKeyRevoke("issuer-1", "k1", "compromised"),
    StatusListChunk("list-0", "issuer-1", 1, 0, bytes(32), b"\x01\xff"),
    StatusPointer("cred-1", "list-0", 9),
    Reserved(),
]


def op_obj(op: Op) -> dict:
    return cbor2.loads(op.cbor)


def test_make_op_is_deterministic_and_sorts_parents():
    p1, p2 = b"\x02" * 32, b"\x01" * 32
    a = make_op(SK, [p1, p2], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    b = make_op(SK, [p2, p1], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    assert a == b and a.cbor == b.cbor
    assert a.parents == (p2, p1)
    assert check_op(a) is None
    verify_op(a)
    assert a.kind == "Data"
    assert a.sort_key() == (10, 0, 1, a.op_id)
    assert a.computed_id() == a.op_id


@pytest.mark.parametrize("payload", ALL_PAYLOADS, ids=lambda p: p.NAME)
def test_every_payload_round_trips_through_strict_decode(payload):
    op = make_op(SK, [b"\x07" * 32], Hlc(2**40, 2**32 - 1, 2**32 - 1), payload)
    back = decode_op(op.cbor)
    assert back == op
    assert back.cbor == op.cbor
    assert check_op(back) is None
    assert read_log(op.cbor) == [op]
    assert read_log(encode_ops([op, op])) == [op, op]


def test_reserved_payload_is_a_bare_string():
    op = make_op(SK, [], Hlc(), Reserved())
    assert op_obj(op)["header"]["payload"] == "_Reserved"


def test_tampering_is_detected():
    op = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    longer = replace(op, payload=Data("mv:o:x", b"A\x00"))
    assert check_op(longer) == REASON_ID_MISMATCH
    flipped = replace(op, sig=bytes([op.sig[0] ^ 1]) + op.sig[1:])
    assert check_op(flipped) == REASON_BAD_SIG
    assert check_op(replace(op, sig=op.sig[:63])) == REASON_BAD_SIG
    assert check_op(replace(op, sig=b"")) == REASON_BAD_SIG
    other_author = make_op(OTHER, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    assert check_op(replace(other_author, sig=op.sig)) == REASON_BAD_SIG
    with pytest.raises(InvalidOpError) as e:
        verify_op(flipped)
    assert e.value.op_id == op.op_id and str(e.value) == f"rejected op {op.op_id.hex()}: invalid signature"


def test_unsorted_parents_still_verify_when_hashed_that_way():
    p1, p2 = b"\x02" * 32, b"\x01" * 32
    ok = make_op(SK, [p1, p2], Hlc(1, 0, 0), Data("k", b""))
    obj = op_obj(ok)
    obj["header"]["parents"] = [list(p1), list(p2)]  # unsorted; re-sign over this header
    oid = op_id_of(dumps(obj["header"]))
    obj["op_id"] = list(oid)
    obj["sig"] = list(SK.sign(oid).signature)
    (op,) = read_log(dumps(obj))
    assert op.parents == (p1, p2)
    assert check_op(op) is None


def test_decode_op_with_header_shares_the_input_bytes():
    op = gen_hb_chain(1, 2)[1]
    data = bytes(op.cbor)
    back, header = decode_op_with_header(data)
    assert header == op.header_bytes()
    assert back.cbor is data


# ---------------------------------------------------------------------- strict vs tolerant decoding


def _variants(op: Op) -> dict[str, bytes]:
    """Non-canonical encodings of the same op that the tolerant reader accepts."""
    obj = op_obj(op)
    h = obj["header"]
    out = {}
    out["reordered"] = dumps({"sig": obj["sig"], "header": h, "op_id": obj["op_id"]})
    out["packed_header"] = dumps(
        {
            "header": [h["parents"], h["hlc"], h["author_pk"], h["payload"]],
            "sig": obj["sig"],
            "op_id": obj["op_id"],
        }
    )
    out["index_keys"] = dumps({0: h, 1: obj["sig"], 2: obj["op_id"]})
    out["legacy_enum"] = dumps(
        {"header": {**h, "payload": ["Data", h["payload"]["Data"]]}, "sig": obj["sig"], "op_id": obj["op_id"]}
    )
    out["unknown_key"] = dumps({**obj, "extra": 1})
    # indefinite-length sig array
    sig_def = dumps(obj["sig"])
    sig_indef = b"\x9f" + sig_def[2:] + b"\xff"
    out["indefinite"] = op.cbor.replace(sig_def, sig_indef)
    # non-minimal integer for physical_ms (10 -> 18 0a)
    out["non_minimal"] = op.cbor.replace(b"\x6bphysical_ms\x0a", b"\x6bphysical_ms\x18\x0a")
    return out


def test_strict_decode_rejects_what_the_tolerant_reader_accepts():
    op = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    for name, data in _variants(op).items():
        assert data != op.cbor, name
        with pytest.raises(DecodeError):
            decode_op(data)
        (back,) = read_log(data, name)
        assert back == op, name
        assert back.cbor == op.cbor, name  # re-encoded canonically
        assert check_op(back) is None, name


def test_trailing_bytes_are_rejected_everywhere():
    op = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    with pytest.raises(DecodeError):
        decode_op(op.cbor + b"\x00")
    with pytest.raises(DecodeError, match="not a CBOR Vec<Op> or Op"):
        read_log(encode_ops([op]) + b"\x00", "f.cbor")


def test_flat_ops_are_read_with_defaults():
    op = make_op(SK, [], Hlc(), Data("mv:o:x", b"A"))
    h = op_obj(op)["header"]
    flat = {
        "author_pk": h["author_pk"],
        "payload": h["payload"],
        "sig": list(op.sig),
        "op_id": list(op.op_id),
    }
    assert read_log(dumps(flat)) == [op]  # parents -> [], hlc -> {0,0,0}
    assert read_log(dumps([flat, flat])) == [op, op]
    with pytest.raises(DecodeError):
        decode_op(dumps(flat))


def test_nested_op_needs_parents_but_not_hlc():
    op = make_op(SK, [], Hlc(), Data("mv:o:x", b"A"))
    obj = op_obj(op)
    no_hlc = {**obj, "header": {k: v for k, v in obj["header"].items() if k != "hlc"}}
    assert read_log(dumps(no_hlc)) == [op]
    no_parents = {**obj, "header": {k: v for k, v in obj["header"].items() if k != "parents"}}
    with pytest.raises(DecodeError):
        read_log(dumps(no_parents))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("header", "payload"), {"Foo": {"a": 1}}),
        (("header", "payload"), {"Data": {"key": "k"}}),
        (("header", "payload"), {"Data": {"key": 1, "value": []}}),
        (("header", "payload"), {"Data": {"key": "k", "value": b"bytes"}}),
        (("header", "payload"), {"Credential": {"cred_id": "c", "cred_bytes": [], "format": "Ldp"}}),
        (("header", "payload"), "Data"),
        (("header", "payload"), {"A": None, "B": None}),
        (("header", "payload"), 5),
        (("header", "hlc"), {"physical_ms": 1, "logical": 2**32, "node_id": 0}),
        (("header", "hlc"), {"physical_ms": -1, "logical": 0, "node_id": 0}),
        (("header", "hlc"), {"physical_ms": 1.5, "logical": 0, "node_id": 0}),
        (("header", "hlc"), "now"),
        (("header", "author_pk"), [0] * 31),
        (("header", "author_pk"), b"\x00" * 32),
        (("header", "parents"), [[0] * 33]),
        (("header", "parents"), "p"),
        (("op_id",), [0] * 31),
        (("sig",), [256] * 64),
        (("sig",), [True] * 64),
    ],
)
def test_wrong_types_and_shapes_are_decode_errors(path, value):
    op = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    obj = op_obj(op)
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    data = dumps(obj)
    with pytest.raises(DecodeError):
        read_log(data)
    with pytest.raises(DecodeError):
        decode_op(data)


def test_unknown_unit_variants_read_as_reserved():
    op = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    for payload in ("Future", {"Future": None}):
        obj = op_obj(op)
        obj["header"]["payload"] = payload
        (back,) = read_log(dumps(obj))
        assert back.payload == Reserved()
        assert check_op(back) == REASON_ID_MISMATCH  # the re-encoding differs from what was signed


def test_encode_ops_array_headers():
    ops = gen_hb_chain(2, 3)
    for n in (0, 1, 23, 24, 255, 256):
        many = [ops[i % 3] for i in range(n)]
        data = encode_ops(many)
        assert data == dumps([op_obj(op) for op in many])
        assert read_log(data) == many


# ---------------------------------------------------------------------- admission


def test_admission_keeps_valid_ops_and_names_bad_ones():
    ops = gen_hb_chain(3, 6)
    flipped = replace(ops[1], sig=bytes([ops[1].sig[0] ^ 1]) + ops[1].sig[1:])
    changed = replace(ops[3], payload=Data("mv:o:x", b"forged"))
    mixed = [ops[0], flipped, ops[2], changed, ops[4], ops[5]]
    # through a file: the tolerant reader, then admit
    file_bytes = dumps(
        [{"header": op.header_obj(), "sig": list(op.sig), "op_id": list(op.op_id)} for op in mixed]
    )
    read = read_log(file_bytes)
    good, bad = admit(read)
    assert good == [ops[0], ops[2], ops[4], ops[5]]
    assert [(r.op_id, r.reason) for r in bad] == [
        (ops[1].op_id, REASON_BAD_SIG),
        (ops[3].op_id, REASON_ID_MISMATCH),
    ]
    assert str(bad[0]) == f"rejected op {ops[1].op_id.hex()}: invalid signature"
    assert check_ops(read) == [None, REASON_BAD_SIG, None, REASON_ID_MISMATCH, None, None]


def test_check_sigs_parallel_path_keeps_positions():
    ops = gen_hb_chain(4, 300)
    items = [(op.author_pk, op.sig, op.op_id) for op in ops]
    bad = {5, 77, 299}
    for i in bad:
        pk, _, oid = items[i]
        items[i] = (pk, bytes(64), oid)
    assert check_sigs(items) == [i not in bad for i in range(300)]


# ---------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_decode_error_or_ops(data):
    for reader in (read_log, decode_op):
        with contextlib.suppress(DecodeError):  # any other exception fails the test
            reader(data)


_BASE = gen_hb_chain(5, 2)
_LOG = encode_ops(_BASE)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), edits=st.integers(1, 4))
def test_mutated_logs_never_admit_a_forged_op(seed, edits):
    rng = random.Random(seed)
    data = bytearray(_LOG)
    for _ in range(edits):
        i = rng.randrange(len(data))
        r = rng.random()
        if r < 0.5:
            data[i] = rng.randrange(256)
        elif r < 0.75:
            del data[i]
        else:
            data.insert(i, rng.randrange(256))
    try:
        ops = read_log(bytes(data))
    except DecodeError:
        return
    good, bad = admit(ops)
    assert len(good) + len(bad) == len(ops)
    for op in good:  # anything that still verifies is one of the authentic ops
        assert op in _BASE


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_mutated_single_ops_in_strict_decode(seed):
    rng = random.Random(seed)
    data = bytearray(_BASE[1].cbor)
    i = rng.randrange(len(data))
    data[i] = (data[i] + rng.randrange(1, 256)) % 256
    try:
        op = decode_op(bytes(data))
    except DecodeError:
        return
    assert op.cbor == bytes(data)  # strict: only canonical bytes decode
    if check_op(op) is None:
        assert op == _BASE[1]


def test_every_truncation_of_a_log_is_a_decode_error():
    data = encode_ops(gen_hb_chain(6, 2))
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            read_log(data[:n], "t.cbor")
    assert len(read_log(data)) == 2
