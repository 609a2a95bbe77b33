"""Keys and hex: the one place that turns seeds, hex strings and key bytes into each other."""

from __future__ import annotations

import blake3
from nacl.signing import SigningKey

from ecac.core.errors import EcacError


def key_seed(seed: int, label: bytes) -> bytes:
    """Deterministic Ed25519 seed ``blake3(u64_le(seed) || 8 zero bytes || label)`` (core §1)."""
    return blake3.blake3(seed.to_bytes(8, "little") + bytes(8) + label).digest()


def key_pair(seed: int, label: bytes) -> SigningKey:
    """Deterministic test/benchmark key; the same (seed, label) gives the same key everywhere."""
    return SigningKey(key_seed(seed, label))


def public_key(sk: SigningKey) -> bytes:
    """The 32 raw public-key bytes of a signing key."""
    return bytes(sk.verify_key)


def to_hex(data: bytes) -> str:
    """Lowercase hex, no prefix (every hex the project prints)."""
    return data.hex()


def parse_hex(text: str, length: int | None = None, what: str = "value") -> bytes:
    """Parse hex (either case, surrounding whitespace trimmed), optionally of exact byte length."""
    t = text.strip()
    if length is not None and len(t) != 2 * length:
        raise EcacError(f"expected {2 * length} hex chars for {what}")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise EcacError(f"bad hex for {what}") from None


def signing_key_from_hex(text: str) -> SigningKey:
    """An Ed25519 signing key from a 64-hex-char seed."""
    return SigningKey(parse_hex(text, 32, "ed25519 secret key"))
