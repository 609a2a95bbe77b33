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
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import blake3
from nacl.signing import SigningKey

from ecac import _native
from ecac.core.codec import (
    Bytes32,
    ByteVec,
    Default,
    Interned,
    Serde,
    TypeCodec,
    U32Int,
    U64Int,
    encode_byte_array,
    encode_head,
    encode_text,
    serde,
    variant,
)
from ecac.core.hlc import Hlc

T = TypeVar("T")

OP_DOMAIN = b"ECAC_OP_V1"
ID_LEN = 32
SIG_LEN = 64

REASON_ID_MISMATCH = "op_id mismatch (header hash != embedded op_id)"
REASON_BAD_SIG = "invalid signature"

#: an op id or a public key: 32 bytes, written as an array of 32 uints
OpId = Bytes32


# --------------------------------------------------------------------------- payloads (core §3.3)


@variant
@dataclass(frozen=True, slots=True)
class Data(Serde):
    key: Annotated[str, Interned]  # keys repeat across a log: one (mortal) string each
    value: ByteVec
    NAME: ClassVar[str] = "Data"


@variant
@dataclass(frozen=True, slots=True)
class Credential(Serde):
    cred_id: str
    cred_bytes: ByteVec  # the exact compact-JWT ASCII
    format: Literal["Jwt"] = "Jwt"
    NAME: ClassVar[str] = "Credential"


@variant
@dataclass(frozen=True, slots=True)
class Grant(Serde):
    subject_pk: Bytes32
    cred_hash: Bytes32
    NAME: ClassVar[str] = "Grant"


@variant
@dataclass(frozen=True, slots=True)
class Revoke(Serde):
    subject_pk: Bytes32
    role: str
    scope_tags: tuple[str, ...]
    at: Hlc
    NAME: ClassVar[str] = "Revoke"


@variant
@dataclass(frozen=True, slots=True)
class KeyGrant(Serde):
    subject_pk: Bytes32
    tag: str
    key_version: U32Int
    cred_hash: Bytes32
    NAME: ClassVar[str] = "KeyGrant"


@variant
@dataclass(frozen=True, slots=True)
class KeyRotate(Serde):
    tag: str
    new_version: U32Int
    new_key: ByteVec
    NAME: ClassVar[str] = "KeyRotate"


@variant
@dataclass(frozen=True, slots=True)
class IssuerKey(Serde):
    issuer_id: str
    key_id: str
    algo: str
    pubkey: ByteVec
    valid_from_ms: U64Int
    valid_until_ms: U64Int
    prev_key_id: str | None = None
    NAME: ClassVar[str] = "IssuerKey"


@variant
@dataclass(frozen=True, slots=True)
class IssuerKeyRevoke(Serde):
    issuer_id: str
    key_id: str
    reason: str
    NAME: ClassVar[str] = "IssuerKeyRevoke"


@variant
@dataclass(frozen=True, slots=True)
class StatusListChunk(Serde):
    list_id: str
    issuer_id: str
    version: U32Int
    chunk_index: U32Int
    bitset_sha256: Bytes32
    chunk_bytes: ByteVec
    NAME: ClassVar[str] = "StatusListChunk"


@variant
@dataclass(frozen=True, slots=True)
class StatusPointer(Serde):
    cred_id: str
    list_id: str
    index: U32Int
    NAME: ClassVar[str] = "StatusPointer"


@variant
@dataclass(frozen=True, slots=True)
class Genesis(Serde):
    """The root op of a strict-profile project (docs/security.md): its profile, name and admins.

    Not a reference variant: only strict projects carry it (Rust nodes never join them), and a
    reference log never does, so the reference's bytes are unchanged (``ecac.core.profile``).
    """

    profile: str
    project: str
    admins: tuple[Bytes32, ...]
    NAME: ClassVar[str] = "Genesis"


@variant
@dataclass(frozen=True, slots=True)
class AdminAppoint(Serde):
    """Strict profile: an admin makes ``admin_pk`` an admin too (counts only when its author is one)."""

    admin_pk: Bytes32
    NAME: ClassVar[str] = "AdminAppoint"


@serde
@dataclass(frozen=True, slots=True)
class SealedKey(Serde):
    """One reader's copy of a sealed tag key: the reader's Ed25519 public key and a libsodium
    sealed box (X25519 from that key) holding the 32-byte tag key (``ecac.core.enc.seal_key``)."""

    reader_pk: Bytes32
    sealed: ByteVec


@variant
@dataclass(frozen=True, slots=True)
class SealedKeyRotate(Serde):
    """Strict profile: the next key of ``tag``, sealed to each live reader (``boxes`` sorted by
    ``reader_pk``), never in clear. Not a reference variant: only strict projects carry it."""

    tag: str
    new_version: U32Int
    boxes: tuple[SealedKey, ...]
    NAME: ClassVar[str] = "SealedKeyRotate"


