"""The CBOR codec (core §2): the declarative serde structs, their bytes, and the decoding helpers.

Every ``@serde`` struct of the project is checked against an independent reference built from
its type hints with ``cbor2.dumps`` (core §2's recipe), round-tripped through each decoder, and
fuzzed: the compiled canonical parser must agree with "loads, from_obj, re-encode, compare".
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import types
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ecac.core.audit
import ecac.core.enc
import ecac.core.hlc
import ecac.core.op
import ecac.core.opcodec
import ecac.store.rows
import ecac.sync.wire
from ecac.core.codec import (
    U32,
    U64,
    ByteArray,
    Bytes32,
    ByteVec,
    Default,
    Flatten,
    Interned,
    NonCanonicalError,
    Serde,
    TypeCodec,
    U32Int,
    U64Int,
    UInt,
    _StructNode,  # the node kinds: which serde forms apply
    b2l,
    dumps,
    encode_byte_array,
    encode_head,
    encode_uint,
    loads,
    read_head,
    serde,
    struct_fields,
    to_bytes,
    to_text,
    to_u32,
    to_u64,
    uint8_items,
    variant,
)
from ecac.core.errors import DecodeError, EcacError
from ecac.core.hlc import Hlc


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


# ---------------------------------------------------------------------- every @serde struct of the project

MODULES = (
    ecac.core.hlc,
    ecac.core.op,
    ecac.core.opcodec,
    ecac.core.audit,
    ecac.core.enc,
    ecac.sync.wire,
    ecac.store.rows,
)
STRUCTS = sorted(
    {c for m in MODULES for c in vars(m).values() if isinstance(c, type) and "__serde__" in c.__dict__},
    key=lambda c: c.__name__,
)
#: values that __post_init__ invariants require
FIELD_VALUES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("AppliedOp", "reason"): st.just(ecac.core.audit.AUTHORIZED),
    ("SkippedOp", "reason"): st.sampled_from(sorted(ecac.core.audit.SKIP_REASONS)),
}


def _unwrap(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    meta: tuple[Any, ...] = ()
    while get_origin(tp) is Annotated:
        tp, *rest = get_args(tp)
        meta += tuple(rest)
    return tp, meta


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or get_origin(tp) is types.UnionType


def values(tp: Any) -> st.SearchStrategy[Any]:
    """Random values of an annotation, read from the type hints alone (not from the codec)."""
    tp, meta = _unwrap(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        (width,) = [m for m in meta if isinstance(m, UInt)]
        edges = [
            v for v in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1) if v <= width.max
        ]
        return st.sampled_from(edges) | st.integers(0, width.max)
    if tp is bytes:
        (a,) = [m for m in meta if m is ByteArray or isinstance(m, ByteArray)]
        n = None if a is ByteArray else a.length
        special = st.sampled_from([0, 23, 24, 25, 255]).map(
            lambda b: bytes([b]) * (n if n is not None else 3)
        )
        return (st.binary(max_size=40) if n is None else st.binary(min_size=n, max_size=n)) | special
    if tp is str:
        return st.text(max_size=10) | st.sampled_from(["", "x" * 24, "é"])
    if get_origin(tp) is tuple:
        return st.lists(values(get_args(tp)[0]), max_size=3).map(tuple)
    if get_origin(tp) is Literal:
        return st.sampled_from(get_args(tp))
    if _is_union(tp):
        members = [m for m in get_args(tp) if m is not type(None)]
        inner = st.one_of([values(m) for m in members])
        return st.none() | inner if len(members) < len(get_args(tp)) else inner
    hints = get_type_hints(tp, include_extras=True)
    fields = [FIELD_VALUES.get((tp.__name__, f.name)) for f in dataclasses.fields(tp)]
    fields = [
        values(hints[f.name]) if v is None else v for v, f in zip(fields, dataclasses.fields(tp), strict=True)
    ]
    return st.tuples(*fields).map(lambda vs: tp(*vs))


def reference(value: Any, tp: Any) -> Any:
    """core §2's recipe for cbor2: maps in field order, byte fields as int lists, enums tagged."""
    tp, _ = _unwrap(tp)
    if tp is bytes:
        return list(value)
    if get_origin(tp) is tuple:
        return [reference(v, get_args(tp)[0]) for v in value]
    if _is_union(tp):
        if value is None:
            return None
        (m,) = [m for m in get_args(tp) if isinstance(m, type) and type(value) is m] or [
            m for m in get_args(tp) if m is not type(None)
        ]
        return reference(value, m)
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return value
    hints = get_type_hints(tp, include_extras=True)
    body: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        sub = reference(getattr(value, f.name), hints[f.name])
        if Flatten in _unwrap(hints[f.name])[1]:
            body.update(sub)
        else:
            body[f.name] = sub
    name = tp.__dict__.get("NAME")
    if name is None:
        return body
    if not body:
        return name
    if len(body) == 1 and tp.__serde__.node.variants[0].info.newtype:
        return {name: next(iter(body.values()))}
    return {name: body}


