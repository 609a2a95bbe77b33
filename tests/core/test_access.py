"""The pure operator views (``ecac.core.access``) and op builders (``ecac.core.policyops``)."""

from __future__ import annotations

import json
import random

import pytest

from ecac.core import access, policy, policyops
from ecac.core.dag import Dag
from ecac.core.enc import aad, encrypt
from ecac.core.errors import EcacError
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import AdminAppoint, Op, SealedKey, SealedKeyRotate, make_op
from ecac.core.profile import genesis_op
from ecac.core.replay import dag_of_verified, replay_full
from ecac.core.resources import SET_ADD, SET_FIELD, SET_REM, derive_action_and_tags
from ecac.core.trust import StatusList
from ecac.testing.scenarios import (
    ADMIN,
    SCENARIOS,
    USER,
    add,
    data_op,
    grant_pair,
    issuer_key_op,
    pk,
    revoke_op,
    status_chunk_op,
)

OTHER = key_pair(1, b"access/other")


def order_of(ops: list[Op]) -> list[Op]:
    return dag_of_verified(ops).topo_order()


def shuffled_order(ops: list[Op], seed: int) -> list[Op]:
    """The same log inserted in another order: the total order (and every view) must not change."""
    mixed = list(ops)
    random.Random(seed).shuffle(mixed)
    return Dag.from_ops(mixed).topo_order()


# --------------------------------------------------------------------------- state


def test_state_view_decodes_text_binary_encrypted_concurrent_and_sets() -> None:
    root = issuer_key_op()  # not a policy switch: writes stay allow-all
    enc = encrypt(
        bytes(32), bytes(24), b"secret", aad(pk(USER), Hlc(5, 0, 1), (), "o", "x"), "confidential", 3
    )
    ops = [
        root,
        data_op(root, Hlc(5, 0, 1), "mv:o:x", enc.to_cbor()),
        data_op(root, Hlc(6, 0, 1), "mv:a:t", "héllo".encode()),
        data_op(root, Hlc(7, 0, 1), "mv:a:b", b"\xff\x00"),
        data_op(root, Hlc(8, 0, 1), "mv:a:c", b"one"),
        data_op(root, Hlc(8, 0, 2), "mv:a:c", b"two"),  # concurrent with "one"
        data_op(root, Hlc(9, 0, 1), "set+:o:s:e1", b"e1"),
        data_op(root, Hlc(9, 0, 2), "set+:o:s:e2", b""),
    ]
    state, digest = replay_full(dag_of_verified(ops))
    view = access.state_view(state, digest)
    doc = view.to_obj()
    assert doc["digest"] == digest.hex() and doc["processed_count"] == len(ops)
    assert list(doc["objects"]) == ["a", "o"] and list(doc["objects"]["a"]) == ["b", "c", "t"]
    assert doc["objects"]["a"]["t"] == {"type": "mv", "values": [{"kind": "text", "text": "héllo"}]}
    assert doc["objects"]["a"]["b"] == {"type": "mv", "values": [{"kind": "binary", "hex": "ff00"}]}
    conc = doc["objects"]["a"]["c"]["values"]
    assert sorted(v["text"] for v in conc) == ["one", "two"]
    assert [v["text"].encode() for v in conc] == state.objects["a"]["c"].sorted_values()  # projection first
    x = doc["objects"]["o"]["x"]["values"][0]
    assert x["kind"] == "encrypted" and x["tag"] == "confidential" and x["key_version"] == 3
    assert doc["objects"]["o"]["s"] == {
        "type": "set",
        "elements": [
            {"elem": "e1", "value": {"kind": "text", "text": "e1"}},
            {"elem": "e2", "value": {"kind": "text", "text": ""}},
        ],
    }
    assert view.object_obj("a")["t"] == doc["objects"]["a"]["t"]
    assert view.field_obj("o", "s") == doc["objects"]["o"]["s"]
    with pytest.raises(access.NotFoundError, match=r"^Object 'q' not found$"):
        view.object_obj("q")
    with pytest.raises(access.NotFoundError, match=r"^Field 'a\.zz' not found$"):
        view.field_obj("a", "zz")
    assert json.loads(view.to_json()) == doc
    # the gateway's /api/state shape (store §3.5): lossy text, concurrent values, set values
    api = access.api_state(state, digest)
    assert api["digest"] == digest.hex()
    assert api["objects"]["a"]["t"] == "héllo"
    assert api["objects"]["a"]["b"] == "\ufffd\x00"
    assert api["objects"]["a"]["c"] == {"concurrent_values": ["one", "two"]}  # values() order: bytewise
    assert api["objects"]["o"]["s"] == ["e1", ""]


