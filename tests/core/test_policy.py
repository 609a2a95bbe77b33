"""Epochs, the write gate, deny reasons and read control (core §11.4–§11.8, §16.2–§16.3).

Orders are given explicitly here (policy works on a total order, not on a DAG), so each
test states exactly which position every op has.
"""

from __future__ import annotations

import hashlib

import pytest

from ecac.bench.policy import gen_policy_heavy
from ecac.core.dag import Dag
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Credential, Grant, IssuerKeyRevoke, KeyGrant, Op, Revoke, StatusListChunk, make_op
from ecac.core.policy import (
    DENY_WINS,
    EXPIRED_CRED,
    OUT_OF_SCOPE,
    READ_POLICY_KINDS,
    REVOKED_CRED,
    Epoch,
    EpochIndex,
    GateBuilder,
    KeyEpoch,
    build_read_index,
    build_write_gate,
    epochs_m4,
    epochs_with_files,
    epochs_with_trustview,
    explain,
    has_policy,
    has_read_policy,
    trust_view_for,
)
from ecac.core.resources import SET_ADD, SET_FIELD, SET_REM, derive_action_and_tags, tags_for
from ecac.core.trust import MemoryStatusCache, TrustStore, TrustView
from ecac.core.vc import VcMemo, cred_hash
from ecac.testing import scenarios
from ecac.testing.scenarios import (
    ADMIN,
    SCENARIOS,
    USER,
    add,
    data_op,
    grant_op,
    grant_pair,
    issuer_key_op,
    revoke_op,
    vc_token,
)

USER_PK = bytes(USER.verify_key)
OTHER = key_pair(1, b"policy-test/other")
HV = frozenset({"hv"})
MECH = frozenset({"mech"})
TAGS_OX = tags_for("o", "x")
TAGS_OS = tags_for("o", "s")


def idx_of(*epochs: Epoch, role: str = "editor", key_epochs=None) -> EpochIndex:
    return EpochIndex.from_entries({(USER_PK, role): list(epochs)} if epochs else {}, key_epochs)


# --------------------------------------------------------------------------- deny reasons (§11.6, §16.3)


def test_deny_reason_revoked():
    idx = idx_of(Epoch(HV, 0, 5))
    assert not idx.is_permitted_at_pos(USER_PK, SET_FIELD, HV, 6, Hlc(1, 0, 0))
    assert idx.deny_reason(USER_PK, SET_FIELD, HV, 6, Hlc(1, 0, 0)) == REVOKED_CRED


def test_deny_reason_expired():
    idx = idx_of(Epoch(HV, 0, None, None, Hlc(10, 0, 0)))
    assert not idx.is_permitted_at_pos(USER_PK, SET_FIELD, HV, 1, Hlc(20, 0, 3))
    assert idx.deny_reason(USER_PK, SET_FIELD, HV, 1, Hlc(20, 0, 3)) == EXPIRED_CRED


def test_deny_reason_out_of_scope():
    idx = idx_of(Epoch(MECH, 0))
    assert idx.deny_reason(USER_PK, SET_FIELD, HV, 1, Hlc(1, 0, 0)) == OUT_OF_SCOPE


def test_deny_reason_generic():
    assert EpochIndex().deny_reason(USER_PK, SET_FIELD, HV, 1, Hlc(1, 0, 0)) == DENY_WINS
    # before nbf, and a grant after the op, are also generic
    idx = idx_of(Epoch(HV, 0, None, Hlc(10, 0, 0), Hlc(20, 0, 0)))
    assert idx.deny_reason(USER_PK, SET_FIELD, HV, 1, Hlc(5, 0, 0)) == DENY_WINS
    assert idx_of(Epoch(HV, 5)).deny_reason(USER_PK, SET_FIELD, HV, 1, Hlc(1, 0, 0)) == DENY_WINS
    # a role that cannot write contributes no reason
    admin = idx_of(Epoch(HV, 5, 6), role="issuer_admin")
    assert admin.deny_reason(USER_PK, SET_FIELD, HV, 9, Hlc(1, 0, 0)) == DENY_WINS


