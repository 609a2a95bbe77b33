"""libp2p identity from the node seed: key pairs, PeerIds and the Ed25519 keys they inline.

The node's 32-byte Ed25519 seed is at once its libp2p identity (PeerId ``12D3KooW…``, the
identity multihash of the protobuf public key), its Noise static-key signer and its announce
signing key, so the announce ``vk`` can be checked against the gossip originator's PeerId.
Pure functions of their arguments, except :func:`fresh_noise_key` (OS randomness).
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.ed25519 import create_new_key_pair as _ed25519_key_pair
from libp2p.crypto.keys import KeyPair, KeyType, PrivateKey
from libp2p.crypto.x25519 import create_new_key_pair as _x25519_key_pair
from libp2p.peer.id import ID

__all__ = [
    "ed25519_from_id",
    "fresh_noise_key",
    "key_pair",
    "peer_id_from_public_key",
    "peer_id_from_seed",
    "public_key_from_peer_id",
    "public_key_from_seed",
]


def _check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError("an Ed25519 seed must be exactly 32 bytes")
    return bytes(seed)


def key_pair(seed: bytes) -> KeyPair:
    """Derive the libp2p identity key pair; the PeerId depends only on the seed."""
    return _ed25519_key_pair(_check_seed(seed))


def fresh_noise_key() -> PrivateKey:
    """A new X25519 Noise static key; one per host start is normal (Noise signs it with the identity)."""
    return _x25519_key_pair().private_key


def public_key_from_seed(seed: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of ``seed`` (the announce ``vk``)."""
    return key_pair(seed).public_key.to_bytes()


def peer_id_from_seed(seed: bytes) -> str:
    """The base58 PeerId (``12D3KooW…``) a host built from ``seed`` will have."""
    return ID.from_pubkey(key_pair(seed).public_key).to_base58()


def peer_id_from_public_key(public_key: bytes) -> str:
    """The PeerId of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key must be 32 bytes")
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key))).to_base58()


def ed25519_from_id(peer: ID) -> bytes | None:
    """Raw Ed25519 key inlined in an identity-multihash PeerId, or None for other key types."""
    key = peer.extract_public_key()
    if key is None or key.get_type() != KeyType.Ed25519:
        return None
    raw = key.to_bytes()
    return raw if len(raw) == 32 else None


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The 32-byte Ed25519 key inlined in ``peer_id``; raises ValueError for other key types.

    Used to check that a gossip announce's ``vk`` belongs to the message originator.
    """
    try:
        peer = ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"not a PeerId: {peer_id!r}") from exc
    raw = ed25519_from_id(peer)
    if raw is None:
        raise ValueError(f"PeerId {peer_id} does not inline an Ed25519 key")
    return raw