def test_views_do_not_depend_on_insertion_order() -> None:
    ops = SCENARIOS["regrant-after-revoke"]() + SCENARIOS["status-list-revocation"]()[4:5]
    base = order_of(ops)
    want = (
        access.explain_order(base).to_json(),
        access.access_report(base, 1500).to_json(),
        access.ops_view(base, 100).to_json(),
    )
    for seed in range(4):
        o = shuffled_order(ops, seed)
        assert [op.op_id for op in o] == [op.op_id for op in base]
        got = (
            access.explain_order(o).to_json(),
            access.access_report(o, 1500).to_json(),
            access.ops_view(o, 100).to_json(),
        )
        assert got == want
    s1, d1 = replay_full(Dag.from_ops(ops))
    s2, d2 = replay_full(Dag.from_ops(list(reversed(ops))))
    assert access.state_view(s1, d1).to_json() == access.state_view(s2, d2).to_json()


# --------------------------------------------------------------------------- ops


def test_ops_view_is_newest_first_with_the_gateway_payload_mapping() -> None:
    ik = issuer_key_op()
    cred, grant = grant_pair()
    w = data_op(grant, Hlc(1010, 0, 1), "mv:o:x", b"\xffA")
    r = revoke_op(w, Hlc(1020, 0, 1))
    chunk = status_chunk_op(b"\x00", 1030)
    order = order_of([ik, cred, grant, w, r, chunk])
    v = access.ops_view(order, 50).to_obj()
    assert v["total"] == 6 and [o["op_id"] for o in v["ops"]] == [op.op_id.hex() for op in reversed(order)]
    by_kind = {o["payload_type"]: o for o in v["ops"]}
    assert set(by_kind) == {"IssuerKey", "Credential", "Grant", "Data", "Revoke", "Other"}
    assert by_kind["Other"]["payload"] == {}  # StatusListChunk has no mapping in store §3.5
    assert by_kind["Data"]["payload"] == {"key": "mv:o:x", "value": "\ufffdA"}
    assert by_kind["Data"]["hlc_ms"] == 1010 and by_kind["Data"]["hlc_logical"] == 0
    assert by_kind["Data"]["parents"] == [grant.op_id.hex()] and by_kind["Data"]["author"] == pk(USER).hex()
    assert by_kind["Grant"]["payload"] == {
        "subject_pk": pk(USER).hex(),
        "cred_hash": grant.payload.cred_hash.hex(),
    }  # type: ignore[union-attr]
    assert by_kind["Revoke"]["payload"] == {
        "subject_pk": pk(USER).hex(),
        "role": "editor",
        "scope_tags": ["hv"],
        "at": {"physical_ms": 1020, "logical": 0, "node_id": 1},
    }
    assert by_kind["Credential"]["payload"] == {
        "cred_id": "test-cred-1",
        "format": "Jwt",
        "bytes_len": len(cred.payload.cred_bytes),  # type: ignore[union-attr]
    }
    assert by_kind["IssuerKey"]["payload"] == {
        "issuer_id": "issuer-1",
        "key_id": "k1",
        "algo": "EdDSA",
        "pubkey": pk(ADMIN).hex(),
        "valid_from_ms": 0,
        "valid_until_ms": U64_MAX,
    }
    assert order[-2:] == [r, chunk]
    assert [o["op_id"] for o in access.ops_view(order, 2).to_obj()["ops"]] == [
        chunk.op_id.hex(),
        r.op_id.hex(),
    ]
    assert access.ops_view(order, 0).to_obj() == {"ops": [], "total": 6}


