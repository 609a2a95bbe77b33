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
    CborBoundsError,
    Default,
    NonCanonicalError,
    Serde,
    cbor_extent,
    encode_head,
    loads,
    naming_budget,
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
    # names what is wrong, or it is canonical after all
    s = SignedOp.from_obj(loads(raw, "op", max_cost=naming_budget(len(raw))), "op")
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


#: the largest single element of a log read in a non-canonical form (decoded with cbor2); a canonical
#: element of any size is parsed without cbor2. Larger than any op that can be stored or sent (the
#: response frame limit is 8 MiB) and small enough that its decoding stays bounded
MAX_LOG_ITEM = 16 * 1024 * 1024


def read_log(data: bytes, source: str = "input") -> list[Op]:
    """Tolerant log reader (core §4.3): list of ops, single op, list of flat ops, single flat op.

    Ops are returned decoded and canonically re-encoded but NOT verified; admission is the
    caller's job (``admit``). Raises ``DecodeError`` when no form fits.

    Bounded for untrusted input (files, ``/append-ops`` bodies): a list is read element by
    element (``cbor_extent`` finds each one's end without decoding it), each parsed by the
    canonical op parser, so a canonical log never goes through cbor2; only an element that is
    not canonical is decoded by ``loads`` (at most ``MAX_LOG_ITEM`` bytes, under its memory
    bound), and the first element that is no op in any form ends the read with an error.
    """
    raw = data if type(data) is bytes else bytes(data)
    if not raw:
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op (empty input)")
    major = raw[0] >> 5
    if major == 5:
        return [_single_op(raw, source)]
    if major != 4:
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op (the input is no CBOR array or map)")
    try:
        return _read_list(raw, source)
    except _NotAList as e:
        # an array of 3 items may be one op in serde's array form
        if e.index == 0 and e.count == 3:
            try:
                return [op_from_obj(loads(raw, source))]
            except DecodeError:
                pass
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op ({e.reason})") from None


class _NotAList(Exception):
    def __init__(self, index: int, count: int | None, reason: str) -> None:
        self.index, self.count, self.reason = index, count, reason


def _single_op(raw: bytes, source: str) -> Op:
    op = _parse_op(raw)
    if op is not None:
        return op
    try:
        obj = loads(raw, source)
    except DecodeError as e:
        raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op ({e})") from None
    for read in (op_from_obj, flat_op_from_obj):
        try:
            return read(obj)
        except DecodeError:
            continue
    raise DecodeError(f"{source}: not a CBOR Vec<Op> or Op")


def _read_list(raw: bytes, source: str) -> list[Op]:
    """The elements of a top-level array, all nested ops or all flat ops (see ``read_log``)."""
    n_data = len(raw)
    info = raw[0] & 0x1F
    count: int | None = None
    pos = 1
    if info < 24:
        count = info
    elif info < 28:
        pos = 1 + (1 << (info - 24))
        if pos > n_data:
            raise _NotAList(0, None, "truncated array head")
        count = int.from_bytes(raw[1:pos], "big")
    elif info != 31:
        raise _NotAList(0, None, f"reserved head 0x{raw[0]:02x}")
    if count is not None and count > n_data - pos:
        raise _NotAList(0, None, f"the array declares {count} elements in {n_data - pos} bytes")
    ops: list[Op] = []
    form: Callable[[Any], Op] | None = None  # nested or flat: the form of the elements so far
    i = 0
    while count is None or i < count:
        if count is None and pos < n_data and raw[pos] == 0xFF:
            pos += 1
            break
        try:
            end, _, _ = cbor_extent(raw, pos)
        except CborBoundsError as e:
            raise _NotAList(i, count, f"element {i}: {e}") from None
        item = raw[pos:end]
        op = _parse_op(item)
        if op is None:
            op, form = _tolerant_item(item, i, count, source, form)
        elif form is flat_op_from_obj:
            raise _NotAList(i, count, f"element {i}: a nested op in a list of flat ops")
        else:
            form = op_from_obj
        ops.append(op)
        pos = end
        i += 1
    if pos != n_data:
        raise _NotAList(i, count, f"{n_data - pos} trailing bytes after the CBOR item")
    return ops


def _tolerant_item(
    item: bytes, i: int, count: int | None, source: str, form: Callable[[Any], Op] | None
) -> tuple[Op, Callable[[Any], Op]]:
    """A non-canonical element: nested form, else flat form; every element of a list must take the same."""
    if len(item) > MAX_LOG_ITEM:
        raise _NotAList(
            i, count, f"element {i}: {len(item)} bytes in a non-canonical form (max {MAX_LOG_ITEM})"
        )
    try:
        obj = loads(item, f"{source}[{i}]")
    except DecodeError as e:
        raise _NotAList(i, count, str(e)) from None
    readers = (form,) if form is not None else (op_from_obj, flat_op_from_obj)
    last = "no op"
    for read in readers:
        try:
            return read(obj), read
        except DecodeError as e:
            last = str(e)
    raise _NotAList(i, count, f"element {i}: {last}")
