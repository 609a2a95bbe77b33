"""Issuer trust: the out-of-band file trust store (core §13) and the in-band TrustView (core §11.3).

The file trust store (``trust/issuers.toml`` plus ``trust/status/<list_id>.bin``) is used
only by CLI tools and the store's integrity check, never by replay; it is the one part
of the policy code that reads files. Everything that decides replicated state (the
TrustView) is pure and built in one linear pass over the total order.
"""

from __future__ import annotations

import errno
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ecac.errors import EcacError
from ecac.vc import PK_LEN, ed25519_point_decompresses, rust_trim

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

    @classmethod
    def load(cls, trust_dir: str | Path) -> TrustStore:
        """Read ``<trust_dir>/issuers.toml`` (file I/O; CLI tools only)."""
        path = Path(trust_dir) / "issuers.toml"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TrustStoreError("Toml", f"{path} not found; create it with an [issuers] table") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrustStoreError("Toml", f"cannot read {path}: {e}") from None
        return cls.from_toml(text)

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


class FileStatusCache:
    """``<status_dir>/<list_id>.bin`` bitsets, read once per list and cached (missing = empty).

    Unsafe ``list_id`` values are never turned into paths; they count as missing lists.
    """

    def __init__(self, status_dir: str | Path) -> None:
        self._dir = Path(status_dir)
        self._cache: dict[str, bytes] = {}

    def _read(self, list_id: str) -> bytes:
        if not is_safe_list_id(list_id):
            return b""
        path = self._dir / f"{list_id}.bin"
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return b""
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                return b""
            raise EcacError(f"cannot read status list {path}: {e}") from None

    def bits(self, list_id: str) -> bytes:
        """The raw bitset of ``list_id`` (empty when missing)."""
        if list_id not in self._cache:
            self._cache[list_id] = self._read(list_id)
        return self._cache[list_id]

    def is_revoked(self, list_id: str, index: int) -> bool:
        return bit_is_set(self.bits(list_id), index)


def load_file_trust(trust_dir: str | Path) -> tuple[TrustStore, FileStatusCache]:
    """The reference's file trust: ``<dir>/issuers.toml`` and ``<dir>/status/*.bin``."""
    return TrustStore.load(trust_dir), FileStatusCache(Path(trust_dir) / "status")
