"""Named, deterministic policy scenarios (core §16.2) and the op builders they use.

Each scenario is a function returning a list of signed ops (keys from ``key_pair``, fixed
HLCs), so ``ecac simulate <name>`` and ``ecac replay --explain`` print the same verdicts
on every machine. ``SCENARIOS`` maps a name to ``(builder, one-line description)``.

Conventions of core §16.2: one *admin* key is issuer and grantor; its IssuerKey op
(``issuer-1``/``k1``, valid ``[0, 2**64-1)``) is a root at ``{ms, 0, 0}``; a Credential op by
the issuer at ``{nbf, 0, 1}`` with no parents; the Grant by the admin at ``{nbf, 0, 2}``
with parents ``[credential]``; VCs with ``jti "test-cred-1"`` and status
``{id "list-0", index 0}``; data ops ``set+:o:x:<elem>`` with an empty value by the user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nacl.signing import SigningKey

from ecac.core import policyops
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import (
    Data,
    IssuerKeyRevoke,
    Op,
    make_op,
)
from ecac.core.vc import editor_claims, mint_vc

ADMIN = key_pair(1, b"policy/admin")
USER = key_pair(1, b"policy/user")
MALLORY = key_pair(1, b"policy/mallory")

ISSUER_ID = "issuer-1"
KEY_ID = "k1"


def pk(sk: SigningKey) -> bytes:
    return bytes(sk.verify_key)


# --------------------------------------------------------------------------- op builders


def issuer_key_op(
    signer: SigningKey = ADMIN,
    ms: int = 999,
    *,
    issuer_id: str = ISSUER_ID,
    key_id: str = KEY_ID,
    pubkey: bytes | None = None,
    valid_from_ms: int = 0,
    valid_until_ms: int = U64_MAX,
    parents: Sequence[bytes] = (),
) -> Op:
    """Publish ``pubkey`` (default: the signer's own key) for ``issuer_id`` at ``{ms, 0, 0}``."""
    return policyops.issuer_key_op(
        signer,
        parents,
        Hlc(ms, 0, 0),
        issuer_id,
        key_id,
        pubkey=pubkey,
        valid_from_ms=valid_from_ms,
        valid_until_ms=valid_until_ms,
    )


def vc_token(
    subject: SigningKey = USER,
    nbf_ms: int = 1000,
    exp_ms: int = 100_000,
    *,
    scope: tuple[str, ...] = ("hv",),
    role: str = "editor",
    iss: str = ISSUER_ID,
    signer: SigningKey = ADMIN,
    status: tuple[str, int] | None = ("list-0", 0),
    jti: str = "test-cred-1",
) -> bytes:
    """A compact-JWT VC in the reference layout (sorted claims, millisecond times)."""
    claims = editor_claims(
        pk(subject), nbf_ms=nbf_ms, exp_ms=exp_ms, scope=scope, role=role, iss=iss, jti=jti, status=status
    )
    return mint_vc(signer, claims)


def credential_op(token: bytes, nbf_ms: int, issuer: SigningKey = ADMIN, cred_id: str = "test-cred-1") -> Op:
    """The Credential op carrying ``token``: a root at ``{nbf, 0, 1}`` by the issuer."""
    return policyops.credential_op(issuer, (), Hlc(nbf_ms, 0, 1), token, cred_id)


def grant_op(cred: Op, subject: SigningKey = USER, grantor: SigningKey = ADMIN) -> Op:
    """The Grant of ``cred``'s VC to ``subject``: child of the credential at ``{nbf, 0, 2}``."""
    token = cred.payload.cred_bytes  # type: ignore[union-attr]
    return policyops.grant_op(grantor, (cred.op_id,), Hlc(cred.hlc.physical_ms, 0, 2), pk(subject), token)


def grant_pair(
    subject: SigningKey = USER,
    nbf_ms: int = 1000,
    exp_ms: int = 100_000,
    *,
    issuer: SigningKey = ADMIN,
    grantor: SigningKey = ADMIN,
    **vc: object,
) -> tuple[Op, Op]:
    """``(credential, grant)`` for a fresh VC signed by ``issuer``."""
    token = vc_token(subject, nbf_ms, exp_ms, signer=issuer, **vc)  # type: ignore[arg-type]
    cred = credential_op(token, nbf_ms, issuer)
    return cred, grant_op(cred, subject, grantor)


def data_op(
    parents: Sequence[bytes] | Op | None, hlc: Hlc, key: str, value: bytes = b"", author: SigningKey = USER
) -> Op:
    """A Data op; ``parents`` may be one op, a sequence of ids, or None for a root."""
    if parents is None:
        ps: Sequence[bytes] = ()
    elif isinstance(parents, Op):
        ps = (parents.op_id,)
    else:
        ps = parents
    return make_op(author, ps, hlc, Data(key, value))


def add(parent: Op | None, hlc: Hlc, elem: str, author: SigningKey = USER) -> Op:
    """``set+:o:x:<elem>`` with an empty value (the scenarios' data op)."""
    return data_op(parent, hlc, f"set+:o:x:{elem}", b"", author)


def revoke_op(
    parent: Op | None,
    hlc: Hlc,
    subject: SigningKey = USER,
    role: str = "editor",
    scope: tuple[str, ...] = ("hv",),
    revoker: SigningKey = ADMIN,
) -> Op:
    """A Revoke with ``at`` equal to its own HLC (``at`` is ignored by policy anyway)."""
    ps = () if parent is None else (parent.op_id,)
    return policyops.revoke_op(revoker, ps, hlc, pk(subject), role, scope)


def status_chunk_op(
    bits: bytes,
    ms: int,
    *,
    list_id: str = "list-0",
    issuer_id: str = ISSUER_ID,
    version: int = 1,
    signer: SigningKey = ADMIN,
) -> Op:
    """A one-chunk status list (LSB-first bits) with its correct SHA-256, as a root."""
    return policyops.status_chunk_op(signer, (), Hlc(ms, 0, 0), list_id, issuer_id, version, bits)


# --------------------------------------------------------------------------- S1–S4 (core §16.2)


def s1_revoke_closes_epochs() -> list[Op]:
    """S1: grant → add A → add B → Revoke → add C → add D; A and B survive."""
    ik = issuer_key_op(ms=999)
    cred, grant = grant_pair(nbf_ms=1000, exp_ms=100_000)
    a = add(grant, Hlc(1010, 0, 1), "A")
    b = add(a, Hlc(1020, 0, 1), "B")
    r = revoke_op(b, Hlc(1030, 0, 1))
    c = add(r, Hlc(1040, 0, 1), "C")
    d = add(c, Hlc(1050, 0, 1), "D")
    return [ik, cred, grant, a, b, r, c, d]


def s2_vc_time_window() -> list[Op]:
    """S2: VC [10000, 20000); writes at 5000, 15000, 25000; only OK (15000) survives."""
    ik = issuer_key_op(ms=1)
    cred, grant = grant_pair(nbf_ms=10_000, exp_ms=20_000)
    early = add(grant, Hlc(5000, 0, 1), "EARLY")
    ok = add(grant, Hlc(15_000, 0, 1), "OK")
    late = add(grant, Hlc(25_000, 0, 1), "LATE")
    return [ik, cred, grant, early, ok, late]


def s3_concurrent_adds() -> list[Op]:
    """S3: four concurrent children of the grant add V0..V3; any insertion order."""
    ik = issuer_key_op(ms=999)
    cred, grant = grant_pair(nbf_ms=1000, exp_ms=100_000)
    adds = [add(grant, Hlc(1100 + i, 0, i), f"V{i}") for i in range(4)]
    return [ik, cred, grant, *adds]


def s4_policy_split(with_issuer_key: bool = False) -> list[Op]:
    """S4: [cred1, g1, w1, r1, w2, cred2, g2, w3]; without an IssuerKey nothing verifies.

    With ``with_issuer_key`` an IssuerKey at ``{1,0,0}`` is added: MV ``o.x`` ends with
    winners {A, C} (A in the first epoch, B after the revoke, C after the re-grant).
    """
    cred1, g1 = grant_pair(nbf_ms=10, exp_ms=10_000)
    w1 = data_op(None, Hlc(11, 0, 1), "mv:o:x", b"A")
    r1 = revoke_op(None, Hlc(12, 0, 1))
    w2 = data_op(None, Hlc(13, 0, 1), "mv:o:x", b"B")
    cred2, g2 = grant_pair(nbf_ms=14, exp_ms=10_000)
    w3 = data_op(None, Hlc(15, 0, 1), "mv:o:x", b"C")
    ops = [cred1, g1, w1, r1, w2, cred2, g2, w3]
    if with_issuer_key:
        ops.insert(0, issuer_key_op(ms=1))
    return ops


# --------------------------------------------------------------------------- named policy scenarios


def grant_then_write() -> list[Op]:
    """A write inside the VC window after its Grant: ALLOWED."""
    ik = issuer_key_op()
    cred, grant = grant_pair()
    return [ik, cred, grant, add(grant, Hlc(1010, 0, 1), "A")]


def write_before_grant() -> list[Op]:
    """A write ordered before the Grant is DENIED (deny_wins): grants never act retroactively."""
    ik = issuer_key_op()
    early = add(None, Hlc(1000, 0, 0), "EARLY")  # sorts before the credential {1000,0,1}
    cred, grant = grant_pair()
    late = add(grant, Hlc(1010, 0, 1), "LATE")
    return [ik, early, cred, grant, late]


def revoke_then_write() -> list[Op]:
    """A write after a Revoke of its epoch is DENIED (revoked_cred); the earlier one stays."""
    ik = issuer_key_op()
    cred, grant = grant_pair()
    a = add(grant, Hlc(1010, 0, 1), "A")
    r = revoke_op(a, Hlc(1020, 0, 1))
    b = add(r, Hlc(1030, 0, 1), "B")
    return [ik, cred, grant, a, r, b]


def regrant_after_revoke() -> list[Op]:
    """Revoke closes only the open epoch; a later Grant opens a new one (A, C allowed; B not)."""
    ik = issuer_key_op()
    cred, grant = grant_pair()
    a = add(grant, Hlc(1010, 0, 1), "A")
    r = revoke_op(a, Hlc(1020, 0, 1))
    b = add(r, Hlc(1030, 0, 1), "B")
    cred2, grant2 = grant_pair(nbf_ms=1040, jti="test-cred-2")
    c = data_op([b.op_id, grant2.op_id], Hlc(1050, 0, 1), "set+:o:x:C")
    return [ik, cred, grant, a, r, b, cred2, grant2, c]


def expired_credential() -> list[Op]:
    """A write at or after the VC's exp is DENIED (expired_cred); one inside is allowed."""
    ik = issuer_key_op()
    cred, grant = grant_pair(nbf_ms=1000, exp_ms=2000)
    a = add(grant, Hlc(1500, 0, 1), "IN")
    b = add(a, Hlc(2000, 0, 1), "AT_EXP")
    return [ik, cred, grant, a, b]


def out_of_scope() -> list[Op]:
    """A VC scoped to ``mech`` may write ``o.s`` but not ``o.x`` (out_of_scope)."""
    ik = issuer_key_op()
    cred, grant = grant_pair(scope=("mech",))
    x = add(grant, Hlc(1010, 0, 1), "X")
    s = data_op(grant, Hlc(1020, 0, 1), "set+:o:s:e", b"v")
    return [ik, cred, grant, x, s]


def status_list_revocation() -> list[Op]:
    """A status bit set anywhere voids the VC for the whole log, even earlier writes (deny_wins)."""
    ik = issuer_key_op()
    cred, grant = grant_pair(status=("list-0", 0))
    a = add(grant, Hlc(1010, 0, 1), "A")
    chunk = status_chunk_op(b"\x01", 5000)  # bit 0, LSB-first
    b = add(a, Hlc(5010, 0, 1), "B")
    return [ik, cred, grant, a, chunk, b]


def issuer_key_revocation() -> list[Op]:
    """IssuerKeyRevoke at T voids every VC with nbf >= T, wherever it sits (deny_wins)."""
    ik = issuer_key_op()
    rev = make_op(ADMIN, (ik.op_id,), Hlc(1000, 0, 0), IssuerKeyRevoke(ISSUER_ID, KEY_ID, "compromised"))
    cred, grant = grant_pair(nbf_ms=1000)
    a = add(grant, Hlc(1010, 0, 1), "A")
    return [ik, rev, cred, grant, a]


def unknown_issuer() -> list[Op]:
    """A VC whose ``iss`` has no published key never verifies (deny_wins)."""
    ik = issuer_key_op()
    cred, grant = grant_pair(iss="issuer-2")
    return [ik, cred, grant, add(grant, Hlc(1010, 0, 1), "A")]


def issuer_admin_lockout() -> list[Op]:
    """Mallory self-issues issuer_admin (M4 accepts it) before the admin publishes its key:
    the admin's IssuerKey is then ignored, so the user's VC has no issuer (deny_wins)."""
    m_cred, m_grant = grant_pair(
        MALLORY, 500, U64_MAX, issuer=MALLORY, grantor=MALLORY, role="issuer_admin", scope=("trust",)
    )
    ik = issuer_key_op(ms=999)
    cred, grant = grant_pair()
    return [m_cred, m_grant, ik, cred, grant, add(grant, Hlc(1010, 0, 1), "A")]


def forged_credential_signature() -> list[Op]:
    """A VC claiming ``issuer-1`` but signed by Mallory fails verification (deny_wins)."""
    ik = issuer_key_op()
    cred, grant = grant_pair(issuer=MALLORY)
    return [ik, cred, grant, add(grant, Hlc(1010, 0, 1), "A")]


def s4_with_issuer_key() -> list[Op]:
    """S4 plus an IssuerKey at {1,0,0}: MV o.x ends with winners A and C."""
    return s4_policy_split(with_issuer_key=True)


#: name -> builder; every builder is deterministic (same ops, same ids, every call)
SCENARIOS: dict[str, Callable[[], list[Op]]] = {
    "grant-then-write": grant_then_write,
    "write-before-grant": write_before_grant,
    "revoke-then-write": revoke_then_write,
    "regrant-after-revoke": regrant_after_revoke,
    "expired-credential": expired_credential,
    "out-of-scope": out_of_scope,
    "status-list-revocation": status_list_revocation,
    "issuer-key-revocation": issuer_key_revocation,
    "unknown-issuer": unknown_issuer,
    "issuer-admin-lockout": issuer_admin_lockout,
    "forged-credential-signature": forged_credential_signature,
    "s1": s1_revoke_closes_epochs,
    "s2": s2_vc_time_window,
    "s3": s3_concurrent_adds,
    "s4": s4_policy_split,
    "s4-with-issuer-key": s4_with_issuer_key,
}

#: name -> one-line description (for ``ecac simulate --list`` and help texts)
DESCRIPTIONS: dict[str, str] = {
    "grant-then-write": "write inside a granted epoch is allowed",
    "write-before-grant": "write ordered before the Grant is denied (no retroactivity)",
    "revoke-then-write": "write after a Revoke is denied (revoked_cred)",
    "regrant-after-revoke": "a Grant after a Revoke opens a new epoch",
    "expired-credential": "write at/after the VC's exp is denied (expired_cred)",
    "out-of-scope": "write to a resource outside the VC scope is denied (out_of_scope)",
    "status-list-revocation": "a status-list bit voids the VC for the whole log",
    "issuer-key-revocation": "IssuerKeyRevoke at T voids VCs with nbf >= T",
    "unknown-issuer": "VC from an issuer with no published key is never valid",
    "issuer-admin-lockout": "a self-issued issuer_admin locks others out of trust ops",
    "forged-credential-signature": "VC signed by the wrong key is rejected",
    "s1": "core §16.2 S1: Revoke closes epochs by position",
    "s2": "core §16.2 S2: the VC time window [nbf, exp)",
    "s3": "core §16.2 S3: concurrent adds converge in any insertion order",
    "s4": "core §16.2 S4: no IssuerKey, so every write is denied",
    "s4-with-issuer-key": "core §16.2 S4 plus an IssuerKey: winners A and C",
}