def test_deny_reason_priority():
    revoked = Epoch(HV, 0, 2)
    expired = Epoch(HV, 3, None, None, Hlc(10, 0, 0))
    scoped = Epoch(MECH, 3)
    at = (USER_PK, SET_FIELD, HV, 5, Hlc(20, 0, 0))
    assert idx_of(revoked, expired, scoped).deny_reason(*at) == REVOKED_CRED
    assert idx_of(expired, scoped).deny_reason(*at) == EXPIRED_CRED
    assert idx_of(scoped).deny_reason(*at) == OUT_OF_SCOPE
    assert idx_of(scoped, revoked).deny_reason(*at) == REVOKED_CRED


def test_gate_windows_are_half_open():
    idx = idx_of(Epoch(HV, 2, 5, Hlc(10, 0, 0), Hlc(20, 0, 0)))

    def ok(pos: int, hlc: Hlc) -> bool:
        return idx.is_permitted_at_pos(USER_PK, SET_ADD, TAGS_OX, pos, hlc)

    assert ok(2, Hlc(10, 0, 0)) and ok(4, Hlc(19, 99, 99))
    assert not ok(1, Hlc(15, 0, 0)) and not ok(5, Hlc(15, 0, 0))
    assert not ok(3, Hlc(9, 9, 9)) and not ok(3, Hlc(20, 0, 0))
    assert not idx.is_permitted_at_pos(OTHER.verify_key.encode(), SET_ADD, TAGS_OX, 3, Hlc(15, 0, 0))
    assert not idx.is_permitted_at_pos(USER_PK, "Delete", TAGS_OX, 3, Hlc(15, 0, 0))
    assert not idx.is_permitted_at_pos(USER_PK, SET_ADD, frozenset(), 3, Hlc(15, 0, 0))


def test_only_editor_writes():
    for role in ("issuer_admin", "viewer", "Editor", "confidential_reader"):
        idx = idx_of(Epoch(HV, 0), role=role)
        assert not idx.is_permitted_at_pos(USER_PK, SET_FIELD, HV, 1, Hlc(1, 0, 0))
    for action in (SET_FIELD, SET_ADD, SET_REM):
        assert idx_of(Epoch(HV, 0)).is_permitted_at_pos(USER_PK, action, HV, 1, Hlc(1, 0, 0))


# --------------------------------------------------------------------------- read control (§11.8, §16.3)


def _read_idx(role="editor", scope=frozenset({"confidential"}), key=("confidential", 1)):
    keys = {USER_PK: [KeyEpoch(key[0], key[1], Hlc(0, 0, 0), Hlc(100, 0, 0))]} if key else None
    return idx_of(Epoch(scope, 0, None, Hlc(0, 0, 0), Hlc(100, 0, 0)), role=role, key_epochs=keys)


def test_read_allowed_with_epoch_and_key():
    assert _read_idx().can_read_tag_version(USER_PK, "confidential", 1, 3, Hlc(50, 0, 0))


def test_read_denied_without_keygrant_or_wrong_version_or_time():
    assert not _read_idx(key=None).can_read_tag_version(USER_PK, "confidential", 1, 3, Hlc(50, 0, 0))
    assert not _read_idx().can_read_tag_version(USER_PK, "confidential", 2, 3, Hlc(50, 0, 0))
    assert not _read_idx().can_read_tag_version(USER_PK, "confidential", 1, 3, Hlc(100, 0, 0))


def test_read_denied_when_role_cannot_read_or_scope_disjoint():
    assert not _read_idx(role="viewer").can_read_tag_version(USER_PK, "confidential", 1, 3, Hlc(50, 0, 0))
    assert not _read_idx(scope=HV).can_read_tag_version(USER_PK, "confidential", 1, 3, Hlc(50, 0, 0))


# --------------------------------------------------------------------------- epoch construction (§11.4)


def _vc(nbf=1000, exp=100_000, scope=("hv",), subject=USER, **kw) -> bytes:
    return vc_token(subject, nbf, exp, scope=scope, **kw)


def _cred(token: bytes, ms: int = 1000) -> Op:
    return make_op(ADMIN, (), Hlc(ms, 0, 1), Credential("c", token))


def _grant(token: bytes, subject_pk: bytes = USER_PK, ms: int = 1000, author=ADMIN) -> Op:
    return make_op(author, (), Hlc(ms, 0, 2), Grant(subject_pk, cred_hash(token)))


def _revoke(scope=("hv",), role="editor", ms=1030, at=None, subject_pk=USER_PK) -> Op:
    at = Hlc(ms, 0, 1) if at is None else at
    return make_op(ADMIN, (), Hlc(ms, 0, 1), Revoke(subject_pk, role, scope, at))


