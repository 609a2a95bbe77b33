"""The one fast canonical-op parser, fuzzed differentially against strict decode + re-encode.

``SignedOp.__serde__.parse`` (the codec's canonical parser for the op layout) is what
``decode_op`` runs on every op from the network and the store. Its contract: it returns an
op exactly when the bytes are the canonical encoding of the op they decode to, and then the
same op as the general path (cbor2, serde's forms, re-encode, compare). These tests drive
both with valid ops of every kind, every kind of single-byte change, truncations,
extensions and random bytes, and require the same verdict and the same value.
"""

from __future__ import annotations

import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.codec import DecodeError, b2l, dumps, encode_byte_array
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import (
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
    SignedOp,
    StatusListChunk,
    StatusPointer,
    make_op,
    op_cbor,
)
from ecac.core.opcodec import decode_op, decode_op_with_header, op_from_obj, read_log
from ecac.core.sig import check_op

SK = key_pair(13, b"test/opcodec")
PK = bytes(SK.verify_key)
_parse = SignedOp.__serde__.parse

PAYLOADS = [
    Data("mv:o:x", b"A"),
    Data("", b""),
    Data("set+:o:s:é", b"\x00\x17\x18\xff"),
    Credential("cred-1", b"a.b.c"),
    Grant(PK, bytes(range(32))),
    Revoke(PK, "editor", ("hv", "mech"), Hlc(11, 3, 2)),
    Revoke(PK, "", (), Hlc()),
    KeyGrant(PK, "confidential", 7, bytes(32)),
    KeyRotate("confidential", 2**32 - 1, bytes(range(32))),
    IssuerKey("issuer-1", "k1", "EdDSA", PK, 0, 2**64 - 1),
    IssuerKey("issuer-1", "k2", "EdDSA", PK, 5, 6, "k1"),
    IssuerKeyRevoke("issuer-1", "k1", "compromised"),
    StatusListChunk("list-0", "issuer-1", 1, 0, bytes(32), b"\x01\xff"),
    StatusPointer("cred-1", "list-0", 9),
    Reserved(),
]


def _ops() -> list[Op]:
    """Ops whose encoding uses every payload, every head width and the tricky bytes (24, 0x18 0x18)."""
    ops = [make_op(SK, [b"\x07" * 32], Hlc(1, 0, 0), p) for p in PAYLOADS]
    for ms in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        ops.append(make_op(SK, [bytes([24]) * 32], Hlc(ms, 2**32 - 1, 24), Data("k", bytes([24, 24, 23]))))
    ops.append(make_op(SK, [bytes([i]) * 32 for i in range(30)], Hlc(5, 0, 0), Data("x" * 300, bytes(70000))))
    ops.append(make_op(SK, [bytes(32)] * 2, Hlc(5, 0, 0), Data("ключ:é", bytes(range(256)) * 2)))
    ops.append(make_op(SK, [], Hlc(300, 2, 7), Data("k", b"\x18" * 30)))
    return ops


OPS = _ops()
SMALL = [op for op in OPS if len(op.cbor) < 400]


def general(data: bytes) -> SignedOp | None:
    """Strict decode by the general path: one CBOR item, serde's reading, re-encoding identical."""
    try:
        obj = cbor2.loads(data)
    except Exception:  # cbor2 raises several kinds on garbage
        return None
    try:
        s = SignedOp.from_obj(obj, "op")
    except DecodeError:
        return None
    return s if s.encode() == data else None


def agree(data: bytes) -> bool:
    """The fast parser and the general path agree on accept/reject and on the value; returns the verdict."""
    fast = _parse(data)
    slow = general(data)
    assert fast == slow, (data.hex(), fast, slow)
    if fast is not None:
        assert fast.encode() == data
        assert type(fast.header.payload) is type(slow.header.payload)
        op, header = decode_op_with_header(data)
        assert op.cbor is data and header == fast.header.encode()
        assert (op.parents, op.hlc, op.author_pk, op.payload, op.sig, op.op_id) == (
            fast.header.parents,
            fast.header.hlc,
            fast.header.author_pk,
            fast.header.payload,
            fast.sig,
            fast.op_id,
        )
    else:
        with pytest.raises(DecodeError):
            decode_op(data)
    return fast is not None


