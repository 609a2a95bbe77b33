"""Row layouts of the RocksDB store, byte-exact with the reference (store §1.2).

``edges`` rows (``EdgeVal``), checkpoint blobs, resume records, the ``by_author`` and keyring keys
and the persisted verified-VC form: pure encoders and strict decoders, no database access.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecac import _native
from ecac.core.codec import (
    b2l,
    dumps,
    encode_uint,
    loads,
    struct_fields,
    to_bytes,
    to_u32,
    to_u64,
    uint8_items,
)
from ecac.core.errors import DecodeError, StoreError
from ecac.core.op import Data, Op, slot_constructor
from ecac.core.opcodec import _ID_HEAD, _K_AUTHOR, _K_HEADER, _K_HLC, _K_PAYLOAD
from ecac.core.policy import has_policy
from ecac.core.replay import order_hash as replay_order_hash

#: the eight column families, in the reference's order (store §1.2)
CF_NAMES = ("ops", "edges", "by_author", "vc_raw", "vc_verified", "checkpoints", "keys", "meta")
SCHEMA_VERSION = b"ecac:v1"
META_SCHEMA = b"schema_version"
META_UUID = b"db_uuid"
META_LAST_CHECKPOINT = b"last_checkpoint_id"
META_TOPO_WATERMARK = b"topo_watermark"
#: this implementation's checkpoint resume records: ``resume/<16 hex digits of the id>``
META_RESUME_PREFIX = b"resume/"


# --------------------------------------------------------------------------- row layouts


@dataclass(frozen=True, slots=True)
class EdgeVal:
    """The ``edges`` value: parents, author and HLC of an op (store §1.2)."""

    parents: tuple[bytes, ...]
    author_pk: bytes
    hlc_ms: int
    hlc_logical: int
    hlc_node: int

    @classmethod
    def of(cls, op: Op) -> EdgeVal:
        h = op.hlc
        return cls(op.parents, op.author_pk, h.physical_ms, h.logical, h.node_id)

    def encode(self) -> bytes:
        return dumps(
            {
                "parents": [b2l(p) for p in self.parents],
                "author_pk": b2l(self.author_pk),
                "hlc_ms": self.hlc_ms,
                "hlc_logical": self.hlc_logical,
                "hlc_node": self.hlc_node,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> EdgeVal:
        f = struct_fields(
            loads(data, "EdgeVal"), ("parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node"), "EdgeVal"
        )
        if not isinstance(f[0], list):
            raise DecodeError("EdgeVal.parents: expected an array")
        return cls(
            tuple(to_bytes(p, "EdgeVal.parents[]", 32) for p in f[0]),
            to_bytes(f[1], "EdgeVal.author_pk", 32),
            to_u64(f[2], "EdgeVal.hlc_ms"),
            to_u32(f[3], "EdgeVal.hlc_logical"),
            to_u32(f[4], "EdgeVal.hlc_node"),
        )


_EDGE_KEYS = ["parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node"]


def decode_edge_fast(data: bytes) -> EdgeVal:
    """``EdgeVal.decode`` for the open path, parsing the canonical layout straight from the bytes.

    A row in the layout ``edge_bytes`` writes (every row ``put`` writes) is parsed by
    ``_edge_canonical`` with C-level bytes methods (about 3x cheaper than a CBOR decode);
    any other row goes through ``_edge_cbor``, which accepts only what both the strict
    decoder and the reference's field order accept. Either way the values are the ones a
    CBOR decoder reads from ``data``; ``verify_integrity`` still compares every row
    strictly with its op.
    """
    e = _edge_canonical(data) if type(data) is bytes else None
    return e if e is not None else _edge_cbor(data)


#: canonical uint items: below 2**32 (u32 fields) and below 2**64 (u64), shortest form only
_EDGE_U32 = (
    rb"([\x00-\x17]|\x18[\x18-\xff]|\x19[\x01-\xff][\x00-\xff]"
    rb"|\x1a(?:[\x01-\xff][\x00-\xff]{3}|\x00[\x01-\xff][\x00-\xff]{2}))"
)
_EDGE_U64 = _EDGE_U32[:-1] + (
    rb"|\x1b(?:[\x01-\xff][\x00-\xff]{7}|\x00[\x01-\xff][\x00-\xff]{6}"
    rb"|\x00\x00[\x01-\xff][\x00-\xff]{5}|\x00\x00\x00[\x01-\xff][\x00-\xff]{4}))"
)
#: an edge row from its ``hlc_ms`` key to its end (``edge_bytes``' ``_K_EDGE_MS``/``_LOGICAL``/``_NODE``)
_EDGE_TAIL = re.compile(
    rb"\x66hlc_ms" + _EDGE_U64 + rb"\x6bhlc_logical" + _EDGE_U32 + rb"\x68hlc_node" + _EDGE_U32
)
#: a canonical uint item's value is its big-endian bytes less the head's bits (by item length)
_EDGE_UINT_BIAS = (0, 0, 0x18 << 8, 0x19 << 16, 0, 0x1A << 32, 0, 0, 0, 0x1B << 64)
_from_bytes = int.from_bytes  # big-endian by default
#: author_pk items -> the key: a log has few authors (cleared when full)
_EDGE_AUTHORS: dict[bytes, bytes] = {}
_EDGE_AUTHORS_MAX = 4096


def _edge_canonical(data: bytes) -> EdgeVal | None:
    """The ``EdgeVal`` of a row in exactly ``edge_bytes``' layout, else None.

    Every byte is checked: the fixed keys, the parents' array head, each id as its 0x98 0x20
    head and 32 canonical uint items (``uint8_items``), the shortest-form uints to the end of
    the row. Canonical items never contain that head or a key's bytes (a byte >= 0x18 only
    follows the 0x18 prefix), so the searches below find the real boundaries.
    """
    a = data.find(_K_AUTHOR, 10)  # the author_pk key and its id head
    m = data.find(_K_EDGE_MS, a + len(_K_AUTHOR))
    if m < 0 or a < 0 or not data.startswith(_K_EDGE_PARENTS):
        return None
    items = data[a + len(_K_AUTHOR) : m]
    pk = _EDGE_AUTHORS.get(items)
    if pk is None:
        pk = uint8_items(items)
        if pk is None or len(pk) != 32:
            return None
        if len(_EDGE_AUTHORS) >= _EDGE_AUTHORS_MAX:
            _EDGE_AUTHORS.clear()
        _EDGE_AUTHORS[items] = pk
    t = _EDGE_TAIL.fullmatch(data, m)
    if t is None:
        return None
    n = data[9] - 0x80  # the parents' array head (up to 23 parents here)
    if n == 1:
        p = uint8_items(data[12:a]) if data.startswith(_ID_HEAD, 10) else None
        if p is None or len(p) != 32:
            return None
        ps: tuple[bytes, ...] = (p,)
    elif n == 0:
        if a != 10:
            return None
        ps = ()
    elif 1 < n < 24:
        runs = data[10:a].split(_ID_HEAD)
        if len(runs) != n + 1 or runs[0]:
            return None
        ps = ()
        for r in runs[1:]:
            p = uint8_items(r)
            if p is None or len(p) != 32:
                return None
            ps += (p,)
    else:
        return None
    ms, lg, nd = t.groups()
    bias = _EDGE_UINT_BIAS
    return _build_edge(
        ps,
        pk,
        _from_bytes(ms) - bias[len(ms)],
        _from_bytes(lg) - bias[len(lg)],
        _from_bytes(nd) - bias[len(nd)],
    )


def _edge_cbor(data: bytes) -> EdgeVal:
    """A row not in the canonical layout: the strict decoder's checks plus the reference's field order."""
    obj = loads(data, "EdgeVal")
    if type(obj) is not dict or list(obj) != _EDGE_KEYS:
        raise DecodeError("EdgeVal: unexpected keys")
    return EdgeVal.decode(data)


def by_author_key(op: Op) -> bytes:
    """``author_pk ‖ hlc_ms BE8 ‖ logical BE4 ‖ node BE4 ‖ op_id`` (80 bytes)."""
    h = op.hlc
    return (
        op.author_pk
        + h.physical_ms.to_bytes(8, "big")
        + h.logical.to_bytes(4, "big")
        + h.node_id.to_bytes(4, "big")
        + op.op_id
    )


def keyring_key(tag: str, version: int) -> bytes:
    """``len(tag) ‖ tag ‖ version BE4``; tags longer than 255 UTF-8 bytes are refused."""
    t = tag.encode("utf-8")
    if len(t) > 255:
        raise StoreError(f"tag {tag!r} is longer than 255 bytes")
    if not 0 <= version < 2**32:
        raise StoreError(f"key version {version} out of u32 range")
    return bytes([len(t)]) + t + version.to_bytes(4, "big")


def checkpoint_key(checkpoint_id: int) -> bytes:
    return checkpoint_id.to_bytes(8, "big")


def resume_key(checkpoint_id: int) -> bytes:
    return META_RESUME_PREFIX + f"{checkpoint_id:016x}".encode()


@dataclass(frozen=True, slots=True)
class CheckpointBlob:
    """``{topo_idx, state_digest, state_cbor}`` (core §10.4); ``state_cbor`` as an int array."""

    topo_idx: int
    state_digest: bytes
    state_cbor: bytes

    def encode(self) -> bytes:
        return dumps(
            {
                "topo_idx": self.topo_idx,
                "state_digest": b2l(self.state_digest),
                "state_cbor": b2l(self.state_cbor),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> CheckpointBlob:
        f = struct_fields(loads(data, "checkpoint"), ("topo_idx", "state_digest", "state_cbor"), "checkpoint")
        return cls(
            to_u64(f[0], "checkpoint.topo_idx"),
            to_bytes(f[1], "checkpoint.state_digest", 32),
            to_bytes(f[2], "checkpoint.state_cbor"),
        )


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """What core §8.4 needs to decide whether a checkpoint may be resumed from (store §1.9).

    ``k = len(P)`` for the order ``P`` that produced the state, ``order_hash`` = BLAKE3 of
    P's concatenated op ids, ``has_policy`` = P contains a Grant or Revoke, and
    ``non_data`` = the ids of P's ops whose payload is not ``Data`` (ascending), so that a
    resumed replay decodes only those of the prefix (policy needs them; Data ops before
    ``k`` are never read again). Stored in ``meta`` under ``resume/<id as 16 hex digits>``
    as CBOR ``{"k": u64, "order_hash": [32 ints], "has_policy": bool, "non_data": [[32 ints]…]}``.
    """

    k: int
    order_hash: bytes
    has_policy: bool
    non_data: tuple[bytes, ...]

    @classmethod
    def of_order(cls, order: Sequence[Op]) -> ResumeRecord:
        non_data = sorted(op.op_id for op in order if type(op.payload) is not Data)
        return cls(len(order), replay_order_hash(order), has_policy(order), tuple(non_data))

    def encode(self) -> bytes:
        return dumps(
            {
                "k": self.k,
                "order_hash": b2l(self.order_hash),
                "has_policy": self.has_policy,
                "non_data": [b2l(x) for x in self.non_data],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ResumeRecord:
        fields = ("k", "order_hash", "has_policy", "non_data")
        f = struct_fields(loads(data, "resume record"), fields, "resume record")
        if type(f[2]) is not bool:
            raise DecodeError("resume record.has_policy: expected a bool")
        if not isinstance(f[3], list):
            raise DecodeError("resume record.non_data: expected an array")
        return cls(
            to_u64(f[0], "resume.k"),
            to_bytes(f[1], "resume.order_hash", 32),
            f[2],
            tuple(to_bytes(x, "resume.non_data[]", 32) for x in f[3]),
        )


def verified_vc_persist(claims: Any) -> bytes:
    """``VerifiedVcPersist`` CBOR of verified VC claims (store §1.2; the field is ``scope``)."""
    return dumps(
        {
            "cred_id": claims.cred_id,
            "issuer": claims.issuer,
            "subject_pk": b2l(claims.subject_pk),
            "role": claims.role,
            "scope": sorted(claims.scope),
            "nbf_ms": claims.nbf_ms,
            "exp_ms": claims.exp_ms,
            "status_list_id": claims.status_list_id,
            "status_index": claims.status_index,
            "cred_hash": b2l(claims.cred_hash),
        }
    )


# --------------------------------------------------------------------------- edges rows from op bytes

#: canonical uints below 2**16 (HLC logical/node values and small physical times)
_UINT16 = [encode_uint(v) for v in range(1 << 16)]


def _uint(v: int) -> bytes:
    return _UINT16[v] if v < 0x10000 else encode_uint(v)


_build_edge = slot_constructor(EdgeVal)
_native.configure_edges(EdgeVal)  # the bulk decoders read the header fields of these rows
_K_EDGE_PARENTS = b"\xa5\x67parents"
_K_EDGE_AUTHOR = b"\x69author_pk"
_K_EDGE_MS = b"\x66hlc_ms"
_K_EDGE_LOGICAL = b"\x6bhlc_logical"
_K_EDGE_NODE = b"\x68hlc_node"


def edge_bytes(op: Op) -> bytes:
    """``EdgeVal.of(op).encode()``, cut from the op's canonical bytes (the same parents and author items).

    Layout of both: the ``parents`` array, then ``author_pk``; the op has the HLC between
    them (``hlc`` key, map, three uints), the edge has its three uints at the end. Falls
    back to encoding when ``op.cbor`` does not have the canonical layout.
    """
    data = op.cbor
    i = data.find(_K_HLC, len(_K_HEADER))
    j = data.find(_K_AUTHOR, i) + len(_K_AUTHOR) - len(_ID_HEAD)
    k = data.find(_K_PAYLOAD, j)
    if i < 0 or k < 0 or j < i or not data.startswith(_K_HEADER):
        return EdgeVal.of(op).encode()
    h = op.hlc
    return b"".join(
        (
            _K_EDGE_PARENTS,
            data[len(_K_HEADER) : i],
            _K_EDGE_AUTHOR,
            data[j:k],
            _K_EDGE_MS,
            _uint(h.physical_ms),
            _K_EDGE_LOGICAL,
            _uint(h.logical),
            _K_EDGE_NODE,
            _uint(h.node_id),
        )
    )