def _epochs(order) -> list[Epoch]:
    idx = epochs_with_trustview(order, TrustView.build(order))
    return list(idx.roles_of(USER_PK).get("editor", ()))


IK = issuer_key_op(ms=999)


def test_grant_opens_epoch_with_vc_window():
    t = _vc()
    (e,) = _epochs([IK, _cred(t), _grant(t)])
    assert e == Epoch(HV, 2, None, Hlc(1000, 0, 0), Hlc(100_000, 0, 0))


def test_epoch_opens_at_grant_even_if_credential_comes_later():
    t = _vc()
    (e,) = _epochs([IK, _grant(t), _cred(t, 5000)])
    assert e.start_pos == 1


def test_grant_subject_must_match_vc_subject_but_author_is_free():
    t = _vc()
    assert _epochs([IK, _cred(t), _grant(t, subject_pk=bytes(OTHER.verify_key))]) == []
    assert len(_epochs([IK, _cred(t), _grant(t, author=OTHER)])) == 1


def test_grant_of_unknown_or_unverifiable_vc_ignored():
    t = _vc()
    assert _epochs([IK, _grant(t)]) == []  # no Credential op
    assert _epochs([_cred(t), _grant(t)]) == []  # no IssuerKey
    forged = _vc(signer=OTHER)
    assert _epochs([IK, _cred(forged), _grant(forged)]) == []


def test_revoke_is_positional_and_ignores_at():
    t = _vc()
    far_future = Hlc(U64_MAX, 0, 0)
    (e,) = _epochs([IK, _cred(t), _grant(t), _revoke(at=far_future)])
    assert e.end_pos == 3
    (e,) = _epochs([IK, _cred(t), _revoke(), _grant(t)])  # revoke before the grant: nothing to close
    assert e.end_pos is None


@pytest.mark.parametrize(
    "scope,role,closed",
    [
        (("hv",), "editor", True),
        (("hv", "zzz"), "editor", True),
        (("mech",), "editor", False),
        ((), "editor", False),
        (("hv",), "issuer_admin", False),
        (("hv",), "Editor", False),
    ],
)
def test_revoke_matching(scope, role, closed):
    t = _vc()
    (e,) = _epochs([IK, _cred(t), _grant(t), _revoke(scope=scope, role=role)])
    assert (e.end_pos == 3) is closed


def test_partial_overlap_closes_whole_epoch_and_empty_scope_never_closes():
    t = _vc(scope=("hv", "mech"))
    (e,) = _epochs([IK, _cred(t), _grant(t), _revoke(scope=("mech",))])
    assert e.end_pos == 3 and e.scope == frozenset({"hv", "mech"})
    t0 = _vc(scope=())
    (e,) = _epochs([IK, _cred(t0), _grant(t0), _revoke(scope=("hv", "mech"))])
    assert e.end_pos is None


def test_regrant_after_revoke_opens_new_epoch_and_second_revoke_closes_it():
    t = _vc()
    order = [IK, _cred(t), _grant(t), _revoke(), _grant(t, ms=1040), _revoke(ms=1050)]
    e1, e2 = _epochs(order)
    assert (e1.start_pos, e1.end_pos, e2.start_pos, e2.end_pos) == (2, 3, 4, 5)
    e1, e2 = _epochs(order[:5])
    assert e2.end_pos is None


def test_revoke_closes_all_open_epochs_of_subject_role():
    t1, t2 = _vc(scope=("hv",)), _vc(scope=("hv", "mech"), jti="2")
    order = [IK, _cred(t1), _cred(t2), _grant(t1), _grant(t2), _revoke(scope=("hv",))]
    assert [e.end_pos for e in _epochs(order)] == [5, 5]


def test_keygrant_epochs():
    t = _vc(nbf=10, exp=20)
    kg = make_op(ADMIN, (), Hlc(30, 0, 0), KeyGrant(USER_PK, "confidential", 3, cred_hash(t)))
    kg_wrong = make_op(ADMIN, (), Hlc(31, 0, 0), KeyGrant(bytes(OTHER.verify_key), "hv", 1, cred_hash(t)))
    order = [IK, kg, _cred(t), kg_wrong]
    tv = TrustView.build([issuer_key_op(ms=1)])
    idx = epochs_with_trustview(order, tv)
    assert idx.key_epochs[USER_PK] == (KeyEpoch("confidential", 3, Hlc(10, 0, 0), Hlc(20, 0, 0)),)
    assert bytes(OTHER.verify_key) not in idx.key_epochs