def reference_obj(op: Op) -> dict:
    """The op as core §3 spells it, built by hand (an oracle independent of the codec)."""

    def hlc(h: Hlc) -> dict:
        return {"physical_ms": h.physical_ms, "logical": h.logical, "node_id": h.node_id}

    p = op.payload
    fields: dict | str
    if isinstance(p, Reserved):
        fields = "_Reserved"
    elif isinstance(p, Revoke):
        fields = {
            "Revoke": {
                "subject_pk": b2l(p.subject_pk),
                "role": p.role,
                "scope_tags": list(p.scope_tags),
                "at": hlc(p.at),
            }
        }
    else:
        body = {}
        for name in p.FIELDS:
            v = getattr(p, name)
            body[name] = b2l(v) if isinstance(v, bytes) else v
        fields = {p.NAME: body}
    header = {
        "parents": [b2l(x) for x in op.parents],
        "hlc": hlc(op.hlc),
        "author_pk": b2l(op.author_pk),
        "payload": fields,
    }
    return {"header": header, "sig": b2l(op.sig), "op_id": b2l(op.op_id)}


# --------------------------------------------------------------------------- valid ops


def test_every_kind_of_op_is_read_by_the_fast_parser_like_the_general_path():
    for op in OPS:
        assert op.cbor == dumps(reference_obj(op)), op.payload  # the codec writes core §3 byte for byte
        s = _parse(op.cbor)
        assert s is not None, op.payload
        assert agree(op.cbor)
        back = decode_op(op.cbor)
        assert back == op and back.cbor is op.cbor and check_op(back) is None
        assert read_log(op.cbor) == [op]


def test_other_signature_lengths_are_canonical_too():
    """The layout does not fix the signature length: a 63-byte one decodes (and fails verification)."""
    op = make_op(SK, [], Hlc(1, 0, 0), Data("k", b"v"))
    data = op_cbor(op.header_bytes(), op.sig[:63], op.op_id)
    assert agree(data)
    back = decode_op(data)
    assert back.sig == op.sig[:63] and check_op(back) is not None


# --------------------------------------------------------------------------- mutated bytes


_VALUES = (0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x40, 0x60, 0x61, 0x7F, 0x80, 0x98, 0x9F)
_VALUES += (0xA0, 0xA1, 0xA3, 0xBF, 0xF4, 0xF5, 0xF6, 0xFF)


_FEW = (0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x60, 0x80, 0x98, 0xA0, 0xF6, 0xFF)


def test_every_single_byte_change_deletion_insertion_and_truncation_of_small_ops():
    """Exhaustive over positions for a Data op, a Revoke and wide integers: replaced (by structural
    byte values and two bit flips), deleted, doubled, cut there, and extended at the end."""
    accepted = 0
    wide = make_op(SK, [], Hlc(2**32, 65535, 256), Data("k", b"\x18"))  # 8-, 2- and 2-byte uints
    for op in (OPS[0], OPS[5], wide):
        data = op.cbor
        for i in range(len(data)):
            for v in {*_FEW, data[i] ^ 1, data[i] ^ 0x80}:
                if v != data[i]:
                    accepted += agree(data[:i] + bytes([v]) + data[i + 1 :])
            agree(data[:i] + data[i + 1 :])
            agree(data[: i + 1] + data[i:])
            agree(data[:i])
        for tail in (b"\x00", b"\xff", b"\x18", data[-1:], data):
            assert not agree(data + tail)
    assert accepted > 0  # some changes give another canonical op (a changed value, not a valid one)


def mutations(body: bytes) -> st.SearchStrategy[bytes]:
    n = len(body)
    pos = st.integers(0, max(0, n - 1))
    byte = st.integers(0, 255) | st.sampled_from(_VALUES)
    return st.one_of(
        st.tuples(pos, byte).map(lambda t: body[: t[0]] + bytes([t[1]]) + body[t[0] + 1 :]),
        st.tuples(pos, byte).map(lambda t: body[: t[0]] + bytes([t[1]]) + body[t[0] :]),
        pos.map(lambda i: body[:i] + body[i + 1 :]),
        pos.map(lambda i: body[:i]),
        st.binary(min_size=1, max_size=4).map(lambda b: body + b),
        st.tuples(pos, st.binary(min_size=1, max_size=3)).map(
            lambda t: body[: t[0]] + t[1] + body[t[0] + 2 :]
        ),
    )