def reference_bytes(value: Any) -> bytes:
    tp = type(value)
    obj = reference(value, tp)
    hints = get_type_hints(tp, include_extras=True)
    if any(Flatten in _unwrap(hints[f.name])[1] for f in dataclasses.fields(tp)):
        return b"\xbf" + dumps(obj)[1:] + b"\xff"  # serde_cbor writes a flattened struct as an indefinite map
    return dumps(obj)


def strict_general(cls: type, data: bytes) -> Any:
    """Strict decoding without the canonical parser: one CBOR item, from_obj, re-encoding identical."""
    try:
        obj = cbor2.loads(data)
        value = cls.from_obj(obj)
    except (EcacError, ValueError, TypeError, EOFError, cbor2.CBORDecodeError):
        return None
    return value if value.encode() == data else None


def test_every_struct_is_found():
    names = {c.__name__ for c in STRUCTS}
    assert {"Hlc", "Data", "Reserved", "OpHeader", "SignedOp", "FlatOp", "EdgeVal", "CheckpointBlob"} <= names
    assert {"ResumeRecord", "VerifiedVcPersist", "Announce", "SignedAnnounce", "FetchMissing"} <= names
    assert {
        "SyncRequest",
        "OpBytes",
        "End",
        "More",
        "IngestedOp",
        "AuditEntry",
        "AuditRecord",
        "EncV1",
    } <= names


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_round_trip_of_random_instances(cls, data):
    x = data.draw(values(cls))
    b = x.encode()
    assert b == reference_bytes(x)  # byte for byte what cbor2 writes from core §2's recipe
    assert cls.__serde__.parse(b) == x
    assert cls.decode(b) == x and cls.__serde__.decode_strict(b) == x
    assert cls.from_obj(cbor2.loads(b)) == x
    assert cls.from_obj(x.to_obj()) == x and x.to_obj() == cbor2.loads(b)
    node = cls.__serde__.node
    if isinstance(node, _StructNode) and not node.deny_unknown and not node.indefinite:
        obj = cbor2.loads(b)  # serde's other forms: packed array, integer keys, unknown keys ignored
        assert cls.from_obj(list(obj.values())) == x
        assert cls.from_obj(dict(enumerate(obj.values()))) == x
        assert cls.from_obj({**obj, "zz_unknown": 1}) == x


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=20, deadline=None)
def test_canonical_parser_agrees_with_strict_decode_on_mutations(cls, data):
    b = data.draw(values(cls)).encode()
    i = data.draw(st.integers(0, max(0, len(b) - 1)))
    v = data.draw(
        st.integers(0, 255) | st.sampled_from([0x00, 0x17, 0x18, 0x19, 0x1B, 0x80, 0x98, 0xA0, 0xBF, 0xF6])
    )
    kind = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "extend"]))
    if kind == "set":
        m = b[:i] + bytes([v]) + b[i + 1 :]
    elif kind == "insert":
        m = b[:i] + bytes([v]) + b[i:]
    elif kind == "delete":
        m = b[:i] + b[i + 1 :]
    elif kind == "truncate":
        m = b[:i]
    else:
        m = b + bytes([v])
    got = cls.__serde__.parse(m)
    assert got == strict_general(cls, m)
    if not cls.__serde__.lenient:
        try:
            strict = cls.decode(m)
        except EcacError:
            strict = None
        assert strict == got


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@given(raw=st.binary(max_size=80))
@settings(max_examples=10, deadline=None)
def test_canonical_parser_on_random_bytes(cls, raw):
    for m in (raw, cls.__serde__.prefix() + raw):
        assert cls.__serde__.parse(m) == strict_general(cls, m)


# ---------------------------------------------------------------------- the codec's features


@serde
@dataclass(frozen=True, slots=True)
class Inner(Serde):
    a: U32Int
    b: ByteVec


