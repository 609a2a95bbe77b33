"""The encryption envelope (core §15) and the subject read path (core §11.8), without I/O."""

from __future__ import annotations

import blake3
import pytest
from nacl.signing import SigningKey

from ecac.core.codec import dumps
from ecac.core.dag import Dag
from ecac.core.enc import EncV1, aad, decode_enc, decrypt, derive_tag_key, encrypt, try_decode_enc
from ecac.core.errors import DecodeError, EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import KeyGrant, Op, make_op
from ecac.core.readpath import project_field_for_subject
from ecac.core.replay import replay_full
from ecac.core.vc import cred_hash
from ecac.testing.scenarios import ADMIN, USER, data_op, grant_pair, issuer_key_op, pk, revoke_op

KEY = bytes(range(32))
NONCE = bytes(range(100, 124))
ENC = EncV1("confidential", 1, bytes(24), bytes(16), b"\x01\xff")


def test_encv1_exact_bytes_in_field_order() -> None:
    expected = (
        b"\xa5"
        + b"\x63tag" + b"\x6cconfidential"
        + b"\x6bkey_version" + b"\x01"
        + b"\x65nonce" + b"\x98\x18" + b"\x00" * 24
        + b"\x68aead_tag" + b"\x90" + b"\x00" * 16
        + b"\x62ct" + b"\x82\x01\x18\xff"
    )  # fmt: skip
    assert ENC.to_cbor() == expected
    assert decode_enc(expected) == ENC


def _fields() -> list[object]:
    return ["confidential", 1, [0] * 24, [0] * 16, [1, 255]]


@pytest.mark.parametrize(
    "obj",
    [
        dict(zip(("tag", "key_version", "nonce", "aead_tag", "ct"), _fields(), strict=True)) | {"extra": 7},
        dict(enumerate(_fields())),
        _fields(),
    ],
    ids=["map-with-extra-key", "int-keyed-map", "array"],
)
def test_detection_accepts_the_serde_forms(obj: object) -> None:
    assert try_decode_enc(dumps(obj)) == ENC


@pytest.mark.parametrize(
    "value",
    [
        b"hello",
        b"",
        dumps("confidential"),
        dumps(_fields()[:4]),
        dumps({"tag": "t", "key_version": 1, "nonce": [0] * 24, "aead_tag": [0] * 16}),
        dumps(["t", 1, [0] * 23, [0] * 16, []]),
        dumps(["t", 1, [0] * 24, [0] * 15, []]),
        dumps(["t", -1, [0] * 24, [0] * 16, []]),
        dumps(["t", 2**32, [0] * 24, [0] * 16, []]),
        dumps(["t", 1, [0] * 24, [0] * 16, b"\x01"]),  # ct as a CBOR byte string
        dumps([1, 1, [0] * 24, [0] * 16, []]),
        ENC.to_cbor() + b"\x00",
    ],
)
def test_detection_rejects_everything_else(value: bytes) -> None:
    assert try_decode_enc(value) is None
    with pytest.raises(DecodeError):
        decode_enc(value)


AUTHOR = bytes([7]) * 32
P1, P2 = bytes([1]) * 32, bytes([2]) * 32


def test_aad_byte_layout() -> None:
    hlc = Hlc(0x0102030405060708, 9, 5)
    pre = b"ECAC_AAD" + AUTHOR + bytes.fromhex("0102030405060708") + (9).to_bytes(8, "big")
    assert aad(AUTHOR, hlc, [P1, P2], "o", "x") == blake3.blake3(pre + P1 + P2 + b"ox").digest()
    assert aad(AUTHOR, hlc, [], "ü", "") == blake3.blake3(pre + "ü".encode()).digest()
    # node_id is not bound; parent order is
    assert aad(AUTHOR, Hlc(hlc.physical_ms, 9, 99), [P1, P2], "o", "x") == aad(
        AUTHOR, hlc, [P1, P2], "o", "x"
    )
    assert aad(AUTHOR, hlc, [P2, P1], "o", "x") != aad(AUTHOR, hlc, [P1, P2], "o", "x")


def test_aad_keeps_the_separator_collision() -> None:
    hlc = Hlc(1, 2, 3)
    assert aad(AUTHOR, hlc, [], "ab", "c") == aad(AUTHOR, hlc, [], "a", "bc")


def test_encrypt_decrypt_round_trip_with_fixed_nonce() -> None:
    a = aad(AUTHOR, Hlc(5, 0, 1), [P1], "o", "x")
    enc = encrypt(KEY, NONCE, b"secret", a, "confidential", 3)
    assert enc == encrypt(KEY, NONCE, b"secret", a, "confidential", 3)  # deterministic given the nonce
    assert (enc.tag, enc.key_version, enc.nonce) == ("confidential", 3, NONCE)
    assert len(enc.ct) == 6 and len(enc.aead_tag) == 16 and enc.ct != b"secret"
    assert decrypt(KEY, decode_enc(enc.to_cbor()), a) == b"secret"


def test_decrypt_fails_on_any_change() -> None:
    a = aad(AUTHOR, Hlc(5, 0, 1), [P1], "o", "x")
    enc = encrypt(KEY, NONCE, b"secret", a, "confidential", 1)
    bad = [
        (KEY, EncV1(enc.tag, 1, enc.nonce, enc.aead_tag, bytes([enc.ct[0] ^ 1]) + enc.ct[1:]), a),
        (KEY, EncV1(enc.tag, 1, enc.nonce, bytes(16), enc.ct), a),
        (KEY, EncV1(enc.tag, 1, bytes(24), enc.aead_tag, enc.ct), a),
        (KEY, enc, aad(AUTHOR, Hlc(5, 0, 1), [P1], "o", "y")),
        (bytes(32), enc, a),
    ]
    for key, e, ad in bad:
        with pytest.raises(EcacError, match="decryption failed"):
            decrypt(key, e, ad)
    with pytest.raises(EcacError, match="nonce must be 24 bytes"):
        encrypt(KEY, bytes(12), b"x", a, "t", 1)