# --------------------------------------------------------------------------- has_policy and the gate


def test_has_policy_switches():
    t = _vc()
    kg = make_op(ADMIN, (), Hlc(30, 0, 0), KeyGrant(USER_PK, "hv", 1, cred_hash(t)))
    w = add(None, Hlc(1, 0, 0), "A")
    assert not has_policy([w, _cred(t), kg]) and has_read_policy([kg])
    assert build_write_gate([w, _cred(t), kg, IK]) is None  # KeyGrant-only log: allow-all writes
    assert has_policy([_revoke()]) and build_write_gate([_revoke()]) is not None
    assert build_read_index([w]).epochs == {}


def test_revoke_only_log_denies_everything():
    gate = build_write_gate([_revoke()])
    assert not gate.permits(USER_PK, SET_ADD, TAGS_OX, 1, Hlc(2000, 0, 0))
    assert gate.deny_reason(USER_PK, SET_ADD, TAGS_OX, 1, Hlc(2000, 0, 0)) == DENY_WINS


def test_untagged_resources_unwritable_under_policy():
    cred, grant = grant_pair(scope=("hv", "mech", "confidential"))
    order = [IK, cred, grant]
    gate = build_write_gate(order)
    for obj, field in [("o", "y"), ("p", "x"), ("c", "param1"), ("c1", "Param1"), ("c1x", "param1")]:
        assert not gate.permits(USER_PK, SET_FIELD, tags_for(obj, field), 3, Hlc(2000, 0, 0))
    assert gate.permits(USER_PK, SET_FIELD, tags_for("c12", "param003"), 3, Hlc(2000, 0, 0))


def test_status_list_revocation_is_retroactive_and_positionless():
    cred, grant = grant_pair(status=("list-0", 5))
    bits = bytes([1 << 5])
    chunk = make_op(
        ADMIN,
        (),
        Hlc(1, 0, 0),
        StatusListChunk("list-0", "whoever", 1, 0, hashlib.sha256(bits).digest(), bits),
    )
    w = add(grant, Hlc(1010, 0, 1), "A")
    assert explain([IK, cred, grant, w])[0][1] == "ALLOWED"
    assert explain([IK, cred, grant, w, chunk])[0][1:] == ("DENIED", DENY_WINS)
    assert explain([chunk, IK, cred, grant, w])[0][1:] == ("DENIED", DENY_WINS)


def test_explain_skips_non_data_keys_and_allows_all_without_policy():
    w1 = data_op(None, Hlc(1, 0, 0), "mv:o:y", b"1")
    junk = data_op(None, Hlc(2, 0, 0), "not-a-key", b"")
    assert [(d, r) for _, d, r in explain([w1, junk])] == [("ALLOWED", None)]


def test_trust_view_for_and_m4_index():
    m_cred, m_grant = grant_pair(OTHER, 0, U64_MAX, issuer=OTHER, grantor=OTHER, role="issuer_admin")
    order = [m_cred, m_grant, IK]
    assert dict(trust_view_for(order).issuers) == {}
    assert set(trust_view_for([IK]).issuers) == {"issuer-1"}
    idx = epochs_m4(order)
    assert idx.subject_has_role_at(bytes(OTHER.verify_key), "issuer_admin", 2, Hlc(5, 0, 0))
    assert idx.subject_has_role_at(bytes(OTHER.verify_key), "issuer_admin", 1, Hlc(5, 0, 0))
    assert not idx.subject_has_role_at(bytes(OTHER.verify_key), "issuer_admin", 0, Hlc(5, 0, 0))
    # the M4 verifier needs the Credential's author to be the signer
    relayed = make_op(ADMIN, (), Hlc(0, 0, 1), Credential("x", m_cred.payload.cred_bytes))
    assert epochs_m4([relayed, m_grant]).epochs == {}
    # any one verifying copy is enough; a failing copy never removes it
    assert epochs_m4([relayed, m_cred, m_grant]).epochs != {}
    assert epochs_m4([m_cred, relayed, m_grant]).epochs != {}


# --------------------------------------------------------------------------- file trust (§16.2)

ISSUER_FILE = key_pair(1, b"policy-test/file-issuer")
STORE = TrustStore.from_toml(f'[issuers]\noem-issuer-1 = "{bytes(ISSUER_FILE.verify_key).hex()}"\n')