@variant(other=True)
@dataclass(frozen=True, slots=True)
class Reserved(Serde):
    """The unit variant ``_Reserved`` (the bare text string); unknown unit variants also decode to it."""

    NAME: ClassVar[str] = "_Reserved"


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
    | Genesis
    | AdminAppoint
    | SealedKeyRotate
    | Reserved
)

#: the payload enum's codec (``{Name: {fields}}``, or ``"_Reserved"``)
PAYLOAD: TypeCodec[Payload] = TypeCodec(Payload, "payload")

#: payload kinds whose content decides policy regardless of their position (core §8.4)
RETROACTIVE_KINDS = frozenset({"Credential", "IssuerKey", "IssuerKeyRevoke", "StatusListChunk"})
#: kinds that switch the write gate on (core §8.2)
POLICY_SWITCH_KINDS = frozenset({"Grant", "Revoke"})


# --------------------------------------------------------------------------- the op's CBOR layout (core §3.2)


@serde
@dataclass(frozen=True, slots=True)
class OpHeader(Serde):
    """What the op id hashes and the author signs; a missing ``hlc`` reads as ``{0, 0, 0}`` (core §3.1)."""

    parents: tuple[OpId, ...]
    hlc: Annotated[Hlc, Default]
    author_pk: OpId
    payload: Payload


@serde
@dataclass(frozen=True, slots=True)
class SignedOp(Serde):
    """An op as serde writes it; ``Op`` holds the same fields flat, with these bytes."""

    header: OpHeader
    sig: ByteVec
    op_id: OpId


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

    def header(self) -> OpHeader:
        return OpHeader(self.parents, self.hlc, self.author_pk, self.payload)

    def header_obj(self) -> dict[str, Any]:
        return header_obj(self.parents, self.hlc, self.author_pk, self.payload)

    def header_bytes(self) -> bytes:
        """The header re-encoded from the typed fields."""
        return self.header().encode()

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


#: ``Op(...)`` without the dataclass ``__init__`` (see ``slot_constructor``)
build_op: Callable[[tuple[bytes, ...], Hlc, bytes, Payload, bytes, bytes, bytes], Op] = slot_constructor(Op)

#: the C module builds these classes (store-row decoding, DAG chain extension; docs/decisions.md D39);
#: it interns Data keys through a table of its own per call
_native.configure_ops(Op, Hlc, Data)


def op_of(signed: SignedOp, cbor: bytes) -> Op:
    """The flat ``Op`` of a decoded ``SignedOp`` whose canonical encoding is ``cbor``."""
    h = signed.header
    return build_op(h.parents, h.hlc, h.author_pk, h.payload, signed.sig, signed.op_id, cbor)


def header_obj(parents: Sequence[bytes], hlc: Hlc, author_pk: bytes, payload: Payload) -> dict[str, Any]:
    """The header as a cbor2-ready object (tests and tools build variants of ops from it)."""
    return OpHeader(tuple(parents), hlc, author_pk, payload).to_obj()  # type: ignore[no-any-return]


def op_id_of(header_cbor: bytes) -> bytes:
    return blake3.blake3(OP_DOMAIN + header_cbor).digest()


# An op's bytes are ``SignedOp``'s encoding: ``a3 "header" <header> "sig" <sig items> "op_id" <id items>``.
# Creation and the decoders assemble them around the header encoded once, and the store cuts the
# header back out (what the op id hashes) instead of encoding it again.
assert SignedOp.FIELDS == ("header", "sig", "op_id")
_OP_PREFIX = encode_head(5, 3) + encode_text("header")
_SIG_KEY = encode_text("sig")
_OP_ID_KEY = encode_text("op_id")


def _op_tail(sig: bytes, op_id: bytes) -> bytes:
    """The bytes after the header in an op's encoding: ``"sig": […], "op_id": […]``."""
    return _SIG_KEY + encode_byte_array(sig) + _OP_ID_KEY + encode_byte_array(op_id)


def op_cbor(header_cbor: bytes, sig: bytes, op_id: bytes) -> bytes:
    """``SignedOp(header, sig, op_id).encode()`` assembled around the already-encoded header."""
    return _OP_PREFIX + header_cbor + _op_tail(sig, op_id)


def header_cbor_in(cbor: bytes) -> bytes:
    """The header bytes inside the canonical bytes of an op (the ``sig`` key after it is the last one)."""
    return cbor[len(_OP_PREFIX) : cbor.rfind(_SIG_KEY)]


def header_cbor_of(op: Op) -> bytes:
    """The header bytes inside ``op.cbor``, cut out rather than re-encoded (what the op_id hashes).

    Every constructor of ``Op`` (``make_op``, the decoders) sets ``cbor`` to the canonical
    encoding of its fields, so the slice equals ``op.header_bytes()``; an op built by hand
    without ``cbor`` (or changed by ``dataclasses.replace``) is encoded instead.
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
    header_cbor = OpHeader(ps, hlc, author, payload).encode()
    op_id = op_id_of(header_cbor)
    sig = sk.sign(op_id).signature
    return Op(ps, hlc, author, payload, sig, op_id, op_cbor(header_cbor, sig, op_id))
