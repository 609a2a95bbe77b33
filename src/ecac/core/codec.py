"""The one CBOR codec: serde_cbor-compatible encoding and strict/tolerant decoding helpers.

Encoding follows core §2: structs are dicts in declaration order, byte fields are arrays
of ints, enums are externally tagged. ``cbor2.dumps`` with default options produces
exactly those bytes, as long as callers never pass ``bytes`` (that would become a CBOR
byte string) and never ask for ``canonical=True`` (it re-sorts keys).

Strict decoding (store and network input) is "decode, build the typed value, re-encode,
require identical bytes": one check that rejects trailing bytes, non-minimal integers,
indefinite lengths, duplicate or unknown keys and every other malleability.

The canonical-form helpers at the end (``read_head``, ``uint8_items`` and the template
encoders ``encode_head``/``encode_byte_array``) let hot paths parse and build canonical
bytes directly; each accepts or produces exactly what ``dumps`` produces (tested against it).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Sequence
from typing import Any

import cbor2

from ecac.core.errors import DecodeError
from ecac.core.hlc import U32_MAX, U64_MAX

dumps = cbor2.dumps


def loads(data: bytes, what: str = "CBOR") -> Any:
    """Decode exactly one CBOR item; trailing bytes and malformed input raise DecodeError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise DecodeError(f"{what}: malformed CBOR ({e})") from None
    except EOFError:
        raise DecodeError(f"{what}: truncated CBOR") from None
    if fp.tell() != len(data):
        raise DecodeError(f"{what}: {len(data) - fp.tell()} trailing bytes after the CBOR item")
    return obj


def b2l(data: bytes) -> list[int]:
    """Bytes as the array-of-ints CBOR form used for every byte field."""
    return list(data)


_INT_ONLY = {int}


def to_bytes(obj: Any, what: str, length: int | None = None) -> bytes:
    """A CBOR array of ints 0..255 (optionally of exact length) as bytes; byte strings are rejected."""
    if not isinstance(obj, list | tuple):
        raise DecodeError(f"{what}: expected an array of ints, got {type(obj).__name__}")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(obj)}")
    # set(map(type, …)) runs in C: this check is on the hot path of every op decode
    if obj and set(map(type, obj)) != _INT_ONLY:
        bad = next(x for x in obj if type(x) is not int)
        raise DecodeError(f"{what}: array element is {type(bad).__name__}, not an integer")
    try:
        return bytes(obj)
    except ValueError:
        raise DecodeError(f"{what}: array element out of byte range") from None


def to_u(obj: Any, what: str, max_value: int) -> int:
    """An unsigned integer within ``max_value``; bools, floats and negatives are rejected."""
    if type(obj) is not int:
        raise DecodeError(f"{what}: expected an unsigned integer, got {type(obj).__name__}")
    if obj < 0 or obj > max_value:
        raise DecodeError(f"{what}: integer {obj} out of range")
    return obj


def to_u32(obj: Any, what: str) -> int:
    return to_u(obj, what, U32_MAX)


def to_u64(obj: Any, what: str) -> int:
    return to_u(obj, what, U64_MAX)


def to_text(obj: Any, what: str) -> str:
    if type(obj) is not str:
        raise DecodeError(f"{what}: expected a text string, got {type(obj).__name__}")
    return obj


def struct_fields(obj: Any, fields: Sequence[str], what: str, optional: Sequence[str] = ()) -> list[Any]:
    """The field values of a decoded struct, in declaration order.

    Accepts the forms serde accepts on input: a map keyed by field name (unknown keys
    ignored), a map keyed by field index, or an array of the values in order. A missing
    field listed in ``optional`` comes back as ``None``; any other missing field fails.
    """
    if isinstance(obj, dict):
        out: list[Any] = []
        for i, name in enumerate(fields):
            if name in obj:
                out.append(obj[name])
            elif i in obj:
                out.append(obj[i])
            elif name in optional:
                out.append(None)
            else:
                raise DecodeError(f"{what}: missing field `{name}`")
        return out
    if isinstance(obj, list | tuple):
        if len(obj) != len(fields):
            raise DecodeError(f"{what}: expected {len(fields)} fields, got {len(obj)}")
        return list(obj)
    raise DecodeError(f"{what}: expected a map, got {type(obj).__name__}")