# --------------------------------------------------------------------------- explain


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_explanation_verdicts_are_the_replay_gates(name: str) -> None:
    order = order_of(SCENARIOS[name]())
    ex = access.explain_order(order)
    want = [(op.op_id, v, r) for op, v, r in policy.explain(order)]
    assert [(d.op_id, d.verdict, d.reason) for d in ex.decisions] == want
    assert all(d.detail for d in ex.decisions)
    assert all(order[d.pos].op_id == d.op_id for d in ex.decisions)


def _decisions(name: str) -> dict[str, access.DecisionView]:
    order = order_of(SCENARIOS[name]())
    return {d.elem or d.key: d for d in access.explain_order(order).decisions}


def test_explanations_say_why() -> None:
    d = _decisions("revoke-then-write")
    revoke = next(op for op in SCENARIOS["revoke-then-write"]() if op.kind == "Revoke")
    assert d["A"].verdict == "ALLOWED" and "editor epoch opened by grant" in d["A"].detail
    assert d["B"].reason == "revoked_cred" and revoke.op_id.hex() in d["B"].detail
    assert "not retroactive" in _decisions("write-before-grant")["EARLY"].detail
    assert "expired at 2000 ms" in _decisions("expired-credential")["AT_EXP"].detail
    assert "does not cover o.x" in _decisions("out-of-scope")["X"].detail
    slr = _decisions("status-list-revocation")
    assert slr["A"].reason == "deny_wins" and "revoked by status list 'list-0' index 0" in slr["A"].detail
    assert "has no published key" in _decisions("unknown-issuer")["A"].detail
    forged = _decisions("forged-credential-signature")["A"].detail
    assert "does not verify with the key of issuer 'issuer-1'" in forged
    assert "ignored: an issuer_admin was live" in _decisions("issuer-admin-lockout")["A"].detail
    assert "no key active at the VC's nbf (1000 ms)" in _decisions("issuer-key-revocation")["A"].detail
    off = access.explain_order(order_of([add(None, Hlc(5, 0, 1), "A")]))
    assert (
        not off.policy_active
        and off.decisions[0].verdict == "ALLOWED"
        and "policy is off" in off.decisions[0].detail
    )


def test_find_a_decision_by_id_prefix() -> None:
    ex = access.explain_order(order_of(SCENARIOS["revoke-then-write"]()))
    d = ex.decisions[1]
    assert ex.find(d.op_id.hex()) == d and ex.find(d.op_id.hex()[:10].upper()) == d
    with pytest.raises(access.NotFoundError):
        ex.find("0" * 64)
    with pytest.raises(EcacError, match="expected hex"):
        ex.find("xyz!")


# --------------------------------------------------------------------------- access


