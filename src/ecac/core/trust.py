"""Issuer trust: the out-of-band file trust store (core §13) and the in-band TrustView (core §11.3).

The file trust store (``trust/issuers.toml`` plus ``trust/status/<list_id>.bin``) is used
only by CLI tools and the store's integrity check, never by replay. This module parses
it from text and bytes; reading the files is ``ecac.store.trustfiles``'s job, so the module
stays pure. Everything that decides replicated state (the TrustView) is built in one
linear pass over the total order.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.op import IssuerKey, IssuerKeyRevoke, Op, StatusListChunk
from ecac.core.resources import ISSUER_ADMIN
from ecac.core.vc import PK_LEN, ed25519_point_decompresses, rust_trim

SCHEMA_STANDARD_V1 = "standard-v1"


class TrustStoreError(EcacError):
    """``issuers.toml`` is unusable; ``kind`` is ``Toml``, ``BadKeyHex``, ``BadKeyLen`` or ``BadKey``."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"trust store {kind}: {detail}")


# --------------------------------------------------------------------------- status bits


def bit_is_set(data: bytes, index: int) -> bool:
    """LSB-first bit ``index`` of ``data``; beyond the end is clear (core §13)."""
    byte = index // 8
    return byte < len(data) and bool(data[byte] & (1 << (index % 8)))


def is_safe_list_id(list_id: str) -> bool:
    """Whether ``<list_id>.bin`` names a file inside the status directory.

    The reference uses ``list_id`` verbatim as a file name; this implementation refuses
    path separators, NUL and the ``.``/``..`` components (core §13, §18.2) and treats
    such lists as missing.
    """
    return bool(list_id) and list_id not in (".", "..") and not any(c in list_id for c in "/\\\0")


# --------------------------------------------------------------------------- trust store


