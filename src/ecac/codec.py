"""The one CBOR codec: serde_cbor-compatible encoding and strict/tolerant decoding helpers.

Encoding follows core §2: structs are dicts in declaration order, byte fields are arrays
of ints, enums are externally tagged. ``cbor2.dumps`` with default options produces
exactly those bytes, as long as callers never pass ``bytes`` (that would become a CBOR
byte string) and never ask for ``canonical=True`` (it re-sorts keys).

Strict decoding (store and network input) is "decode, build the typed value, re-encode,
require identical bytes": one check that rejects trailing bytes, non-minimal integers,
indefinite lengths, duplicate or unknown keys and every other malleability.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import cbor2

from ecac.errors import DecodeError
from ecac.hlc import U32_MAX, U64_MAX

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
