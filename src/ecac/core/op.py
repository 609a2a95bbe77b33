"""The op model: payloads, ops, op ids, signatures, canonical encoding.

An ``Op`` always carries its canonical CBOR bytes (``Op.cbor``), so the store and the
network can keep and send exactly those bytes without re-encoding. The op id is
``blake3("ECAC_OP_V1" || cbor(header))`` over the header re-encoded from the typed
fields, never over received bytes (core §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import blake3
from nacl.signing import SigningKey

from ecac.core.codec import (
    b2l,
    dumps,
    encode_byte_array,
)
from ecac.core.hlc import Hlc

T = TypeVar("T")

OP_DOMAIN = b"ECAC_OP_V1"
ID_LEN = 32
SIG_LEN = 64

REASON_ID_MISMATCH = "op_id mismatch (header hash != embedded op_id)"
REASON_BAD_SIG = "invalid signature"


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Data:
    key: str
    value: bytes
    NAME: ClassVar[str] = "Data"

    def to_obj(self) -> dict[str, Any]:
        return {"Data": {"key": self.key, "value": b2l(self.value)}}


@dataclass(frozen=True, slots=True)
class Credential:
    cred_id: str
    cred_bytes: bytes
    format: str = "Jwt"
    NAME: ClassVar[str] = "Credential"

    def to_obj(self) -> dict[str, Any]:
        return {
            "Credential": {"cred_id": self.cred_id, "cred_bytes": b2l(self.cred_bytes), "format": self.format}
        }


@dataclass(frozen=True, slots=True)
class Grant:
    subject_pk: bytes
    cred_hash: bytes
    NAME: ClassVar[str] = "Grant"

    def to_obj(self) -> dict[str, Any]:
        return {"Grant": {"subject_pk": b2l(self.subject_pk), "cred_hash": b2l(self.cred_hash)}}


@dataclass(frozen=True, slots=True)
class Revoke:
    subject_pk: bytes
    role: str
    scope_tags: tuple[str, ...]
    at: Hlc
    NAME: ClassVar[str] = "Revoke"

    def to_obj(self) -> dict[str, Any]:
        return {
            "Revoke": {
                "subject_pk": b2l(self.subject_pk),
                "role": self.role,
                "scope_tags": list(self.scope_tags),
                "at": self.at.to_obj(),
            }
        }


@dataclass(frozen=True, slots=True)
class KeyGrant:
    subject_pk: bytes
    tag: str
    key_version: int
    cred_hash: bytes
    NAME: ClassVar[str] = "KeyGrant"

    def to_obj(self) -> dict[str, Any]:
        return {
            "KeyGrant": {
                "subject_pk": b2l(self.subject_pk),
                "tag": self.tag,
                "key_version": self.key_version,
                "cred_hash": b2l(self.cred_hash),
            }
        }


@dataclass(frozen=True, slots=True)
class KeyRotate:
    tag: str
    new_version: int
    new_key: bytes
    NAME: ClassVar[str] = "KeyRotate"

    def to_obj(self) -> dict[str, Any]:
        return {"KeyRotate": {"tag": self.tag, "new_version": self.new_version, "new_key": b2l(self.new_key)}}


@dataclass(frozen=True, slots=True)
class IssuerKey:
    issuer_id: str
    key_id: str
    algo: str
    pubkey: bytes
    valid_from_ms: int
    valid_until_ms: int
    prev_key_id: str | None = None
    NAME: ClassVar[str] = "IssuerKey"

    def to_obj(self) -> dict[str, Any]:
        return {
            "IssuerKey": {
                "issuer_id": self.issuer_id,
                "key_id": self.key_id,
                "algo": self.algo,
                "pubkey": b2l(self.pubkey),
                "valid_from_ms": self.valid_from_ms,
                "valid_until_ms": self.valid_until_ms,
                "prev_key_id": self.prev_key_id,
            }
        }


@dataclass(frozen=True, slots=True)
class IssuerKeyRevoke:
    issuer_id: str
    key_id: str
    reason: str
    NAME: ClassVar[str] = "IssuerKeyRevoke"

    def to_obj(self) -> dict[str, Any]:
        return {
            "IssuerKeyRevoke": {"issuer_id": self.issuer_id, "key_id": self.key_id, "reason": self.reason}
        }


@dataclass(frozen=True, slots=True)
class StatusListChunk:
    list_id: str
    issuer_id: str
    version: int
    chunk_index: int
    bitset_sha256: bytes
    chunk_bytes: bytes
    NAME: ClassVar[str] = "StatusListChunk"

    def to_obj(self) -> dict[str, Any]:
        return {
            "StatusListChunk": {
                "list_id": self.list_id,
                "issuer_id": self.issuer_id,
                "version": self.version,
                "chunk_index": self.chunk_index,
                "bitset_sha256": b2l(self.bitset_sha256),
                "chunk_bytes": b2l(self.chunk_bytes),
            }
        }


@dataclass(frozen=True, slots=True)
class StatusPointer:
    cred_id: str
    list_id: str
    index: int
    NAME: ClassVar[str] = "StatusPointer"

    def to_obj(self) -> dict[str, Any]:
        return {"StatusPointer": {"cred_id": self.cred_id, "list_id": self.list_id, "index": self.index}}


@dataclass(frozen=True, slots=True)
class Reserved:
    """The unit variant ``_Reserved``; unknown unit variants also decode to it."""

    NAME: ClassVar[str] = "_Reserved"

    def to_obj(self) -> str:
        return "_Reserved"


Payload = (
    Data
    | Credential
    | Grant
    | Revoke
    | KeyGrant
    | KeyRotate
    | IssuerKey
    | IssuerKeyRevoke
    | StatusListChunk
    | StatusPointer
    | Reserved
)

#: payload kinds whose content decides policy regardless of their position (core §8.4)
RETROACTIVE_KINDS = frozenset({"Credential", "IssuerKey", "IssuerKeyRevoke", "StatusListChunk"})
#: kinds that switch the write gate on (core §8.2)
POLICY_SWITCH_KINDS = frozenset({"Grant", "Revoke"})


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True, slots=True)
class Op:
    """A signed op. ``cbor`` is its canonical encoding (what the store and the wire carry).

    Invariant: ``cbor`` encodes exactly these fields. ``make_op`` and the decoders guarantee
    it, and ``put_many`` relies on it (an ``Op`` is not decoded again); ``dataclasses.replace``
    on an op breaks it and is only for tests of ``check_op`` and the DAG.
    """

    parents: tuple[bytes, ...]
    hlc: Hlc
    author_pk: bytes
    payload: Payload
    sig: bytes
    op_id: bytes
    cbor: bytes = field(default=b"", compare=False, repr=False)

    @property
    def kind(self) -> str:
        """The payload variant name (``"Data"``, ``"Grant"``, …, ``"_Reserved"``)."""
        return self.payload.NAME

    def header_obj(self) -> dict[str, Any]:
        return header_obj(self.parents, self.hlc, self.author_pk, self.payload)

    def header_bytes(self) -> bytes:
        return dumps(self.header_obj())

    def computed_id(self) -> bytes:
        """The op id recomputed from the typed header."""
        return op_id_of(self.header_bytes())

    def sort_key(self) -> tuple[int, int, int, bytes]:
        """The total-order tie-break key ``(physical_ms, logical, node_id, op_id)`` (core §6)."""
        h = self.hlc
        return (h.physical_ms, h.logical, h.node_id, self.op_id)


def slot_constructor(cls: type[T]) -> Callable[..., T]:
    """``cls(*values)`` for a frozen slots dataclass, setting the slots directly.

    Gives an equal object about twice as fast as the dataclass ``__init__`` (which goes
    through ``object.__setattr__`` per field because the class is frozen); for the
    decoders' hot paths, which build hundreds of thousands of ops. Values are not checked.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        env[f"_set_{name}"] = cls.__dict__[name].__set__
    body = "".join(f"    _set_{name}(o, {name})\n" for name in names)
    exec(f"def build({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n", env)
    return env["build"]  # type: ignore[no-any-return]