# --------------------------------------------------------------------------- canonical form, directly


def encode_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of ``major`` type (0 uint, 3 text, 4 array, 5 map) with argument ``n``."""
    base = major << 5
    if n < 24:
        return bytes([base | n])
    if n < 0x100:
        return bytes([base | 24, n])
    if n < 0x10000:
        return bytes([base | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([base | 26]) + n.to_bytes(4, "big")
    return bytes([base | 27]) + n.to_bytes(8, "big")


def encode_uint(n: int) -> bytes:
    """``dumps(n)`` for an unsigned integer below 2**64."""
    return encode_head(0, n)


#: the canonical CBOR item of each byte value as an unsigned integer (a charmap: mapped in C)
_UINT8_ITEM = {b: bytes([b]) if b < 24 else bytes([0x18, b]) for b in range(256)}


def encode_byte_array(data: bytes) -> bytes:
    """``dumps(b2l(data))``: a byte string as the array of uints used for every byte field."""
    items = codecs.charmap_encode(bytes(data).decode("latin-1"), "strict", _UINT8_ITEM)[0]
    return encode_head(4, len(data)) + items


def read_head(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """``(argument, next position)`` of a shortest-form head of ``major`` type at ``pos``, else None."""
    if pos >= len(data):
        return None
    info = data[pos] - (major << 5)
    if 0 <= info < 24:
        return info, pos + 1
    if info == 24:
        if pos + 1 < len(data) and data[pos + 1] >= 24:
            return data[pos + 1], pos + 2
        return None
    width = {25: 2, 26: 4, 27: 8}.get(info)
    if width is None:
        return None
    end = pos + 1 + width
    raw = data[pos + 1 : end]
    if len(raw) != width:
        return None
    n = int.from_bytes(raw, "big")
    if n < 1 << (4 * width):  # would fit the next smaller width: not the shortest form
        return None
    return n, end


#: for ``uint8_items``: 1 where a byte is the 0x18 prefix / a byte >= 25 (which needs that prefix)
_PREFIX_AT = bytes.maketrans(bytes(range(256)), b"\0" * 24 + b"\1" + b"\0" * 231)
_NEEDS_PREFIX_AT = bytes.maketrans(bytes(range(256)), b"\0" * 25 + b"\1" * 231)
#: item classes: a = 00..17, m = 18 (the prefix, or the value 24 after one), b = 19..ff
_ITEM_CLASS = bytes(0x61 if v < 0x18 else 0x6D if v == 0x18 else 0x62 for v in range(256))


def uint8_items(body: bytes) -> bytes | None:
    """The bytes ``b`` such that ``body`` is exactly the items of ``encode_byte_array(b)``, else None.

    Canonical items are a byte below 24 by itself or 0x18 followed by the byte (>= 24).
    Without the byte 24 (0x18 0x18), ``body`` is canonical iff a byte is >= 25 exactly
    where the byte before it is 0x18 and the last byte is not 0x18: two translations
    compared shifted by one, all in C. With it (always, for op bytes inside an ``OpBytes``
    frame), the items are checked on their class string (``a`` < 0x18, ``m`` = 0x18, ``b`` >
    0x18): runs of ``m`` start at item boundaries, so pairs ``mm`` (the value 24) are
    removed left to right and what is left must be ``a`` and ``mb`` only, which three
    counts establish; decoding maps the same pairs to 0x18 and drops the other markers.
    """
    if b"\0" + body.translate(_PREFIX_AT) == body.translate(_NEEDS_PREFIX_AT) + b"\0":
        return body.translate(None, b"\x18")
    if b"\x18\x18" not in body:
        return None
    cls = body.translate(_ITEM_CLASS).replace(b"mm", b"")
    markers = cls.count(b"m")
    if markers != cls.count(b"b") or markers != cls.count(b"mb"):
        return None
    text = body.decode("latin-1").replace("\x18\x18", "\u0100").replace("\x18", "")
    return text.replace("\u0100", "\x18").encode("latin-1")