@given(st.sampled_from(SMALL).flatmap(lambda op: mutations(op.cbor)))
@settings(max_examples=700, deadline=None)
def test_mutations_of_every_kind_of_op(data: bytes):
    agree(data)


@given(
    st.sampled_from(SMALL),
    st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=2, max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_several_changes_at_once(op: Op, edits: list[tuple[int, int]]):
    data = bytearray(op.cbor)
    for i, v in edits:
        data[i % len(data)] = v
    agree(bytes(data))


def test_structural_changes_decoded_by_cbor2_then_written_back():
    """Type and shape changes in the decoded object, written back with cbor2: both paths agree,
    and the two that stay canonical (another value of the right type) decode but cannot verify."""
    op = OPS[2]
    out = []
    for bad in (True, 256, -1, 1.0, "x", None, b"\x01", [1]):
        for path in (
            ("sig", 0),
            ("op_id", 3),
            ("header", "author_pk", 0),
            ("header", "parents", 0, 5),
            ("header", "hlc", "logical"),
            ("header", "payload", "Data", "key"),
        ):
            o = cbor2.loads(op.cbor)
            t = o
            for k in path[:-1]:
                t = t[k]
            t[path[-1]] = bad
            out.append(dumps(o))
    obj = cbor2.loads(op.cbor)
    h = obj["header"]
    out.append(dumps({"header": {**h, "zz": 1}, "sig": obj["sig"], "op_id": obj["op_id"]}))
    out.append(dumps({"header": dict(reversed(list(h.items()))), "sig": obj["sig"], "op_id": obj["op_id"]}))
    out.append(dumps({"header": h, "op_id": obj["op_id"], "sig": obj["sig"]}))
    out.append(dumps({**obj, "header": {**h, "hlc": {"physical_ms": 2**64, "logical": 0, "node_id": 0}}}))
    out.append(dumps([h, obj["sig"], obj["op_id"]]))  # packed: serde reads it, but it is not canonical
    accepted = [data for data in out if agree(data)]
    assert len(accepted) == 2  # logical = 256 and key = "x"
    assert all(check_op(decode_op(d)) is not None for d in accepted)


# --------------------------------------------------------------------------- random bytes


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_bytes(data: bytes):
    assert not agree(data) or _parse(data) is not None


@given(st.sampled_from(SMALL), st.integers(0, 400), st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_a_valid_prefix_then_random_bytes(op: Op, cut: int, tail: bytes):
    agree(op.cbor[: cut % len(op.cbor)] + tail)


# --------------------------------------------------------------------------- errors and the general path


def test_strict_decode_names_the_first_non_canonical_field():
    op = OPS[0]
    ms = b"\x6bphysical_ms\x01"
    assert op.cbor.count(ms) == 1
    bad = op.cbor.replace(ms, b"\x6bphysical_ms\x18\x01")
    with pytest.raises(
        DecodeError, match=r"non-canonical op encoding for [0-9a-f]{64} .*`header.hlc.physical_ms`"
    ):
        decode_op(bad)
    obj = cbor2.loads(op.cbor)
    obj["header"]["payload"]["Data"] = {"value": obj["header"]["payload"]["Data"]["value"], "key": "mv:o:x"}
    with pytest.raises(DecodeError, match=r"`header.payload.key`"):
        decode_op(dumps(obj))
    obj = cbor2.loads(op.cbor)
    obj["header"]["parents"] = [[0] * 31]
    with pytest.raises(DecodeError, match=r"op.header.parents\[0\]: expected 32 bytes, got 31"):
        decode_op(dumps(obj))


def test_the_decoders_share_no_state_between_calls():
    """No tables survive a decode: the same bytes decode to equal, independent values, in any order."""
    rng = random.Random(3)
    order = OPS[:] * 2
    rng.shuffle(order)
    for op in order:
        assert decode_op(op.cbor) == op
    a, b = decode_op(OPS[1].cbor), decode_op(bytes(bytearray(OPS[1].cbor)))
    assert a == b and a.cbor is not b.cbor


def test_op_from_obj_re_encodes_canonically():
    op = OPS[5]
    obj = cbor2.loads(op.cbor)
    packed = {0: obj["header"], 1: obj["sig"], 2: obj["op_id"]}
    back = op_from_obj(packed)
    assert back == op and back.cbor == op.cbor
    assert encode_byte_array(op.op_id) in back.cbor