def _parse_issuer_key(issuer_id: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise TrustStoreError("Toml", f"[issuers] {issuer_id!r} must be a string of 64 hex digits")
    hex_text = rust_trim(text)
    if len(hex_text) % 2 or not all(c in "0123456789abcdefABCDEF" for c in hex_text):
        raise TrustStoreError("BadKeyHex", f"[issuers] {issuer_id!r} is not valid hex")
    key = bytes.fromhex(hex_text)
    if len(key) != PK_LEN:
        raise TrustStoreError("BadKeyLen", f"[issuers] {issuer_id!r} is {len(key)} bytes, expected {PK_LEN}")
    if not ed25519_point_decompresses(key):
        raise TrustStoreError("BadKey", f"[issuers] {issuer_id!r} is not an Ed25519 public key")
    return key


def _string_table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = doc.get(name)
    if not isinstance(table, dict):
        raise TrustStoreError("Toml", f"[{name}] must be a table")
    return table


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Issuer keys (32 bytes each) and optional schema names, from ``issuers.toml``."""

    issuers: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    schemas: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_toml(cls, text: str) -> TrustStore:
        """Parse ``issuers.toml``: required ``[issuers]`` id → hex key, optional ``[schemas]``."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise TrustStoreError("Toml", str(e)) from None
        if "issuers" not in doc:
            raise TrustStoreError("Toml", "missing required table [issuers]")
        issuers = {iss: _parse_issuer_key(iss, v) for iss, v in _string_table(doc, "issuers").items()}
        schemas: dict[str, str] = {}
        if "schemas" in doc:
            for iss, v in _string_table(doc, "schemas").items():
                if not isinstance(v, str):
                    raise TrustStoreError("Toml", f"[schemas] {iss!r} must be a string")
                schemas[iss] = v
        return cls(MappingProxyType(issuers), MappingProxyType(schemas))

    def issuer_key(self, issuer_id: str) -> bytes | None:
        return self.issuers.get(issuer_id)

    def schema(self, issuer_id: str) -> str | None:
        return self.schemas.get(issuer_id)


# --------------------------------------------------------------------------- status caches


@dataclass(frozen=True, slots=True)
class MemoryStatusCache:
    """Status lists given as bytes per ``list_id`` (tests, and the empty cache)."""

    lists: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def is_revoked(self, list_id: str, index: int) -> bool:
        return bit_is_set(self.lists.get(list_id, b""), index)


class StatusCache(Protocol):
    """Answers "is bit ``index`` of status list ``list_id`` set?" (file-based or in memory)."""

    def is_revoked(self, list_id: str, index: int) -> bool: ...


# --------------------------------------------------------------------------- in-band TrustView


class AdminIndex(Protocol):
    """The issuer_admin liveness queries TrustView needs (core §11.7); see ``policy.EpochIndex``."""

    def role_active_at(self, role: str, pos: int, hlc: Hlc) -> bool: ...

    def subject_has_role_at(self, subject: bytes, role: str, pos: int, hlc: Hlc) -> bool: ...


@dataclass(frozen=True, slots=True)
class IssuerKeyRecord:
    """One published issuer key. Active at ``t`` iff ``activated_at <= t < valid_until``
    and ``t < revoked_at`` when revoked (core §11.3 step 6)."""

    algo: str
    pubkey: bytes
    valid_from_ms: int
    valid_until_ms: int
    activated_at_ms: int
    revoked_at_ms: int | None = None

    def active_at(self, t_ms: int) -> bool:
        return self.activated_at_ms <= t_ms < self.valid_until_ms and (
            self.revoked_at_ms is None or t_ms < self.revoked_at_ms
        )


@dataclass(frozen=True, slots=True)
class StatusList:
    """A complete in-band status list version (chunks ``0..n-1``, SHA-256 checked at build)."""

    list_id: str
    issuer_id: str
    version: int
    bitset_sha256: bytes
    chunks: tuple[bytes, ...]

    def is_revoked(self, index: int) -> bool:
        """LSB-first bit lookup; chunk 0's length is used for every chunk (core §11.3 step 7)."""
        if not self.chunks:
            return False
        bits_per_chunk = 8 * len(self.chunks[0])
        if bits_per_chunk == 0:
            return False
        chunk, bit = divmod(index, bits_per_chunk)
        if chunk >= len(self.chunks):
            return False
        return bit_is_set(self.chunks[chunk], bit)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclass
class _ChunkSet:
    bitset_sha256: bytes
    chunks: dict[int, bytes] = field(default_factory=dict)

    def complete(self) -> tuple[bytes, ...] | None:
        """The chunks in index order when ``0..max`` are all present and the SHA-256 matches."""
        if not self.chunks or len(self.chunks) != max(self.chunks) + 1:
            return None
        ordered = tuple(self.chunks[i] for i in range(len(self.chunks)))
        if hashlib.sha256(b"".join(ordered)).digest() != self.bitset_sha256:
            return None
        return ordered


_GATED = (IssuerKey, IssuerKeyRevoke, StatusListChunk)


@dataclass(frozen=True, slots=True)
class TrustView:
    """In-band trust: issuer keys and status lists published as ops (core §11.3).

    ``issuers[issuer_id][key_id]`` and ``status_lists[list_id]``. Build it with
    ``TrustView.build``; tests may construct one by hand.
    """

    issuers: Mapping[str, Mapping[str, IssuerKeyRecord]] = field(default_factory=lambda: MappingProxyType({}))
    status_lists: Mapping[str, StatusList] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, order: Sequence[Op], admin_idx: AdminIndex | None = None) -> TrustView:
        """One pass over ``order``; trust ops are gated by live ``issuer_admin`` epochs.

        ``admin_idx`` is the M4 epoch index (``policy.epochs_m4``), or None when the log
        has no Grant/Revoke/KeyGrant, in which case every trust op counts (bootstrap).
        """
        return cls.build_from(enumerate(order), admin_idx)

    @classmethod
    def build_from(cls, items: Iterable[tuple[int, Op]], admin_idx: AdminIndex | None = None) -> TrustView:
        """``build`` from ``(position, op)`` pairs in position order; pairs whose op is not a
        trust op may be left out (the policy builders pass only an order's policy ops)."""
        keys: dict[tuple[str, str], IssuerKeyRecord] = {}
        chunk_sets: dict[tuple[str, str, int], _ChunkSet] = {}
        for pos, op in items:
            p = op.payload
            if not isinstance(p, _GATED):
                continue
            if (
                admin_idx is not None
                and admin_idx.role_active_at(ISSUER_ADMIN, pos, op.hlc)
                and not admin_idx.subject_has_role_at(op.author_pk, ISSUER_ADMIN, pos, op.hlc)
            ):
                continue
            if isinstance(p, IssuerKey):
                k = (p.issuer_id, p.key_id)
                if k not in keys:  # first wins; prev_key_id, algo and size unchecked
                    keys[k] = IssuerKeyRecord(
                        p.algo,
                        p.pubkey,
                        p.valid_from_ms,
                        p.valid_until_ms,
                        max(p.valid_from_ms, op.hlc.physical_ms),
                    )
            elif isinstance(p, IssuerKeyRevoke):
                k = (p.issuer_id, p.key_id)
                rec = keys.get(k)
                if rec is not None:  # a revoke ordered before its key is ignored
                    t = op.hlc.physical_ms
                    if rec.revoked_at_ms is None or t < rec.revoked_at_ms:
                        keys[k] = replace(rec, revoked_at_ms=t)
            else:
                ck = (p.issuer_id, p.list_id, p.version)
                cs = chunk_sets.get(ck)
                if cs is None:
                    cs = chunk_sets[ck] = _ChunkSet(p.bitset_sha256)
                if cs.bitset_sha256 == p.bitset_sha256:
                    cs.chunks[p.chunk_index] = p.chunk_bytes  # last wins per index
        return cls(_freeze_issuers(keys), _collapse_status_lists(chunk_sets))

    def key(self, issuer_id: str, key_id: str) -> IssuerKeyRecord | None:
        return self.issuers.get(issuer_id, {}).get(key_id)

    def select_key(self, issuer_id: str, kid: str | None, t_ms: int) -> IssuerKeyRecord | None:
        """The key active at ``t_ms``: the named one, or the newest ``(activated_at, key_id)``."""
        recs = self.issuers.get(issuer_id)
        if not recs:
            return None
        if kid is not None:
            rec = recs.get(kid)
            return rec if rec is not None and rec.active_at(t_ms) else None
        best: tuple[int, bytes] | None = None
        chosen: IssuerKeyRecord | None = None
        for key_id, rec in recs.items():
            if rec.active_at(t_ms):
                rank = (rec.activated_at_ms, _utf8(key_id))
                if best is None or rank > best:
                    best, chosen = rank, rec
        return chosen

    def is_revoked(self, list_id: str, index: int) -> bool:
        """Bit ``index`` of the winning version of ``list_id``; a missing list is not revoked."""
        sl = self.status_lists.get(list_id)
        return sl is not None and sl.is_revoked(index)