def test_access_report_lists_epochs_issuers_and_status_lists() -> None:
    ops = SCENARIOS["revoke-then-write"]()
    order = order_of(ops)
    rep = access.access_report(order, now_ms=1500)
    assert rep.policy_active
    (s,) = rep.subjects
    assert (s.subject_pk, s.role) == (pk(USER), "editor")
    (e,) = s.epochs
    revoke = next(op for op in order if op.kind == "Revoke")
    grant = next(op for op in order if op.kind == "Grant")
    assert e.status == "revoked" and e.end_pos == order.index(revoke) and e.revoke_op_id == revoke.op_id
    assert e.grant_op_id == grant.op_id and e.scope == ("hv",) and (e.nbf_ms, e.exp_ms) == (1000, 100_000)
    assert [i.issuer_id for i in rep.issuers] == ["issuer-1"] and rep.issuers[0].keys[0].pubkey == pk(ADMIN)
    assert rep.ineffective_grants == () and rep.trust_admins == () and rep.status_lists == ()
    live = access.access_report(order_of(SCENARIOS["grant-then-write"]()), now_ms=1500).subjects[0].epochs[0]
    assert live.status == "live"
    g = order_of(SCENARIOS["grant-then-write"]())
    assert access.access_report(g, now_ms=999).subjects[0].epochs[0].status == "not_yet"
    assert access.access_report(g, now_ms=100_000).subjects[0].epochs[0].status == "expired"
    assert access.access_report(g).subjects[0].epochs[0].status == "open"

    slr = access.access_report(order_of(SCENARIOS["status-list-revocation"]()), 1500)
    assert slr.subjects == () and [sl.to_obj() for sl in slr.status_lists] == [
        {"list_id": "list-0", "issuer_id": "issuer-1", "version": 1, "revoked": [0]}
    ]
    (p,) = slr.ineffective_grants
    assert p.subject_pk == pk(USER) and "revoked by status list" in p.problem
    lock = access.access_report(order_of(SCENARIOS["issuer-admin-lockout"]()), 1500)
    assert [a.role for a in lock.trust_admins] == ["issuer_admin"] and lock.issuers == ()
    off = access.access_report(order_of([issuer_key_op()]))
    assert not off.policy_active and off.subjects == () and len(off.issuers) == 1
    assert json.loads(rep.to_json()) == rep.to_obj()


def test_status_list_indices_match_is_revoked() -> None:
    sl = StatusList("l", "i", 1, b"", (b"\x81\x00", b"\x02\x00\x40", b"\x01"))  # chunk 1 longer than chunk 0
    got = access.status_list_indices(sl)
    assert got == tuple(i for i in range(64) if sl.is_revoked(i)) == (0, 7, 17, 32)
    assert access.status_list_indices(StatusList("l", "i", 1, b"", (b"",))) == ()


# --------------------------------------------------------------------------- preview


def test_preview_of_writes() -> None:
    ik = issuer_key_op()
    cred, grant = grant_pair()
    log = order_of([ik, cred, grant])
    ok = data_op(grant, Hlc(1010, 0, 1), "mv:o:x", b"v")
    pv = access.preview(log, [ok])
    assert pv.ok and pv.denied == () and pv.effects[0].decision is not None
    assert pv.effects[0].decision.verdict == "ALLOWED" and pv.effects[0].decision.pos == 3
    rv = revoke_op(grant, Hlc(1005, 0, 1))
    closed = access.preview(log, [rv])
    assert closed.ok and "closes 1 editor epoch" in closed.effects[0].detail
    after = order_of([ik, cred, grant, rv])
    bad = access.preview(after, [data_op(rv, Hlc(1010, 0, 1), "mv:o:x", b"w")])
    assert not bad.ok and bad.denied[0].reason == "revoked_cred"
    assert bad.first_problem() is bad.effects[0]
    assert not access.preview(after, [revoke_op(rv, Hlc(1011, 0, 1))]).ok  # closes nothing now
    other = data_op(grant, Hlc(1010, 0, 1), "mv:o:x", b"v", author=OTHER)
    assert access.preview(log, [other]).denied[0].reason == "deny_wins"
    dup = access.preview(log, [grant])
    assert not dup.ok and "already in the log" in dup.effects[0].detail
    orphan = data_op([b"\x01" * 32], Hlc(1010, 0, 1), "mv:o:x", b"v")
    assert "parents are not all in the log" in access.preview(log, [orphan]).effects[0].detail
    junk = data_op(grant, Hlc(1010, 0, 1), "nokey", b"v")
    assert not access.preview(log, [junk]).ok
    assert json.loads(pv.to_json())["effects"][0]["decision"]["verdict"] == "ALLOWED"