def _file_vc(nbf=10_000, exp=20_000, scope=("hv",), index=0, iss="oem-issuer-1") -> bytes:
    return vc_token(USER, nbf, exp, scope=scope, iss=iss, signer=ISSUER_FILE, status=("list-0", index))


def _file_gate(order, lists=None):
    idx = epochs_with_files(order, STORE, MemoryStatusCache(lists or {}))
    return lambda key, hlc: idx.is_permitted_at_pos(USER_PK, *_action(key), len(order), hlc)


def _action(key: str):
    d = derive_action_and_tags(key)
    return d.action, d.tags


def _pair(token: bytes, ms: int = 10_000) -> list[Op]:
    cred = make_op(ISSUER_FILE, (), Hlc(ms, 0, 1), Credential("c", token))
    return [cred, grant_op(cred)]


def test_file_trust_allows_inside_window():
    assert _file_gate(_pair(_file_vc()))("mv:o:x", Hlc(10_001, 0, 42))


def test_file_trust_status_bit_denies():
    assert not _file_gate(_pair(_file_vc()), {"list-0": b"\x01"})("mv:o:x", Hlc(10_001, 0, 42))


def test_file_trust_time_window():
    gate = _file_gate(_pair(_file_vc(10_000, 12_000)))
    assert not gate("mv:o:x", Hlc(15_000, 0, 0)) and not gate("mv:o:x", Hlc(9000, 0, 0))


def test_file_trust_unknown_issuer_denies():
    assert not _file_gate(_pair(_file_vc(iss="another")))("mv:o:x", Hlc(10_001, 0, 0))


def test_file_trust_grant_without_credential_denies():
    order = _pair(_file_vc())[1:]
    assert not _file_gate(order)("mv:o:x", Hlc(10_001, 0, 0))


def test_file_trust_scopes():
    hv = _file_gate(_pair(_file_vc(scope=("hv",))))
    assert not hv("set+:o:s:e", Hlc(10_001, 0, 0))
    mech = _file_gate(_pair(_file_vc(scope=("mech",))))
    assert mech("set+:o:s:e", Hlc(10_001, 0, 0)) and mech("set-:o:s:e", Hlc(10_001, 0, 0))
    empty = _file_gate(_pair(_file_vc(scope=())))
    assert not empty("mv:o:x", Hlc(10_001, 0, 0)) and not empty("set+:o:s:e", Hlc(10_001, 0, 0))


def test_file_trust_revoked_then_regranted_with_clear_bit():
    cred1 = _pair(_file_vc(index=0))
    assert not _file_gate(cred1, {"list-0": b"\x01"})("mv:o:x", Hlc(10_001, 0, 0))
    revoke = make_op(ADMIN, (), Hlc(10_003, 0, 0), Revoke(USER_PK, "editor", ("hv",), Hlc(10_003, 0, 0)))
    cred2 = _pair(_file_vc(index=1), ms=10_005)
    order = [*cred1, revoke, *cred2]
    assert [op.payload.NAME for op in order] == ["Credential", "Grant", "Revoke", "Credential", "Grant"]
    assert _file_gate(order, {"list-0": b"\x01"})("mv:o:x", Hlc(10_007, 0, 0))


# --------------------------------------------------------------------------- performance


def _big_log(n_users: int) -> list[Op]:
    """IssuerKey, then per user: credential, grant, 3 writes, revoke, 3 writes."""
    order = [IK]
    for u in range(n_users):
        sk = key_pair(u, b"perf-user")
        cred, grant = grant_pair(sk, 1000, 100_000, jti=f"c{u}")
        order += [cred, grant]
        for i in range(3):
            order.append(data_op(None, Hlc(1001 + i, 0, 0), "mv:o:x", b"v", sk))
        order.append(revoke_op(None, Hlc(1010, 0, 0), sk))
        for i in range(3):
            order.append(data_op(None, Hlc(1011 + i, 0, 0), "mv:o:x", b"v", sk))
    return order


