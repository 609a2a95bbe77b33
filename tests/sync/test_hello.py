"""The pure ``/ecac/hello/1`` message (``ecac.sync.hello``): byte layout, signature binding, refusals."""

from __future__ import annotations

import cbor2
import pytest

from ecac.core.errors import DecodeError, EcacError, ProtocolError
from ecac.core.keys import key_pair, public_key
from ecac.sync.hello import (
    HELLO_DOMAIN,
    MAX_HELLO_FRAME,
    Hello,
    Identity,
    hello_binding,
    identity_mismatch,
    make_hello,
    verify_hello,
)

SUBJECT = key_pair(1, b"hello/subject")
NODE = public_key(key_pair(1, b"hello/node"))  # the key the sender's PeerId inlines
OTHER_NODE = public_key(key_pair(1, b"hello/other-node"))
GENESIS = bytes(range(32))
STRICT = Identity("strict", GENESIS)
REFERENCE = Identity("reference")


def test_hello_round_trips_and_binds_peer_profile_and_genesis() -> None:
    h = make_hello(SUBJECT, NODE, STRICT)
    data = h.encode()
    assert verify_hello(data, NODE) == h
    assert h.subject_pk == public_key(SUBJECT) and h.identity == STRICT
    assert make_hello(SUBJECT, NODE, STRICT).encode() == data  # deterministic
    assert hello_binding(NODE, "strict", GENESIS) == HELLO_DOMAIN + b"\x00" + NODE + b"\x06strict" + GENESIS
    ref = make_hello(SUBJECT, NODE, REFERENCE)
    assert verify_hello(ref.encode(), NODE).genesis_id is None
    assert hello_binding(NODE, "reference", None) == HELLO_DOMAIN + b"\x00" + NODE + b"\x09reference"


def test_hello_byte_layout_is_the_documented_one() -> None:
    """docs/protocol.md "Hello": a map(5) in field order, byte fields as uint arrays, null genesis."""
    data = make_hello(SUBJECT, NODE, REFERENCE).encode()
    assert data.startswith(
        bytes.fromhex("a56176016770726f66696c65697265666572656e63656a67656e657369735f6964f6")
    )
    obj = cbor2.loads(data)
    assert list(obj) == ["v", "profile", "genesis_id", "subject_pk", "sig"]
    assert obj["subject_pk"] == list(public_key(SUBJECT)) and len(obj["sig"]) == 64
    strict = cbor2.loads(make_hello(SUBJECT, NODE, STRICT).encode())
    assert strict["genesis_id"] == list(GENESIS) and strict["profile"] == "strict"


def test_wrong_peer_id_is_refused() -> None:
    data = make_hello(SUBJECT, NODE, STRICT).encode()
    with pytest.raises(ProtocolError, match="does not verify for this connection's peer id"):
        verify_hello(data, OTHER_NODE)  # a hello replayed by another node


def test_bad_signature_and_a_changed_identity_are_refused() -> None:
    h = make_hello(SUBJECT, NODE, STRICT)
    flipped = bytes([h.sig[0] ^ 1]) + h.sig[1:]
    with pytest.raises(ProtocolError, match="does not verify"):
        verify_hello(Hello(h.v, h.profile, h.genesis_id, h.subject_pk, flipped).encode(), NODE)
    # another genesis (or profile) under the same signature: the binding covers both
    other = Hello(h.v, h.profile, bytes(32), h.subject_pk, h.sig)
    with pytest.raises(ProtocolError, match="does not verify"):
        verify_hello(other.encode(), NODE)
    # a signature by another key than the subject's
    forged = make_hello(key_pair(2, b"hello/mallory"), NODE, STRICT)
    with pytest.raises(ProtocolError, match="does not verify"):
        verify_hello(Hello(1, "strict", GENESIS, h.subject_pk, forged.sig).encode(), NODE)
    with pytest.raises(ProtocolError, match="sig must be 64 bytes"):
        verify_hello(Hello(1, "strict", GENESIS, h.subject_pk, h.sig[:63]).encode(), NODE)