def test_preview_of_grants_and_trust_ops() -> None:
    ik = issuer_key_op()
    cred, grant = grant_pair()
    assert access.preview(order_of([ik]), [cred, grant]).ok
    unknown = access.preview(order_of([]), [cred, grant])
    assert not unknown.ok and "has no published key" in unknown.effects[1].detail
    clash = issuer_key_op(OTHER, 2000)  # same issuer-1/k1, another key: first wins
    assert "first wins" in access.preview(order_of([ik]), [clash]).effects[0].detail
    same = access.preview(order_of([ik]), [issuer_key_op(ms=1500)])
    assert same.ok and "no change" in same.effects[0].detail
    chunk = status_chunk_op(b"\x01", 5000)
    pv = access.preview(order_of([ik, cred, grant]), [chunk])
    assert pv.ok and "now version 1" in pv.effects[0].detail
    older = access.preview(order_of([ik, status_chunk_op(b"\x00", 10, version=2)]), [chunk])
    assert not older.ok and "version 2" in older.effects[0].detail
    # an issuer_admin holds the trust root: another author's trust ops are ignored
    lock = order_of(SCENARIOS["issuer-admin-lockout"]())
    gated = access.preview(lock, [status_chunk_op(b"\x01", 5000)])
    assert not gated.ok and "issuer_admin" in gated.effects[0].detail


# --------------------------------------------------------------------------- builders


def test_data_keys_follow_the_grammar() -> None:
    for action, elem, key in (
        (SET_FIELD, None, "mv:o:x"),
        (SET_ADD, "e", "set+:o:x:e"),
        (SET_REM, "e", "set-:o:x:e"),
    ):
        k = policyops.data_key(action, "o", "x", elem)
        assert k == key
        d = derive_action_and_tags(k)
        assert d is not None and (d.action, d.obj, d.field, d.elem) == (action, "o", "x", elem)
    for obj, field, elem in (("o:p", "x", None), ("o", "x:y", None)):
        with pytest.raises(EcacError, match="contains ':'"):
            policyops.data_key(SET_FIELD, obj, field, elem)
    with pytest.raises(EcacError, match="contains ':'"):
        policyops.data_key(SET_ADD, "o", "s", "a:b")
    with pytest.raises(EcacError, match="needs a set element"):
        policyops.data_key(SET_ADD, "o", "s")


def test_status_bits_and_set_status_bit() -> None:
    assert policyops.status_bits([]) == b"\x00"
    assert policyops.status_bits([0, 9, 9]) == b"\x01\x02"
    assert policyops.set_status_bit(b"\x01\x02", 9, 0) == b"\x01\x00"
    assert policyops.set_status_bit(b"", 17, 1) == b"\x00\x00\x02"


def test_grant_ops_are_the_reference_layout() -> None:
    cred, grant = grant_pair()
    token = cred.payload.cred_bytes  # type: ignore[union-attr]
    c2, g2 = policyops.grant_ops(token, 1000, issuer=ADMIN, grantor=ADMIN)
    assert (c2.cbor, g2.cbor) == (cred.cbor, grant.cbor)  # sub_pk and jti from the token
    assert policyops.vc_subject_and_id(token) == (pk(USER), "test-cred-1")
    with pytest.raises(EcacError):
        policyops.vc_subject_and_id(b"not.a.jwt")


# --------------------------------------------------------------------------- the strict profile


