"""Wire messages of node-to-node sync, the response framing and the gossip identifiers.

Byte-exact with store §2.1: ``Announce``, ``SignedAnnounce``, ``FetchMissing`` and
``RpcFrame`` (``OpBytes`` | ``End``) follow the serde_cbor conventions (struct maps in
declaration order, byte fields as arrays of ints). The M6 additions (store §2.3.4) are
``SyncRequest`` and the ``More`` trailer; docs/protocol.md documents every message.

The messages are ``@serde`` structs (``ecac.core.codec``), so every decoder is strict: only
the canonical encoding of the typed value is accepted (the codec's canonical parser, else
cbor2 plus re-encode comparison naming the first differing field). That rejects trailing
bytes, non-minimal ints, indefinite lengths, duplicate or unknown keys and every other
malleability. Shape errors raise ``DecodeError``; well-formed input that breaks a protocol
rule or limit raises ``ProtocolError``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, TypeVar

import blake3
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey

from ecac.core.codec import (
    U32_MAX,
    ByteArray,
    Bytes32,
    ByteVec,
    Serde,
    TypeCodec,
    U32Int,
    U64Int,
    serde,
    variant,
)
from ecac.core.errors import DecodeError, EcacError, ProtocolError
from ecac.core.sig import sig_ok

# --------------------------------------------------------------------------- constants

#: protocol id of the M6 fetch protocol (store §2.3.4); the reference's ``/ecac/fetch/1`` is not reused
SYNC_PROTOCOL_ID = "/ecac/sync/1"
#: protocol id of the reference's one-shot fetch (optional compatibility endpoint)
FETCH_PROTOCOL_ID = "/ecac/fetch/1"

ID_LEN = 32
SIG_LEN = 64
MAX_ANNOUNCE_BYTES = 65_536
MAX_ANNOUNCE_HEADS = 64
ANNOUNCE_HEADS = 16
BLOOM_WINDOW = 256

MAX_WANT = 256
MAX_BOUNDARY = 256
MAX_BOUNDARY_HEADS = 128
MAX_REQUEST_FRAME = 64 * 1024
MAX_FRAME = 8 * 1024 * 1024
MIN_MAX_FRAME = 1024 * 1024
FRAME_HEADER = 4

_U32 = U32_MAX


def _check_ids(ids: Sequence[bytes], what: str) -> None:
    for i in ids:
        if not isinstance(i, bytes) or len(i) != ID_LEN:
            raise ValueError(f"{what}: every id must be {ID_LEN} bytes")


# --------------------------------------------------------------------------- announces


@serde
@dataclass(frozen=True, slots=True)
class Announce(Serde):
    """What a node advertises: identity, complete-op count, newest heads, recent bloom (store §2.1)."""

    node_id: Bytes32
    topo_watermark: U64Int
    head_ids: tuple[Bytes32, ...]
    bloom16: Annotated[bytes, ByteArray(2)]

    def __post_init__(self) -> None:
        if len(self.node_id) != ID_LEN:
            raise ValueError("Announce.node_id must be 32 bytes")
        if len(self.bloom16) != 2:
            raise ValueError("Announce.bloom16 must be 2 bytes")
        if not 0 <= self.topo_watermark < 2**64:
            raise ValueError("Announce.topo_watermark must be a u64")
        _check_ids(self.head_ids, "Announce.head_ids")

    def digest(self) -> bytes:
        """The signed digest: plain BLAKE3 of the Announce CBOR (no domain string)."""
        return blake3.blake3(self.encode()).digest()


def node_id_of(vk: bytes) -> bytes:
    """NodeId = BLAKE3(Ed25519 verifying key bytes)."""
    return blake3.blake3(bytes(vk)).digest()


@serde
@dataclass(frozen=True, slots=True)
class SignedAnnounce(Serde):
    """The gossip payload: an Announce, its Ed25519 signature over the digest, and the key.

    ``decode`` only checks the shape; ``validate_signed_announce`` applies every rule of
    store §2.3.3 and is what receivers must use.
    """

    announce: Announce
    sig: ByteVec
    vk: ByteVec

    @staticmethod
    def sign(sk: SigningKey, announce: Announce) -> SignedAnnounce:
        """Deterministic: the same announce and key always give the same bytes."""
        return SignedAnnounce(announce, sk.sign(announce.digest()).signature, bytes(sk.verify_key))

    def message_id(self) -> bytes:
        return gossip_message_id(self.encode())


def validate_signed_announce(
    data: bytes, *, expected_vk: bytes | None = None, max_bytes: int = MAX_ANNOUNCE_BYTES
) -> SignedAnnounce:
    """The topic validator of store §2.3.3; returns the announce or raises ``ProtocolError``.

    Checks, in order: size, strict decode plus re-encode equality, 64-byte sig, ``vk`` a
    valid Ed25519 point, ``node_id == BLAKE3(vk)``, at most 64 heads, signature.
    ``expected_vk`` (the gossip originator's public key, when the I/O layer knows it) must
    equal ``vk``. Only announces that pass may be delivered or forwarded.
    """
    if len(data) > max_bytes:
        raise ProtocolError(f"announce rejected: {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        sa = SignedAnnounce.decode(data)
    except EcacError as e:
        raise ProtocolError(f"announce rejected: {e}") from None
    if len(sa.sig) != SIG_LEN:
        raise ProtocolError(f"announce rejected: sig must be {SIG_LEN} bytes, got {len(sa.sig)} (unsigned?)")
    if len(sa.vk) != 32 or not crypto_core_ed25519_is_valid_point(sa.vk):
        raise ProtocolError("announce rejected: vk is not a valid Ed25519 public key")
    if sa.announce.node_id != node_id_of(sa.vk):
        raise ProtocolError("announce rejected: node_id is not BLAKE3(vk)")
    if len(sa.announce.head_ids) > MAX_ANNOUNCE_HEADS:
        raise ProtocolError(
            f"announce rejected: {len(sa.announce.head_ids)} head_ids "
            f"exceeds the limit of {MAX_ANNOUNCE_HEADS}"
        )
    if expected_vk is not None and bytes(expected_vk) != sa.vk:
        raise ProtocolError("announce rejected: vk is not the gossip originator's key")
    if not sig_ok(sa.vk, sa.sig, sa.announce.digest()):
        raise ProtocolError("announce rejected: bad signature")
    return sa


def announce_topic(project_id: str) -> str:
    """The gossip topic ``ecac/v1/<project_id>/announce`` (used as is; its hash is the string)."""
    if not project_id or "/" in project_id:
        raise ValueError(f"project id {project_id!r} must be non-empty and contain no '/'")
    return f"ecac/v1/{project_id}/announce"


def gossip_message_id(data: bytes) -> bytes:
    """Gossip message id = BLAKE3(message data): byte-identical announces deduplicate."""
    return blake3.blake3(bytes(data)).digest()


# --------------------------------------------------------------------------- requests


@serde
@dataclass(frozen=True, slots=True)
class FetchMissing(Serde):
    """The reference's one-shot request (``/ecac/fetch/1``, compatibility endpoint only)."""

    want: tuple[Bytes32, ...]

    def __post_init__(self) -> None:
        _check_ids(self.want, "FetchMissing.want")

    @classmethod
    def decode(cls, data: bytes) -> FetchMissing:
        """Strict decode, then the request limit (a well-formed request over it is a ``ProtocolError``)."""
        fm = cls.__serde__.decode(data)
        if len(fm.want) > MAX_WANT:
            raise ProtocolError(f"FetchMissing: {len(fm.want)} wanted ids exceeds the limit of {MAX_WANT}")
        return fm  # type: ignore[no-any-return]


@serde
@dataclass(frozen=True, slots=True)
class SyncRequest(Serde):
    """The one request frame of ``/ecac/sync/1`` (store §2.3.4).

    ``want``: ids wanted (empty = everything the server has that the requester lacks).
    ``boundary``: ids the requester holds (its heads plus exponentially spaced topo
    samples). ``max_ops``: most ops to send (0 = the server's cap). The limits are checked
    on construction, so a decoded request over them is a ``ProtocolError``.
    """

    want: tuple[Bytes32, ...] = ()
    boundary: tuple[Bytes32, ...] = ()
    max_ops: U32Int = 0

    def __post_init__(self) -> None:
        _check_ids(self.want, "SyncRequest.want")
        _check_ids(self.boundary, "SyncRequest.boundary")
        if len(self.want) > MAX_WANT:
            raise ProtocolError(f"SyncRequest: {len(self.want)} wanted ids exceeds the limit of {MAX_WANT}")
        if len(self.boundary) > MAX_BOUNDARY:
            raise ProtocolError(
                f"SyncRequest: {len(self.boundary)} boundary ids exceeds the limit of {MAX_BOUNDARY}"
            )
        if type(self.max_ops) is not int or not 0 <= self.max_ops <= _U32:
            raise ProtocolError("SyncRequest: max_ops must be a u32")

    def frame(self) -> bytes:
        """The request as one length-prefixed frame, ready to write."""
        return encode_frame(self.encode(), MAX_REQUEST_FRAME)

    @classmethod
    def decode(cls, data: bytes) -> SyncRequest:
        """Strict decode of a request frame body, refused before decoding when over the frame limit."""
        if len(data) > MAX_REQUEST_FRAME:
            raise ProtocolError(
                f"SyncRequest: {len(data)}-byte frame exceeds the {MAX_REQUEST_FRAME}-byte limit"
            )
        return cls.__serde__.decode(data)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- response frames


@variant(newtype=True)
@dataclass(frozen=True, slots=True)
class OpBytes(Serde):
    """``RpcFrame::OpBytes``: one op's exact stored bytes, ``{"OpBytes": [uint…]}``."""

    data: ByteVec
    NAME: ClassVar[str] = "OpBytes"


@variant
@dataclass(frozen=True, slots=True)
class End(Serde):
    """``RpcFrame::End``: the whole response set was sent."""

    NAME: ClassVar[str] = "End"


@variant
@dataclass(frozen=True, slots=True)
class More(Serde):
    """``RpcFrame::More`` (added in M6): the response was cut by the op cap; ask again."""

    NAME: ClassVar[str] = "More"


RpcFrame = OpBytes | End | More
Trailer = End | More
END = End()
MORE = More()
_RPC_FRAME: TypeCodec[RpcFrame] = TypeCodec(RpcFrame, "RpcFrame")

_SMALL = bytes(range(24))


def decode_rpc_frame(data: bytes) -> RpcFrame:
    """Strictly decode one RpcFrame body (without the length prefix)."""
    return _RPC_FRAME.decode(data)


def op_frame_size(op_cbor_len_or_bytes: int | bytes) -> int:
    """Length on the wire (prefix included) of the OpBytes frame carrying an op of that size.

    Each byte costs 1 (values < 24) or 2 CBOR bytes; local write paths use this to refuse
    ops that could not propagate under ``MAX_FRAME`` (store §2.3.9).
    """
    if isinstance(op_cbor_len_or_bytes, int):
        n = op_cbor_len_or_bytes
        body = 1 + 8 + _array_head_len(n) + 2 * n  # upper bound when the bytes are unknown
    else:
        data = bytes(op_cbor_len_or_bytes)
        n = len(data)
        body = 1 + 8 + _array_head_len(n) + n + len(data.translate(None, _SMALL))
    return FRAME_HEADER + body


def _array_head_len(n: int) -> int:
    if n < 24:
        return 1
    if n < 256:
        return 2
    if n < 65536:
        return 3
    return 5


# --------------------------------------------------------------------------- framing


def check_max_frame(max_frame: int) -> int:
    """Validate a configured response ``MAX_FRAME`` (at least 1 MiB, at most u32)."""
    if type(max_frame) is not int or not MIN_MAX_FRAME <= max_frame <= _U32:
        raise ValueError(f"max frame must be an integer between {MIN_MAX_FRAME} and {_U32} bytes")
    return max_frame


def encode_frame(body: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """``u32 big-endian length ‖ body``; refuses bodies the receiver would reject."""
    n = len(body)
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the {max_frame}-byte limit")
    return n.to_bytes(4, "big") + bytes(body)


class FrameReader:
    """Incremental parser of length-prefixed frames from a byte stream.

    ``feed`` returns the complete frame bodies found so far and keeps any partial frame;
    a length above ``max_frame`` raises ``ProtocolError`` as soon as the prefix is read
    (nothing of it is buffered). ``eof`` raises when the stream ended inside a frame.
    """

    __slots__ = ("_buf", "_closed", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._closed:
            raise ProtocolError("frame stream: data after a framing error or EOF")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= FRAME_HEADER:
            n = int.from_bytes(buf[pos : pos + FRAME_HEADER], "big")
            if n > self.max_frame:
                self._closed = True
                self._buf = bytearray()
                raise ProtocolError(f"frame of {n} bytes exceeds the {self.max_frame}-byte limit")
            stop = pos + FRAME_HEADER + n
            if stop > end:
                break
            out.append(bytes(buf[pos + FRAME_HEADER : stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return out

    def eof(self) -> None:
        """The stream ended: fine between frames, a ``ProtocolError`` inside one."""
        self._closed = True
        if self._buf:
            n = len(self._buf)
            self._buf = bytearray()
            raise ProtocolError(f"frame stream truncated: EOF inside a frame ({n} bytes of it received)")


_M = TypeVar("_M", bound=Serde)


def decode_message(cls: type[_M], data: bytes, limit: int, what: str) -> _M:
    """One small wire message of at most ``limit`` bytes, strictly decoded as ``cls``; the errors
    name ``what``: ``ProtocolError`` for the size or a rule of the codec, ``DecodeError`` for bytes
    that are not exactly the canonical CBOR of a ``cls``."""
    if len(data) > limit:
        raise ProtocolError(f"{what}: {len(data)} bytes exceeds the {limit}-byte limit")
    try:
        return cls.decode(data)
    except DecodeError as e:
        raise DecodeError(f"{what}: not a canonical {cls.__name__} ({e})") from None
    except EcacError as e:
        raise ProtocolError(f"{what}: {e}") from None
