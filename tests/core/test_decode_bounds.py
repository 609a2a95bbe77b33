"""Decoder bounds (issue 10 item 4): ``cbor_extent`` (C and Python agree), bounded ``loads`` and
the element-wise ``read_log``, so hostile CBOR is refused before memory is allocated for it."""

from __future__ import annotations

import tracemalloc

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac import _native
from ecac.core.codec import (
    MAX_DEPTH,
    NAMING_COST,
    CborBoundsError,
    _cbor_extent_py,
    b2l,
    cbor_extent,
    decode_budget,
    loads,
)
from ecac.core.errors import DecodeError
from ecac.core.opcodec import encode_ops, flat_op_from_obj, read_log
from ecac.sync.frames import decode_frames
from ecac.sync.wire import OpBytes
from ecac.testing.demo_ops import demo_ops

U64 = 2**64 - 1


def both(data: bytes, depth: int = MAX_DEPTH, cost: int = U64) -> object:
    """The C and the Python result (a tuple or the error message), which must be equal."""
    out = []
    for f in (_native.cbor_extent, _cbor_extent_py):
        try:
            out.append(f(data, 0, depth, cost))
        except ValueError as e:
            out.append(str(e))
    assert out[0] == out[1], (data.hex(), out)
    return out[0]


def array_of(item: bytes, n: int) -> bytes:
    return b"\x9a" + n.to_bytes(4, "big") + item * n


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=40,
)


@given(cbor_values)
@settings(max_examples=300, deadline=None)
def test_extent_of_encoded_values(value: object) -> None:
    data = cbor2.dumps(value)
    end, items, cost = both(data)  # type: ignore[misc]
    assert end == len(data) and items >= 1 and cost >= 8


@given(st.binary(max_size=24), st.integers(0, 4), st.sampled_from([U64, 40, 300]))
@settings(max_examples=1500, deadline=None)
def test_c_and_python_agree_on_any_bytes(data: bytes, depth: int, cost: int) -> None:
    both(data, depth, cost)


@given(cbor_values, st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_truncations_and_indefinite_forms_agree(value: object, cut: int) -> None:
    data = cbor2.dumps(value)
    both(data[: max(0, len(data) - cut)])
    both(b"\x9f" + data + b"\xff")
    both(b"\xbf\x61k" + data + b"\xff")
    both(b"\x5f\x41a\x42bc\xff" + data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x9b" + b"\xff" * 8, "declared length 18446744073709551615 at byte 0 exceeds the input"),
        (b"\xbb" + b"\x7f" * 8 + b"\x00\x00", "exceeds the input"),
        (b"\x5a\x7f\xff\xff\xff" + b"x" * 10, "declared length 2147483647 at byte 0 exceeds the input"),
        (b"\x81" * (MAX_DEPTH + 1) + b"\x00", f"nesting deeper than {MAX_DEPTH} at byte {MAX_DEPTH}"),
        (b"\xc1\x00", "CBOR tag at byte 0"),
        (b"\xd9\xd9\xf7\xa0", "CBOR tag at byte 0"),
        (b"\x1c", "reserved head 0x1c at byte 0"),
        (b"\xff", "unexpected break at byte 0"),
        (b"\xbf\x00\xff", "break at byte 2 after a map key without its value"),
        (b"\x5f\x61a\xff", "bad chunk 0x61 at byte 1 of the string at byte 0"),
        (b"\x82\x81\x00", "truncated: the input ends at byte 3 inside an item"),
        (b"\x19\x01", "truncated: the head at byte 0 needs 2 more bytes"),
    ],
)
def test_refused_shapes(data: bytes, message: str) -> None:
    got = both(data)
    assert isinstance(got, str) and message in got
    with pytest.raises(DecodeError):
        loads(data)


def test_the_budget_stops_the_scan_early() -> None:
    data = array_of(b"\xa0", 1 << 20)  # 1 MiB of empty maps: 72 bytes of objects per input byte
    with pytest.raises(CborBoundsError, match="decoding would take more than 1000 bytes of memory"):
        cbor_extent(data, 0, MAX_DEPTH, 1000)
    end, items, cost = cbor_extent(data)
    assert (end, items) == (len(data), (1 << 20) + 1) and cost > 70 * len(data)
    with pytest.raises(DecodeError, match=r"refused CBOR .*decoding would take more than"):
        loads(data)


