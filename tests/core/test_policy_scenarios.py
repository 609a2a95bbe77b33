"""Policy end to end through replay: named scenarios, S1–S4 digests, property tests (core §16)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import (
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    Op,
    Revoke,
    StatusListChunk,
    make_op,
)
from ecac.core.policy import ALLOWED, DENIED, explain
from ecac.core.replay import Replayer, replay_full
from ecac.core.resources import derive_action_and_tags, role_can_write
from ecac.core.state import State
from ecac.core.vc import cred_hash, editor_claims, mint_vc
from ecac.testing.scenarios import (
    ADMIN,
    DESCRIPTIONS,
    SCENARIOS,
    add,
    grant_pair,
    issuer_key_op,
    revoke_op,
    s4_policy_split,
)


def verdicts(ops: list[Op]) -> list[tuple[str, str, str | None]]:
    """``(data key, ALLOWED|DENIED, reason)`` per data op, in total order."""
    order = Dag.from_ops(ops).topo_order()
    return [(op.payload.key, d, r) for op, d, r in explain(order)]


def state_json(ops: list[Op]) -> dict:
    state, _ = replay_full(ops)
    return json.loads(state.to_json())


def set_elems(ops: list[Op], obj: str = "o", field: str = "x") -> list[str]:
    for o in state_json(ops)["objects"]:
        if o["id"] == obj:
            for f in o["fields"]:
                if f["name"] == field:
                    return [e["key"] for e in f["elems"]]
    return []


# --------------------------------------------------------------------------- named scenarios

EXPECTED: dict[str, list[tuple[str, str, str | None]]] = {
    "grant-then-write": [("set+:o:x:A", ALLOWED, None)],
    "write-before-grant": [("set+:o:x:EARLY", DENIED, "deny_wins"), ("set+:o:x:LATE", ALLOWED, None)],
    "revoke-then-write": [("set+:o:x:A", ALLOWED, None), ("set+:o:x:B", DENIED, "revoked_cred")],
    "regrant-after-revoke": [
        ("set+:o:x:A", ALLOWED, None),
        ("set+:o:x:B", DENIED, "revoked_cred"),
        ("set+:o:x:C", ALLOWED, None),
    ],
    "expired-credential": [("set+:o:x:IN", ALLOWED, None), ("set+:o:x:AT_EXP", DENIED, "expired_cred")],
    "out-of-scope": [("set+:o:x:X", DENIED, "out_of_scope"), ("set+:o:s:e", ALLOWED, None)],
    "status-list-revocation": [("set+:o:x:A", DENIED, "deny_wins"), ("set+:o:x:B", DENIED, "deny_wins")],
    "issuer-key-revocation": [("set+:o:x:A", DENIED, "deny_wins")],
    "unknown-issuer": [("set+:o:x:A", DENIED, "deny_wins")],
    "issuer-admin-lockout": [("set+:o:x:A", DENIED, "deny_wins")],
    "forged-credential-signature": [("set+:o:x:A", DENIED, "deny_wins")],
    "s1": [
        ("set+:o:x:A", ALLOWED, None),
        ("set+:o:x:B", ALLOWED, None),
        ("set+:o:x:C", DENIED, "revoked_cred"),
        ("set+:o:x:D", DENIED, "revoked_cred"),
    ],
    "s2": [
        ("set+:o:x:EARLY", DENIED, "deny_wins"),
        ("set+:o:x:OK", ALLOWED, None),
        ("set+:o:x:LATE", DENIED, "expired_cred"),
    ],
    "s3": [(f"set+:o:x:V{i}", ALLOWED, None) for i in range(4)],
    "s4": [("mv:o:x", DENIED, "deny_wins")] * 3,
    "s4-with-issuer-key": [
        ("mv:o:x", ALLOWED, None),
        ("mv:o:x", DENIED, "revoked_cred"),
        ("mv:o:x", ALLOWED, None),
    ],
}


def test_registry_is_complete_and_described():
    assert set(SCENARIOS) == set(EXPECTED) == set(DESCRIPTIONS)
    assert all(DESCRIPTIONS[n] and "\n" not in DESCRIPTIONS[n] for n in SCENARIOS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_verdicts(name):
    assert verdicts(SCENARIOS[name]()) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenarios_are_deterministic(name):
    a, b = SCENARIOS[name](), SCENARIOS[name]()
    assert [op.op_id for op in a] == [op.op_id for op in b]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_applies_exactly_the_allowed_ops(name):
    ops = SCENARIOS[name]()
    seen: list[tuple[str, bool]] = []
    replay_full(ops, observer=lambda pos, op, d, applied: seen.append((op.payload.key, applied)))
    assert seen == [(k, v == ALLOWED) for k, v, _ in EXPECTED[name]]


def test_grant_then_write_state():
    assert set_elems(SCENARIOS["grant-then-write"]()) == ["A"]


def test_write_before_grant_state():
    assert set_elems(SCENARIOS["write-before-grant"]()) == ["LATE"]


def test_revoke_then_write_state():
    assert set_elems(SCENARIOS["revoke-then-write"]()) == ["A"]


def test_regrant_after_revoke_state():
    assert set_elems(SCENARIOS["regrant-after-revoke"]()) == ["A", "C"]


def test_expired_credential_state():
    assert set_elems(SCENARIOS["expired-credential"]()) == ["IN"]


def test_out_of_scope_state():
    ops = SCENARIOS["out-of-scope"]()
    assert set_elems(ops, "o", "x") == [] and set_elems(ops, "o", "s") == ["e"]


@pytest.mark.parametrize(
    "name",
    [
        "status-list-revocation",
        "issuer-key-revocation",
        "unknown-issuer",
        "issuer-admin-lockout",
        "forged-credential-signature",
    ],
)
def test_denied_scenarios_leave_no_objects(name):
    ops = SCENARIOS[name]()
    assert state_json(ops) == {"objects": [], "processed_count": len(ops)}


def test_status_list_revocation_is_retroactive():
    ops = SCENARIOS["status-list-revocation"]()
    without_chunk = [op for op in ops if not isinstance(op.payload, StatusListChunk)]
    assert [v for _, v, _ in verdicts(without_chunk)] == [ALLOWED, ALLOWED]


def test_issuer_admin_lockout_needs_the_self_issued_admin():
    ops = SCENARIOS["issuer-admin-lockout"]()
    honest = ops[2:]  # drop Mallory's credential and grant
    assert [v for _, v, _ in verdicts(honest)] == [ALLOWED]


# --------------------------------------------------------------------------- S1–S4 digests (core §16.1)


def _expected_digests(vectors) -> dict[str, tuple[str, str]]:
    rows = vectors.expected["state_digests"]
    out = {}
    for row in rows:
        for tag in ("S1", "S2", "S3", "S4"):
            if row["source"].startswith(f"scenario {tag} "):
                out[tag] = (row["state_json"], row["digest_hex"])
    assert set(out) == {"S1", "S2", "S3", "S4"}
    return out


@pytest.mark.parametrize("tag", ["S1", "S2", "S3", "S4"])
def test_spec_scenario_digest(vectors, tag):
    expected_json, expected_digest = _expected_digests(vectors)[tag]
    state, digest = replay_full(SCENARIOS[tag.lower()]())
    assert state.to_json() == expected_json
    assert digest.hex() == expected_digest


@pytest.mark.parametrize("tag", ["S1", "S2", "S3", "S4"])
def test_spec_scenario_digest_is_key_independent(vectors, tag):
    """The same scenario shapes with other keys give the same digest (no keys in the JSON)."""
    expected_digest = _expected_digests(vectors)[tag][1]
    ops = _rebuild_with_keys(tag, key_pair(99, b"other-admin"), key_pair(99, b"other-user"))
    assert replay_full(ops)[1].hex() == expected_digest


def _rebuild_with_keys(tag: str, admin, user) -> list[Op]:
    ik = issuer_key_op(admin, 999 if tag in ("S1", "S3") else 1)
    if tag == "S4":
        cred1, g1 = grant_pair(user, 10, 10_000, issuer=admin, grantor=admin)
        w = [
            make_op(user, (), Hlc(ms, 0, 1), Data("mv:o:x", v))
            for ms, v in ((11, b"A"), (13, b"B"), (15, b"C"))
        ]
        r1 = revoke_op(None, Hlc(12, 0, 1), user, revoker=admin)
        cred2, g2 = grant_pair(user, 14, 10_000, issuer=admin, grantor=admin)
        return [cred1, g1, w[0], r1, w[1], cred2, g2, w[2]]
    nbf, exp = (10_000, 20_000) if tag == "S2" else (1000, 100_000)
    cred, grant = grant_pair(user, nbf, exp, issuer=admin, grantor=admin)
    if tag == "S1":
        a = add(grant, Hlc(1010, 0, 1), "A", user)
        b = add(a, Hlc(1020, 0, 1), "B", user)
        r = revoke_op(b, Hlc(1030, 0, 1), user, revoker=admin)
        c = add(r, Hlc(1040, 0, 1), "C", user)
        return [ik, cred, grant, a, b, r, c, add(c, Hlc(1050, 0, 1), "D", user)]
    if tag == "S2":
        kids = [
            add(grant, Hlc(ms, 0, 1), e, user)
            for ms, e in ((5000, "EARLY"), (15_000, "OK"), (25_000, "LATE"))
        ]
        return [ik, cred, grant, *kids]
    return [ik, cred, grant, *(add(grant, Hlc(1100 + i, 0, i), f"V{i}", user) for i in range(4))]


def test_s3_every_insertion_order_same_digest():
    ops = SCENARIOS["s3"]()
    expected = replay_full(ops)[1]
    rng = random.Random(3)
    for _ in range(30):
        shuffled = ops[:]
        rng.shuffle(shuffled)
        assert replay_full(shuffled)[1] == expected


def test_s4_with_issuer_key_winners_a_and_c():
    state, _ = replay_full(s4_policy_split(with_issuer_key=True))
    doc = json.loads(state.to_json())
    assert doc["processed_count"] == 9
    (field,) = doc["objects"][0]["fields"]
    assert field["type"] == "mv" and sorted(field["winners"]) == ["41", "43"]


@pytest.mark.parametrize("with_key", [False, True])
def test_s4_incremental_parity_at_every_split(with_key):
    ops = s4_policy_split(with_issuer_key=with_key)
    full = replay_full(ops)[1]
    order = Dag.from_ops(ops).topo_order()
    for k in range(len(order) + 1):
        dag = Dag.from_ops(order[:k])
        r = Replayer()
        r.apply(dag)
        dag.insert_many(order[k:])
        assert r.apply(dag)[1] == full, f"split {k}"


# --------------------------------------------------------------------------- property tests

USERS = [key_pair(5, f"prop/user{i}".encode()) for i in range(2)]
MALLORY = key_pair(5, b"prop/mallory")
KEYS = ["mv:o:x", "set+:o:s:e", "set-:o:s:e", "set+:o:x:a", "mv:c1:param1", "mv:o:y"]
SCOPES = [("hv",), ("mech",), ("hv", "mech"), ()]


@dataclass(frozen=True)
class CredSpec:
    user: int
    scope: tuple[str, ...]
    nbf: int
    exp: int
    forged: bool
    status_index: int


cred_specs = st.builds(
    CredSpec,
    user=st.integers(0, 1),
    scope=st.sampled_from(SCOPES),
    nbf=st.integers(1, 40),
    exp=st.integers(30, 200),
    forged=st.sampled_from([False, False, False, True]),
    status_index=st.integers(0, 7),
)

# one step of the log: ("grant", cred#, ms) | ("revoke", user, scope#, ms) | ("data", user, key#, ms);
# data steps are listed three times so that about 60 % of the steps are writes
_grant_step = st.tuples(st.just("grant"), st.integers(0, 5), st.integers(0, 60))
_revoke_step = st.tuples(st.just("revoke"), st.integers(0, 1), st.integers(0, 3), st.integers(0, 200))
_data_step = st.tuples(
    st.just("data"), st.integers(0, 3), st.integers(0, len(KEYS) - 1), st.integers(20, 200)
)
steps = st.one_of(_grant_step, _revoke_step, _data_step, _data_step, _data_step)


@st.composite
def policy_logs(draw, chaos: bool = False):
    """A random log: an IssuerKey, credentials (some forged), an optional status list,
    grants, revokes and data ops with random parents among earlier ops.

    With ``chaos``, also an IssuerKeyRevoke, a competing status list with the same version,
    and Mallory's self-issued issuer_admin grant plus her own key for ``issuer-1``.
    """
    creds = draw(st.lists(cred_specs, min_size=1, max_size=6))
    revoked_bits = draw(st.sampled_from([0x00, 0x01, 0x12, 0x81, 0xFF]))
    with_status = draw(st.booleans())
    early_grants = st.tuples(st.just("grant"), st.integers(0, 5), st.integers(0, 30))
    plan = draw(st.lists(early_grants, min_size=1, max_size=3)) + draw(
        st.lists(steps, min_size=2, max_size=24)
    )

    ops: list[Op] = [issuer_key_op(ADMIN, 0)]
    tokens = []
    for i, c in enumerate(creds):
        claims = editor_claims(
            bytes(USERS[c.user].verify_key),
            nbf_ms=c.nbf,
            exp_ms=c.exp,
            scope=c.scope,
            jti=f"cred-{i}",
            status=("list-0", c.status_index),
        )
        tok = mint_vc(MALLORY if c.forged else ADMIN, claims)
        tokens.append(tok)
        ops.append(make_op(ADMIN, (), Hlc(c.nbf, 0, 1), Credential(f"cred-{i}", tok)))
    if with_status:
        bits = bytes([revoked_bits])
        ops.append(
            make_op(
                ADMIN,
                (),
                Hlc(50, 0, 0),
                StatusListChunk("list-0", "issuer-1", 1, 0, hashlib.sha256(bits).digest(), bits),
            )
        )
    if chaos:
        ops += draw(chaos_ops())
    granted: list[int] = []
    for n, step in enumerate(plan):
        n_parents = draw(st.integers(0, 2))
        ps = sorted({ops[draw(st.integers(0, len(ops) - 1))].op_id for _ in range(n_parents)})
        node = n % 4
        if step[0] == "grant":
            _, ci, ms = step
            ci %= len(creds)
            granted.append(creds[ci].user)
            subject = bytes(USERS[creds[ci].user].verify_key)
            payload = Grant(subject, cred_hash(tokens[ci]))
            ops.append(make_op(ADMIN, ps, Hlc(ms, 0, node), payload))
        elif step[0] == "revoke":
            _, u, si, ms = step
            payload = Revoke(bytes(USERS[u].verify_key), "editor", SCOPES[si], Hlc(ms, 0, 0))
            ops.append(make_op(ADMIN, ps, Hlc(ms, 0, node), payload))
        else:
            _, u, ki, ms = step
            # u in 0..1 names a user; 2..3 picks a user granted so far (more allowed writes)
            author = granted[(u - 2) % len(granted)] if u >= 2 and granted else u % 2
            ops.append(make_op(USERS[author], ps, Hlc(ms, 0, node), Data(KEYS[ki], f"v{n}".encode())))
    valid = {
        cred_hash(tok): c
        for tok, c in zip(tokens, creds, strict=True)
        if not c.forged and not (with_status and (revoked_bits >> c.status_index) & 1)
    }
    return ops, valid


def oracle_allowed(order: list[Op], valid: dict[bytes, CredSpec]) -> list[bool]:
    """A naive, quadratic re-statement of core §8.2 and §11.4–§11.5 for the generated logs."""
    policy_on = any(isinstance(op.payload, Grant | Revoke) for op in order)
    out = []
    for pos, op in enumerate(order):
        if not isinstance(op.payload, Data):
            continue
        d = derive_action_and_tags(op.payload.key)
        if d is None:
            continue
        if not policy_on:
            out.append(True)
            continue
        ok = False
        for gpos in range(pos + 1):
            g = order[gpos].payload
            if not isinstance(g, Grant) or g.cred_hash not in valid or g.subject_pk != op.author_pk:
                continue
            c = valid[g.cred_hash]
            scope = set(c.scope)
            if not role_can_write("editor", d.action) or not scope & d.tags:
                continue
            if not (c.nbf <= op.hlc.physical_ms < c.exp):
                continue
            closed = any(
                isinstance(r := order[rpos].payload, Revoke)
                and r.subject_pk == g.subject_pk
                and r.role == "editor"
                and scope & set(r.scope_tags)
                for rpos in range(gpos + 1, pos + 1)
            )
            ok = ok or not closed
        out.append(ok)
    return out


@st.composite
def chaos_ops(draw) -> list[Op]:
    out: list[Op] = []
    if draw(st.booleans()):
        out.append(
            make_op(ADMIN, (), Hlc(draw(st.integers(0, 200)), 0, 0), IssuerKeyRevoke("issuer-1", "k1", "x"))
        )
    if draw(st.booleans()):
        bits = bytes([draw(st.integers(0, 255))])
        sha = hashlib.sha256(bits).digest()
        chunk = StatusListChunk("list-0", draw(st.sampled_from(["a", "zz"])), 1, 0, sha, bits)
        out.append(make_op(MALLORY, (), Hlc(draw(st.integers(0, 200)), 0, 2), chunk))
    if draw(st.booleans()):
        ms = draw(st.integers(0, 100))
        claims = editor_claims(
            bytes(MALLORY.verify_key), nbf_ms=ms, exp_ms=10**6, role="issuer_admin", scope=()
        )
        tok = mint_vc(MALLORY, claims)
        cred = make_op(MALLORY, (), Hlc(ms, 0, 1), Credential("m", tok))
        grant = make_op(
            MALLORY, (cred.op_id,), Hlc(ms, 0, 2), Grant(bytes(MALLORY.verify_key), cred_hash(tok))
        )
        key = IssuerKey("issuer-1", "k2", "EdDSA", bytes(MALLORY.verify_key), 0, 10**6)
        out += [cred, grant, make_op(MALLORY, (), Hlc(draw(st.integers(0, 200)), 0, 3), key)]
    return out


PROP_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@PROP_SETTINGS
@given(policy_logs(chaos=True), st.randoms(use_true_random=False))
def test_prop_random_insertion_orders_give_one_digest(log, rnd):
    ops, _ = log
    expected = replay_full(ops)[1]
    for _ in range(3):
        shuffled = ops[:]
        rnd.shuffle(shuffled)
        assert replay_full(shuffled)[1] == expected


@PROP_SETTINGS
@given(policy_logs())
def test_prop_gate_matches_naive_oracle(log):
    ops, valid = log
    order = Dag.from_ops(ops).topo_order()
    got = [v == ALLOWED for _, v, _ in explain(order)]
    assert got == oracle_allowed(order, valid)


def _normalised_digest(ops: list[Op], processed: int) -> bytes:
    state, _ = replay_full(ops)
    state.processed_count = processed
    return state.digest()


@PROP_SETTINGS
@given(policy_logs(chaos=True))
def test_prop_denied_ops_never_change_state(log):
    """No data op outside a live epoch changes state: removing any denied leaf op, or all
    denied leaf ops at once, leaves the (count-normalised) digest unchanged."""
    ops, _ = log
    dag = Dag.from_ops(ops)
    order = dag.topo_order()
    full = replay_full(dag)[1]
    parents_of_someone = {p for op in order for p in op.parents}
    denied_leaves = [op for op, v, _ in explain(order) if v == DENIED and op.op_id not in parents_of_someone]
    for op in denied_leaves[:4]:
        rest = [o for o in order if o.op_id != op.op_id]
        assert _normalised_digest(rest, len(order)) == full
    if denied_leaves:
        drop = {op.op_id for op in denied_leaves}
        rest = [o for o in order if o.op_id not in drop]
        assert _normalised_digest(rest, len(order)) == full


@PROP_SETTINGS
@given(policy_logs(chaos=True))
def test_prop_applied_set_equals_gate_verdicts(log):
    ops, _ = log
    dag = Dag.from_ops(ops)
    applied: list[bool] = []
    replay_full(dag, observer=lambda pos, op, d, ok: applied.append(ok))
    assert applied == [v == ALLOWED for _, v, _ in explain(dag.topo_order())]


def test_empty_state_digest_unaffected_by_policy_modules():
    assert State().digest().hex() == "e4e3f156af8170f7901165a76379030ace024fa8adc0d04883f7ecbd27669384"