@variant
@dataclass(frozen=True, slots=True)
class Ping(Serde):
    NAME: ClassVar[str] = "Ping"


@variant(newtype=True)
@dataclass(frozen=True, slots=True)
class Blob(Serde):
    data: ByteVec
    NAME: ClassVar[str] = "Blob"


@variant
@dataclass(frozen=True, slots=True)
class Pair(Serde):
    x: U64Int
    y: str | None
    NAME: ClassVar[str] = "Pair"


@variant(other=True)
@dataclass(frozen=True, slots=True)
class Unknown(Serde):
    NAME: ClassVar[str] = "Unknown"


Msg = Ping | Blob | Pair | Unknown


@serde
@dataclass(frozen=True, slots=True)
class Outer(Serde):
    inner: Inner
    items: tuple[Inner, ...]
    msg: Msg
    fixed: Annotated[bytes, ByteArray(3)]
    kind: Literal["A", "B"]
    word: Annotated[str, Interned]
    count: Annotated[int, U32, Default]
    note: str | None = None


@serde(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class Head(Serde):
    seq: U64Int
    id: Bytes32


@serde(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class Rec(Serde):
    head: Annotated[Head, Flatten]
    sig: ByteVec


@serde
@dataclass(frozen=True, slots=True)
class Arrays(Serde):
    """Byte arrays whose ends no following literal marks (heads 0x98 0x18, 0x82): found by counting."""

    ids24: tuple[Annotated[bytes, ByteArray(24)], ...]
    pairs: tuple[Annotated[bytes, ByteArray(2)], ...]
    last: tuple[ByteVec, ...]
    tail: Annotated[bytes, ByteArray(24)]


LOCAL_STRUCTS = [Inner, Outer, Head, Rec, Arrays]


@pytest.mark.parametrize("cls", LOCAL_STRUCTS, ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_round_trip_and_mutations_of_the_test_structs(cls, data):
    x = data.draw(values(cls))
    b = x.encode()
    assert b == reference_bytes(x) and cls.__serde__.parse(b) == x and cls.decode(b) == x
    i = data.draw(st.integers(0, max(0, len(b) - 1)))
    v = data.draw(st.integers(0, 255) | st.sampled_from([0x18, 0x19, 0x98, 0x82, 0xA0, 0xFF]))
    for m in (b[:i] + bytes([v]) + b[i + 1 :], b[:i] + bytes([v]) + b[i:], b[:i] + b[i + 1 :], b[:i]):
        assert cls.__serde__.parse(m) == strict_general(cls, m)


def test_byte_arrays_that_hold_their_followers_head():
    """0x98 0x18 (the head of the next 24-byte id) occurs inside canonical items (0x18 0x98, 0x18 0x18…)."""
    x = Arrays(
        (b"\x98" * 24, b"\x18\x98" * 12, bytes(24)),
        (b"\x82\x18", b"\x18\x82"),
        (b"\x98\x18", b""),
        b"\x98" * 24,
    )
    b = x.encode()
    assert b.count(b"\x98\x18") > 3
    assert Arrays.__serde__.parse(b) == x == Arrays.decode(b)


OUTER = Outer(
    Inner(1, b"\x18"), (Inner(2**32 - 1, b""), Inner(24, b"\xff\x00")), Pair(300, None), b"abc", "B", "w", 7
)


def test_declaration_order_types_and_tags_give_serde_cbors_bytes():
    inner = {"a": 1, "b": [24]}
    want = {
        "inner": inner,
        "items": [{"a": 2**32 - 1, "b": []}, {"a": 24, "b": [255, 0]}],
        "msg": {"Pair": {"x": 300, "y": None}},
        "fixed": [97, 98, 99],
        "kind": "B",
        "word": "w",
        "count": 7,
        "note": None,
    }
    assert OUTER.encode() == dumps(want)
    assert tuple(want) == Outer.FIELDS
    for msg, obj in ((Ping(), "Ping"), (Blob(b"\x01"), {"Blob": [1]}), (Unknown(), "Unknown")):
        assert dataclasses.replace(OUTER, msg=msg).encode() == dumps({**want, "msg": obj})
    assert Ping().encode() == dumps("Ping") and Blob(b"").encode() == dumps({"Blob": []})


def test_lenient_forms_are_what_serde_accepts():
    obj = cbor2.loads(OUTER.encode())
    del obj["count"], obj["note"]  # serde(default) and Option fields may be missing
    back = Outer.from_obj({**obj, "extra": [1, 2]})
    assert back == dataclasses.replace(OUTER, count=0, note=None)
    assert Outer.from_obj({**obj, "msg": ["Pair", {"x": 300, "y": None}]}).msg == Pair(
        300, None
    )  # legacy enum
    assert Outer.from_obj({**obj, "msg": {"Ping": None}}).msg == Ping()
    for unknown in ("Later", {"Later": None}):
        assert Outer.from_obj({**obj, "msg": unknown}).msg == Unknown()  # serde(other)
    assert Outer.from_obj({**obj, "kind": {"A": None}}).kind == "A"
    assert Inner.from_obj([5, [1]]) == Inner.from_obj({0: 5, 1: [1]}) == Inner(5, b"\x01")
    word = Outer.from_obj({**obj, "word": "".join(["in", "terned"])}).word
    assert word is "interned"  # noqa: F632 - the decoded text is sys.intern-ed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inner": {"a": 1}}, "Outer.inner: missing field `b`"),
        ({"inner": {"a": -1, "b": []}}, "Outer.inner.a: integer -1 out of range"),
        ({"inner": {"a": 2**32, "b": []}}, "Outer.inner.a: integer 4294967296 out of range"),
        ({"inner": {"a": True, "b": []}}, "Outer.inner.a: expected an unsigned integer, got bool"),
        ({"items": [{"a": 1, "b": b"x"}]}, r"Outer.items\[0\].b: expected an array of ints, got bytes"),
        ({"fixed": [1, 2]}, "Outer.fixed: expected 3 bytes, got 2"),
        ({"kind": "C"}, "Outer.kind: unknown variant 'C'"),
        ({"msg": "Pair"}, "Outer.msg: variant Pair needs fields"),
        ({"msg": {"Ping": 1}}, "Outer.msg: unit variant Ping takes no value"),
        (
            {"msg": {"Nope": {}}},
            "Outer.msg: unknown variant 'Nope'; expected one of Ping, Blob, Pair, Unknown",
        ),
        ({"msg": {"Ping": None, "Pair": None}}, "Outer.msg: expected a 1-entry map"),
        ({"msg": 5}, "Outer.msg: expected a map with one variant name, got int"),
        ({"msg": {"Pair": {"x": 1, "y": 2}}}, "Outer.msg.Pair.y: expected a text string, got int"),
        ({"word": None}, "Outer.word: expected a text string, got NoneType"),
    ],
)
def test_decode_errors_name_the_field(change, message):
    obj = {**cbor2.loads(OUTER.encode()), **change}
    with pytest.raises(DecodeError, match=message):
        Outer.from_obj(obj)
    with pytest.raises(DecodeError, match=message):
        Outer.decode(dumps(obj))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b.replace(b"\x61a\x01", b"\x61a\x18\x01", 1), "inner.a"),  # not the shortest form
        (lambda b: b.replace(b"\x19\x01\x2c", b"\x1a\x00\x00\x01\x2c", 1), "msg.x"),
        (
            lambda b: b.replace(dumps("items"), dumps("itemz"), 1),
            "items",
        ),  # unknown key (ignored), then missing
        (lambda b: b[:-1] + b"\xf6\x00", "(after the end)"),
    ],
)
def test_non_canonical_bytes_name_the_first_differing_field(edit, field):
    data = edit(OUTER.encode())
    assert data != OUTER.encode()
    with pytest.raises(DecodeError) as e:
        Outer.decode(data)
    if field == "(after the end)":
        assert "trailing" in str(e.value)
    elif field == "items":
        assert "missing field `items`" in str(e.value)
    else:
        assert isinstance(e.value, NonCanonicalError) and e.value.field == field
        assert f"in `{field}`" in str(e.value) and "non-canonical" in str(e.value)


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
def test_integers_only_in_shortest_form(n):
    shortest = encode_uint(n)
    for k, width in enumerate((1, 2, 4, 8)):
        form = bytes([0x18 + k]) + n.to_bytes(width, "big") if n < 1 << (8 * width) else b""
        if len(form) <= len(shortest):
            continue
        data = Hlc(n, 0, 0).encode().replace(b"\x6bphysical_ms" + shortest, b"\x6bphysical_ms" + form)
        assert Hlc.__serde__.parse(data) is None
        with pytest.raises(NonCanonicalError, match="in `physical_ms`"):
            Hlc.decode(data)
    assert Hlc.__serde__.parse(Hlc(n, 0, 0).encode()) == Hlc(n, 0, 0)


