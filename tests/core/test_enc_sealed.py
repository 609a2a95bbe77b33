"""Sealed read keys (strict profile, docs/security.md "Sealed read keys"): libsodium sealed boxes
to X25519 keys derived from the readers' Ed25519 keys, the recipient set of a rotation, and the
read path that opens them with the reader's own key.

The attack "a revoked reader after the next KeyRotate" runs under both profiles: the reference
puts the key in the log in clear (the revoked reader decrypts on), strict leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from nacl.bindings import crypto_box_seal
from nacl.public import PrivateKey, SealedBox
from nacl.signing import SigningKey

from ecac.core.dag import Dag
from ecac.core.enc import (
    CONFIDENTIAL,
    SEALED_LEN,
    aad,
    decrypt,
    encrypt,
    log_keys,
    open_sealed,
    seal_key,
    try_decode_enc,
    x25519_public,
    x25519_secret,
)
from ecac.core.errors import EcacError
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import (
    AdminAppoint,
    Credential,
    Data,
    Grant,
    IssuerKey,
    KeyRotate,
    Op,
    Payload,
    Revoke,
    SealedKey,
    SealedKeyRotate,
    make_op,
)
from ecac.core.opcodec import encode_ops, read_log
from ecac.core.profile import genesis_op
from ecac.core.readpath import (
    live_readers,
    project_field_for_subject,
    rotation_problem,
    sealed_keys,
)
from ecac.core.replay import replay_full
from ecac.core.strict import build_strict_gate
from ecac.core.vc import cred_hash, editor_claims, mint_vc

ADMIN = key_pair(9, b"sealed/admin")
ISSUER = key_pair(9, b"sealed/issuer")
ALICE = key_pair(9, b"sealed/alice")  # a reader and writer of o.x
BOB = key_pair(9, b"sealed/bob")  # a reader who gets revoked
CAROL = key_pair(9, b"sealed/carol")  # an editor without 'confidential' in scope
MALLORY = key_pair(9, b"sealed/mallory")
KEY = bytes(range(32))
NONCE = bytes(24)

BOTH = pytest.mark.parametrize("strict_profile", [False, True], ids=["reference", "strict"])


def pk(sk: SigningKey) -> bytes:
    return public_key(sk)


# ---------------------------------------------------------------------- the box


def test_seal_open_round_trip_and_only_the_reader_opens() -> None:
    eph = bytes([7]) * 32
    box = seal_key(KEY, pk(ALICE), eph)
    assert len(box) == SEALED_LEN
    assert open_sealed(box, ALICE) == KEY
    assert open_sealed(box, BOB) is None
    assert seal_key(KEY, pk(ALICE), eph) == box  # a function of its inputs (the CLI draws eph)
    assert seal_key(KEY, pk(ALICE), bytes([8]) * 32) != box
    damaged = box[:-1] + bytes([box[-1] ^ 1])
    assert open_sealed(damaged, ALICE) is None
    assert open_sealed(box[:-1], ALICE) is None


def test_sealed_boxes_are_libsodiums_in_both_directions() -> None:
    box = seal_key(KEY, pk(ALICE), bytes([3]) * 32)
    assert SealedBox(PrivateKey(x25519_secret(ALICE))).decrypt(box) == KEY
    theirs = crypto_box_seal(KEY, x25519_public(pk(ALICE)))
    assert open_sealed(theirs, ALICE) == KEY


def test_seal_refuses_bad_inputs() -> None:
    with pytest.raises(EcacError, match="key must be 32 bytes"):
        seal_key(KEY[:31], pk(ALICE), bytes(32))
    with pytest.raises(EcacError, match="not a valid Ed25519 public key"):
        seal_key(KEY, bytes([2]) + bytes(31), bytes(32))


def test_sealed_key_rotate_round_trips_through_the_op_codec() -> None:
    p = SealedKeyRotate("confidential", 3, (SealedKey(pk(ALICE), seal_key(KEY, pk(ALICE), bytes(32))),))
    op = make_op(ADMIN, [], Hlc(1, 0, 1), p)
    (back,) = read_log(encode_ops([op]))
    assert back.payload == p and back.op_id == op.op_id
    assert KEY not in op.cbor  # nothing in clear


# ---------------------------------------------------------------------- a log under construction


class World:
    """Ops of one project: strict starts with a genesis naming ADMIN. ADMIN publishes ISSUER's key;
    grants are editor VCs signed by ISSUER. ``op`` signs on every current head unless told."""

    def __init__(self, strict_profile: bool) -> None:
        self.strict = strict_profile
        self.ops: list[Op] = []
        self.heads: set[bytes] = set()
        self.t = 100
        if strict_profile:
            self._add(genesis_op(ADMIN, "sealed", [pk(ADMIN)], Hlc(0, 0, 0)))
        self.op(ADMIN, IssuerKey("iss", "k0", "EdDSA", pk(ISSUER), 0, U64_MAX))
        self.eph = 0

    def _add(self, op: Op) -> Op:
        self.ops.append(op)
        self.heads -= set(op.parents)
        self.heads.add(op.op_id)
        return op

    def op(self, sk: SigningKey, payload: Payload, parents: Sequence[Op] | None = None) -> Op:
        self.t += 1
        ps = sorted(self.heads) if parents is None else [p.op_id for p in parents]
        return self._add(make_op(sk, ps, Hlc(self.t, 0, 1), payload))

    def grant(self, subject: SigningKey, scope: tuple[str, ...] = ("hv", "confidential")) -> Op:
        jti = f"j{len(self.ops)}"
        claims = editor_claims(
            pk(subject), nbf_ms=self.t, exp_ms=U64_MAX, scope=scope, role="editor", iss="iss", jti=jti
        )
        token = mint_vc(ISSUER, claims, kid="k0")
        self.op(ADMIN, Credential(jti, token))
        return self.op(ADMIN, Grant(pk(subject), cred_hash(token)))

    def revoke(self, subject: SigningKey, parents: Sequence[Op] | None = None) -> Op:
        return self.op(ADMIN, Revoke(pk(subject), "editor", ("confidential",), Hlc(0, 0, 0)), parents)

    def order(self) -> list[Op]:
        return Dag.from_ops(self.ops).topo_order()

    def rotate(
        self, version: int, key: bytes, author: SigningKey = ADMIN, parents: Sequence[Op] | None = None
    ) -> Op:
        """Reference: a clear KeyRotate. Strict: sealed to the live readers at these parents,
        as ``ecac keyrotate`` does."""
        if not self.strict:
            return self.op(author, KeyRotate(CONFIDENTIAL, version, key), parents)
        ps = sorted(self.heads) if parents is None else [p.op_id for p in parents]
        readers = live_readers(build_strict_gate(self.order()), CONFIDENTIAL, ps, Hlc(self.t + 1, 0, 1))
        boxes = []
        for r in readers:
            self.eph += 1
            boxes.append(SealedKey(r, seal_key(key, r, self.eph.to_bytes(32, "big"))))
        return self.op(author, SealedKeyRotate(CONFIDENTIAL, version, tuple(boxes)), parents)

    def write(self, author: SigningKey, plaintext: bytes, key: bytes, version: int) -> Op:
        """An o.x write encrypted under ``(confidential, version)`` with ``key``."""
        self.t += 1
        ps = sorted(self.heads)
        hlc = Hlc(self.t, 0, 1)
        enc = encrypt(key, NONCE, plaintext, aad(pk(author), hlc, ps, "o", "x"), CONFIDENTIAL, version)
        return self._add(make_op(author, ps, hlc, Data("mv:o:x", enc.to_cbor())))

    def show(self, reader: SigningKey, with_key: bool = True) -> str | None:
        dag = Dag.from_ops(self.ops)
        state, _ = replay_full(dag)
        sk = reader if with_key else None
        return project_field_for_subject(dag, state, pk(reader), lambda t, v: None, "o", "x", sk)


def readers_of(op: Op) -> list[bytes]:
    p = op.payload
    assert isinstance(p, SealedKeyRotate)
    return [b.reader_pk for b in p.boxes]


def strict_world() -> World:
    w = World(True)
    w.grant(ALICE)
    w.grant(BOB)
    w.grant(CAROL, scope=("hv",))
    return w


# ---------------------------------------------------------------------- recipients and reads (strict)


def test_a_rotation_seals_to_exactly_the_live_readers_of_the_tag() -> None:
    w = strict_world()
    rot = w.rotate(1, KEY)
    assert readers_of(rot) == sorted([pk(ALICE), pk(BOB)])  # CAROL's scope lacks 'confidential'
    assert KEY not in rot.cbor
    gate = build_strict_gate(w.order())
    assert rotation_problem(gate, rot) is None
    for r in (ALICE, BOB):
        assert sealed_keys(w.order()).for_reader(r).candidates(CONFIDENTIAL, 1) == (KEY,)
    assert sealed_keys(w.order()).for_reader(CAROL).candidates(CONFIDENTIAL, 1) == ()


def test_a_reader_decrypts_with_its_own_key_and_without_it_sees_redacted() -> None:
    w = strict_world()
    w.rotate(1, KEY)
    w.write(ALICE, b"top secret", KEY, 1)
    assert w.show(ALICE) == "top secret"
    assert w.show(BOB) == "top secret"
    assert w.show(BOB, with_key=False) is None  # redacted: no key, no plaintext
    assert w.show(CAROL) is None
    assert w.show(MALLORY) is None


def test_a_revoked_reader_is_left_out_of_the_next_rotation_and_cannot_read_under_it() -> None:
    w = strict_world()
    w.rotate(1, KEY)
    w.write(ALICE, b"old", KEY, 1)
    w.revoke(BOB)
    key2 = bytes([0x42]) * 32
    rot2 = w.rotate(2, key2)
    assert readers_of(rot2) == [pk(ALICE)]
    w.write(ALICE, b"new", key2, 2)
    assert w.show(ALICE) == "new"
    assert w.show(BOB) is None
    assert sealed_keys(w.order()).for_reader(BOB).candidates(CONFIDENTIAL, 2) == ()
    # and no bytes of the rotation open for BOB: not his box, not in clear
    assert all(open_sealed(b.sealed, BOB) is None for b in rot2.payload.boxes)  # type: ignore[union-attr]
    assert key2 not in rot2.cbor


def test_a_revoke_the_rotator_had_not_seen_excludes_the_reader_only_from_the_next_rotation() -> None:
    w = strict_world()
    before = list(w.ops)
    heads = [op for op in w.ops if op.op_id in w.heads]
    w.revoke(BOB, parents=heads)
    concurrent = w.rotate(1, KEY, parents=heads)  # signed without the revoke in its past
    assert pk(BOB) in readers_of(concurrent)
    later = w.rotate(2, bytes([9]) * 32)  # sees both
    assert readers_of(later) == [pk(ALICE)]
    assert len(w.ops) == len(before) + 3


def test_rotations_that_do_not_count() -> None:
    w = strict_world()
    forged = w.rotate(1, KEY, author=MALLORY)
    gate = build_strict_gate(w.order())
    assert "only the project's admins" in (rotation_problem(gate, forged) or "")
    assert sealed_keys(w.order()).max_version(CONFIDENTIAL) is None
    unsorted = w.op(
        ADMIN,
        SealedKeyRotate(
            CONFIDENTIAL,
            2,
            tuple(
                SealedKey(r, seal_key(KEY, r, bytes([5]) * 32))
                for r in sorted([pk(ALICE), pk(BOB)], reverse=True)
            ),
        ),
    )
    assert "ascending" in (rotation_problem(build_strict_gate(w.order()), unsorted) or "")
    # an appointed admin's rotation counts once the appointment is in its past
    w.op(ADMIN, AdminAppoint(pk(MALLORY)))
    ok = w.rotate(3, KEY, author=MALLORY)
    assert rotation_problem(build_strict_gate(w.order()), ok) is None
    assert sealed_keys(w.order()).max_version(CONFIDENTIAL) == 3


def test_a_clear_key_rotate_publishes_no_key_under_strict() -> None:
    w = strict_world()
    w.op(ADMIN, KeyRotate(CONFIDENTIAL, 1, KEY))
    w.write(ALICE, b"leaky", KEY, 1)
    assert sealed_keys(w.order()).max_version(CONFIDENTIAL) is None
    assert w.show(ALICE) is None  # the clear key is not a key source under strict
    # while the same op in a reference log is one
    assert log_keys(w.order()).candidates(CONFIDENTIAL, 1) == (KEY,)


def test_reference_logs_read_as_before() -> None:
    """No SealedKeyRotate, no reader key: the reference read path (policy verdict, log keys)."""
    w = World(False)
    w.grant(ALICE)
    w.rotate(1, KEY)
    w.write(ALICE, b"plain old", KEY, 1)
    assert not any(isinstance(op.payload, SealedKeyRotate) for op in w.ops)
    # the reference also needs a KeyGrant for the version (core §11.8): without one, redacted
    assert w.show(ALICE) is None
    with pytest.raises(EcacError, match="does not belong"):
        dag = Dag.from_ops(w.ops)
        project_field_for_subject(dag, replay_full(dag)[0], pk(ALICE), lambda t, v: None, "o", "x", BOB)


# ---------------------------------------------------------------------- the attack, both profiles


@BOTH
def test_attack_revoked_reader_after_the_next_key_rotate(strict_profile: bool) -> None:
    """BOB reads o.x until revoked; after the revoke the next rotation makes key version 2 and ALICE
    writes under it. Reference: version 2 is in the log in clear, BOB decrypts it. Strict: BOB got
    no box for version 2 and nothing in the log opens it for him."""
    w = World(strict_profile)
    w.grant(ALICE)
    w.grant(BOB)
    w.rotate(1, KEY)
    w.write(ALICE, b"before", KEY, 1)
    w.revoke(BOB)
    key2 = bytes([0x77]) * 32
    w.rotate(2, key2)
    new = w.write(ALICE, b"after the revoke", key2, 2)
    enc = try_decode_enc(new.payload.value)  # type: ignore[union-attr]
    assert enc is not None and enc.key_version == 2
    a = aad(new.author_pk, new.hlc, new.parents, "o", "x")
    order = w.order()
    if not strict_profile:
        # every key the log publishes is readable by anyone holding the op
        (k,) = log_keys(order).candidates(CONFIDENTIAL, 2)
        assert decrypt(k, enc, a) == b"after the revoke"
        return
    assert log_keys(order).candidates(CONFIDENTIAL, 2) == ()
    assert sealed_keys(order).for_reader(BOB).candidates(CONFIDENTIAL, 2) == ()
    assert w.show(BOB) is None
    assert w.show(ALICE) == "after the revoke"
    # BOB still holds version 1 (no retroactive secrecy): it opens data written before the revoke
    assert sealed_keys(order).for_reader(BOB).candidates(CONFIDENTIAL, 1) == (KEY,)
