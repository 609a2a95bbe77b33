"""The materialised state: CRDT fields of objects, deterministic JSON, digest, snapshot (core §8.3, §10).

The JSON export is byte-for-byte the reference's: the root and object entries keep
declaration order while field objects have alphabetical keys (core §10.1); strings are
escaped like serde_json (only ``"``, ``\\`` and control characters; non-ASCII raw).
The snapshot CBOR (core §10.3) carries tags and tombstones, so a restored state keeps its
happens-before semantics for later incremental applies.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any

import blake3

from ecac.core.codec import b2l, dumps, loads, struct_fields, to_bytes, to_text, to_u64
from ecac.core.crdt import MVReg, OrElem, ORSet
from ecac.core.errors import DecodeError

STATE_DOMAIN = b"ECAC_STATE_V1"

Field = MVReg | ORSet


def json_str(s: str) -> str:
    """A JSON string literal escaped exactly like serde_json (Python's non-ASCII encoder agrees)."""
    return encode_basestring(s)


class State:
    """``objects[obj][field]`` → MVReg | ORSet, plus the number of ops replay has processed."""

    __slots__ = ("objects", "processed_count")

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Field]] = {}
        self.processed_count = 0

    # ------------------------------------------------------------------ fields (core §8.3)

    def mv_field(self, obj: str, field: str) -> MVReg:
        """The MV register ``obj.field``, created (or replacing a Set field) when needed."""
        fields = self.objects.get(obj)
        if fields is None:
            fields = self.objects[obj] = {}
        f = fields.get(field)
        if type(f) is not MVReg:
            f = fields[field] = MVReg()
        return f

    def set_field(self, obj: str, field: str) -> ORSet:
        """The OR-set ``obj.field``, created (or replacing an MV field) when needed."""
        fields = self.objects.get(obj)
        if fields is None:
            fields = self.objects[obj] = {}
        f = fields.get(field)
        if type(f) is not ORSet:
            f = fields[field] = ORSet()
        return f

    def get_field(self, obj: str, field: str) -> Field | None:
        fields = self.objects.get(obj)
        return None if fields is None else fields.get(field)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, State)
            and self.processed_count == other.processed_count
            and self.objects == other.objects
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"State({len(self.objects)} objects, processed_count={self.processed_count})"

    # ------------------------------------------------------------------ JSON and digest (core §10.1-10.2)

    def to_json(self) -> str:
        """The deterministic state JSON (one line, no whitespace)."""
        objs = []
        for obj in sorted(self.objects):
            fields = self.objects[obj]
            parts = []
            for name in sorted(fields):
                f = fields[name]
                if isinstance(f, MVReg):
                    parts.append('{"name":' + json_str(name) + "," + f.json_body())
                else:
                    parts.append(
                        '{"elems":' + f.json_body(json_str) + ',"name":' + json_str(name) + ',"type":"set"}'
                    )
            objs.append('{"id":' + json_str(obj) + ',"fields":[' + ",".join(parts) + "]}")
        return '{"objects":[' + ",".join(objs) + '],"processed_count":' + str(self.processed_count) + "}"

    def json_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    def digest(self) -> bytes:
        """``blake3("ECAC_STATE_V1" || json)`` (core §10.2)."""
        h = blake3.blake3(STATE_DOMAIN)
        h.update(self.json_bytes())
        return h.digest()

    # ------------------------------------------------------------------ snapshot CBOR (core §10.3)

    def snapshot_obj(self) -> dict[str, Any]:
        objects: dict[str, Any] = {}
        for obj in sorted(self.objects):
            fields = self.objects[obj]
            out: dict[str, Any] = {}
            for name in sorted(fields):
                f = fields[name]
                if isinstance(f, MVReg):
                    winners = {tuple(t): b2l(v) for t, v in sorted(f.winners.items())}
                    out[name] = {"MV": {"winners": winners}}
                else:
                    elems: dict[str, Any] = {}
                    for k in sorted(f.elems):
                        e = f.elems[k]
                        elems[k] = {
                            "adds": {tuple(t): b2l(v) for t, v in sorted(e.adds.items())},
                            "tombstones": [b2l(t) for t in sorted(e.tombstones)],
                        }
                    out[name] = {"Set": {"elems": elems}}
            objects[obj] = out
        return {"objects": objects, "processed_count": self.processed_count}

    def snapshot_cbor(self) -> bytes:
        """The full internal state (tags and tombstones included) as CBOR."""
        return dumps(self.snapshot_obj())

    @classmethod
    def from_snapshot_cbor(cls, data: bytes) -> State:
        """Restore a snapshot; malformed input raises DecodeError."""
        return cls.from_snapshot_obj(loads(data, "state snapshot"))

    @classmethod
    def from_snapshot_obj(cls, obj: Any) -> State:
        objects, count = struct_fields(obj, ("objects", "processed_count"), "state snapshot")
        st = cls()
        st.processed_count = to_u64(count, "state snapshot.processed_count")
        if not isinstance(objects, dict):
            raise DecodeError("state snapshot.objects: expected a map")
        for obj_name, fields in objects.items():
            oname = to_text(obj_name, "state snapshot object id")
            if not isinstance(fields, dict):
                raise DecodeError(f"state snapshot object {oname!r}: expected a map of fields")
            out: dict[str, Field] = {}
            for fname, fv in fields.items():
                name = to_text(fname, f"state snapshot field name of object {oname!r}")
                out[name] = _field_from_obj(fv, f"state snapshot field {oname}.{name}")
            st.objects[oname] = out
        return st

    def copy(self) -> State:
        """An independent deep copy (through the snapshot form)."""
        return State.from_snapshot_obj(self.snapshot_obj())