def test_keyrotate_derivation() -> None:
    uuid = bytes(range(16))
    assert (
        derive_tag_key(uuid, "confidential", 2)
        == blake3.blake3(uuid + b"confidential\x00\x00\x00\x02").digest()
    )
    assert derive_tag_key(uuid, "confidential", 1) != derive_tag_key(uuid, "confidential", 2)
    with pytest.raises(EcacError):
        derive_tag_key(bytes(8), "t", 1)


# --------------------------------------------------------------------------- read path (core §11.8)

WRITER = key_pair(1, b"enc/writer")
OTHER = key_pair(1, b"enc/other")


def _keygrant(parent: Op, subject: SigningKey, cred: Op, version: int = 1) -> Op:
    token = cred.payload.cred_bytes  # type: ignore[union-attr]
    payload = KeyGrant(pk(subject), "confidential", version, cred_hash(token))
    return make_op(ADMIN, (parent.op_id,), Hlc(1500, 0, 1), payload)


def _log(*, grant_version: int = 1, revoke_reader: bool = False, plaintext: bytes | None = None) -> list[Op]:
    """Writer (editor on confidential) writes o.x; USER holds editor + a KeyGrant on confidential."""
    scope = ("confidential",)
    ik = issuer_key_op()
    wc, wg = grant_pair(WRITER, scope=scope, status=None, jti="writer")
    uc, ug = grant_pair(USER, scope=scope, status=None, jti="reader")
    kg = _keygrant(ug, USER, uc, grant_version)
    ops = [ik, wc, wg, uc, ug, kg]
    last = kg
    if revoke_reader:
        last = revoke_op(kg, Hlc(1600, 0, 1), USER, "editor", scope)
        ops.append(last)
    parents = sorted([last.op_id, wg.op_id])
    hlc = Hlc(2000, 0, 1)
    if plaintext is None:
        value = encrypt(KEY, NONCE, b"secret", aad(pk(WRITER), hlc, parents, "o", "x"), "confidential", 1)
        ops.append(data_op(parents, hlc, "mv:o:x", value.to_cbor(), WRITER))
    else:
        ops.append(data_op(parents, hlc, "mv:o:x", plaintext, WRITER))
    return ops


def _show(ops: list[Op], subject: SigningKey, keys: dict[tuple[str, int], bytes] | None = None) -> str | None:
    dag = Dag()
    assert not dag.admit_and_insert(ops)
    state, _ = replay_full(dag)
    assert state.get_field("o", "x") is not None  # the write passed the gate
    lookup = {("confidential", 1): KEY} if keys is None else keys
    return project_field_for_subject(dag, state, pk(subject), lambda t, v: lookup.get((t, v)), "o", "x")


def test_plaintext_is_shown_to_anyone() -> None:
    assert _show(_log(plaintext=b"hello"), OTHER) == "hello"
    assert _show(_log(plaintext=b"\xff\x00"), OTHER) == "ff00"  # not UTF-8 -> hex


def test_encrypted_readable_with_live_role_and_keygrant() -> None:
    assert _show(_log(), USER) == "secret"


def test_encrypted_denied_without_keygrant_or_role() -> None:
    assert _show(_log(), OTHER) is None  # no role, no KeyGrant
    assert _show(_log(), WRITER) is None  # editor on confidential, but no KeyGrant


def test_wrong_key_version_or_missing_key_is_denied() -> None:
    assert _show(_log(grant_version=2), USER) is None
    assert _show(_log(), USER, keys={}) is None
    assert _show(_log(), USER, keys={("confidential", 1): bytes(32)}) is None  # AEAD fails


def test_revoked_subject_is_denied() -> None:
    assert _show(_log(revoke_reader=True), USER) is None


def test_missing_field_and_set_field() -> None:
    root = data_op(None, Hlc(1000, 0, 1), 'set+:o:s:a"b', b"\x01", WRITER)  # no policy: no gate
    dag = Dag()
    assert not dag.admit_and_insert([root])
    state, _ = replay_full(dag)
    assert project_field_for_subject(dag, state, pk(USER), lambda t, v: None, "o", "nope") is None
    assert project_field_for_subject(dag, state, pk(USER), lambda t, v: None, "zz", "x") is None
    # sets are never redacted, and element keys are not JSON-escaped (reference quirk)
    got = project_field_for_subject(dag, state, pk(USER), lambda t, v: None, "o", "s")
    assert got == '[{"key":"a"b","value":"01"}]'


def test_earlier_plaintext_winner_hides_later_encrypted_ones() -> None:
    """Concurrent winners are walked in op_id order; a denial anywhere before the end gives None."""
    enc_ops = _log()
    plain = data_op(enc_ops[-1].parents, enc_ops[-1].hlc, "mv:o:x", b"plain", WRITER)
    dag = Dag()
    assert not dag.admit_and_insert([*enc_ops, plain])
    state, _ = replay_full(dag)
    enc_first = enc_ops[-1].op_id < plain.op_id
    got = project_field_for_subject(dag, state, pk(OTHER), lambda t, v: None, "o", "x")
    assert got == (None if enc_first else "plain")
    got_user = project_field_for_subject(dag, state, pk(USER), lambda t, v: KEY, "o", "x")
    assert got_user == ("secret" if enc_first else "plain")