def _freeze_issuers(
    keys: Mapping[tuple[str, str], IssuerKeyRecord],
) -> Mapping[str, Mapping[str, IssuerKeyRecord]]:
    nested: dict[str, dict[str, IssuerKeyRecord]] = {}
    for (iss, kid), rec in keys.items():
        nested.setdefault(iss, {})[kid] = rec
    return MappingProxyType({iss: MappingProxyType(recs) for iss, recs in nested.items()})


def _collapse_status_lists(chunk_sets: Mapping[tuple[str, str, int], _ChunkSet]) -> Mapping[str, StatusList]:
    """Per ``list_id`` the complete version with the largest ``(version, issuer_id)`` wins.

    The issuer tie-break is this implementation's fix for the reference's hash-order
    choice (core §11.3 step 5); the result never depends on iteration order.
    """
    best: dict[str, tuple[tuple[int, bytes], StatusList]] = {}
    for (iss, list_id, version), cs in chunk_sets.items():
        chunks = cs.complete()
        if chunks is None:
            continue
        rank = (version, _utf8(iss))
        cur = best.get(list_id)
        if cur is None or rank > cur[0]:
            best[list_id] = (rank, StatusList(list_id, iss, version, cs.bitset_sha256, chunks))
    return MappingProxyType({lid: sl for lid, (_, sl) in best.items()})