def _tag_map(obj: Any, what: str) -> dict[bytes, bytes]:
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: expected a map of op id to value")
    return {to_bytes(t, f"{what} op id", 32): to_bytes(v, f"{what} value") for t, v in obj.items()}


def _field_from_obj(fv: Any, what: str) -> Field:
    if not isinstance(fv, dict) or len(fv) != 1:
        raise DecodeError(f"{what}: expected {{'MV': …}} or {{'Set': …}}")
    ((kind, body),) = fv.items()
    if kind == "MV":
        (winners,) = struct_fields(body, ("winners",), f"{what}.MV")
        return MVReg(_tag_map(winners, f"{what}.winners"))
    if kind == "Set":
        (elems,) = struct_fields(body, ("elems",), f"{what}.Set")
        if not isinstance(elems, dict):
            raise DecodeError(f"{what}.elems: expected a map")
        out: dict[str, OrElem] = {}
        for k, e in elems.items():
            key = to_text(k, f"{what} element key")
            adds, tombs = struct_fields(e, ("adds", "tombstones"), f"{what} element {key!r}")
            if not isinstance(tombs, list | tuple):
                raise DecodeError(f"{what} element {key!r}.tombstones: expected an array")
            out[key] = OrElem(
                _tag_map(adds, f"{what} element {key!r}.adds"),
                {to_bytes(t, f"{what} element {key!r} tombstone", 32) for t in tombs},
            )
        return ORSet(out)
    raise DecodeError(f"{what}: unknown field type {kind!r}")


# ---------------------------------------------------------------------- checkpoint blob (core §10.4)


def checkpoint_blob(state: State, topo_idx: int) -> bytes:
    """``{"topo_idx", "state_digest", "state_cbor"}`` with the state CBOR as an array of ints."""
    return dumps(
        {
            "topo_idx": topo_idx,
            "state_digest": b2l(state.digest()),
            "state_cbor": b2l(state.snapshot_cbor()),
        }
    )


def load_checkpoint_blob(blob: bytes) -> tuple[State, int]:
    """Restore ``(state, topo_idx)``; raises DecodeError when the recomputed digest differs."""
    obj = loads(blob, "checkpoint")
    topo_idx, digest, state_cbor = struct_fields(
        obj, ("topo_idx", "state_digest", "state_cbor"), "checkpoint"
    )
    idx = to_u64(topo_idx, "checkpoint.topo_idx")
    want = to_bytes(digest, "checkpoint.state_digest", 32)
    state = State.from_snapshot_cbor(to_bytes(state_cbor, "checkpoint.state_cbor"))
    if state.digest() != want:
        raise DecodeError("checkpoint digest mismatch")
    return state, idx


# ---------------------------------------------------------------------- CLI projection (store §3.3)


def project_field_json(state: State, obj: str, field: str) -> str:
    """The one-line output of ``ecac project``: the field's projection, or an error object."""
    fields = state.objects.get(obj)
    if fields is None:
        return '{"error":"object not found","obj":' + json_str(obj) + "}"
    f = fields.get(field)
    if f is None:
        return '{"error":"field not found","obj":' + json_str(obj) + ',"field":' + json_str(field) + "}"
    if isinstance(f, MVReg):
        vals = f.sorted_values()
        proj = f'"{vals[0].hex()}"' if vals else "null"
        winners = ",".join(f'"{v.hex()}"' for v in vals)
        return '{"type":"mv","project":' + proj + ',"winners":[' + winners + "]}"
    elems = ",".join(f'{{"key":{json_str(k)},"value":"{v.hex()}"}}' for k, v in f.iter_present())
    return '{"type":"set","elements":[' + elems + "]}"
