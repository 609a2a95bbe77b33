"""The CBOR codec (core §2): serde_cbor-compatible bytes and strict decoding helpers."""

from __future__ import annotations

import contextlib
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.codec import (
    b2l,
    dumps,
    encode_byte_array,
    encode_head,
    encode_uint,
    loads,
    read_head,
    struct_fields,
    to_bytes,
    to_text,
    to_u32,
    to_u64,
    uint8_items,
)
from ecac.core.errors import DecodeError


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65535, "19ffff"),
        (65536, "1a00010000"),
        (2**32 - 1, "1affffffff"),
        (2**32, "1b0000000100000000"),
        (2**64 - 1, "1bffffffffffffffff"),
    ],
)
def test_unsigned_integers_are_shortest_form(value, hex_):
    assert dumps(value).hex() == hex_


def test_structs_keep_declaration_order_and_bytes_are_int_arrays():
    assert dumps({"b": 1, "a": 2}).hex() == "a2616201616102"  # not re-sorted
    assert dumps(b2l(b"\x01\x18")).hex() == "82011818"
    assert dumps(b2l(bytes(32)))[:2] == b"\x98\x20"
    assert dumps(None) == b"\xf6" and dumps(True) == b"\xf5"
    assert dumps("_Reserved") == b"\x69_Reserved"
    # tuples as map keys become arrays (the state snapshot relies on it)
    assert dumps({(1, 2): []}).hex() == "a1820102" + "80"


def test_loads_rejects_trailing_truncated_and_non_bytes():
    assert loads(b"\x01") == 1
    with pytest.raises(DecodeError, match="trailing"):
        loads(b"\x01\x02")
    with pytest.raises(DecodeError, match=r"truncated|malformed"):
        loads(b"\x82\x01")
    with pytest.raises(DecodeError, match=r"malformed|truncated"):
        loads(b"\xff")
    with pytest.raises(DecodeError, match="expected bytes"):
        loads("text")  # type: ignore[arg-type]
    assert cbor2.loads(dumps({(1, 2): 3})) == {(1, 2): 3}


def test_to_bytes_accepts_only_int_arrays():
    assert to_bytes([1, 2, 255], "f") == b"\x01\x02\xff"
    assert to_bytes((0,), "f") == b"\x00"
    assert to_bytes([], "f") == b""
    with pytest.raises(DecodeError, match="expected an array"):
        to_bytes(b"\x01", "f")
    with pytest.raises(DecodeError, match="expected 2 bytes"):
        to_bytes([1], "f", 2)
    with pytest.raises(DecodeError, match="bool, not an integer"):
        to_bytes([1, True], "f")
    with pytest.raises(DecodeError, match="float, not an integer"):
        to_bytes([1.0], "f")
    with pytest.raises(DecodeError, match="str, not an integer"):
        to_bytes([1, 2, "x"], "f")
    with pytest.raises(DecodeError, match="out of byte range"):
        to_bytes([256], "f")
    with pytest.raises(DecodeError, match="out of byte range"):
        to_bytes([-1], "f")


def test_integer_and_text_helpers():
    assert to_u32(2**32 - 1, "n") == 2**32 - 1
    assert to_u64(2**64 - 1, "n") == 2**64 - 1
    for bad in (2**32, -1, True, 1.0, "1"):
        with pytest.raises(DecodeError):
            to_u32(bad, "n")
    with pytest.raises(DecodeError):
        to_u64(2**64, "n")
    assert to_text("é", "t") == "é"
    with pytest.raises(DecodeError):
        to_text(b"x", "t")


def test_struct_fields_forms():
    fields = ("a", "b")
    assert struct_fields({"a": 1, "b": 2, "zz": 3}, fields, "s") == [1, 2]  # unknown keys ignored
    assert struct_fields({0: 1, 1: 2}, fields, "s") == [1, 2]  # packed by index
    assert struct_fields([1, 2], fields, "s") == [1, 2]  # packed array
    assert struct_fields({"a": 1}, fields, "s", optional=("b",)) == [1, None]
    with pytest.raises(DecodeError, match="missing field `b`"):
        struct_fields({"a": 1}, fields, "s")
    with pytest.raises(DecodeError, match="expected 2 fields"):
        struct_fields([1], fields, "s")
    with pytest.raises(DecodeError, match="expected a map"):
        struct_fields(3, fields, "s")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_loads_never_raises_anything_but_decode_error(data):
    with contextlib.suppress(DecodeError):  # any other exception fails the test
        loads(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=70))
def test_int_arrays_round_trip(xs):
    b = bytes(xs)
    assert to_bytes(loads(dumps(b2l(b))), "x") == b


# ---------------------------------------------------------------------- canonical form, directly


def test_template_encoders_equal_cbor2_dumps():
    for n in (0, 1, 23, 24, 25, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        assert encode_uint(n) == cbor2.dumps(n)
    for n in (0, 23, 24, 255, 256, 65535, 65536):
        assert cbor2.dumps([0] * n) == encode_head(4, n) + bytes(n)
        assert cbor2.dumps("x" * n) == encode_head(3, n) + b"x" * n
    rng = random.Random(3)
    for n in (0, 1, 23, 24, 31, 32, 64, 255, 256, 1000, 70000):
        data = bytes(rng.choice([0, 23, 24, 25, 255, rng.randrange(256)]) for _ in range(n))
        assert encode_byte_array(data) == cbor2.dumps(list(data))


def test_read_head_takes_only_the_shortest_form():
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        enc = cbor2.dumps(n)
        assert read_head(enc + b"\x00", 0, 0) == (n, len(enc))
        assert read_head(enc, 0, 4) is None  # another major type
    for longer in (
        b"\x18\x17",
        b"\x19\x00\xff",
        b"\x1a\x00\x00\xff\xff",
        b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",
    ):
        assert read_head(longer, 0, 0) is None
    for cut in (b"", b"\x18", b"\x19\x01", b"\x1b\x01\x02"):
        assert read_head(cut, 0, 0) is None
    for other in (b"\x1c", b"\x1f", b"\x20"):
        assert read_head(other, 0, 0) is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), seed=st.integers(0, 2**32))
def test_uint8_items_accepts_exactly_the_canonical_items(data, seed):
    body = encode_byte_array(data)[len(encode_head(4, len(data))) :]
    assert uint8_items(body) == data
    rng = random.Random(seed)
    edited = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        if edited and rng.random() < 0.5:
            edited[rng.randrange(len(edited))] = rng.choice([0x18, 0x17, 0x19, rng.randrange(256)])
        else:
            edited.insert(rng.randrange(len(edited) + 1), rng.choice([0x18, 0x00, rng.randrange(256)]))
    got = uint8_items(bytes(edited))
    if got is not None:  # then the edit produced the canonical items of another byte string
        assert encode_byte_array(got) == encode_head(4, len(got)) + bytes(edited)