def test_gate_building_verifies_each_credential_once(monkeypatch):
    """Building the gate does linear work in the credentials: each VC's signature is checked
    once per trust pass, however many grants, revokes and writes refer to it. (Wall-clock
    scaling is measured by ``ecac bench --scenario policy-heavy``, not here.) With a shared
    memo a second build of the same order checks none."""
    from ecac.core import vc

    calls = {"inband": 0, "m4": 0}

    def counting(name, real):
        def run(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(vc, "verify_vc_inband", counting("inband", vc.verify_vc_inband))
    monkeypatch.setattr(vc, "verify_vc_m4", counting("m4", vc.verify_vc_m4))
    for users in (10, 40):
        calls.update(inband=0, m4=0)
        order = _big_log(users)
        gate = build_write_gate(order)
        assert calls == {"inband": users, "m4": users}
        memo = vc.VcMemo()
        assert build_write_gate(order, memo) == gate
        assert build_write_gate(order, memo) == gate
        assert calls == {"inband": 2 * users, "m4": 2 * users}
        # and the gate still decides: each user's first writes pass, the ones after the revoke do not
        for u in range(users):
            first, after = order[1 + 9 * u + 2], order[1 + 9 * u + 6]  # 9 ops per user
            w = derive_action_and_tags("mv:o:x")
            assert gate.permits(first.author_pk, w.action, w.tags, 1 + 9 * u + 2, first.hlc)
            assert not gate.permits(after.author_pk, w.action, w.tags, 1 + 9 * u + 6, after.hlc)


def test_spec_named_helpers_delegate():
    from ecac.core import policy as pol

    idx = idx_of(Epoch(HV, 0, 5, Hlc(0, 0, 0), Hlc(10, 0, 0)))
    assert pol.is_permitted_at_pos(idx, USER_PK, SET_ADD, HV, 1, Hlc(1, 0, 0))
    assert pol.deny_reason(idx, USER_PK, SET_ADD, HV, 7, Hlc(1, 0, 0)) == REVOKED_CRED
    assert pol.subject_has_role_at(idx, USER_PK, "editor", 4, Hlc(9, 0, 0))
    assert pol.role_active_at(idx, "editor", 4, Hlc(9, 0, 0))
    assert not pol.role_active_at(idx, "issuer_admin", 4, Hlc(9, 0, 0))
    assert not pol.issuer_admin_mode_active(idx, 4, Hlc(9, 0, 0))
    assert not pol.author_is_issuer_admin_at(idx, USER_PK, 4, Hlc(9, 0, 0))
    assert not pol.can_read_tag_version(idx, USER_PK, "hv", 1, 1, Hlc(1, 0, 0))


def test_has_policy_types_are_the_switch_kinds():
    from ecac.core.op import POLICY_SWITCH_KINDS
    from ecac.core.policy import _SWITCH_TYPES

    assert {t.NAME for t in _SWITCH_TYPES} == POLICY_SWITCH_KINDS


def test_retroactive_types_are_the_retroactive_kinds():
    from ecac.core.op import RETROACTIVE_KINDS
    from ecac.core.policy import _EPOCH_TYPES, _RETROACTIVE_TYPES

    assert {t.NAME for t in _RETROACTIVE_TYPES} == RETROACTIVE_KINDS
    assert {t.NAME for t in _EPOCH_TYPES} == READ_POLICY_KINDS


# --------------------------------------------------------------------------- memo and incremental gates


def _orders() -> dict[str, list[Op]]:
    """Every named scenario plus a small policy-heavy log, each as its total order."""
    logs = {name: build() for name, build in SCENARIOS.items()}
    logs["policy-heavy"] = gen_policy_heavy(5, 700, editors=6)
    return {name: Dag.from_ops(ops).topo_order() for name, ops in logs.items()}


def test_memoised_gates_equal_fresh_gates_on_every_scenario():
    """One memo shared by every build (scenarios with colliding tokens and keys): each gate,
    and so each verdict, is bit-identical to a build without a memo."""
    memo = VcMemo()
    small = VcMemo(max_entries=1)  # evicting all the time
    for _ in range(2):
        for name, order in _orders().items():
            want = build_write_gate(order)
            assert build_write_gate(order, memo) == want, name
            assert build_write_gate(order, small) == want, name
            assert epochs_m4(order, memo) == epochs_m4(order), name
            assert build_read_index(order, memo) == build_read_index(order), name
            assert trust_view_for(order, memo) == trust_view_for(order), name
    assert memo.hits > memo.misses > 0


def test_gate_builder_equals_a_full_build_on_every_prefix():
    """Growing each order one op at a time, the builder's gate (extended when it may be) is
    always the gate of a full build of that prefix."""
    extended = 0
    for name, order in _orders().items():
        gb = GateBuilder()
        step = 1 if len(order) < 50 else 7
        prev = 0
        for k in [*range(0, len(order), step), len(order)]:
            assert gb.gate_for(order[:k], prev) == build_write_gate(order[:k]), (name, k)
            prev = k
        extended += gb.extensions
        assert gb.builds + gb.extensions >= len(range(0, len(order), step))
    assert extended > 0


def test_gate_builder_rebuilds_on_retroactive_inputs_and_unknown_prefixes():
    ops = scenarios.issuer_key_revocation()  # [ik, rev, cred, grant, a]
    order = Dag.from_ops(ops).topo_order()
    gb = GateBuilder()
    gb.gate_for(order[:-1], 0)
    assert gb.builds == 1
    gb.gate_for(order, len(order) - 1)  # a Data op: extended
    assert (gb.builds, gb.extensions) == (1, 1)
    # a prefix that is not the previous order (wrong length or last op): built in full
    assert gb.gate_for(order[:3], 3) == build_write_gate(order[:3])
    assert gb.builds == 2
    other = Dag.from_ops(scenarios.grant_then_write()).topo_order()
    assert gb.gate_for(other, 3) == build_write_gate(other)
    assert gb.builds == 3
    gb.reset()
    gb.gate_for(other, len(other))
    assert gb.builds == 4


def _gate_verdicts(gate, order) -> list[bool]:
    out = []
    for pos, op in enumerate(order):
        d = derive_action_and_tags(op.payload.key) if op.kind == "Data" else None
        if d is not None:
            out.append(gate is None or gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc))
    return out


