"""JWT VC strictness (core §12): every deviation from the reference layout is rejected."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from types import MappingProxyType

import blake3
import pytest
from nacl.signing import SigningKey

from ecac.core import vc as vc_mod
from ecac.core.errors import VcError
from ecac.core.hlc import U64_MAX
from ecac.core.keys import key_pair
from ecac.core.trust import IssuerKeyRecord, MemoryStatusCache, StatusList, TrustStore, TrustView
from ecac.core.vc import (
    JSON_MAX_DEPTH,
    REFERENCE_HEADER,
    VcMemo,
    b64url_decode_strict,
    b64url_encode,
    cred_hash,
    ed25519_point_decompresses,
    editor_claims,
    mint_vc,
    parse_compact,
    strict_json_loads,
    try_verify,
    verify_vc_file,
    verify_vc_inband,
    verify_vc_m4,
)
from ecac.store.trustfiles import load_trust_store

ISSUER = key_pair(7, b"vc-test/issuer")
OTHER = key_pair(7, b"vc-test/other")
SUBJECT = key_pair(7, b"vc-test/subject")
SUB_PK = bytes(SUBJECT.verify_key)


@dataclass(frozen=True)
class _Rec:
    algo: str
    pubkey: bytes


class FakeTrust:
    """A hand-built in-band trust: one key per issuer, any kid/time, fixed revoked bits."""

    def __init__(self, keys: dict[str, bytes], revoked: set[tuple[str, int]] | None = None, algo="EdDSA"):
        self.keys = keys
        self.revoked = revoked or set()
        self.algo = algo
        self.calls: list[tuple[str, str | None, int]] = []

    def select_key(self, issuer_id: str, kid: str | None, t_ms: int) -> _Rec | None:
        self.calls.append((issuer_id, kid, t_ms))
        pk = self.keys.get(issuer_id)
        return None if pk is None else _Rec(self.algo, pk)

    def is_revoked(self, list_id: str, index: int) -> bool:
        return (list_id, index) in self.revoked


TRUST = FakeTrust({"issuer-1": bytes(ISSUER.verify_key)})


def claims(**over):
    c = editor_claims(SUB_PK, nbf_ms=10_000, exp_ms=20_000)
    c.update(over)
    return c


def token_from_parts(header: bytes, payload: bytes, key: SigningKey = ISSUER) -> bytes:
    """A correctly signed token over arbitrary raw header/payload JSON bytes."""
    si = b64url_encode(header) + b"." + b64url_encode(payload)
    return si + b"." + b64url_encode(key.sign(si).signature)


def raw_payload(text: str, key: SigningKey = ISSUER) -> bytes:
    return token_from_parts(REFERENCE_HEADER, text.encode("utf-8"), key)


def reject(token: bytes, kind: str, trust=TRUST) -> VcError:
    with pytest.raises(VcError) as ei:
        verify_vc_inband(token, trust)
    assert ei.value.kind == kind, str(ei.value)
    return ei.value


# --------------------------------------------------------------------------- accepted


def test_canonical_token_accepted_with_all_claims():
    tok = mint_vc(ISSUER, claims())
    vc = verify_vc_inband(tok, TRUST)
    assert vc.issuer == "issuer-1"
    assert vc.cred_id == "test-cred-1"
    assert vc.subject_pk == SUB_PK
    assert vc.role == "editor"
    assert vc.scope == frozenset({"hv"})
    assert (vc.nbf_ms, vc.exp_ms) == (10_000, 20_000)
    assert (vc.status_list_id, vc.status_index) == ("list-0", 0)
    assert vc.cred_hash == blake3.blake3(tok).digest() == cred_hash(tok)
    assert TRUST.calls[-1] == ("issuer-1", None, 10_000), "key is selected at the VC's own nbf"


def test_minted_layout_matches_reference():
    tok = mint_vc(ISSUER, claims())
    h, p, s = tok.split(b".")
    assert h == b"eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9"
    assert base64.urlsafe_b64decode(p + b"==").decode() == json.dumps(
        claims(), sort_keys=True, separators=(",", ":")
    )
    assert b"=" not in tok and len(b64url_decode_strict(s)) == 64


def test_kid_is_passed_to_key_selection():
    tok = mint_vc(ISSUER, claims(), kid="k1")
    assert parse_compact(tok).header == {
        "alg": "EdDSA",
        "kid": "k1",
        "typ": "JWT",
    }
    verify_vc_inband(tok, TRUST)
    assert TRUST.calls[-1] == ("issuer-1", "k1", 10_000)
    # a non-string kid counts as absent
    tok2 = token_from_parts(b'{"alg":"EdDSA","kid":7}', json.dumps(claims()).encode())
    verify_vc_inband(tok2, TRUST)
    assert TRUST.calls[-1] == ("issuer-1", None, 10_000)


def test_status_optional_and_index_truncated_to_u32():
    c = claims()
    del c["status"]
    vc = verify_vc_inband(mint_vc(ISSUER, c), TRUST)
    assert vc.status_list_id is None and vc.status_index is None
    vc = verify_vc_inband(mint_vc(ISSUER, claims(status={"id": "l", "index": 2**32 + 5})), TRUST)
    assert vc.status_index == 5
    vc = verify_vc_inband(mint_vc(ISSUER, claims(status={"id": "l", "index": 2**64 - 1})), TRUST)
    assert vc.status_index == 2**32 - 1


def test_duplicate_scope_collapses_and_extra_claims_ignored():
    vc = verify_vc_inband(mint_vc(ISSUER, claims(scope=["hv", "hv", "mech"], extra=[1.5, None])), TRUST)
    assert vc.scope == frozenset({"hv", "mech"})


def test_duplicate_keys_last_wins():
    text = json.dumps(claims(), sort_keys=True, separators=(",", ":"))
    text = text[:-1] + ',"role":"issuer_admin"}'
    assert verify_vc_inband(raw_payload(text), TRUST).role == "issuer_admin"


def test_sub_pk_trimmed_in_band_but_not_in_m4():
    tok = mint_vc(ISSUER, claims(sub_pk="  " + SUB_PK.hex().upper() + "\n"))
    assert verify_vc_inband(tok, TRUST).subject_pk == SUB_PK
    with pytest.raises(VcError) as ei:
        verify_vc_m4(tok, bytes(ISSUER.verify_key))
    assert ei.value.kind == "BadKeyHex"
    # Rust's trim keeps U+001F (not White_Space), Python's strip would drop it
    tok = mint_vc(ISSUER, claims(sub_pk=SUB_PK.hex() + "\u001f"))
    reject(tok, "BadKeyHex")


def test_large_u64_bounds():
    vc = verify_vc_inband(mint_vc(ISSUER, claims(nbf=0, exp=2**64 - 1)), TRUST)
    assert (vc.nbf_ms, vc.exp_ms) == (0, 2**64 - 1)


def test_time_is_not_checked_during_verification():
    vc = verify_vc_inband(mint_vc(ISSUER, claims(nbf=50, exp=10)), TRUST)
    assert (vc.nbf_ms, vc.exp_ms) == (50, 10)


# --------------------------------------------------------------------------- base64 and framing


def _swap_segment(tok: bytes, i: int, seg: bytes) -> bytes:
    parts = tok.split(b".")
    parts[i] = seg
    return b".".join(parts)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_padded_base64_rejected(i):
    tok = mint_vc(ISSUER, claims())
    seg = tok.split(b".")[i]
    padded = base64.urlsafe_b64encode(base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4)))
    if padded == seg:  # already a multiple of 4: add a bogus pad group
        padded = seg + b"=="
    reject(_swap_segment(tok, i, padded), "BadBase64")


def test_non_canonical_trailing_bits_rejected():
    tok = mint_vc(ISSUER, claims())
    sig = tok.split(b".")[2]  # 64 bytes → 86 chars, last char carries 2 unused bits
    assert len(sig) % 4 == 2
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1:])
    bad = sig[:-1] + alphabet[last ^ 1 : (last ^ 1) + 1]
    reject(_swap_segment(tok, 2, bad), "BadBase64")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace(b"-", b"+").replace(b"_", b"/") if (b"-" in s or b"_" in s) else s + b"+",
        lambda s: s[:10] + b" " + s[10:],
        lambda s: s + b"A",  # length 1 mod 4 after a multiple of 4... or breaks canonical form
        lambda s: s + b"\n",
    ],
)
def test_alphabet_and_length_violations_rejected(mutate):
    tok = mint_vc(ISSUER, claims())
    bad = _swap_segment(tok, 2, mutate(tok.split(b".")[2]))
    with pytest.raises(VcError) as ei:
        verify_vc_inband(bad, TRUST)
    assert ei.value.kind in ("BadBase64", "BadSig")


def test_b64_helper_rules():
    assert b64url_decode_strict(b"") == b""
    assert b64url_decode_strict(b"QQ") == b"A"
    for bad in (b"QQ==", b"QR", b"Q", b"Q Q", b"QQ\n", b"+/8"):
        with pytest.raises(VcError):
            b64url_decode_strict(bad)


@pytest.mark.parametrize("tok", [b"a.b", b"a.b.c.d", b"", b"...", "é.x.y".encode()])
def test_not_three_parts_or_garbage(tok):
    with pytest.raises(VcError) as ei:
        verify_vc_inband(tok, TRUST)
    assert ei.value.kind in ("BadFormat", "BadBase64", "BadSig")


def test_non_utf8_token_is_bad_format():
    reject(b"\xff\xfe.a.b", "BadFormat")


def test_wrong_signature_length_rejected():
    tok = mint_vc(ISSUER, claims())
    sig = b64url_decode_strict(tok.split(b".")[2])
    reject(_swap_segment(tok, 2, b64url_encode(sig[:63])), "BadSig")
    reject(_swap_segment(tok, 2, b64url_encode(sig + b"\0")), "BadSig")


# --------------------------------------------------------------------------- signature


def test_tampered_payload_rejected():
    tok = mint_vc(ISSUER, claims())
    other = b64url_encode(json.dumps(claims(role="issuer_admin"), sort_keys=True).encode())
    reject(_swap_segment(tok, 1, other), "BadSig")


def test_forged_signature_by_other_key_rejected():
    reject(mint_vc(OTHER, claims()), "BadSig")


def test_unknown_issuer():
    err = reject(mint_vc(ISSUER, claims(iss="nobody")), "UnknownIssuer")
    assert err.detail == "nobody"


def test_issuer_key_with_wrong_algo_or_length_rejected():
    pk = bytes(ISSUER.verify_key)
    reject(mint_vc(ISSUER, claims()), "BadAlg", FakeTrust({"issuer-1": pk}, algo="RS256"))
    reject(mint_vc(ISSUER, claims()), "BadKeyHex", FakeTrust({"issuer-1": pk + b"\0"}))


def test_point_decompression_rule():
    assert ed25519_point_decompresses(bytes(ISSUER.verify_key))
    assert ed25519_point_decompresses(bytes(32))  # y = 0 is on the curve
    # y = 2 has no x on edwards25519
    assert not ed25519_point_decompresses((2).to_bytes(32, "little"))
    assert not ed25519_point_decompresses(bytes(31))


# --------------------------------------------------------------------------- alg


@pytest.mark.parametrize(
    "header",
    [
        b'{"typ":"JWT"}',
        b'{"alg":"none","typ":"JWT"}',
        b'{"alg":"ES256"}',
        b'{"alg":"eddsa"}',
        b'{"alg":null}',
        b'["alg","EdDSA"]',
        b'"EdDSA"',
    ],
)
def test_bad_alg_rejected(header):
    reject(token_from_parts(header, json.dumps(claims()).encode()), "BadAlg")


# --------------------------------------------------------------------------- claim types


@pytest.mark.parametrize("name", ["iss", "jti", "role", "sub_pk", "nbf", "exp", "scope"])
def test_missing_claim_rejected(name):
    c = claims()
    del c[name]
    err = reject(mint_vc(ISSUER, c), "MissingField")
    assert err.detail == name


@pytest.mark.parametrize(
    "name,value",
    [
        ("iss", 1),
        ("jti", None),
        ("role", ["editor"]),
        ("sub_pk", 5),
        ("scope", "hv"),
        ("scope", {"hv": True}),
        ("scope", ["hv", 1]),
        ("scope", ["hv", None]),
        ("scope", [["hv"]]),
    ],
)
def test_mistyped_claim_rejected(name, value):
    reject(mint_vc(ISSUER, claims(**{name: value})), "MissingField")


@pytest.mark.parametrize(
    "literal",
    ["10000.0", "1e4", "1E4", "-1", "-0", "18446744073709551616", "true", "false", "null", '"10000"', "[1]"],
)
@pytest.mark.parametrize("name", ["nbf", "exp"])
def test_non_u64_time_rejected(name, literal):
    text = json.dumps(claims(**{name: 123456789}), sort_keys=True, separators=(",", ":"))
    text = text.replace("123456789", literal)
    err = reject(raw_payload(text), "MissingField")
    assert err.detail == name


def test_payload_not_an_object_fails_claim_lookup():
    for payload in (b"[]", b"1", b'"x"', b"null"):
        reject(token_from_parts(REFERENCE_HEADER, payload), "MissingField")


@pytest.mark.parametrize(
    "status",
    [
        None,
        1,
        "list-0",
        [],
        {},
        {"id": "l"},
        {"index": 0},
        {"id": 1, "index": 0},
        {"id": "l", "index": -1},
        {"id": "l", "index": 1.0},
        {"id": "l", "index": True},
        {"id": "l", "index": 2**64},
    ],
)
def test_present_status_must_be_well_formed(status):
    reject(mint_vc(ISSUER, claims(status=status)), "MissingField")


def test_status_revoked_rejected():
    trust = FakeTrust({"issuer-1": bytes(ISSUER.verify_key)}, revoked={("list-0", 3)})
    assert verify_vc_inband(mint_vc(ISSUER, claims(status={"id": "list-0", "index": 2})), trust)
    reject(mint_vc(ISSUER, claims(status={"id": "list-0", "index": 3})), "Revoked", trust)
    reject(mint_vc(ISSUER, claims(status={"id": "list-0", "index": 2**32 + 3})), "Revoked", trust)


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize(
    "payload",
    [
        '{"x":NaN}',
        '{"x":Infinity}',
        '{"x":-Infinity}',
        '{"x":"\\ud800"}',
        '{"x":"\\udc00\\ud800"}',
        '{"\\ud83d":1}',
        '{"x":1e400}',
        '{"x":' + "9" * 400 + "}",
        '{"x":01}',
        "{'x':1}",
        '{"x":1,}',
        '{"x":"a\tb"}',
        "\ufeff{}",
        '{"x":1} x',
    ],
)
def test_non_strict_json_rejected(payload):
    c = json.dumps(claims(), sort_keys=True, separators=(",", ":"))
    text = payload if not payload.startswith('{"') else payload[:-1] + "," + c[1:]
    reject(raw_payload(text), "BadJson")


def test_valid_surrogate_pair_and_unicode_accepted():
    c = json.dumps(claims(jti="x"), sort_keys=True, separators=(",", ":")).replace('"x"', '"\\ud83d\\ude00é"')
    assert verify_vc_inband(raw_payload(c), TRUST).cred_id == "\U0001f600é"


def test_non_utf8_json_rejected():
    reject(token_from_parts(REFERENCE_HEADER, b'{"iss":"\xff"}'), "BadJson")


def test_nesting_limit_matches_serde_json():
    ok = "[" * JSON_MAX_DEPTH + "]" * JSON_MAX_DEPTH
    assert strict_json_loads(ok.encode()) is not None
    deep = "[" * (JSON_MAX_DEPTH + 1) + "]" * (JSON_MAX_DEPTH + 1)
    with pytest.raises(VcError):
        strict_json_loads(deep.encode())
    # brackets inside strings do not count
    assert strict_json_loads(json.dumps(["[" * 500]).encode()) == ["[" * 500]


def test_whitespace_around_json_allowed():
    text = " \n" + json.dumps(claims(), sort_keys=True) + "\r\t "
    assert verify_vc_inband(raw_payload(text), TRUST).role == "editor"


# --------------------------------------------------------------------------- M4 path


def test_m4_verifies_under_credential_author_only():
    c = claims(role="issuer_admin")
    del c["iss"], c["jti"]
    c["status"] = "ignored in M4"
    tok = mint_vc(ISSUER, c)
    vc = verify_vc_m4(tok, bytes(ISSUER.verify_key))
    assert vc.role == "issuer_admin" and vc.issuer is None and vc.cred_id is None
    assert vc.status_list_id is None
    with pytest.raises(VcError) as ei:
        verify_vc_m4(tok, bytes(OTHER.verify_key))
    assert ei.value.kind == "BadSig"
    assert try_verify(lambda: verify_vc_m4(tok, b"\x02" + bytes(31))) is None


@pytest.mark.parametrize("name", ["role", "nbf", "exp", "sub_pk", "scope"])
def test_m4_required_claims(name):
    c = claims()
    del c[name]
    with pytest.raises(VcError) as ei:
        verify_vc_m4(mint_vc(ISSUER, c), bytes(ISSUER.verify_key))
    assert ei.value.kind == "MissingField" and ei.value.detail == name


def test_m4_rejects_bad_alg_and_padding():
    with pytest.raises(VcError):
        tok = token_from_parts(b'{"alg":"HS256"}', json.dumps(claims()).encode())
        verify_vc_m4(tok, bytes(ISSUER.verify_key))
    tok = mint_vc(ISSUER, claims())
    with pytest.raises(VcError):
        verify_vc_m4(tok + b"==", bytes(ISSUER.verify_key))


# --------------------------------------------------------------------------- file path and fixtures


@pytest.mark.parametrize("name", ["example.jwt", "example2.jwt"])
def test_fixture_jwt_facts(vectors, name):
    tok = vectors.read(f"fixtures/{name}")
    facts = vectors.expected["jwt"][f"fixtures/{name}"]
    assert len(tok) == facts["file_size"] and not tok.endswith(b"\n")
    assert cred_hash(tok).hex() == facts["cred_hash_hex"]
    parsed = parse_compact(tok)
    h, p, _sig = tok.split(b".")
    assert b64url_decode_strict(h).decode() == facts["header_json"]
    assert b64url_decode_strict(p).decode() == facts["payload_json"]
    assert len(parsed.signature) == facts["signature_len"]
    assert parsed.payload == json.loads(facts["payload_json"])
    # the reference's layout: sorted compact JSON, reproduced by mint's encoder
    assert json.dumps(parsed.payload, sort_keys=True, separators=(",", ":")) == facts["payload_json"]
    assert b64url_decode_strict(h) == REFERENCE_HEADER


@pytest.mark.parametrize("name", ["example.jwt", "example2.jwt"])
def test_fixture_against_trust_file_is_unknown_issuer(vectors, name):
    tok = vectors.read(f"fixtures/{name}")
    store = load_trust_store(vectors.path("trust"))
    with pytest.raises(VcError) as ei:
        verify_vc_file(tok, store, MemoryStatusCache())
    assert ei.value.kind == "UnknownIssuer" and ei.value.detail == "oem-issuer-1"
    assert str(ei.value) == "UnknownIssuer(oem-issuer-1)"


def test_fixture_signature_is_not_from_a_published_key(vectors):
    tok = vectors.read("fixtures/example.jwt")
    reject(tok, "BadSig", FakeTrust({"oem-issuer-1": bytes(ISSUER.verify_key)}))


def _store(schema: str | None = None) -> TrustStore:
    text = f'[issuers]\nissuer-1 = "{bytes(ISSUER.verify_key).hex()}"\n'
    if schema is not None:
        text += f'\n[schemas]\nissuer-1 = "{schema}"\n'
    return TrustStore.from_toml(text)


def test_file_verification_accepts_and_checks_status():
    tok = mint_vc(ISSUER, claims(status={"id": "list-0", "index": 1}))
    vc = verify_vc_file(tok, _store("standard-v1"), MemoryStatusCache({"list-0": b"\x01"}))
    assert vc.subject_pk == SUB_PK
    with pytest.raises(VcError) as ei:
        verify_vc_file(tok, _store(), MemoryStatusCache({"list-0": b"\x02"}))
    assert ei.value.kind == "Revoked"


def test_file_verification_schema_mismatch_is_bad_json():
    tok = mint_vc(ISSUER, claims())
    with pytest.raises(VcError) as ei:
        verify_vc_file(tok, _store("standard-v2"), MemoryStatusCache())
    assert ei.value.kind == "BadJson"


def test_file_verification_ignores_kid_and_time():
    tok = mint_vc(ISSUER, claims(nbf=0, exp=1), kid="whatever")
    assert verify_vc_file(tok, _store(), MemoryStatusCache()).exp_ms == 1


def test_mint_rejects_non_json_claims():
    with pytest.raises(ValueError):
        mint_vc(ISSUER, {"x": float("nan")})
    with pytest.raises(ValueError):
        mint_vc(ISSUER, {"x": b"bytes"})


# --------------------------------------------------------------------------- VcMemo (replay's verdict memo)


def _key(
    pk: bytes, *, activated: int = 0, revoked: int | None = None, algo: str = "EdDSA"
) -> IssuerKeyRecord:
    return IssuerKeyRecord(algo, pk, 0, U64_MAX, activated, revoked)


def _tv(keys: dict[str, IssuerKeyRecord] | None = None, bits: bytes | None = None) -> TrustView:
    """A TrustView with ``keys`` for issuer-1 and, when given, ``bits`` as status list list-0."""
    issuers = {"issuer-1": MappingProxyType(keys)} if keys else {}
    lists = {}
    if bits is not None:
        lists["list-0"] = StatusList("list-0", "issuer-1", 1, hashlib.sha256(bits).digest(), (bits,))
    return TrustView(MappingProxyType(issuers), MappingProxyType(lists))


ISSUER_PK = bytes(ISSUER.verify_key)
OTHER_PK = bytes(OTHER.verify_key)
MEMO_TOKEN = mint_vc(ISSUER, claims(nbf=1000, exp=5000, status={"id": "list-0", "index": 3}))


def _counting(monkeypatch, name: str) -> list[int]:
    """Count the calls memo misses make to ``ecac.core.vc.<name>``."""
    calls = [0]
    real = getattr(vc_mod, name)

    def run(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(vc_mod, name, run)
    return calls


def test_memo_inband_verdict_follows_every_trust_change(monkeypatch):
    """One memo across TrustViews where the issuer key is added, revoked, replaced, joined by a
    newer key, and a status bit is set: each verdict equals a fresh verification, and the
    token is verified again exactly when an answer the verifier sees changed."""
    reference = vc_mod.verify_vc_inband
    calls = _counting(monkeypatch, "verify_vc_inband")
    memo = VcMemo()
    steps = [  # (trust, verifies, verified again)
        (_tv(), False, True),  # no key published yet: UnknownIssuer
        (_tv({"k1": _key(ISSUER_PK)}), True, True),  # the key is added later: now it verifies
        (_tv({"k1": _key(ISSUER_PK)}), True, False),  # same answers: memo hit
        (_tv({"k1": _key(ISSUER_PK, activated=500)}), True, False),  # a change the verifier cannot see
        (_tv({"k1": _key(ISSUER_PK, revoked=1000)}), False, True),  # revoked at nbf: no key at nbf
        (_tv({"k1": _key(ISSUER_PK, revoked=1001)}), True, True),  # revoked after nbf: still verifies
        (_tv({"k1": _key(ISSUER_PK), "k2": _key(OTHER_PK, activated=900)}), False, True),  # newer k2 wins
        (_tv({"k1": _key(OTHER_PK)}), False, False),  # k1 replaced by that same other key: same answer
        (_tv({"k1": _key(ISSUER_PK, algo="RS256")}), False, True),  # wrong algo
        (_tv({"k1": _key(ISSUER_PK)}, bits=b"\x08"), False, True),  # status bit 3 set: revoked
        (_tv({"k1": _key(ISSUER_PK)}, bits=b"\x04"), True, True),  # another bit: valid again
        (_tv({"k1": _key(ISSUER_PK)}, bits=b"\x05"), True, False),  # same answer for bit 3
    ]
    for i, (tv, verifies, again) in enumerate(steps):
        before = calls[0]
        got = memo.inband(MEMO_TOKEN, tv)
        assert got == try_verify(lambda tv=tv: reference(MEMO_TOKEN, tv)), i
        assert (got is not None) is verifies, i
        assert (calls[0] - before == 1) is again, i
    assert memo.hits == 4 and memo.misses == len(steps) - 4


def test_memo_inband_reuses_trust_independent_failures():
    memo = VcMemo()
    garbage = b"not.a.jwt"
    assert memo.inband(garbage, _tv()) is None
    assert memo.inband(garbage, _tv({"k1": _key(ISSUER_PK)})) is None
    assert (memo.hits, memo.misses) == (1, 1)  # no trust query was made, so no answer can differ


def test_memo_m4_is_keyed_by_token_and_author():
    c = claims(role="issuer_admin")
    tok = mint_vc(ISSUER, c)
    memo = VcMemo()
    for _ in range(2):
        assert memo.m4(tok, ISSUER_PK) == verify_vc_m4(tok, ISSUER_PK)
        assert memo.m4(tok, OTHER_PK) is None  # the same bytes under another author fail
    assert (memo.hits, memo.misses) == (2, 2)


def test_memo_is_bounded_and_eviction_never_changes_a_verdict():
    tokens = [mint_vc(ISSUER, claims(jti=f"c{i}")) for i in range(12)]
    want = [verify_vc_m4(t, ISSUER_PK) for t in tokens]
    tv = _tv({"k1": _key(ISSUER_PK)})
    want_inband = [verify_vc_inband(t, tv) for t in tokens]
    for bound in (0, 1, 5, 100):
        memo = VcMemo(max_entries=bound)
        for _ in range(3):
            for t, w, wi in zip(tokens, want, want_inband, strict=True):
                assert memo.m4(t, ISSUER_PK) == w
                assert memo.inband(t, tv) == wi
                assert len(memo) <= 2 * bound
        assert memo.hits == (2 * 2 * len(tokens) if bound >= len(tokens) else 0)
    memo = VcMemo(2)
    memo.m4(tokens[0], ISSUER_PK)
    memo.m4(tokens[1], ISSUER_PK)
    memo.m4(tokens[0], ISSUER_PK)  # touched: tokens[1] is now the least recently used
    memo.m4(tokens[2], ISSUER_PK)
    before = memo.hits
    memo.m4(tokens[0], ISSUER_PK)
    assert memo.hits == before + 1
    memo.clear()
    assert len(memo) == 0
    with pytest.raises(ValueError):
        VcMemo(-1)