#: ``Op(...)``, ``Hlc(...)`` and ``Data(...)`` without the dataclass ``__init__`` (see ``slot_constructor``)
build_op: Callable[[tuple[bytes, ...], Hlc, bytes, Payload, bytes, bytes, bytes], Op] = slot_constructor(Op)
build_hlc: Callable[[int, int, int], Hlc] = slot_constructor(Hlc)
build_data: Callable[[str, bytes], Data] = slot_constructor(Data)


def header_obj(parents: Sequence[bytes], hlc: Hlc, author_pk: bytes, payload: Payload) -> dict[str, Any]:
    return {
        "parents": [b2l(p) for p in parents],
        "hlc": hlc.to_obj(),
        "author_pk": b2l(author_pk),
        "payload": payload.to_obj(),
    }


def op_id_of(header_cbor: bytes) -> bytes:
    return blake3.blake3(OP_DOMAIN + header_cbor).digest()


_OP_PREFIX = b"\xa3\x66header"  # map(3), "header": the op map's first key


def _op_tail(sig: bytes, op_id: bytes) -> bytes:
    """The bytes after the header in an op's encoding: ``"sig": […], "op_id": […]``."""
    return b"\x63sig" + encode_byte_array(sig) + b"\x65op_id" + encode_byte_array(op_id)


def _op_cbor(header_cbor: bytes, sig: bytes, op_id: bytes) -> bytes:
    """``cbor({"header", "sig", "op_id"})`` assembled around the already-encoded header.

    Identical bytes to encoding the whole map, but the header is encoded only once,
    so decoding can hash the same bytes for the op_id check (hot path of replay).
    """
    return _OP_PREFIX + header_cbor + _op_tail(sig, op_id)


def header_cbor_of(op: Op) -> bytes:
    """The header bytes inside ``op.cbor``, cut out rather than re-encoded (what the op_id hashes).

    Every constructor of ``Op`` (``make_op``, the decoders) sets ``cbor`` to the canonical
    encoding of its fields, so the slice equals ``op.header_bytes()``; an op built by hand
    without ``cbor`` is encoded instead.
    """
    cbor = op.cbor
    tail = _op_tail(op.sig, op.op_id)
    if cbor.startswith(_OP_PREFIX) and cbor.endswith(tail) and len(cbor) > len(_OP_PREFIX) + len(tail):
        return cbor[len(_OP_PREFIX) : len(cbor) - len(tail)]
    return op.header_bytes()


def make_op(sk: SigningKey, parents: Iterable[bytes], hlc: Hlc, payload: Payload) -> Op:
    """Create and sign an op: parents sorted (duplicates kept), Ed25519 over the 32-byte id."""
    ps = tuple(sorted(parents))
    author = bytes(sk.verify_key)
    header_cbor = dumps(header_obj(ps, hlc, author, payload))
    op_id = op_id_of(header_cbor)
    sig = sk.sign(op_id).signature
    return Op(ps, hlc, author, payload, sig, op_id, _op_cbor(header_cbor, sig, op_id))