@pytest.mark.parametrize(
    ("profile", "genesis", "why"),
    [
        ("strict", None, "a strict identity has a genesis id"),
        ("reference", GENESIS, "a strict identity has a genesis id"),
        ("lax", None, "unknown profile"),
    ],
)
def test_profile_and_genesis_must_go_together(profile: str, genesis: bytes | None, why: str) -> None:
    sig = SUBJECT.sign(hello_binding(NODE, profile, genesis)).signature
    with pytest.raises(ProtocolError, match=why):
        verify_hello(Hello(1, profile, genesis, public_key(SUBJECT), sig).encode(), NODE)


def test_another_version_is_refused() -> None:
    h = make_hello(SUBJECT, NODE, STRICT)
    with pytest.raises(ProtocolError, match="version 2"):
        verify_hello(Hello(2, h.profile, h.genesis_id, h.subject_pk, h.sig).encode(), NODE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"hello",
        cbor2.dumps({"v": 1}),
        cbor2.dumps([1, "strict"]),
        make_hello(SUBJECT, NODE, STRICT).encode() + b"\x00",  # trailing byte
        make_hello(SUBJECT, NODE, STRICT).encode()[:-1],  # truncated
        cbor2.dumps(cbor2.loads(make_hello(SUBJECT, NODE, STRICT).encode()) | {"extra": 1}),
        cbor2.dumps({**cbor2.loads(make_hello(SUBJECT, NODE, REFERENCE).encode()), "genesis_id": b""}),
    ],
)
def test_garbage_is_a_clear_decode_error(data: bytes) -> None:
    with pytest.raises(EcacError, match="hello"):
        verify_hello(data, NODE)


def test_reordered_keys_are_not_canonical() -> None:
    obj = cbor2.loads(make_hello(SUBJECT, NODE, STRICT).encode())
    with pytest.raises(DecodeError, match="not a canonical Hello"):
        verify_hello(cbor2.dumps(dict(reversed(list(obj.items())))), NODE)


def test_oversize_is_refused_before_decoding() -> None:
    with pytest.raises(ProtocolError, match=f"exceeds the {MAX_HELLO_FRAME}-byte limit"):
        verify_hello(b"\xa5" + bytes(MAX_HELLO_FRAME), NODE)
    worst = Hello(1, "strict", bytes([0xFF]) * 32, bytes([0xFF]) * 32, bytes([0xFF]) * 64).encode()
    assert len(worst) == 307 < MAX_HELLO_FRAME  # the largest canonical hello fits


def test_identity_mismatch_says_both_sides() -> None:
    assert identity_mismatch(STRICT, STRICT) is None
    assert identity_mismatch(REFERENCE, REFERENCE) is None
    why = identity_mismatch(STRICT, REFERENCE)
    assert why == f"it is of a reference project, this node is of strict project {GENESIS.hex()}"
    other = identity_mismatch(STRICT, Identity("strict", bytes(32)))
    assert other is not None and bytes(32).hex() in other and GENESIS.hex() in other


DOC_VECTOR = (
    "a56176016770726f66696c65697265666572656e63656a67656e657369735f6964f66a7375626a6563745f706b"
    "9820186218bb18ac18f4183918f218e5184b0418d6182f189b1860188a189418fc183218b4185c1846188518d8"
    "1821187418bb185718c9181d18e418ae1866184063736967984011183818c915187218ee18e1189f18ff189518"
    "7818cf182618b918331839186518ac0214183718c91852189718fb18a7183218f71884187e1018491844182818"
    "aa186f13189518c0187618c1181f18ea18d318dd186f18a418ab187118cc18ad186a189a18a1183918b9185918"
    "7718a218891881182018320c"
)


def test_hello_vector() -> None:
    """The vector of docs/protocol.md "Hello"."""
    subject = key_pair(1, b"doc/subject")
    node = public_key(key_pair(1, b"doc/node"))
    assert public_key(subject).hex().startswith("62bbacf4") and node.hex().startswith("88461988")
    assert hello_binding(node, "reference", None).hex() == "454341435f48454c4c4f5f563100" + node.hex() + (
        "09" + b"reference".hex()
    )
    data = make_hello(subject, node, REFERENCE).encode()
    assert len(data) == 237 and data.hex() == DOC_VECTOR
    assert verify_hello(bytes.fromhex(DOC_VECTOR), node).subject_pk == public_key(subject)
