"""State: field coercion (core §8.3), JSON and digest (§10.1-10.2), snapshot and checkpoint blob."""

from __future__ import annotations

import json

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.codec import dumps
from ecac.core.crdt import MVReg, ORSet
from ecac.core.errors import DecodeError
from ecac.core.state import (
    State,
    checkpoint_blob,
    json_str,
    load_checkpoint_blob,
    project_field_json,
)

T1, T2, T3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def never(a: bytes, b: bytes) -> bool:
    return False


def always(a: bytes, b: bytes) -> bool:
    return True


def serde_escape(s: str) -> str:
    """serde_json's string escaping, written out from its rules (core §10.1)."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for ch in s:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ---------------------------------------------------------------------- coercion


def test_mv_write_replaces_a_set_field_and_vice_versa():
    st_ = State()
    st_.set_field("o", "f").add("e", T1, b"v")
    reg = st_.mv_field("o", "f")
    assert isinstance(reg, MVReg) and reg.winners == {}
    reg.apply_put(T2, b"x", never)
    s = st_.set_field("o", "f")
    assert isinstance(s, ORSet) and s.elems == {}
    assert st_.get_field("o", "f") is s
    assert st_.get_field("o", "nope") is None and st_.get_field("p", "f") is None


def test_fields_of_the_same_type_are_kept():
    st_ = State()
    a = st_.mv_field("o", "x")
    a.apply_put(T1, b"A", never)
    assert st_.mv_field("o", "x") is a
    s = st_.set_field("o", "s")
    assert st_.set_field("o", "s") is s


def test_set_remove_on_missing_element_creates_an_empty_set_field():
    st_ = State()
    st_.mv_field("o", "s").apply_put(T1, b"A", never)
    st_.set_field("o", "s").remove_with_hb("e", T2, always)
    st_.processed_count = 2
    assert st_.to_json() == (
        '{"objects":[{"id":"o","fields":[{"elems":[],"name":"s","type":"set"}]}],"processed_count":2}'
    )


# ---------------------------------------------------------------------- JSON


def test_json_layout_and_key_order():
    st_ = State()
    st_.set_field("o", "s").add("e", T1, b"v2")
    x = st_.mv_field("o", "x")
    x.apply_put(T2, b"B", never)
    x.apply_put(T3, b"A", never)
    st_.mv_field("a", "z").apply_put(T1, b"", never)
    st_.processed_count = 7
    assert st_.to_json() == (
        '{"objects":['
        '{"id":"a","fields":[{"name":"z","project":"","type":"mv","winners":[""]}]},'
        '{"id":"o","fields":['
        '{"elems":[{"key":"e","value":"7632"}],"name":"s","type":"set"},'
        '{"name":"x","project":"41","type":"mv","winners":["41","42"]}]}'
        '],"processed_count":7}'
    )
    assert st_.json_bytes() == st_.to_json().encode()
    assert st_.digest() == blake3.blake3(b"ECAC_STATE_V1" + st_.json_bytes()).digest()


def test_empty_state():
    assert State().to_json() == '{"objects":[],"processed_count":0}'
    assert State().digest().hex() == "e4e3f156af8170f7901165a76379030ace024fa8adc0d04883f7ecbd27669384"


def test_processed_count_is_part_of_the_digest():
    a, b = State(), State()
    b.processed_count = 1
    assert a.digest() != b.digest()


def test_mvreg_without_winners_exports_null_projection():
    st_ = State.from_snapshot_cbor(
        dumps({"objects": {"o": {"x": {"MV": {"winners": {}}}}}, "processed_count": 0})
    )
    assert st_.to_json() == (
        '{"objects":[{"id":"o","fields":[{"name":"x","project":null,"type":"mv","winners":[]}]}],'
        '"processed_count":0}'
    )


def test_objects_and_fields_sort_by_utf8_bytes():
    st_ = State()
    names = ["z", "Z", "é", "\U0001f600", "a\x00", "ｆ", "\u00ff"]
    for n in names:
        st_.mv_field(n, n).apply_put(T1, b"v", never)
    ids = [o["id"] for o in json.loads(st_.to_json())["objects"]]
    assert ids == sorted(names, key=lambda s: s.encode("utf-8"))


def test_json_cache_sees_later_mutations():
    st_ = State()
    reg = st_.mv_field("o", "x")
    reg.apply_put(T1, b"A", never)
    before = st_.to_json()
    reg.apply_put(T2, b"B", always)
    after = st_.to_json()
    assert before != after
    assert '"winners":["42"]' in after
    s = st_.set_field("o", "s")
    s.add("e", T1, b"v")
    assert '"key":"e"' in st_.to_json()
    s.remove_with_hb("e", T3, always)
    assert '"elems":[]' in st_.to_json()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_json_string_escaping_matches_serde(s):
    assert json_str(s) == serde_escape(s)
    assert json.loads(json_str(s)) == s


@settings(max_examples=100, deadline=None)
@given(
    obj=st.text(max_size=8),
    field=st.text(max_size=8),
    elem=st.text(max_size=8),
    value=st.binary(max_size=8),
)
def test_arbitrary_names_give_valid_json(obj, field, elem, value):
    st_ = State()
    st_.set_field(obj, field).add(elem, T1, value)
    st_.mv_field(obj, field + "!").apply_put(T2, value, never)
    parsed = json.loads(st_.to_json())
    (o,) = parsed["objects"]
    assert o["id"] == obj
    names = [f["name"] for f in o["fields"]]
    assert names == sorted([field, field + "!"], key=lambda s: s.encode("utf-8"))
    set_field = next(f for f in o["fields"] if f["type"] == "set")
    assert set_field["elems"] == [{"key": elem, "value": value.hex()}]
    assert list(set_field) == ["elems", "name", "type"]
    mv_field = next(f for f in o["fields"] if f["type"] == "mv")
    assert list(mv_field) == ["name", "project", "type", "winners"]


# ---------------------------------------------------------------------- snapshot and checkpoint blob


def _random_state(draw_ops: list[tuple[int, str, str, str, bytes, int]]) -> State:
    st_ = State()
    for kind, obj, field, elem, value, t in draw_ops:
        tag = bytes([t]) * 32
        if kind == 0:
            st_.mv_field(obj, field).apply_put(tag, value, never)
        elif kind == 1:
            st_.set_field(obj, field).add(elem, tag, value)
        else:
            st_.set_field(obj, field).remove_with_hb(elem, tag, lambda a, b: a < b)
    st_.processed_count = len(draw_ops)
    return st_


_op = st.tuples(
    st.integers(0, 2),
    st.sampled_from(["o", "p", "é"]),
    st.sampled_from(["x", "s"]),
    st.sampled_from(["e", "f"]),
    st.binary(max_size=4),
    st.integers(0, 255),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_op, max_size=20))
def test_snapshot_round_trip_keeps_tags_and_tombstones(ops):
    st_ = _random_state(ops)
    snap = st_.snapshot_cbor()
    back = State.from_snapshot_cbor(snap)
    assert back == st_
    assert back.snapshot_cbor() == snap
    assert back.to_json() == st_.to_json()
    assert back.copy() == st_
    blob = checkpoint_blob(st_, 41)
    loaded, idx = load_checkpoint_blob(blob)
    assert idx == 41 and loaded == st_


def test_snapshot_keeps_elements_without_active_tags():
    st_ = State()
    s = st_.set_field("o", "s")
    s.add("e", T1, b"v")
    s.remove_with_hb("e", T2, always)
    back = State.from_snapshot_cbor(st_.snapshot_cbor())
    assert back.get_field("o", "s").elems["e"].tombstones == {T1}
    # the restored tombstone still hides the add, and a later add revives the element
    back.set_field("o", "s").add("e", T3, b"w")
    assert back.get_field("o", "s").iter_present() == [("e", b"w")]


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"objects": [], "processed_count": 0},
        {"objects": {}, "processed_count": -1},
        {"objects": {"o": []}, "processed_count": 0},
        {"objects": {1: {}}, "processed_count": 0},
        {"objects": {"o": {"x": {"Nope": {}}}}, "processed_count": 0},
        {"objects": {"o": {"x": {"MV": {"winners": {(1, 2): [1]}}}}}, "processed_count": 0},
        {"objects": {"o": {"x": {"MV": {"winners": {tuple(T1): b"x"}}}}}, "processed_count": 0},
        {
            "objects": {"o": {"x": {"Set": {"elems": {"e": {"adds": {}, "tombstones": {}}}}}}},
            "processed_count": 0,
        },
        {
            "objects": {"o": {"x": {"Set": {"elems": {"e": {"adds": {}, "tombstones": [[1]]}}}}}},
            "processed_count": 0,
        },
        {"objects": {"o": {"x": {"MV": {}, "Set": {}}}}, "processed_count": 0},
    ],
)
def test_malformed_snapshots_raise_decode_error(obj):
    with pytest.raises(DecodeError):
        State.from_snapshot_cbor(dumps(obj))


def test_snapshot_garbage_and_trailing_bytes():
    with pytest.raises(DecodeError):
        State.from_snapshot_cbor(b"\xff\x00")
    with pytest.raises(DecodeError):
        State.from_snapshot_cbor(State().snapshot_cbor() + b"\x00")


def test_checkpoint_blob_digest_mismatch_and_shape():
    st_ = State()
    st_.mv_field("o", "x").apply_put(T1, b"A", never)
    st_.processed_count = 1
    other = State()
    blob = dumps(
        {
            "topo_idx": 1,
            "state_digest": list(other.digest()),
            "state_cbor": list(st_.snapshot_cbor()),
        }
    )
    with pytest.raises(DecodeError, match="checkpoint digest mismatch"):
        load_checkpoint_blob(blob)
    with pytest.raises(DecodeError):
        load_checkpoint_blob(dumps({"topo_idx": 1, "state_digest": list(st_.digest())}))
    good = checkpoint_blob(st_, 1)
    assert good[0] == 0xA3  # {"topo_idx", "state_digest", "state_cbor"}
    assert load_checkpoint_blob(good)[0] == st_


# ---------------------------------------------------------------------- project output (store §3.3)


def test_project_field_json_outputs():
    st_ = State()
    x = st_.mv_field("o", "x")
    x.apply_put(T1, b"B", never)
    x.apply_put(T2, b"A", never)
    x.apply_put(T3, b"A", never)
    s = st_.set_field("o", "s")
    s.add("b", T1, b"\x01")
    s.add("a", T2, b"")
    assert project_field_json(st_, "o", "x") == '{"type":"mv","project":"41","winners":["41","42"]}'
    assert project_field_json(st_, "o", "s") == (
        '{"type":"set","elements":[{"key":"a","value":""},{"key":"b","value":"01"}]}'
    )
    assert project_field_json(st_, "q", "x") == '{"error":"object not found","obj":"q"}'
    assert project_field_json(st_, "o", 'y"') == '{"error":"field not found","obj":"o","field":"y\\""}'
    empty = State.from_snapshot_cbor(
        dumps({"objects": {"o": {"x": {"MV": {"winners": {}}}}}, "processed_count": 0})
    )
    assert project_field_json(empty, "o", "x") == '{"type":"mv","project":null,"winners":[]}'
