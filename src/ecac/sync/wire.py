"""Wire messages of node-to-node sync, the response framing and the gossip identifiers.

Byte-exact with store §2.1: ``Announce``, ``SignedAnnounce``, ``FetchMissing`` and
``RpcFrame`` (``OpBytes`` | ``End``) follow the serde_cbor conventions (struct maps in
declaration order, byte fields as arrays of ints). The M6 additions (store §2.3.4) are
``SyncRequest`` and the ``More`` trailer; docs/protocol.md documents every message.

Every decoder is strict: decode one CBOR item, build the typed value, re-encode it and
require identical bytes. That single check rejects trailing bytes, non-minimal ints,
indefinite lengths, duplicate or unknown keys and every other malleability. Shape errors
raise ``DecodeError``; well-formed input that breaks a protocol rule or limit raises
``ProtocolError``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import blake3
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey

from ecac.core.codec import (
    b2l,
    dumps,
    encode_byte_array,
    loads,
    read_head,
    struct_fields,
    to_bytes,
    to_text,
    to_u32,
    to_u64,
    uint8_items,
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

_U32 = 2**32 - 1


def _ids_obj(ids: Sequence[bytes]) -> list[list[int]]:
    return [b2l(i) for i in ids]


def _ids(obj: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(obj, list):
        raise DecodeError(f"{what}: expected an array of op ids, got {type(obj).__name__}")
    return tuple(to_bytes(x, f"{what}[]", ID_LEN) for x in obj)


def _check_ids(ids: Sequence[bytes], what: str) -> None:
    for i in ids:
        if not isinstance(i, bytes) or len(i) != ID_LEN:
            raise ValueError(f"{what}: every id must be {ID_LEN} bytes")


def _strict(data: bytes, what: str) -> Any:
    """Decode one CBOR item; callers re-encode and compare."""
    return loads(bytes(data), what)


def _require_canonical(encoded: bytes, data: bytes, what: str) -> None:
    if encoded != bytes(data):
        raise DecodeError(f"{what}: non-canonical encoding (re-encoding differs from the received bytes)")


# --------------------------------------------------------------------------- announces


@dataclass(frozen=True, slots=True)
class Announce:
    """What a node advertises: identity, complete-op count, newest heads, recent bloom (store §2.1)."""

    node_id: bytes
    topo_watermark: int
    head_ids: tuple[bytes, ...]
    bloom16: bytes

    def __post_init__(self) -> None:
        if len(self.node_id) != ID_LEN:
            raise ValueError("Announce.node_id must be 32 bytes")
        if len(self.bloom16) != 2:
            raise ValueError("Announce.bloom16 must be 2 bytes")
        if not 0 <= self.topo_watermark < 2**64:
            raise ValueError("Announce.topo_watermark must be a u64")
        _check_ids(self.head_ids, "Announce.head_ids")

    def to_obj(self) -> dict[str, Any]:
        return {
            "node_id": b2l(self.node_id),
            "topo_watermark": self.topo_watermark,
            "head_ids": _ids_obj(self.head_ids),
            "bloom16": b2l(self.bloom16),
        }

    def encode(self) -> bytes:
        return dumps(self.to_obj())

    def digest(self) -> bytes:
        """The signed digest: plain BLAKE3 of the Announce CBOR (no domain string)."""
        return blake3.blake3(self.encode()).digest()

    @staticmethod
    def from_obj(obj: Any) -> Announce:
        f = struct_fields(obj, ("node_id", "topo_watermark", "head_ids", "bloom16"), "Announce")
        return Announce(
            to_bytes(f[0], "Announce.node_id", ID_LEN),
            to_u64(f[1], "Announce.topo_watermark"),
            _ids(f[2], "Announce.head_ids"),
            to_bytes(f[3], "Announce.bloom16", 2),
        )

    @staticmethod
    def decode(data: bytes) -> Announce:
        a = Announce.from_obj(_strict(data, "Announce"))
        _require_canonical(a.encode(), data, "Announce")
        return a


def node_id_of(vk: bytes) -> bytes:
    """NodeId = BLAKE3(Ed25519 verifying key bytes)."""
    return blake3.blake3(bytes(vk)).digest()


@dataclass(frozen=True, slots=True)
class SignedAnnounce:
    """The gossip payload: an Announce, its Ed25519 signature over the digest, and the key.

    ``decode`` only checks the shape; ``validate_signed_announce`` applies every rule of
    store §2.3.3 and is what receivers must use.
    """

    announce: Announce
    sig: bytes
    vk: bytes

    @staticmethod
    def sign(sk: SigningKey, announce: Announce) -> SignedAnnounce:
        """Deterministic: the same announce and key always give the same bytes."""
        return SignedAnnounce(announce, sk.sign(announce.digest()).signature, bytes(sk.verify_key))

    def to_obj(self) -> dict[str, Any]:
        return {"announce": self.announce.to_obj(), "sig": b2l(self.sig), "vk": b2l(self.vk)}

    def encode(self) -> bytes:
        return dumps(self.to_obj())

    def message_id(self) -> bytes:
        return gossip_message_id(self.encode())

    @staticmethod
    def decode(data: bytes) -> SignedAnnounce:
        a, s, v = struct_fields(_strict(data, "SignedAnnounce"), ("announce", "sig", "vk"), "SignedAnnounce")
        sa = SignedAnnounce(
            Announce.from_obj(a), to_bytes(s, "SignedAnnounce.sig"), to_bytes(v, "SignedAnnounce.vk")
        )
        _require_canonical(sa.encode(), data, "SignedAnnounce")
        return sa


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


@dataclass(frozen=True, slots=True)
class FetchMissing:
    """The reference's one-shot request (``/ecac/fetch/1``, compatibility endpoint only)."""

    want: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ids(self.want, "FetchMissing.want")

    def encode(self) -> bytes:
        return dumps({"want": _ids_obj(self.want)})

    @staticmethod
    def decode(data: bytes) -> FetchMissing:
        (w,) = struct_fields(_strict(data, "FetchMissing"), ("want",), "FetchMissing")
        fm = FetchMissing(_ids(w, "FetchMissing.want"))
        _require_canonical(fm.encode(), data, "FetchMissing")
        if len(fm.want) > MAX_WANT:
            raise ProtocolError(f"FetchMissing: {len(fm.want)} wanted ids exceeds the limit of {MAX_WANT}")
        return fm


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """The one request frame of ``/ecac/sync/1`` (store §2.3.4).

    ``want``: ids wanted (empty = everything the server has that the requester lacks).
    ``boundary``: ids the requester holds (its heads plus exponentially spaced topo
    samples). ``max_ops``: most ops to send (0 = the server's cap).
    """

    want: tuple[bytes, ...] = ()
    boundary: tuple[bytes, ...] = ()
    max_ops: int = 0

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

    def to_obj(self) -> dict[str, Any]:
        return {"want": _ids_obj(self.want), "boundary": _ids_obj(self.boundary), "max_ops": self.max_ops}

    def encode(self) -> bytes:
        return dumps(self.to_obj())

    def frame(self) -> bytes:
        """The request as one length-prefixed frame, ready to write."""
        return encode_frame(self.encode(), MAX_REQUEST_FRAME)

    @staticmethod
    def decode(data: bytes) -> SyncRequest:
        if len(data) > MAX_REQUEST_FRAME:
            raise ProtocolError(
                f"SyncRequest: {len(data)}-byte frame exceeds the {MAX_REQUEST_FRAME}-byte limit"
            )
        obj = _strict(data, "SyncRequest")
        w, b, m = struct_fields(obj, ("want", "boundary", "max_ops"), "SyncRequest")
        want = _ids(w, "SyncRequest.want")
        boundary = _ids(b, "SyncRequest.boundary")
        req = SyncRequest(want, boundary, to_u32(m, "SyncRequest.max_ops"))
        _require_canonical(req.encode(), data, "SyncRequest")
        return req