@pytest.mark.parametrize(
    "item",
    [
        b"\xa0",
        b"\x80",
        b"\x81\x00",
        b"\xa1\x00\x00",
        b"\xa1\x61a\x00",
        b"\x19\x01\x00",
        b"\x41a",
        b"\xfa\0\0\0\1",
    ],
)
def test_the_estimate_covers_what_cbor2_allocates(item: bytes) -> None:
    data = array_of(item, 20_000)
    _, _, cost = cbor_extent(data)
    tracemalloc.start()
    try:
        obj = cbor2.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del obj
    assert peak <= 1.25 * cost, (item.hex(), peak, cost)


def test_ecac_logs_fit_the_default_budget() -> None:
    log = encode_ops(demo_ops([], 0, 300, 7))
    _, _, cost = cbor_extent(log)
    assert cost <= decode_budget(len(log)) / 1.4  # a margin for ops with other shapes
    assert len(loads(log)) == 300


# --------------------------------------------------------------------------- read_log


OPS = demo_ops([], 0, 50, 3)


def test_read_log_canonical_list_and_single() -> None:
    assert [op.op_id for op in read_log(encode_ops(OPS))] == [op.op_id for op in OPS]
    assert read_log(OPS[0].cbor)[0].cbor == OPS[0].cbor
    indefinite = b"\x9f" + b"".join(op.cbor for op in OPS) + b"\xff"
    assert [op.cbor for op in read_log(indefinite)] == [op.cbor for op in OPS]


def test_read_log_tolerant_forms() -> None:
    flat = [{**cbor2.loads(op.cbor)["header"], "sig": b2l(op.sig), "op_id": b2l(op.op_id)} for op in OPS[:3]]
    got = read_log(cbor2.dumps(flat))
    assert [op.cbor for op in got] == [op.cbor for op in OPS[:3]]
    assert read_log(cbor2.dumps(flat[0]))[0].cbor == OPS[0].cbor
    assert flat_op_from_obj(flat[1]).cbor == OPS[1].cbor
    obj = cbor2.loads(OPS[0].cbor)
    as_array = cbor2.dumps([obj["header"], obj["sig"], obj["op_id"]])  # one op in serde's array form
    assert read_log(as_array)[0].cbor == OPS[0].cbor
    non_canonical = cbor2.dumps([{**obj, "sig": bytes(obj["sig"])}])  # sig as a byte string: lenient
    with pytest.raises(DecodeError):
        read_log(non_canonical)
    mixed = cbor2.dumps([obj, flat[1]])
    with pytest.raises(DecodeError, match="element 1"):
        read_log(mixed)
    with pytest.raises(DecodeError, match="a nested op in a list of flat ops"):
        read_log(b"\x82" + cbor2.dumps(flat[0]) + OPS[1].cbor)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (array_of(b"\xa0", 1 << 20), "element 0"),
        (array_of(b"\x80", 1 << 20), "element 0"),
        (b"\x9b" + b"\xff" * 8 + b"\xa0", "declares 18446744073709551615 elements"),
        (b"\x81" * 100_000, "element 0: nesting deeper than 64"),
        (encode_ops(OPS[:2])[:-1], "element 1"),
        (encode_ops(OPS[:2]) + b"\x00", "1 trailing bytes"),
        (b"", "empty input"),
        (b"\x00", "no CBOR array or map"),
    ],
)
def test_read_log_refuses_hostile_bodies_without_allocating(body: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=message):
            read_log(body, "request body")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 64 * 1024 + len(body) // 4, peak  # nothing per element, no copy of the body


def test_one_huge_non_canonical_element_is_bounded() -> None:
    # an op-shaped map whose sig is a 4 MiB array of empty maps: refused by the memory bound
    body = b"\x81\xa1\x63sig" + array_of(b"\xa0", 4 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="decoding would take more than"):
            read_log(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * len(body), peak


# --------------------------------------------------------------------------- wire frames


def test_hostile_response_frame_is_refused_within_the_naming_budget() -> None:
    # an OpBytes frame of 8 MiB of empty maps instead of uints: not canonical, and naming the
    # problem would take 600 MB: refused by the naming budget instead
    body = b"\xa1\x67OpBytes" + array_of(b"\xa0", 8 << 20)
    tracemalloc.start()
    try:
        decoded = decode_frames([body])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.error is not None and "decoding would take more than" in decoded.error
    assert decoded.ops == ()
    # the canonical parser's byte-array check copies the body a few times; cbor2 would take 600 MB
    assert peak <= 5 * len(body) < NAMING_COST * 2, peak
    ok = decode_frames([OpBytes(OPS[0].cbor).encode()])
    assert ok.error is None and ok.ops[0].cbor == OPS[0].cbor
