"""Row layouts of the RocksDB store, byte-exact with the reference (store §1.2).

``edges`` rows (``EdgeVal``), checkpoint blobs, resume records, the persisted verified-VC form
(``@serde`` structs of ``ecac.core.codec``) and the ``by_author`` and keyring keys: pure
encoders and decoders, no database access. Stored rows are read the way the reference's serde
reads them (``lenient``: the other forms serde accepts are read too); ops are decoded strictly
by ``ecac.core.opcodec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecac import _native
from ecac.core.codec import Bytes32, ByteVec, Serde, U32Int, U64Int, encode_text, encode_uint, loads, serde
from ecac.core.errors import DecodeError, StoreError
from ecac.core.hlc import Hlc
from ecac.core.op import Data, Op, OpHeader, SignedOp, slot_constructor
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


@serde(lenient=True)
@dataclass(frozen=True, slots=True)
class EdgeVal(Serde):
    """The ``edges`` value: parents, author and HLC of an op (store §1.2)."""

    parents: tuple[Bytes32, ...]
    author_pk: Bytes32
    hlc_ms: U64Int
    hlc_logical: U32Int
    hlc_node: U32Int

    @classmethod
    def of(cls, op: Op) -> EdgeVal:
        h = op.hlc
        return cls(op.parents, op.author_pk, h.physical_ms, h.logical, h.node_id)


_EDGE = EdgeVal.__serde__
#: the reference writes the fields in this order; the open path reads only maps in it
_EDGE_KEYS = list(EdgeVal.FIELDS)
#: ``EdgeVal(...)`` without the dataclass ``__init__`` (the store builds one per stored op)
_build_edge = slot_constructor(EdgeVal)
#: the canonical row layout's first bytes
_K_EDGE_PARENTS = EdgeVal.__serde__.prefix()


def _edge_canonical(data: bytes) -> EdgeVal | None:
    """The ``EdgeVal`` a row in the canonical layout encodes (the codec's canonical parser), else None."""
    return _EDGE.parse(data)


def _edge_cbor(data: bytes) -> EdgeVal:
    """A row not in the canonical layout: serde's reading, in the reference's field order only."""
    obj = loads(data, "EdgeVal")
    if type(obj) is not dict or list(obj) != _EDGE_KEYS:
        raise DecodeError("EdgeVal: unexpected keys")
    return EdgeVal.from_obj(obj)


def decode_edge_fast(data: bytes) -> EdgeVal:
    """An ``edges`` row on the open path: the canonical parser, else ``_edge_cbor``.

    Either way the values are the ones a CBOR decoder reads from ``data``;
    ``verify_integrity`` still compares every row strictly with its op.
    """
    e = _EDGE.parse(data) if type(data) is bytes else None
    return e if e is not None else _edge_cbor(data)


# An op's canonical bytes hold the encodings of its parents array and author key, which are also
# the edges row's (same field types): the put path cuts them out instead of encoding them again.
assert OpHeader.FIELDS == ("parents", "hlc", "author_pk", "payload")
assert EdgeVal.FIELDS == ("parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node")
_OP_PREFIX = SignedOp.__serde__.prefix()  # a3 "header" a4 "parents": the parents array follows
_OP_PARENTS_AT = len(_OP_PREFIX)
_OP_HLC = encode_text("hlc") + Hlc.__serde__.prefix()  # what follows the parents array
_OP_AUTHOR = encode_text("author_pk")
_OP_PAYLOAD = encode_text("payload")  # what follows the author key's array
_K_EDGE_AUTHOR, _K_EDGE_MS, _K_EDGE_LOGICAL, _K_EDGE_NODE = map(encode_text, EdgeVal.FIELDS[1:])


def edge_bytes(op: Op) -> bytes:
    """``EdgeVal.of(op).encode()``, the parents and author arrays cut from ``op.cbor`` (tested equal).

    The keys searched for cannot occur inside canonical byte arrays (see ``ecac.core.codec``);
    an op without canonical bytes is encoded instead.
    """
    data = op.cbor
    i = data.find(_OP_HLC, _OP_PARENTS_AT)
    j = data.find(_OP_AUTHOR, i)
    k = data.find(_OP_PAYLOAD, j)
    h = op.hlc
    if i < 0 or j < 0 or k < 0 or not data.startswith(_OP_PREFIX):
        return _EDGE.encode(_build_edge(op.parents, op.author_pk, h.physical_ms, h.logical, h.node_id))
    return b"".join(
        (
            _K_EDGE_PARENTS,
            data[_OP_PARENTS_AT:i],
            _K_EDGE_AUTHOR,
            data[j + len(_OP_AUTHOR) : k],
            _K_EDGE_MS,
            encode_uint(h.physical_ms),
            _K_EDGE_LOGICAL,
            encode_uint(h.logical),
            _K_EDGE_NODE,
            encode_uint(h.node_id),
        )
    )


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


@serde(lenient=True)
@dataclass(frozen=True, slots=True)
class CheckpointBlob(Serde):
    """``{topo_idx, state_digest, state_cbor}`` (core §10.4); ``state_cbor`` as an int array."""

    topo_idx: U64Int
    state_digest: Bytes32
    state_cbor: ByteVec


@serde(lenient=True)
@dataclass(frozen=True, slots=True)
class ResumeRecord(Serde):
    """What core §8.4 needs to decide whether a checkpoint may be resumed from (store §1.9).

    ``k = len(P)`` for the order ``P`` that produced the state, ``order_hash`` = BLAKE3 of
    P's concatenated op ids, ``has_policy`` = P contains a Grant or Revoke, and
    ``non_data`` = the ids of P's ops whose payload is not ``Data`` (ascending), so that a
    resumed replay decodes only those of the prefix (policy needs them; Data ops before
    ``k`` are never read again). Stored in ``meta`` under ``resume/<id as 16 hex digits>``
    as CBOR ``{"k": u64, "order_hash": [32 ints], "has_policy": bool, "non_data": [[32 ints]…]}``.
    """

    k: U64Int
    order_hash: Bytes32
    has_policy: bool
    non_data: tuple[Bytes32, ...]

    @classmethod
    def of_order(cls, order: Sequence[Op]) -> ResumeRecord:
        non_data = sorted(op.op_id for op in order if type(op.payload) is not Data)
        return cls(len(order), replay_order_hash(order), has_policy(order), tuple(non_data))


@serde
@dataclass(frozen=True, slots=True)
class VerifiedVcPersist(Serde):
    """The ``vc_verified`` value (store §1.2; the field is ``scope``, ascending)."""

    cred_id: str | None
    issuer: str | None
    subject_pk: Bytes32
    role: str
    scope: tuple[str, ...]
    nbf_ms: U64Int
    exp_ms: U64Int
    status_list_id: str | None
    status_index: U32Int | None
    cred_hash: Bytes32


def verified_vc_persist(claims: Any) -> bytes:
    """``VerifiedVcPersist`` CBOR of verified VC claims (``ecac.core.vc.VerifiedClaims``)."""
    return VerifiedVcPersist(
        claims.cred_id,
        claims.issuer,
        claims.subject_pk,
        claims.role,
        tuple(sorted(claims.scope)),
        claims.nbf_ms,
        claims.exp_ms,
        claims.status_list_id,
        claims.status_index,
        claims.cred_hash,
    ).encode()


#: the C bulk decoders of the store replay (``ecac._native.scan``/``skeletons``) read these rows
_native.configure_edges(EdgeVal)