# --------------------------------------------------------------------------- response frames


@dataclass(frozen=True, slots=True)
class OpBytes:
    """``RpcFrame::OpBytes``: one op's exact stored bytes."""

    data: bytes

    def encode(self) -> bytes:
        """``{"OpBytes": [uint…]}``: the fixed prefix, the array head, then each byte as a CBOR uint.

        Byte-identical to ``dumps({"OpBytes": b2l(data)})`` (tested), without a Python list of ints.
        """
        data = bytes(self.data)
        return _OPBYTES_PREFIX + encode_byte_array(data)


@dataclass(frozen=True, slots=True)
class End:
    """``RpcFrame::End``: the whole response set was sent."""

    NAME: ClassVar[str] = "End"

    def encode(self) -> bytes:
        return _END_CBOR


@dataclass(frozen=True, slots=True)
class More:
    """``RpcFrame::More`` (added in M6): the response was cut by the op cap; ask again."""

    NAME: ClassVar[str] = "More"

    def encode(self) -> bytes:
        return _MORE_CBOR


RpcFrame = OpBytes | End | More
Trailer = End | More
END = End()
MORE = More()
_END_CBOR = dumps("End")
_MORE_CBOR = dumps("More")
_OPBYTES_PREFIX = dumps({"OpBytes": []})[:-1]  # a1 67 "OpBytes"

_SMALL = bytes(range(24))


def _fast_op_bytes(b: bytes) -> bytes | None:
    """The op bytes of a canonical ``OpBytes`` frame body, or None for anything else.

    Exact: bytes only when ``b`` is the canonical encoding of ``OpBytes(result)`` (prefix,
    shortest array head, every item a shortest-form uint, as many items as the head
    says), checked with the codec's C-level ``uint8_items``. None sends the caller to the
    general decoder, which then names the problem.
    """
    if not b.startswith(_OPBYTES_PREFIX):
        return None
    got = read_head(b, len(_OPBYTES_PREFIX), 4)
    if got is None:
        return None
    n, start = got
    out = uint8_items(b[start:])
    return out if out is not None and len(out) == n else None


def decode_rpc_frame(data: bytes) -> RpcFrame:
    """Strictly decode one RpcFrame body (without the length prefix)."""
    b = bytes(data)
    if b == _END_CBOR:
        return END
    if b == _MORE_CBOR:
        return MORE
    raw = _fast_op_bytes(b)
    if raw is not None:
        return OpBytes(raw)
    obj = _strict(b, "RpcFrame")
    if b.startswith(_OPBYTES_PREFIX) and type(obj) is dict and type(obj.get("OpBytes")) is list:
        # fast path (every op of a response): C-level conversion, then re-encode equality
        try:
            raw = bytes(obj["OpBytes"])
        except (TypeError, ValueError):
            raise DecodeError("RpcFrame.OpBytes: array element is not a byte") from None
        frame = OpBytes(raw)
        _require_canonical(frame.encode(), b, "RpcFrame")
        return frame
    if isinstance(obj, str):
        raise DecodeError(f"RpcFrame: unknown unit variant {obj!r}")
    if not isinstance(obj, dict) or len(obj) != 1:
        raise DecodeError("RpcFrame: expected OpBytes, End or More")
    ((name, body),) = obj.items()
    if to_text(name, "RpcFrame variant") != "OpBytes":
        raise DecodeError(f"RpcFrame: unknown variant {name!r}")
    frame = OpBytes(to_bytes(body, "RpcFrame.OpBytes"))
    _require_canonical(frame.encode(), b, "RpcFrame")
    return frame


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
