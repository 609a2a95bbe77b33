"""The encryption envelope (core §15): EncV1, its AAD, XChaCha20-Poly1305, keyrotate's key
derivation, and the tag keys that KeyRotate ops publish in the log.

Pure: the nonce is a parameter, so the same inputs always give the same bytes; only the CLI
adapter draws random nonces. The formats are the reference's, weaknesses included (an AAD
without separators or ``node_id``; keys derived from public inputs and published by KeyRotate).

Because every KeyRotate carries its key in clear, the log itself is the key source of every
replica (``LogKeys``): any node holding the op can decrypt, and the next key version is counted
from the log, so a rotation on a second node continues the sequence instead of minting a
different "version 1". A store's keyring is only a cache of keys that are also in the log.

Strict profile (docs/security.md, "Sealed read keys"): a ``SealedKeyRotate`` carries the key only
inside one libsodium sealed box per reader (``seal_key``/``open_sealed``), to the X25519 key
derived from the reader's Ed25519 key. ``seal_key`` takes the ephemeral secret as a parameter
(libsodium's ``crypto_box_seal`` draws it itself), so this module stays pure; the CLI draws it.
That randomness is op content the author chooses, like a nonce: it decides no state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated

import blake3
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_box,
    crypto_box_seal_open,
    crypto_generichash_blake2b_salt_personal,
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from ecac.core.codec import ByteArray, ByteVec, Serde, U32Int, serde
from ecac.core.errors import DecodeError, EcacError
from ecac.core.hlc import U32_MAX, Hlc
from ecac.core.op import KeyRotate, Op

KEY_LEN = 32
NONCE_LEN = 24
TAG_LEN = 16
AAD_DOMAIN = b"ECAC_AAD"
#: the only tag the CLI encrypts under (tags_for gives it to ``(o, x)`` only)
CONFIDENTIAL = "confidential"


@serde(lenient=True)
@dataclass(frozen=True, slots=True)
class EncV1(Serde):
    """An encrypted MV value: which key (tag, version), the nonce, the detached tag, the ciphertext.

    Lenient (docs/decisions.md D48): it decodes from every form serde accepts (a map by field
    name with extra keys ignored, an integer-keyed map, a 5-element array), each field of its type.
    """

    tag: str
    key_version: U32Int
    nonce: Annotated[bytes, ByteArray(NONCE_LEN)]
    aead_tag: Annotated[bytes, ByteArray(TAG_LEN)]
    ct: ByteVec

    def to_cbor(self) -> bytes:
        """The stored MV value: the CBOR map in the field order of core §15."""
        return self.encode()


def decode_enc(value: bytes) -> EncV1:
    """Decode an MV value as EncV1 (DecodeError when it is not one)."""
    return EncV1.decode(value)


def try_decode_enc(value: bytes) -> EncV1 | None:
    """The detection rule of core §15: a value is encrypted iff it decodes as EncV1."""
    try:
        return decode_enc(value)
    except DecodeError:
        return None


def aad(author_pk: bytes, hlc: Hlc, parents: Sequence[bytes], obj: str, field: str) -> bytes:
    """``blake3("ECAC_AAD" ‖ author ‖ u64be(phys) ‖ u64be(logical) ‖ parents… ‖ obj ‖ field)``.

    No separators (``("ab","c")`` and ``("a","bc")`` collide) and no node_id, as the reference;
    ``parents`` must be in header order (sorted), which is what a reader sees.
    """
    h = blake3.blake3(AAD_DOMAIN)
    h.update(bytes(author_pk))
    h.update(hlc.physical_ms.to_bytes(8, "big"))
    h.update(hlc.logical.to_bytes(8, "big"))
    for p in parents:
        h.update(bytes(p))
    h.update(obj.encode("utf-8"))
    h.update(field.encode("utf-8"))
    return h.digest()


def _check_len(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise EcacError(f"{what} must be {n} bytes, got {len(data)}")


def encrypt(
    key: bytes, nonce: bytes, plaintext: bytes, aad_bytes: bytes, tag: str, key_version: int
) -> EncV1:
    """XChaCha20-Poly1305 with a detached tag (libsodium returns ``ct ‖ tag``)."""
    _check_len(key, KEY_LEN, "key")
    _check_len(nonce, NONCE_LEN, "nonce")
    out = crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), bytes(aad_bytes), nonce, key)
    return EncV1(tag, key_version, bytes(nonce), out[-TAG_LEN:], out[:-TAG_LEN])


def decrypt(key: bytes, enc: EncV1, aad_bytes: bytes) -> bytes:
    """The plaintext, or EcacError when the key, AAD, nonce, tag or ciphertext do not match."""
    _check_len(key, KEY_LEN, "key")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            enc.ct + enc.aead_tag, bytes(aad_bytes), enc.nonce, key
        )
    except CryptoError:
        raise EcacError(f"decryption failed for tag={enc.tag!r} key_version={enc.key_version}") from None


def derive_tag_key(db_uuid: bytes, tag: str, version: int) -> bytes:
    """keyrotate's key: ``blake3(db_uuid(16) ‖ tag ‖ u32be(version))`` (public inputs; kept as is)."""
    _check_len(db_uuid, 16, "db_uuid")
    if not 0 <= version <= U32_MAX:
        raise EcacError(f"key_version {version} out of range")
    return blake3.blake3(bytes(db_uuid) + tag.encode("utf-8") + version.to_bytes(4, "big")).digest()


