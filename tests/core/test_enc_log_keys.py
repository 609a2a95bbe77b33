"""Tag keys read from the log's KeyRotate ops (core §15 puts them there in clear): every replica
that holds the op can decrypt, and key versions are counted from the log."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from ecac.core.dag import Dag
from ecac.core.enc import aad, encrypt, log_keys, next_key_version
from ecac.core.errors import EcacError
from ecac.core.hlc import U32_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import KeyGrant, KeyRotate, Op, make_op
from ecac.core.readpath import project_field_for_subject
from ecac.core.replay import replay_full
from ecac.core.vc import cred_hash
from ecac.testing.scenarios import ADMIN, USER, data_op, grant_pair, issuer_key_op, pk

WRITER = key_pair(1, b"enc-log/writer")
OTHER = key_pair(1, b"enc-log/other")
K1 = bytes(range(32))
K1_OTHER = bytes(range(1, 33))
NONCE = bytes(range(100, 124))


def rotate(parent: Op, key: bytes, version: int = 1, author: SigningKey = ADMIN, ms: int = 1400) -> Op:
    return make_op(author, (parent.op_id,), Hlc(ms, 0, 1), KeyRotate("confidential", version, key))


def _log(rotations: list[tuple[bytes, int]], seal_with: bytes, version: int = 1) -> list[Op]:
    """Writer and USER are editors on confidential; USER has a KeyGrant of ``version``; the
    KeyRotate ops publish ``rotations``; the writer seals o.x with ``seal_with``."""
    scope = ("confidential",)
    ik = issuer_key_op()
    wc, wg = grant_pair(WRITER, scope=scope, status=None, jti="writer")
    uc, ug = grant_pair(USER, scope=scope, status=None, jti="reader")
    token = uc.payload.cred_bytes  # type: ignore[union-attr]
    kg = make_op(
        ADMIN, (ug.op_id,), Hlc(1500, 0, 1), KeyGrant(pk(USER), "confidential", version, cred_hash(token))
    )
    ops = [ik, wc, wg, uc, ug, kg]
    last = kg
    for i, (key, v) in enumerate(rotations):
        last = rotate(last, key, v, ms=1600 + i)
        ops.append(last)
    parents = sorted([last.op_id, wg.op_id])
    hlc = Hlc(2000, 0, 1)
    sealed = encrypt(
        seal_with, NONCE, b"secret", aad(pk(WRITER), hlc, parents, "o", "x"), "confidential", version
    )
    ops.append(data_op(parents, hlc, "mv:o:x", sealed.to_cbor(), WRITER))
    return ops


def show(
    ops: list[Op], subject: SigningKey, keyring: dict[tuple[str, int], bytes] | None = None
) -> str | None:
    dag = Dag()
    assert not dag.admit_and_insert(ops)
    state, _ = replay_full(dag)
    ring = keyring or {}
    return project_field_for_subject(dag, state, pk(subject), lambda t, v: ring.get((t, v)), "o", "x")


def test_log_keys_collects_distinct_keys_in_log_order() -> None:
    ik = issuer_key_op()
    ops = [
        ik,
        rotate(ik, K1, 1),
        rotate(ik, K1, 1, author=USER),  # the same key again: kept once
        rotate(ik, K1_OTHER, 1, ms=1401),  # a concurrent rotation to "version 1" elsewhere
        rotate(ik, b"short", 2),  # not a 32-byte key: ignored
        rotate(ik, K1_OTHER, 3),
    ]
    lk = log_keys(ops)
    assert lk.candidates("confidential", 1) == (K1, K1_OTHER)
    assert lk.candidates("confidential", 2) == ()
    assert lk.candidates("hv", 1) == ()
    assert lk.max_version("confidential") == 3 and lk.max_version("hv") is None
    assert lk.newest("confidential") == (3, K1_OTHER) and lk.newest("hv") is None
    assert log_keys([]).keys == {}


def test_next_key_version_counts_from_log_and_keyring() -> None:
    assert next_key_version("t", None, None) == 1
    assert next_key_version("t", 4, None) == 5  # a second node continues the log's sequence
    assert next_key_version("t", 4, 6) == 7
    assert next_key_version("t", None, 2) == 3
    with pytest.raises(EcacError, match="key_version overflow"):
        next_key_version("t", U32_MAX, None)


def test_a_replica_without_the_keyring_decrypts_with_the_logs_key() -> None:
    ops = _log([(K1, 1)], seal_with=K1)
    assert show(ops, USER) == "secret"  # no keyring at all
    assert show(ops, OTHER) is None  # the key in the log is not a read right: no role, no KeyGrant
    assert show(ops, WRITER) is None  # editor, but no KeyGrant


def test_without_a_keyrotate_op_nothing_opens() -> None:
    ops = _log([], seal_with=K1)
    assert show(ops, USER) is None
    assert show(ops, USER, {("confidential", 1): K1}) == "secret"  # the keyring still works as a cache


def test_every_published_key_of_a_version_is_tried() -> None:
    # two KeyRotate ops claim version 1 with different keys; the value opens with the second
    ops = _log([(K1_OTHER, 1), (K1, 1)], seal_with=K1)
    assert show(ops, USER) == "secret"
    # a wrong cached key does not hide the log's right one
    assert show(ops, USER, {("confidential", 1): bytes(32)}) == "secret"
    # a key for another version does not open it
    assert show(_log([(K1, 2)], seal_with=K1), USER) is None