def test_memo_follows_an_issuer_key_revoked_later():
    """The same memo across a log before and after an IssuerKeyRevoke arrives: the write the
    VC allowed is denied once the key is revoked at the VC's nbf (and allowed again without it)."""
    ik = issuer_key_op()
    cred, grant = grant_pair(nbf_ms=1000)
    a = add(grant, Hlc(1010, 0, 1), "A")
    rev = make_op(ADMIN, (ik.op_id,), Hlc(1000, 0, 0), IssuerKeyRevoke("issuer-1", "k1", "compromised"))
    memo = VcMemo()
    gb = GateBuilder(memo)
    before = Dag.from_ops([ik, cred, grant, a]).topo_order()
    after = Dag.from_ops([ik, cred, grant, a, rev]).topo_order()
    assert _gate_verdicts(gb.gate_for(before), before) == [True]
    assert _gate_verdicts(gb.gate_for(after, len(before)), after) == [False]
    assert gb.gate_for(after) == build_write_gate(after)
    assert _gate_verdicts(gb.gate_for(before), before) == [True]
    # one M4 check (no trust involved), three in-band ones: valid, no key at nbf, valid again
    assert memo.misses == 4


def test_memo_follows_an_issuer_key_added_later():
    cred, grant = grant_pair(nbf_ms=1000)
    a = add(grant, Hlc(1010, 0, 1), "A")
    memo = VcMemo()
    without = Dag.from_ops([cred, grant, a]).topo_order()
    assert _gate_verdicts(build_write_gate(without, memo), without) == [False]  # UnknownIssuer
    late_key = issuer_key_op(ms=1005, parents=(a.op_id,))  # activated_at 1005 > nbf: still unknown
    late = Dag.from_ops([cred, grant, a, late_key]).topo_order()
    assert _gate_verdicts(build_write_gate(late, memo), late) == [False]
    early_key = issuer_key_op(ms=999, parents=(a.op_id,))  # ordered last, active from 999 <= nbf
    with_key = Dag.from_ops([cred, grant, a, early_key]).topo_order()
    assert _gate_verdicts(build_write_gate(with_key, memo), with_key) == [True]
    for order in (without, late, with_key):
        assert build_write_gate(order, memo) == build_write_gate(order)


def test_memo_follows_a_status_bit_set_later():
    ops = scenarios.status_list_revocation()  # [ik, cred, grant, a, chunk, b]
    memo = VcMemo()
    no_chunk = Dag.from_ops(ops[:4]).topo_order()
    full = Dag.from_ops(ops).topo_order()
    assert _gate_verdicts(build_write_gate(no_chunk, memo), no_chunk) == [True]
    assert _gate_verdicts(build_write_gate(full, memo), full) == [False, False]
    assert build_write_gate(full, memo) == build_write_gate(full)
