"""Trust: the file trust store and status files (core §13); the in-band TrustView (core §11.3)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import pytest

from ecac.core.errors import VcError
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import IssuerKey, IssuerKeyRevoke, StatusListChunk, StatusPointer, make_op
from ecac.core.policy import Epoch, EpochIndex, epochs_m4
from ecac.core.trust import (
    IssuerKeyRecord,
    MemoryStatusCache,
    StatusList,
    TrustStore,
    TrustStoreError,
    TrustView,
    bit_is_set,
    is_safe_list_id,
)
from ecac.core.vc import mint_vc, verify_vc_inband
from ecac.store.trustfiles import FileStatusCache, load_file_trust, load_trust_store
from ecac.testing.scenarios import grant_pair, vc_token

PK = bytes(key_pair(3, b"trust-test").verify_key)


# --------------------------------------------------------------------------- issuers.toml


def test_vector_trust_file_parses_as_expected(vectors):
    expected = vectors.expected["trust_file"]["vectors/trust/issuers.toml"]
    store = load_trust_store(vectors.path("trust"))
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
        load_trust_store(tmp_path)


# --------------------------------------------------------------------------- status bits and files


def test_status_bits_vector_cases_lsb_first(vectors):
    cases = vectors.expected["status_list_bits"]["cases"]
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


# --------------------------------------------------------------------------- in-band TrustView

ADMIN = key_pair(3, b"trust-test/admin")
OUTSIDER = key_pair(3, b"trust-test/outsider")


def ik(ms=0, signer=ADMIN, issuer="issuer-1", kid="k1", pubkey=None, vf=0, vu=U64_MAX, algo="EdDSA"):
    key = bytes(signer.verify_key) if pubkey is None else pubkey
    return make_op(signer, (), Hlc(ms, 0, 0), IssuerKey(issuer, kid, algo, key, vf, vu, None))


def ikr(ms, signer=ADMIN, issuer="issuer-1", kid="k1"):
    return make_op(signer, (), Hlc(ms, 0, 0), IssuerKeyRevoke(issuer, kid, "test"))


def chunk(data, index=0, sha=None, list_id="list-0", issuer="issuer-1", version=1, signer=ADMIN, ms=0):
    sha = hashlib.sha256(data).digest() if sha is None else sha
    return make_op(signer, (), Hlc(ms, 0, 0), StatusListChunk(list_id, issuer, version, index, sha, data))


def test_status_bits_vector_cases_through_trust_view(vectors):
    cases = vectors.expected["status_list_bits"]["cases"]
    for case in cases:
        chunks = [bytes.fromhex(c) for c in case["chunks_hex"]]
        sha = hashlib.sha256(b"".join(chunks)).digest()
        ops = [chunk(c, i, sha) for i, c in enumerate(chunks)]
        tv = TrustView.build(ops)
        assert tv.is_revoked("list-0", case["index"]) == case["revoked"], case


def test_single_chunk_lookup_and_missing_list():
    tv = TrustView.build([chunk(b"\x01")])
    assert tv.is_revoked("list-0", 0)
    assert not tv.is_revoked("list-0", 1) and not tv.is_revoked("list-0", 1000)
    assert not tv.is_revoked("other", 0)


def test_multi_chunk_complete_with_right_sha():
    sha = hashlib.sha256(b"\xaa\xbb\xcc").digest()
    tv = TrustView.build([chunk(b"\xcc", 1, sha), chunk(b"\xaa\xbb", 0, sha)])
    sl = tv.status_lists["list-0"]
    assert sl.chunks == (b"\xaa\xbb", b"\xcc")
    # chunk 0's length (16 bits) is used for every chunk: index 16 is bit 0 of chunk 1 (0xcc → clear)
    assert not tv.is_revoked("list-0", 16) and tv.is_revoked("list-0", 18)
    assert tv.is_revoked("list-0", 1)  # 0xaa = 10101010, LSB-first bit 1 set
    assert not tv.is_revoked("list-0", 24), "byte beyond chunk 1's length is clear"


def test_incomplete_versions_are_ignored():
    sha = hashlib.sha256(b"\x01\x01").digest()
    assert "list-0" not in TrustView.build([chunk(b"\x01", 0, sha)]).status_lists  # missing chunk 1
    assert "list-0" not in TrustView.build([chunk(b"\x01", 1, sha)]).status_lists  # no chunk 0
    assert "list-0" not in TrustView.build([chunk(b"\x01", 0, bytes(32))]).status_lists  # bad sha
    gap = [chunk(b"\x01", 0, sha), chunk(b"\x01", 2, sha)]
    assert "list-0" not in TrustView.build(gap).status_lists


def test_first_chunk_fixes_sha_and_duplicates_are_last_wins():
    good = hashlib.sha256(b"\x02").digest()
    # a later chunk with another sha is dropped; the entry keeps the first sha
    tv = TrustView.build([chunk(b"\x02", 0, good), chunk(b"\x01", 0, bytes(32))])
    assert tv.is_revoked("list-0", 1)
    # same sha, same index: last wins (here the last one breaks the sha, so no list)
    tv = TrustView.build([chunk(b"\x02", 0, good), chunk(b"\x01", 0, good)])
    assert "list-0" not in tv.status_lists
    tv = TrustView.build([chunk(b"\x01", 0, good), chunk(b"\x02", 0, good)])
    assert tv.is_revoked("list-0", 1)


def test_highest_complete_version_wins_regardless_of_issuer():
    ops = [chunk(b"\x01", version=2, issuer="a"), chunk(b"\x02", version=1, issuer="z")]
    tv = TrustView.build(ops)
    assert tv.status_lists["list-0"].version == 2 and tv.is_revoked("list-0", 0)
    # an incomplete higher version does not hide a complete lower one
    ops.append(chunk(b"\x04", version=3, sha=bytes(32)))
    assert TrustView.build(ops).status_lists["list-0"].version == 2


def test_status_list_tie_resolved_by_larger_issuer_id_in_any_order():
    ops = [chunk(b"\x01", issuer="a"), chunk(b"\x02", issuer="b")]
    for perm in itertools.permutations(ops):
        tv = TrustView.build(list(perm))
        assert tv.status_lists["list-0"].issuer_id == "b"
        assert tv.is_revoked("list-0", 1) and not tv.is_revoked("list-0", 0)


def test_issuer_key_activation_and_revocation_times():
    tv = TrustView.build([ik(ms=50, vf=100, vu=10_000), ikr(600)])
    rec = tv.key("issuer-1", "k1")
    assert (rec.activated_at_ms, rec.revoked_at_ms) == (100, 600)
    for t, active in [(99, False), (100, True), (599, True), (600, False), (1000, False)]:
        assert rec.active_at(t) is active
        assert (tv.select_key("issuer-1", "k1", t) is not None) is active
        assert (tv.select_key("issuer-1", None, t) is not None) is active


def test_activation_uses_op_time_when_later_than_valid_from():
    rec = TrustView.build([ik(ms=1000, vf=0)]).key("issuer-1", "k1")
    assert rec.activated_at_ms == 1000
    assert TrustView.build([ik(ms=1000, vf=0, vu=1000)]).select_key("issuer-1", "k1", 1000) is None


def test_issuer_key_first_wins_and_revoke_before_key_ignored():
    other = bytes(OUTSIDER.verify_key)
    tv = TrustView.build([ik(ms=5), ik(ms=1, pubkey=other)])
    assert tv.key("issuer-1", "k1").pubkey == bytes(ADMIN.verify_key)
    tv = TrustView.build([ikr(1), ik(ms=5)])
    assert tv.key("issuer-1", "k1").revoked_at_ms is None
    tv = TrustView.build([ik(ms=5), ikr(900), ikr(700), ikr(800)])
    assert tv.key("issuer-1", "k1").revoked_at_ms == 700


def test_select_key_without_kid_takes_newest_activation_then_key_id():
    a, b, c = (bytes(key_pair(9, lbl).verify_key) for lbl in (b"a", b"b", b"c"))
    tv = TrustView.build(
        [ik(ms=10, kid="k1", pubkey=a), ik(ms=20, kid="k0", pubkey=b), ik(ms=20, kid="k2", pubkey=c)]
    )
    assert tv.select_key("issuer-1", None, 15).pubkey == a
    assert tv.select_key("issuer-1", None, 25).pubkey == c  # (20, "k2") > (20, "k0")
    assert tv.select_key("issuer-1", "k0", 25).pubkey == b
    assert tv.select_key("issuer-1", "k9", 25) is None
    assert tv.select_key("nobody", None, 25) is None


def test_key_selected_at_vc_nbf():
    # key active from 1000; a VC with nbf 999 under it is from an unknown issuer
    tv = TrustView.build([ik(ms=1000)])
    subject = key_pair(3, b"s")
    assert verify_vc_inband(vc_token(subject, 1000, 5000, signer=ADMIN), tv)
    with pytest.raises(VcError) as ei:
        verify_vc_inband(vc_token(subject, 999, 5000, signer=ADMIN), tv)
    assert ei.value.kind == "UnknownIssuer"


def test_status_pointer_and_other_payloads_ignored():
    op = make_op(ADMIN, (), Hlc(1, 0, 0), StatusPointer("c", "list-0", 0))
    tv = TrustView.build([op])
    assert dict(tv.issuers) == {} and dict(tv.status_lists) == {}


def test_issuer_admin_gating_drops_non_admin_trust_ops():
    admin_pk = b"\x01" * 32
    idx = EpochIndex.from_entries({(admin_pk, "issuer_admin"): [Epoch(frozenset(), 0, None, None, None)]})
    admin_ik = make_op(
        ADMIN, (), Hlc(5, 0, 0), IssuerKey("admin-iss", "k1", "EdDSA", bytes(ADMIN.verify_key), 0, U64_MAX)
    )
    # the author of a kept op must be the issuer_admin subject: forge the author field (payload-only build)
    admin_ik = replace(admin_ik, author_pk=admin_pk)
    admin_chunk = replace(chunk(b"\x01", list_id="admin-list"), author_pk=admin_pk)
    ops = [
        ik(ms=5, signer=OUTSIDER, issuer="outsider"),
        chunk(b"\x01", signer=OUTSIDER),
        admin_ik,
        admin_chunk,
    ]
    tv = TrustView.build(ops, idx)
    assert set(tv.issuers) == {"admin-iss"}
    assert set(tv.status_lists) == {"admin-list"}
    tok = mint_vc(
        OUTSIDER,
        {
            "iss": "outsider",
            "jti": "j",
            "role": "editor",
            "sub_pk": "00" * 32,
            "nbf": 10,
            "exp": 20,
            "scope": ["hv"],
        },
    )
    with pytest.raises(VcError) as ei:
        verify_vc_inband(tok, tv)
    assert ei.value.kind == "UnknownIssuer"
    # without gating (no admin epochs), everything counts
    assert set(TrustView.build(ops).issuers) == {"outsider", "admin-iss"}


def test_gating_only_while_an_admin_epoch_is_live():
    # an issuer_admin epoch of someone else, live only for HLC [100, 200)
    idx = EpochIndex.from_entries(
        {(b"\x01" * 32, "issuer_admin"): [Epoch(frozenset(), 0, None, Hlc(100, 0, 0), Hlc(200, 0, 0))]}
    )
    tv = TrustView.build([ik(ms=50, kid="early"), ik(ms=150, kid="during"), ik(ms=250, kid="late")], idx)
    assert set(tv.issuers["issuer-1"]) == {"early", "late"}


def test_self_issued_issuer_admin_via_m4_locks_out_others():
    cred, grant = grant_pair(OUTSIDER, 0, U64_MAX, issuer=OUTSIDER, grantor=OUTSIDER, role="issuer_admin")
    order = [cred, grant, ik(ms=10)]
    idx = epochs_m4(order)
    assert idx.subject_has_role_at(bytes(OUTSIDER.verify_key), "issuer_admin", 2, Hlc(10, 0, 0))
    assert dict(TrustView.build(order, idx).issuers) == {}
    # the self-made admin itself can still publish
    order.append(ik(ms=11, signer=OUTSIDER, issuer="mallory"))
    assert set(TrustView.build(order, epochs_m4(order)).issuers) == {"mallory"}


def test_hand_built_trust_view_verifies_and_revokes():
    subject = key_pair(3, b"s2")
    rec = IssuerKeyRecord("EdDSA", bytes(ADMIN.verify_key), 0, U64_MAX, 0)
    tv = TrustView({"issuer-1": {"k1": rec}}, {})
    vc = verify_vc_inband(vc_token(subject, 10, 20, signer=ADMIN), tv)
    assert (vc.issuer, vc.subject_pk, vc.role, vc.scope) == (
        "issuer-1",
        bytes(subject.verify_key),
        "editor",
        frozenset({"hv"}),
    )
    # the sha is not re-checked at lookup time
    tv = TrustView({"issuer-1": {"k1": rec}}, {"list-0": StatusList("list-0", "x", 1, bytes(32), (b"\x01",))})
    with pytest.raises(VcError) as ei:
        verify_vc_inband(vc_token(subject, 10, 20, signer=ADMIN), tv)
    assert ei.value.kind == "Revoked"
