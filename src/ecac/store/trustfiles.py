"""The file trust store on disk (core §13): ``<dir>/issuers.toml`` and ``<dir>/status/<list_id>.bin``.

The I/O half of ``ecac.core.trust``: it reads the files and hands their text and bytes to the
pure parsers there. Used by CLI tools and the store's integrity check, never by replay.
"""

from __future__ import annotations

import errno
from pathlib import Path

from ecac.core.errors import EcacError
from ecac.core.trust import TrustStore, TrustStoreError, bit_is_set, is_safe_list_id


def load_trust_store(trust_dir: str | Path) -> TrustStore:
    """Read and parse ``<trust_dir>/issuers.toml``."""
    path = Path(trust_dir) / "issuers.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustStoreError("Toml", f"{path} not found; create it with an [issuers] table") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrustStoreError("Toml", f"cannot read {path}: {e}") from None
    return TrustStore.from_toml(text)


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
    return load_trust_store(trust_dir), FileStatusCache(Path(trust_dir) / "status")
