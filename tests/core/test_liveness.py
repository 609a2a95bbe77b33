"""Who a strict node serves (``ecac.core.liveness``): admins, live grants, revoked, expired, untrusted."""

from __future__ import annotations

from nacl.signing import SigningKey

from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.liveness import (
    NO_GRANT,
    NOT_LOADED,
    REVOKED,
    LiveSubjects,
    live_subjects,
    newest_ms,
    subject_is_live,
)
from ecac.core.op import AdminAppoint, Credential, Grant, IssuerKey, Op, Payload, Revoke, make_op
from ecac.core.profile import genesis_op
from ecac.core.strict import EXPIRED_CRED, SELF_ISSUED, UNTRUSTED_ISSUER, build_strict_gate
from ecac.core.vc import cred_hash, editor_claims, mint_vc

ADMIN = key_pair(9, b"live/admin")
ISSUER = key_pair(9, b"live/issuer")
READER = key_pair(9, b"live/reader")
EDITOR = key_pair(9, b"live/editor")
OLD = key_pair(9, b"live/old")
SELF = key_pair(9, b"live/self")
APPOINTEE = key_pair(9, b"live/appointee")
NOBODY = key_pair(9, b"live/nobody")


class Log:
    def __init__(self) -> None:
        self.ops = [genesis_op(ADMIN, "p", [public_key(ADMIN)], Hlc(1, 0, 0))]
        self.t = 10

    def op(self, sk: SigningKey, payload: Payload) -> Op:
        self.t += 1
        op = make_op(sk, [self.ops[-1].op_id], Hlc(self.t, 0, 0), payload)
        self.ops.append(op)
        return op

    def grant(self, subject: SigningKey, role: str, exp_ms: int = U64_MAX, signer: SigningKey = ISSUER) -> Op:
        claims = editor_claims(
            public_key(subject),
            nbf_ms=self.t,
            exp_ms=exp_ms,
            role=role,
            iss="iss",
            jti=f"j{self.t}",
            status=None,
        )
        token = mint_vc(signer, claims)
        self.op(ADMIN, Credential(f"j{self.t}", token))
        return self.op(ADMIN, Grant(public_key(subject), cred_hash(token)))


def test_live_subjects_follow_the_strict_gate() -> None:
    log = Log()
    log.op(ADMIN, IssuerKey("iss", "k0", "EdDSA", public_key(ISSUER), 0, U64_MAX))
    log.op(ADMIN, IssuerKey("self", "k0", "EdDSA", public_key(SELF), 0, U64_MAX))
    log.grant(READER, "reader")
    log.grant(EDITOR, "editor")
    log.grant(OLD, "editor", exp_ms=20)
    log.grant(SELF, "editor", signer=SELF)  # self-issued: no role
    revoked = key_pair(9, b"live/revoked")
    log.grant(revoked, "editor")
    log.op(ADMIN, Revoke(public_key(revoked), "editor", ("hv",), Hlc(0, 0, 0)))
    log.op(ADMIN, AdminAppoint(public_key(APPOINTEE)))
    gate = build_strict_gate(log.ops)
    live = live_subjects(gate, newest_ms(log.ops), len(log.ops))
    assert live.frontier_ms == log.t and live.ops == len(log.ops)
    assert subject_is_live(live, public_key(ADMIN)) is None
    assert subject_is_live(live, public_key(APPOINTEE)) is None  # appointed admins too
    assert subject_is_live(live, public_key(READER)) is None and live.roles[public_key(READER)] == ("reader",)
    assert subject_is_live(live, public_key(EDITOR)) is None
    assert subject_is_live(live, public_key(revoked)) == REVOKED
    assert subject_is_live(live, public_key(OLD)) == EXPIRED_CRED  # VC window ended before the frontier
    assert subject_is_live(live, public_key(SELF)) in (SELF_ISSUED, UNTRUSTED_ISSUER)
    assert subject_is_live(live, public_key(NOBODY)) == NO_GRANT


def test_a_re_grant_after_the_revoke_is_live_again() -> None:
    log = Log()
    log.op(ADMIN, IssuerKey("iss", "k0", "EdDSA", public_key(ISSUER), 0, U64_MAX))
    log.grant(READER, "reader")
    log.op(ADMIN, Revoke(public_key(READER), "reader", ("hv",), Hlc(0, 0, 0)))
    gate = build_strict_gate(log.ops)
    assert subject_is_live(live_subjects(gate, newest_ms(log.ops)), public_key(READER)) == REVOKED
    log.grant(READER, "reader")
    gate = build_strict_gate(log.ops)
    assert subject_is_live(live_subjects(gate, newest_ms(log.ops)), public_key(READER)) is None


def test_before_the_state_is_loaded_only_genesis_admins_are_live() -> None:
    live = LiveSubjects.admins_only([public_key(ADMIN)])
    assert subject_is_live(live, public_key(ADMIN)) is None
    assert subject_is_live(live, public_key(READER)) == NOT_LOADED
