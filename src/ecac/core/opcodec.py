"""Op decoding: strict canonical decode for store and network bytes, the tolerant log reader.

Strict decode accepts only the canonical nested encoding (core §4.3); ``read_log`` takes the
list, single and flat forms of log files and re-encodes them canonically.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any

import cbor2

from ecac import _native
from ecac.core.codec import (
    dumps,
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
from ecac.core.hlc import U32_MAX, Hlc
from ecac.core.op import (
    ID_LEN,
    SIG_LEN,
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    KeyGrant,
    KeyRotate,
    Op,
    Payload,
    Reserved,
    Revoke,
    StatusListChunk,
    StatusPointer,
    _op_cbor,
    build_data,
    build_hlc,
    build_op,
    header_obj,
)

_PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "Data": ("key", "value"),
    "Credential": ("cred_id", "cred_bytes", "format"),
    "Grant": ("subject_pk", "cred_hash"),
    "Revoke": ("subject_pk", "role", "scope_tags", "at"),
    "KeyGrant": ("subject_pk", "tag", "key_version", "cred_hash"),
    "KeyRotate": ("tag", "new_version", "new_key"),
    "IssuerKey": ("issuer_id", "key_id", "algo", "pubkey", "valid_from_ms", "valid_until_ms", "prev_key_id"),
    "IssuerKeyRevoke": ("issuer_id", "key_id", "reason"),
    "StatusListChunk": ("list_id", "issuer_id", "version", "chunk_index", "bitset_sha256", "chunk_bytes"),
    "StatusPointer": ("cred_id", "list_id", "index"),
}


def decode_hlc(obj: Any, what: str = "hlc") -> Hlc:
    p, lg, n = struct_fields(obj, ("physical_ms", "logical", "node_id"), what)
    return Hlc(to_u64(p, f"{what}.physical_ms"), to_u32(lg, f"{what}.logical"), to_u32(n, f"{what}.node_id"))


def _text_list(obj: Any, what: str) -> tuple[str, ...]:
    if not isinstance(obj, list | tuple):
        raise DecodeError(f"{what}: expected an array of strings")
    return tuple(to_text(x, what) for x in obj)


def _payload_from_fields(name: str, body: Any) -> Payload:
    w = f"payload {name}"
    optional = ("prev_key_id",) if name == "IssuerKey" else ()
    f = struct_fields(body, _PAYLOAD_FIELDS[name], w, optional)
    if name == "Data":
        # keys repeat across ops; interned (mortal) strings keep one copy in memory
        return Data(sys.intern(to_text(f[0], f"{w}.key")), to_bytes(f[1], f"{w}.value"))
    if name == "Credential":
        fmt = f[2]
        if fmt != "Jwt" and fmt != {"Jwt": None}:
            raise DecodeError(f"{w}.format: unknown credential format {fmt!r}")
        return Credential(to_text(f[0], f"{w}.cred_id"), to_bytes(f[1], f"{w}.cred_bytes"))
    if name == "Grant":
        return Grant(to_bytes(f[0], f"{w}.subject_pk", 32), to_bytes(f[1], f"{w}.cred_hash", 32))
    if name == "Revoke":
        return Revoke(
            to_bytes(f[0], f"{w}.subject_pk", 32),
            to_text(f[1], f"{w}.role"),
            _text_list(f[2], f"{w}.scope_tags"),
            decode_hlc(f[3], f"{w}.at"),
        )
    if name == "KeyGrant":
        return KeyGrant(
            to_bytes(f[0], f"{w}.subject_pk", 32),
            to_text(f[1], f"{w}.tag"),
            to_u32(f[2], f"{w}.key_version"),
            to_bytes(f[3], f"{w}.cred_hash", 32),
        )
    if name == "KeyRotate":
        return KeyRotate(
            to_text(f[0], f"{w}.tag"), to_u32(f[1], f"{w}.new_version"), to_bytes(f[2], f"{w}.new_key")
        )
    if name == "IssuerKey":
        prev = None if f[6] is None else to_text(f[6], f"{w}.prev_key_id")
        return IssuerKey(
            to_text(f[0], f"{w}.issuer_id"),
            to_text(f[1], f"{w}.key_id"),
            to_text(f[2], f"{w}.algo"),
            to_bytes(f[3], f"{w}.pubkey"),
            to_u64(f[4], f"{w}.valid_from_ms"),
            to_u64(f[5], f"{w}.valid_until_ms"),
            prev,
        )
    if name == "IssuerKeyRevoke":
        return IssuerKeyRevoke(
            to_text(f[0], f"{w}.issuer_id"), to_text(f[1], f"{w}.key_id"), to_text(f[2], f"{w}.reason")
        )
    if name == "StatusListChunk":
        return StatusListChunk(
            to_text(f[0], f"{w}.list_id"),
            to_text(f[1], f"{w}.issuer_id"),
            to_u32(f[2], f"{w}.version"),
            to_u32(f[3], f"{w}.chunk_index"),
            to_bytes(f[4], f"{w}.bitset_sha256", 32),
            to_bytes(f[5], f"{w}.chunk_bytes"),
        )
    # StatusPointer
    return StatusPointer(
        to_text(f[0], f"{w}.cred_id"), to_text(f[1], f"{w}.list_id"), to_u32(f[2], f"{w}.index")
    )


def decode_payload(obj: Any) -> Payload:
    """An externally tagged payload; unknown *unit* variants decode as ``_Reserved`` (core §4.3)."""
    if isinstance(obj, str):
        if obj in _PAYLOAD_FIELDS:
            raise DecodeError(f"payload: variant {obj} needs fields")
        return Reserved()
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise DecodeError(f"payload: expected a 1-entry map, got {len(obj)} entries")
        ((name, body),) = obj.items()
    elif isinstance(obj, list | tuple) and len(obj) == 2:  # legacy array-form enum
        name, body = obj
    else:
        raise DecodeError("payload: expected an externally tagged enum")
    if not isinstance(name, str):
        raise DecodeError("payload: variant name must be a text string")
    if name in _PAYLOAD_FIELDS:
        return _payload_from_fields(name, body)
    if body is None:
        return Reserved()
    raise DecodeError(f"payload: unknown variant {name!r}")


_HEADER_FIELDS = ("parents", "hlc", "author_pk", "payload")
_OP_FIELDS = ("header", "sig", "op_id")
_FLAT_FIELDS = ("parents", "hlc", "author_pk", "payload", "sig", "op_id")


_SHARED: dict[bytes, bytes] = {}
_SHARED_MAX = 4096


def _shared(b: bytes) -> bytes:
    """One bytes object per recently decoded author key or op id (parents usually name a recent op).

    Only memory is affected: a long log keeps one copy of each author key and of each parent
    id instead of one per op. The table is bounded and simply cleared when full.
    """
    got = _SHARED.get(b)
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[b] = got = b
    return got


def _parents(obj: Any) -> tuple[bytes, ...]:
    if not isinstance(obj, list | tuple):
        raise DecodeError("header.parents: expected an array of op ids")
    return tuple([_shared(to_bytes(p, "header.parents[]", ID_LEN)) for p in obj])


def _typed(
    parents: Any, hlc: Any, author: Any, payload: Any, sig: Any, op_id: Any
) -> tuple[tuple[bytes, ...], Hlc, bytes, Payload, bytes, bytes, bytes]:
    """The typed fields and the header CBOR re-encoded from them (what the op_id is checked against)."""
    ps = _parents(parents)
    h = Hlc() if hlc is None else decode_hlc(hlc, "header.hlc")
    pk = _shared(to_bytes(author, "header.author_pk", 32))
    pl = decode_payload(payload)
    s = to_bytes(sig, "sig")
    oid = _shared(to_bytes(op_id, "op_id", ID_LEN))
    return ps, h, pk, pl, s, oid, dumps(header_obj(ps, h, pk, pl))


def _build(parents: Any, hlc: Any, author: Any, payload: Any, sig: Any, op_id: Any) -> Op:
    ps, h, pk, pl, s, oid, header_cbor = _typed(parents, hlc, author, payload, sig, op_id)
    return Op(ps, h, pk, pl, s, oid, _op_cbor(header_cbor, s, oid))


def op_from_obj(obj: Any) -> Op:
    """The nested ``{header, sig, op_id}`` form, in any accepted encoding; re-encoded canonically."""
    header, sig, op_id = struct_fields(obj, _OP_FIELDS, "op")
    parents, hlc, author, payload = struct_fields(header, _HEADER_FIELDS, "op.header", optional=("hlc",))
    return _build(parents, hlc, author, payload, sig, op_id)


def flat_op_from_obj(obj: Any) -> Op:
    """The legacy flat form (header fields at the top level); ``parents``/``hlc`` optional."""
    if not isinstance(obj, dict):
        raise DecodeError("flat op: expected a map")
    parents, hlc, author, payload, sig, op_id = struct_fields(
        obj, _FLAT_FIELDS, "flat op", optional=("parents", "hlc")
    )
    return _build([] if parents is None else parents, hlc, author, payload, sig, op_id)


_K_HEADER = b"\xa3\x66header\xa4\x67parents"
_K_HLC = b"\x63hlc\xa3\x6bphysical_ms"
_K_LOGICAL = b"\x67logical"
_K_NODE = b"\x67node_id"
_K_AUTHOR = b"\x69author_pk\x98\x20"
_K_PAYLOAD = b"\x67payload"
_K_DATA = b"\xa1\x64Data\xa2\x63key"
_K_VALUE = b"\x65value"
_K_SIG = b"\x63sig\x98\x40"
_K_OP_ID = b"\x65op_id\x98\x20"
_ID_HEAD = b"\x98\x20"

#: items of recently decoded 32-byte ids and keys -> the (shared) bytes; parents and authors repeat
_ID_ITEMS: dict[bytes, bytes] = {}


def _id_items(body: bytes) -> bytes | None:
    got = _ID_ITEMS.get(body)
    if got is None:
        got = uint8_items(body)
        if got is None or len(got) != ID_LEN:
            return None
        if len(_ID_ITEMS) >= _SHARED_MAX:
            _ID_ITEMS.clear()
        got = _ID_ITEMS[body] = _shared(got)
    return got


#: UTF-8 of a recent Data key -> the interned key (keys repeat across a log)
_DATA_KEYS: dict[bytes, str] = {}


def _intern_key(kb: bytes) -> str | None:
    """The interned Data key of these UTF-8 bytes (cached), None when they are not UTF-8."""
    try:
        key = sys.intern(kb.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if len(_DATA_KEYS) >= _SHARED_MAX:
        _DATA_KEYS.clear()
    _DATA_KEYS[kb] = key
    return key


#: the C decoders build these classes and share the Data-key table (docs/decisions.md D39)
_native.configure_ops(Op, Hlc, Data, _DATA_KEYS, _SHARED_MAX)


def payload_at(data: bytes, off: int) -> tuple[Payload, int] | None:
    """The canonical payload item at ``off`` of op bytes and where the ``sig`` key after it starts.

    None when it is not in canonical form. Data is parsed directly from the bytes, other
    kinds by the general payload decoder and then required to re-encode to the same bytes.
    Shared by the strict op decoder and the store's stored-op decoders.
    """
    payload: Payload
    if data.startswith(_K_DATA, off):  # the common case, without the generic decoder
        p = off + len(_K_DATA)
        if len(data) < p + 64:  # a Data op row goes on with at least key, value and signature
            return None
        got = read_head(data, p, 3)
        if got is None:
            return None
        n, p = got
        kb = data[p : p + n]
        key = _DATA_KEYS.get(kb) or _intern_key(kb)
        if key is None:
            return None
        p += n + len(_K_VALUE)
        if not data.startswith(_K_VALUE, p - len(_K_VALUE)) or p >= len(data):
            return None
        got = read_head(data, p, 4)
        if got is None:
            return None
        n, p = got
        end = data.find(_K_SIG, p)
        value = uint8_items(data[p:end]) if end > 0 else None
        if value is None or len(value) != n:
            return None
        payload = build_data(key, value)
    else:
        fp = io.BytesIO(data)
        fp.seek(off)
        try:
            payload = decode_payload(cbor2.CBORDecoder(fp).decode())
        except (DecodeError, cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
            return None
        end = fp.tell()
        if not data.startswith(_K_SIG, end) or dumps(payload.to_obj()) != data[off:end]:
            return None
    return payload, end


def _fast_canonical_op(raw: bytes) -> tuple[Op, bytes] | None:
    """Strict decoding of the canonical layout straight from the bytes; None sends it to the general path.

    Every part is parsed in its canonical form only (fixed keys in declaration order,
    shortest heads, byte arrays as canonical uint items via ``uint8_items``) and the parse
    must consume ``raw`` exactly, so success means ``raw`` IS the canonical encoding of the
    returned op: the same verdict as "re-encode equals input", without re-encoding. Other
    payloads than Data are decoded by the general payload decoder and re-encoded. Anything
    unusual (another signature length, a non-canonical detail, a malformed item) returns
    None, and the general path decodes it or names the problem.
    """
    if not raw.startswith(_K_HEADER):
        return None
    got = read_head(raw, len(_K_HEADER), 4)
    if got is None:
        return None
    n, pos = got
    parents = []
    for k in range(n):
        if not raw.startswith(_ID_HEAD, pos):
            return None
        # no key or id head can occur inside canonical uint items (two bytes >= 25 in a row)
        end = raw.find(_ID_HEAD if k + 1 < n else _K_HLC, pos + 2)
        p = _id_items(raw[pos + 2 : end]) if end > 0 else None
        if p is None:
            return None
        parents.append(p)
        pos = end
    if not raw.startswith(_K_HLC, pos):
        return None
    got = read_head(raw, pos + len(_K_HLC), 0)
    if got is None or not raw.startswith(_K_LOGICAL, got[1]):
        return None
    phys, pos = got
    got = read_head(raw, pos + len(_K_LOGICAL), 0)
    if got is None or not raw.startswith(_K_NODE, got[1]):
        return None
    logical, pos = got
    got = read_head(raw, pos + len(_K_NODE), 0)
    if got is None or not raw.startswith(_K_AUTHOR, got[1]):
        return None
    node, pos = got
    if logical > U32_MAX or node > U32_MAX:
        return None
    end = raw.find(_K_PAYLOAD, pos + len(_K_AUTHOR))
    author = _id_items(raw[pos + len(_K_AUTHOR) : end]) if end > 0 else None
    if author is None:
        return None
    got_payload = payload_at(raw, end + len(_K_PAYLOAD))
    if got_payload is None:
        return None
    payload, end = got_payload
    id_at = raw.find(_K_OP_ID, end + len(_K_SIG))
    sig = uint8_items(raw[end + len(_K_SIG) : id_at]) if id_at > 0 else None
    if sig is None or len(sig) != SIG_LEN:
        return None
    oid = uint8_items(raw[id_at + len(_K_OP_ID) :])
    if oid is None or len(oid) != ID_LEN:
        return None
    oid = _shared(oid)
    op = build_op(tuple(parents), build_hlc(phys, logical, node), author, payload, sig, oid, raw)
    return op, raw[8:end]


def decode_op_with_header(data: bytes) -> tuple[Op, bytes]:
    """``decode_op`` plus the header CBOR (canonical), so admission can hash it without encoding it again."""
    raw = bytes(data)
    fast = _fast_canonical_op(raw)
    if fast is not None:
        return fast
    obj = loads(raw, "op")
    header, sig, op_id = struct_fields(obj, _OP_FIELDS, "op")
    parents, hlc, author, payload = struct_fields(header, _HEADER_FIELDS, "op.header", optional=("hlc",))
    ps, h, pk, pl, s, oid, header_cbor = _typed(parents, hlc, author, payload, sig, op_id)
    if _op_cbor(header_cbor, s, oid) != raw:
        raise DecodeError(f"non-canonical op encoding for {oid.hex()}")
    # keep the caller's bytes object (equal to the canonical encoding): no second copy per op
    return Op(ps, h, pk, pl, s, oid, raw), header_cbor


def decode_op(data: bytes) -> Op:
    """Strict decode for store and network input: only the canonical nested encoding is accepted."""
    return decode_op_with_header(data)[0]


def encode_ops(ops: Iterable[Op]) -> bytes:
    """A log file: the CBOR array of the ops' canonical encodings (no re-encoding of ops)."""
    parts = [op.cbor for op in ops]
    n = len(parts)
    if n < 24:
        head = bytes([0x80 | n])
    elif n < 256:
        head = bytes([0x98, n])
    elif n < 65536:
        head = b"\x99" + n.to_bytes(2, "big")
    elif n < 2**32:
        head = b"\x9a" + n.to_bytes(4, "big")
    else:
        head = b"\x9b" + n.to_bytes(8, "big")
    return head + b"".join(parts)


def read_log(data: bytes, source: str = "input") -> list[Op]:
    """Tolerant log reader (core §4.3): list of ops, single op, list of flat ops, single flat op.

    Ops are returned decoded and canonically re-encoded but NOT verified; admission is the
    caller's job (``admit``). Raises ``DecodeError`` when no form fits.
    """
    try:
        obj = loads(data, source)
    except DecodeError as e:
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op ({e})") from None
    readers = []
    if isinstance(obj, list):
        readers.append(lambda: [op_from_obj(o) for o in obj])
    readers.append(lambda: [op_from_obj(obj)])
    if isinstance(obj, list):
        readers.append(lambda: [flat_op_from_obj(o) for o in obj])
    readers.append(lambda: [flat_op_from_obj(obj)])
    for read in readers:
        try:
            return read()
        except DecodeError:
            continue
    raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op")
