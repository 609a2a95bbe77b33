"""The ``/ecac/hello/1`` message: a node's project identity and the subject it speaks for.

Right after a connection is up each side sends one ``Hello`` (docs/protocol.md, "Hello"):
its project's profile and genesis id (None for a reference project), and a subject's Ed25519
public key with that key's signature over a domain-separated binding of the connection's
libp2p identity (the 32-byte Ed25519 key its PeerId inlines), the genesis id and the profile.
So a peer proves which subject it speaks for, a hello cannot be replayed by another peer, and
a node of another project or profile is told apart before any op is exchanged.

Pure: ``make_hello`` signs, ``verify_hello`` decodes strictly and checks the signature for the
connection's peer key, ``identity_mismatch`` compares the announced identity with ours. Shape
errors raise ``DecodeError``, a well-formed hello that breaks a rule raises ``ProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nacl.signing import SigningKey

from ecac.core.codec import Bytes32, ByteVec, Serde, U32Int, serde
from ecac.core.errors import ProtocolError
from ecac.core.sig import sig_ok
from ecac.sync.wire import decode_message

__all__ = [
    "HELLO_DOMAIN",
    "HELLO_PROTOCOL_ID",
    "HELLO_VERSION",
    "MAX_HELLO_FRAME",
    "Hello",
    "Identity",
    "hello_binding",
    "identity_mismatch",
    "make_hello",
    "verify_hello",
]

HELLO_PROTOCOL_ID: Final = "/ecac/hello/1"
HELLO_VERSION: Final = 1
#: the largest hello body accepted (a canonical hello is 149 to 307 bytes)
MAX_HELLO_FRAME: Final = 1024
#: the signed binding starts with this (and a NUL), so the signature means nothing elsewhere
HELLO_DOMAIN: Final = b"ECAC_HELLO_V1"
_PROFILES: Final = ("reference", "strict")


@dataclass(frozen=True, slots=True)
class Identity:
    """A project's identity as nodes compare it: the profile and the genesis id (None: reference)."""

    profile: str
    genesis_id: bytes | None = None

    def __post_init__(self) -> None:
        if self.profile not in _PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}")
        if (self.profile == "strict") != (self.genesis_id is not None):
            raise ValueError("a strict identity has a genesis id, a reference one has none")
        if self.genesis_id is not None and len(self.genesis_id) != 32:
            raise ValueError("a genesis id is 32 bytes")

    @property
    def strict(self) -> bool:
        return self.profile == "strict"

    def describe(self) -> str:
        """In words for log lines: ``strict project 1a2b…`` or ``reference project``."""
        if self.genesis_id is None:
            return "a reference project"
        return f"strict project {self.genesis_id.hex()}"


@serde
@dataclass(frozen=True, slots=True)
class Hello(Serde):
    """``{v, profile, genesis_id, subject_pk, sig}``: see the module docstring."""

    v: U32Int
    profile: str
    genesis_id: Bytes32 | None
    subject_pk: Bytes32
    sig: ByteVec

    @property
    def identity(self) -> Identity:
        return Identity(self.profile, self.genesis_id)


def hello_binding(peer_pk: bytes, profile: str, genesis_id: bytes | None) -> bytes:
    """What the subject key signs: ``"ECAC_HELLO_V1" 0x00 ‖ peer_pk (32) ‖ len(profile) (1) ‖ profile
    ‖ genesis_id (32, absent for reference)``. Each part has a fixed length or a length prefix,
    and the genesis id is last, so no two bindings share bytes."""
    if len(peer_pk) != 32:
        raise ValueError("the peer key is the 32-byte Ed25519 key of the PeerId")
    p = profile.encode("utf-8")
    if len(p) > 255:
        raise ValueError("profile name too long")
    return HELLO_DOMAIN + b"\x00" + bytes(peer_pk) + bytes((len(p),)) + p + (genesis_id or b"")


def make_hello(subject: SigningKey, peer_pk: bytes, identity: Identity) -> Hello:
    """Our hello for a connection whose local PeerId inlines ``peer_pk`` (deterministic)."""
    sig = subject.sign(hello_binding(peer_pk, identity.profile, identity.genesis_id)).signature
    return Hello(HELLO_VERSION, identity.profile, identity.genesis_id, bytes(subject.verify_key), sig)


def verify_hello(data: bytes, peer_pk: bytes) -> Hello:
    """A received hello body, decoded strictly and verified for the connection's peer key.

    Refused (``DecodeError`` / ``ProtocolError``, the message says which rule): more than
    ``MAX_HELLO_FRAME`` bytes, not exactly the canonical CBOR of a ``Hello``, another version, an
    unknown profile or a profile and genesis id that do not go together, and a signature that
    does not verify over the binding of ``peer_pk`` (a hello made for another peer, another
    project or profile, or forged).
    """
    h = decode_message(Hello, data, MAX_HELLO_FRAME, "hello")
    if h.v != HELLO_VERSION:
        raise ProtocolError(f"hello: version {h.v} is not {HELLO_VERSION}")
    try:
        h.identity  # noqa: B018 - checks profile and genesis id together
    except ValueError as e:
        raise ProtocolError(f"hello: {e}") from None
    if len(h.sig) != 64:
        raise ProtocolError(f"hello: sig must be 64 bytes, got {len(h.sig)}")
    if not sig_ok(h.subject_pk, h.sig, hello_binding(peer_pk, h.profile, h.genesis_id)):
        raise ProtocolError(
            "hello: the subject's signature does not verify for this connection's peer id "
            "(made for another peer or project, or forged)"
        )
    return h


def identity_mismatch(ours: Identity, theirs: Identity) -> str | None:
    """Why a peer of ``theirs`` is not of our project (None: same profile and genesis)."""
    if ours == theirs:
        return None
    return f"it is of {theirs.describe()}, this node is of {ours.describe()}"