@pytest.mark.parametrize("strict_profile", [False, True], ids=["reference", "strict"])
def test_access_report_follows_the_profile(strict_profile: bool) -> None:
    """USER is granted and revoked by the admin; Mallory publishes her own issuer key and grants
    herself. Reference: both have epochs (anyone may publish an issuer key). Strict: only USER's
    counting grant (revoked), Mallory's grant does not count (``untrusted_issuer``), her issuer
    key is not in the TrustView, and the genesis admin is listed."""
    from .test_strict import ADMIN, MALLORY, OTHER, USER, World, pk

    w = World(strict_profile)
    g = w.setup()
    w.issuer_key(MALLORY, "evil", OTHER)
    w.grant(MALLORY, OTHER, MALLORY, iss="evil", jti="m1")
    r = w.revoke(USER)
    order = Dag.from_ops(w.ops).topo_order()
    rep = access.access_report(order, now_ms=10**6)
    subjects = {(s.subject_pk, s.role): s for s in rep.subjects}
    assert rep.policy_active
    (user_epoch,) = subjects[(pk(USER), "editor")].epochs
    assert user_epoch.grant_op_id == g.op_id and user_epoch.status == "revoked"
    assert user_epoch.revoke_op_id == r.op_id
    if strict_profile:
        assert list(subjects) == [(pk(USER), "editor")]
        (problem,) = rep.ineffective_grants
        assert problem.subject_pk == pk(MALLORY) and problem.problem.startswith("untrusted_issuer")
        assert [i.issuer_id for i in rep.issuers] == ["iss"]
        assert [(a.subject_pk, a.role) for a in rep.trust_admins] == [(pk(ADMIN), "admin")]
        assert rep.trust_admins[0].epochs[0].grant_op_id == order[0].op_id  # the genesis
    else:
        assert (pk(MALLORY), "editor") in subjects and rep.ineffective_grants == ()
        assert sorted(i.issuer_id for i in rep.issuers) == ["evil", "iss"]
        assert rep.trust_admins == ()
    json.loads(rep.to_json())


def test_strict_access_report_names_self_issued_and_void_grants_and_appointed_admins() -> None:
    from ecac.core.op import AdminAppoint

    from .test_strict import ADMIN, APPOINTEE, ISSUER, USER, World, pk

    w = World(True)
    w.issuer_key(ADMIN, "iss", ISSUER)
    w.issuer_key(ADMIN, "self", USER)
    w.grant(USER, USER, USER, iss="self", jti="s1")
    ap = w.op(ADMIN, AdminAppoint(pk(APPOINTEE)))
    order = Dag.from_ops(w.ops).topo_order()
    rep = access.access_report(order)
    assert rep.subjects == ()
    assert [p.problem.split(":")[0] for p in rep.ineffective_grants] == ["self_issued_vc"]
    admins = {a.subject_pk: a for a in rep.trust_admins}
    assert set(admins) == {pk(ADMIN), pk(APPOINTEE)}
    assert admins[pk(APPOINTEE)].epochs[0].grant_op_id == ap.op_id
    # a grant whose credential op has an HLC below its parent's is void, and said so
    w2 = World(True)
    w2.issuer_key(ADMIN, "iss", ISSUER)
    late = w2.op(ADMIN, AdminAppoint(pk(APPOINTEE)), hlc=900)
    w2.t = 100
    w2.grant(USER, parents=[late])
    rep2 = access.access_report(Dag.from_ops(w2.ops).topo_order())
    assert rep2.subjects == ()
    assert [p.problem.split(":")[0] for p in rep2.ineffective_grants] == ["invalid_ancestor"]


def test_ops_view_maps_the_strict_only_kinds() -> None:
    g = genesis_op(ADMIN, "proj", [pk(ADMIN)])
    ap = make_op(ADMIN, [g.op_id], Hlc(2, 0, 0), AdminAppoint(pk(USER)))
    rot = make_op(ADMIN, [ap.op_id], Hlc(3, 0, 0), SealedKeyRotate("hv", 1, [SealedKey(pk(USER), b"box")]))
    by_kind = {o["payload_type"]: o["payload"] for o in access.ops_view([g, ap, rot], 50).to_obj()["ops"]}
    assert by_kind == {
        "Genesis": {"profile": "strict", "project": "proj", "admins": [pk(ADMIN).hex()]},
        "AdminAppoint": {"admin_pk": pk(USER).hex()},
        "SealedKeyRotate": {"tag": "hv", "new_version": 1, "readers": [pk(USER).hex()]},
    }
