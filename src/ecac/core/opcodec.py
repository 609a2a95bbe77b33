"""Op decoding: the one strict decoder of op bytes (network and store), and the tolerant log reader.

Strict decoding accepts only the canonical nested encoding (core §4.3, store §1.4). It is
``SignedOp``'s compiled canonical parser (``ecac.core.codec``: the layout read straight from
the bytes, so a success means the input IS the canonical encoding of the op returned),
falling back to the general check (cbor2, the serde forms, re-encode, compare) only to name
what is wrong. Every path that turns op bytes into an ``Op`` goes through ``decode_op`` /
``decode_op_with_header``; the C accelerator ``ecac._native.scan`` (store replay of Data rows)
is tested against it. ``read_log`` takes the list, single and flat forms of log files and
re-encodes them canonically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from ecac.core.codec import (
    ByteVec,
    Default,
    NonCanonicalError,
    Serde,
    encode_head,
    loads,
    serde,
)
from ecac.core.errors import DecodeError
from ecac.core.hlc import Hlc
from ecac.core.op import Op, OpHeader, OpId, Payload, SignedOp, build_op, header_cbor_in, op_of

_SIGNED = SignedOp.__serde__
#: the canonical parser of ``SignedOp``, building the flat ``Op`` (with the input as its bytes) directly
_parse_op = _SIGNED.parser_into(build_op, inline=("header",))


def decode_op_with_header(data: bytes) -> tuple[Op, bytes]:
    """``decode_op`` plus the header CBOR (canonical), so admission can hash it without encoding it again.

    The op keeps the caller's bytes object (equal to the canonical encoding): no second copy per op.
    """
    raw = data if type(data) is bytes else bytes(data)
    op = _parse_op(raw)
    if op is not None:
        return op, header_cbor_in(raw)
    s = SignedOp.from_obj(loads(raw, "op"), "op")  # names what is wrong, or it is canonical after all
    try:
        _SIGNED.require_canonical(s, raw)
    except NonCanonicalError as e:
        raise DecodeError(
            f"non-canonical op encoding for {s.op_id.hex()} (first difference at byte {e.offset}, "
            f"in `{e.field or 'op'}`)"
        ) from None
    return op_of(s, raw), header_cbor_in(raw)


def decode_op(data: bytes) -> Op:
    """Strict decode for store and network input: only the canonical nested encoding is accepted."""
    return decode_op_with_header(data)[0]


def op_from_obj(obj: Any) -> Op:
    """The nested ``{header, sig, op_id}`` form, in any form serde accepts; re-encoded canonically."""
    s = SignedOp.from_obj(obj, "op")
    return op_of(s, s.encode())


@serde
@dataclass(frozen=True, slots=True)
class FlatOp(Serde):
    """The legacy flat log form: the header's fields at the top level, ``parents``/``hlc`` optional."""

    parents: Annotated[tuple[OpId, ...], Default]
    hlc: Annotated[Hlc, Default]
    author_pk: OpId
    payload: Payload
    sig: ByteVec
    op_id: OpId


def flat_op_from_obj(obj: Any) -> Op:
    """An op in the legacy flat form (a map only), re-encoded in the nested canonical form."""
    if not isinstance(obj, dict):
        raise DecodeError("flat op: expected a map")
    f = FlatOp.from_obj(obj, "flat op")
    s = SignedOp(OpHeader(f.parents, f.hlc, f.author_pk, f.payload), f.sig, f.op_id)
    return op_of(s, s.encode())


def encode_ops(ops: Iterable[Op]) -> bytes:
    """A log file: the CBOR array of the ops' canonical encodings (no re-encoding of ops)."""
    parts = [op.cbor for op in ops]
    return encode_head(4, len(parts)) + b"".join(parts)


def read_log(data: bytes, source: str = "input") -> list[Op]:
    """Tolerant log reader (core §4.3): list of ops, single op, list of flat ops, single flat op.

    Ops are returned decoded and canonically re-encoded but NOT verified; admission is the
    caller's job (``admit``). Raises ``DecodeError`` when no form fits.
    """
    try:
        obj = loads(data, source)
    except DecodeError as e:
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op ({e})") from None
    readers: list[Callable[[], list[Op]]] = []
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