def test_reordered_keys_are_read_by_serde_but_not_canonical():
    obj = cbor2.loads(OUTER.encode())
    data = dumps(dict(reversed(list(obj.items()))))
    assert Outer.__serde__.decode_lenient(data) == OUTER
    assert Outer.__serde__.parse(data) is None
    with pytest.raises(NonCanonicalError, match="first difference at byte 1, in `inner`"):
        Outer.decode(data)


def test_flatten_writes_an_indefinite_map_and_deny_unknown_fields_is_exact():
    rec = Rec(Head(3, bytes(32)), b"\x01\x02")
    data = rec.encode()
    assert data == b"\xbf" + dumps({"seq": 3, "id": [0] * 32, "sig": [1, 2]})[1:] + b"\xff"
    assert Rec.__serde__.parse(data) == Rec.decode(data) == rec
    assert Rec.__serde__.prefix() == b"\xbf\x63seq"
    obj = cbor2.loads(data)
    with pytest.raises(NonCanonicalError, match="non-canonical"):
        Rec.decode(dumps(obj))  # the definite map: same content, not the canonical bytes
    with pytest.raises(DecodeError, match="unknown field 'x'"):
        Rec.from_obj({**obj, "x": 1})
    with pytest.raises(DecodeError, match="missing field `seq`"):
        Rec.from_obj({k: v for k, v in obj.items() if k != "seq"})
    with pytest.raises(DecodeError, match="expected a map, got list"):
        Rec.from_obj(list(obj.values()))
    with pytest.raises(DecodeError, match="unknown field 0"):
        Head.from_obj({0: 3, "seq": 3, "id": [0] * 32})


