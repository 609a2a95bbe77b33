"""Trust: the file trust store and status files (core §13); the in-band TrustView (core §11.3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ecac.keys import key_pair
from ecac.trust import (
    FileStatusCache,
    MemoryStatusCache,
    TrustStore,
    TrustStoreError,
    bit_is_set,
    is_safe_list_id,
    load_file_trust,
)

VECTORS = Path(os.environ.get("ECAC_VECTORS", Path(__file__).resolve().parents[2] / "shared/spec/vectors"))
PK = bytes(key_pair(3, b"trust-test").verify_key)


def _vectors() -> Path:
    if not (VECTORS / "expected.json").exists():
        pytest.skip(f"spec vectors not found at {VECTORS}; set ECAC_VECTORS")
    return VECTORS


# --------------------------------------------------------------------------- issuers.toml


def test_vector_trust_file_parses_as_expected():
    v = _vectors()
    expected = json.loads((v / "expected.json").read_text())["trust_file"]["vectors/trust/issuers.toml"]
    store = TrustStore.load(v / "trust")
    assert {k: key.hex() for k, key in store.issuers.items()} == expected["issuers"]
    assert dict(store.schemas) == expected["schemas"]
    assert store.schema("local-issuer-1") == "standard-v1"
    assert store.issuer_key("oem-issuer-1") is None


def test_key_hex_is_trimmed_and_case_insensitive():
    store = TrustStore.from_toml(f'[issuers]\na = "  {PK.hex().upper()}\\n"\n')
    assert store.issuer_key("a") == PK
    assert dict(store.schemas) == {}


@pytest.mark.parametrize(
    "value,kind",
    [
        ('"abc"', "BadKeyHex"),
        ('"zz' + "00" * 31 + '"', "BadKeyHex"),
        ('"' + "00" * 31 + '"', "BadKeyLen"),
        ('"' + "00" * 33 + '"', "BadKeyLen"),
        ('"' + (2).to_bytes(32, "little").hex() + '"', "BadKey"),
        ("5", "Toml"),
    ],
)
def test_bad_issuer_keys(value, kind):
    with pytest.raises(TrustStoreError) as ei:
        TrustStore.from_toml(f"[issuers]\na = {value}\n")
    assert ei.value.kind == kind


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[schemas]\na = 'standard-v1'\n",
        "issuers = 1\n",
        "[issuers\n",
        f'[issuers]\na = "{PK.hex()}"\n[schemas]\na = 1\n',
    ],
)
def test_toml_errors(text):
    with pytest.raises(TrustStoreError) as ei:
        TrustStore.from_toml(text)
    assert ei.value.kind == "Toml"


def test_missing_trust_file_is_actionable(tmp_path):
    with pytest.raises(TrustStoreError, match="not found"):
        TrustStore.load(tmp_path)


# --------------------------------------------------------------------------- status bits and files


def test_status_bits_vector_cases_lsb_first():
    v = _vectors()
    cases = json.loads((v / "expected.json").read_text())["status_list_bits"]["cases"]
    for case in cases:
        chunks = [bytes.fromhex(c) for c in case["chunks_hex"]]
        # the file format is the concatenation of the bitset (one "chunk" of any size)
        data = b"".join(chunks)
        if len(chunks) == 1 or all(len(c) == len(chunks[0]) for c in chunks):
            assert bit_is_set(data, case["index"]) == case["revoked"], case
        assert MemoryStatusCache({"l": data}).is_revoked("l", case["index"]) == case["revoked"]


def test_bit_is_set_edges():
    assert bit_is_set(b"\x01", 0) and not bit_is_set(b"\x01", 7)
    assert bit_is_set(b"\x80", 7)
    assert not bit_is_set(b"", 0) and not bit_is_set(b"\xff", 8)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "x\0y", "/etc/passwd"])
def test_unsafe_list_ids_refused(bad):
    assert not is_safe_list_id(bad)


@pytest.mark.parametrize("ok", ["list-0", "a.b", "..x", "x..", "ünï"])
def test_safe_list_ids(ok):
    assert is_safe_list_id(ok)


def test_file_status_cache_reads_caches_and_refuses_escape(tmp_path):
    status = tmp_path / "trust" / "status"
    status.mkdir(parents=True)
    (status / "list-0.bin").write_bytes(b"\x02")
    (tmp_path / "trust" / "secret.bin").write_bytes(b"\xff")
    cache = FileStatusCache(status)
    assert cache.is_revoked("list-0", 1) and not cache.is_revoked("list-0", 0)
    assert not cache.is_revoked("list-0", 999)
    assert not cache.is_revoked("missing", 0)
    assert not cache.is_revoked("../secret", 0), "path escape must be treated as a missing list"
    # cached for the cache's lifetime, including a cached "missing"
    (status / "list-0.bin").write_bytes(b"\x01")
    (status / "missing.bin").write_bytes(b"\xff")
    assert cache.is_revoked("list-0", 1) and not cache.is_revoked("missing", 0)
    assert FileStatusCache(status).is_revoked("missing", 0)


def test_load_file_trust(tmp_path):
    (tmp_path / "issuers.toml").write_text(f'[issuers]\nx = "{PK.hex()}"\n')
    store, cache = load_file_trust(tmp_path)
    assert store.issuer_key("x") == PK
    assert not cache.is_revoked("list-0", 0)