@dataclass(frozen=True, slots=True)
class LogKeys:
    """The tag keys published by the KeyRotate ops of a log: ``(tag, version) -> keys``.

    Several KeyRotate ops can publish the same ``(tag, version)`` (two nodes that rotated
    concurrently, or a bogus op); every distinct 32-byte key is kept, in log order, and a reader
    tries each (AEAD tells which one sealed a value), so no publisher can hide another's key.
    Keys of another length cannot be XChaCha20 keys and are ignored.
    """

    keys: Mapping[tuple[str, int], tuple[bytes, ...]]

    def candidates(self, tag: str, version: int) -> tuple[bytes, ...]:
        """Every key the log publishes for ``(tag, version)``, first published first."""
        return self.keys.get((tag, version), ())

    def max_version(self, tag: str) -> int | None:
        """The highest version of ``tag`` in the log (None when it has no KeyRotate for it)."""
        return max((v for t, v in self.keys if t == tag), default=None)

    def newest(self, tag: str) -> tuple[int, bytes] | None:
        """The highest version of ``tag`` and its first published key (what a writer encrypts under)."""
        v = self.max_version(tag)
        return None if v is None else (v, self.keys[(tag, v)][0])


def log_keys(ops: Iterable[Op]) -> LogKeys:
    """Collect the KeyRotate keys of ``ops`` (one pass; pass them in the total order)."""
    found: dict[tuple[str, int], list[bytes]] = {}
    for op in ops:
        p = op.payload
        if isinstance(p, KeyRotate) and len(p.new_key) == KEY_LEN:
            seen = found.setdefault((p.tag, p.new_version), [])
            key = bytes(p.new_key)
            if key not in seen:
                seen.append(key)
    return LogKeys(MappingProxyType({k: tuple(v) for k, v in found.items()}))


def next_key_version(tag: str, in_log: int | None, in_keyring: int | None) -> int:
    """The version the next rotation of ``tag`` gets: one past the highest seen in the log or the
    local keyring (1 when neither has one); EcacError past u32."""
    cur = max((v for v in (in_log, in_keyring) if v is not None), default=None)
    if cur is not None and cur >= U32_MAX:
        raise EcacError("key_version overflow")
    return 1 if cur is None else cur + 1


# --------------------------------------------------------------------------- sealed keys (strict)

#: a sealed tag key: the ephemeral X25519 public key, then the box (Poly1305 tag + the 32-byte key)
SEALED_LEN = 32 + 16 + KEY_LEN
_BOX_NONCE_LEN = 24


def x25519_public(reader_pk: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key (EcacError when it is not a valid point)."""
    _check_len(reader_pk, 32, "reader_pk")
    try:
        return crypto_sign_ed25519_pk_to_curve25519(bytes(reader_pk))
    except (CryptoError, RuntimeError, ValueError):
        raise EcacError(
            f"reader key {bytes(reader_pk).hex()} is not a valid Ed25519 public key; cannot seal to it"
        ) from None


def x25519_secret(sk: SigningKey) -> bytes:
    """The X25519 secret key of an Ed25519 signing key (libsodium's conversion of ``seed ‖ pk``)."""
    _, sk64 = crypto_sign_seed_keypair(bytes(sk))
    return crypto_sign_ed25519_sk_to_curve25519(sk64)


def seal_key(key: bytes, reader_pk: bytes, ephemeral_sk: bytes) -> bytes:
    """Seal ``key`` to the reader with Ed25519 public key ``reader_pk``: libsodium's sealed box
    (``crypto_box_seal``) with the ephemeral secret given instead of drawn, so the bytes are a
    function of the inputs. ``epk ‖ crypto_box(key, blake2b-24(epk ‖ rpk), rpk, esk)``; any
    ``crypto_box_seal_open`` (``nacl.public.SealedBox``) opens it. A fresh ``ephemeral_sk`` per box
    is the caller's duty (reusing one links the boxes)."""
    _check_len(key, KEY_LEN, "key")
    _check_len(ephemeral_sk, 32, "ephemeral_sk")
    rpk = x25519_public(reader_pk)
    epk = crypto_scalarmult_base(bytes(ephemeral_sk))
    nonce = crypto_generichash_blake2b_salt_personal(epk + rpk, digest_size=_BOX_NONCE_LEN)
    return epk + crypto_box(bytes(key), nonce, rpk, bytes(ephemeral_sk))


def open_sealed(sealed: bytes, reader_sk: SigningKey) -> bytes | None:
    """The 32-byte key inside a sealed box for ``reader_sk``, or None when it is not for this
    reader (or damaged, or holds no 32-byte key)."""
    if len(sealed) != SEALED_LEN:
        return None
    try:
        rpk = crypto_sign_ed25519_pk_to_curve25519(bytes(reader_sk.verify_key))
        key = crypto_box_seal_open(bytes(sealed), rpk, x25519_secret(reader_sk))
    except CryptoError:
        return None
    return key if len(key) == KEY_LEN else None