def test_enums_and_unions_have_codecs_of_their_own():
    codec: TypeCodec[Msg] = TypeCodec(Msg, "msg")
    for m in (Ping(), Blob(b"\x18\x18"), Pair(2**64 - 1, "y"), Unknown()):
        assert codec.decode(codec.encode(m)) == m == codec.parse(codec.encode(m))
    assert codec.from_obj("Other", "msg") == Unknown()
    with pytest.raises(DecodeError):
        codec.decode(dumps("Other"))  # read as Unknown, which is not how it is written
    with pytest.raises(TypeError, match="cannot encode Inner"):
        codec.encode(Inner(1, b""))  # type: ignore[arg-type]


def test_classes_with_invariants_are_built_through_init():
    obj = {"AppliedOp": {"op_id": [0] * 32, "topo_idx": 1, "reason": "ok"}}
    with pytest.raises(DecodeError, match=r"AppliedOp: reason: expected 'authorized', got 'ok'"):
        ecac.core.audit.AppliedOp.from_obj(obj)
    a = ecac.core.audit.AppliedOp(bytes(32), 1)
    bad = a.encode().replace(dumps("authorized"), dumps("authorizeX"))
    assert ecac.core.audit.AppliedOp.__serde__.parse(bad) is None


def test_declarations_are_checked_at_decoration_time():
    with pytest.raises(TypeError, match="Annotated\\[int, U32\\] or U64"):

        @serde
        @dataclass(frozen=True, slots=True)
        class PlainInt(Serde):
            n: int

    with pytest.raises(TypeError, match="ByteArray"):

        @serde
        @dataclass(frozen=True, slots=True)
        class PlainBytes(Serde):
            b: bytes

    with pytest.raises(TypeError, match="NAME"):

        @variant
        @dataclass(frozen=True, slots=True)
        class Nameless(Serde):
            x: U32Int

    with pytest.raises(TypeError, match="exactly one field"):

        @variant(newtype=True)
        @dataclass(frozen=True, slots=True)
        class TwoFields(Serde):
            a: U32Int
            b: U32Int
            NAME: ClassVar[str] = "TwoFields"

    with pytest.raises(TypeError, match="subclassing Serde"):

        @serde
        @dataclass(frozen=True, slots=True)
        class NotSerde:
            a: U32Int


def test_the_markers_are_plain_values():
    assert UInt(2**32 - 1) == U32 and UInt(2**64 - 1) == U64
    assert get_args(Bytes32)[1].length == 32 and get_args(ByteVec)[1] is ByteArray
    assert repr(Default) == "Default" and repr(ByteArray(2)) == "ByteArray(2)"
    assert get_args(U64Int)[1] is U64
