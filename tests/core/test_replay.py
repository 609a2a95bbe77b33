"""Replay: full replay, the policy plug-in, incremental replay that always equals full replay (core §8)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.bench.policy import gen_policy_heavy
from ecac.core import policy
from ecac.core.codec import dumps
from ecac.core.dag import Dag
from ecac.core.errors import DecodeError, InvalidOpError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import (
    RETROACTIVE_KINDS,
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    KeyGrant,
    Op,
    Revoke,
    StatusListChunk,
    make_op,
)
from ecac.core.policy import has_policy
from ecac.core.replay import (
    Replayer,
    ResumePoint,
    apply_over_order,
    decode_and_admit,
    order_hash,
    replay_full,
    suffix_keeps_verdicts,
)
from ecac.core.state import State
from ecac.core.vc import VcMemo, cred_hash
from ecac.testing import scenarios
from ecac.testing.workloads import OTHER_KINDS, gen_hb_chain, gen_random_dag, random_payload

SK = key_pair(5, b"test/replay")
PK = bytes(SK.verify_key)


def full(ops: Sequence[Op]) -> tuple[State, bytes]:
    return replay_full(Dag.from_ops(ops))


class ToyGate:
    """A deny-wins policy with the real one's dependency structure, for testing resumption.

    A Grant opens an epoch for its subject at its position and a Revoke closes the
    subject's open epochs at its position (positional inputs). Whether grants count at all
    depends on position-independent inputs anywhere in the order: with ``strict`` (the
    default) there must be a Credential and an IssuerKey, no IssuerKeyRevoke and no
    StatusListChunk with an odd first byte; otherwise grants count iff the number of
    Credential/IssuerKey/IssuerKeyRevoke/StatusListChunk ops is even, so that every such
    arrival flips every verdict (a sensitive setting for property tests).
    """

    def __init__(self, order: Sequence[Op], strict: bool = True) -> None:
        kinds = [op.kind for op in order]
        if strict:
            ok = (
                "Credential" in kinds
                and "IssuerKey" in kinds
                and "IssuerKeyRevoke" not in kinds
                and not any(
                    isinstance(op.payload, StatusListChunk) and op.payload.chunk_bytes[:1] == b"\x01"
                    for op in order
                )
            )
        else:
            ok = sum(k in RETROACTIVE_KINDS for k in kinds) % 2 == 0
        self.epochs: dict[bytes, list[list[float]]] = {}
        for pos, op in enumerate(order):
            p = op.payload
            if isinstance(p, Grant) and ok:
                self.epochs.setdefault(p.subject_pk, []).append([pos, float("inf")])
            elif isinstance(p, Revoke):
                for e in self.epochs.get(p.subject_pk, []):
                    if e[1] == float("inf"):
                        e[1] = pos

    def permits(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool:
        return any(lo < pos < hi for lo, hi in self.epochs.get(author_pk, []))

    def deny_reason(self, *args: object) -> str:
        return "deny_wins"


class ToySource:
    """A gate source that builds a ToyGate over the whole order on every apply."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def gate_for(self, order: Sequence[Op], keep: int = 0) -> ToyGate | None:
        return ToyGate(order, self.strict) if has_policy(order) else None

    def keeps_verdicts(self, order: Sequence[Op], keep: int) -> bool:
        return False  # only core §8.4's own conditions


@contextmanager
def toy_policy(strict: bool = True):
    """The toy policy for ``replay_full`` and for every ``Replayer`` made inside the block."""

    def build(order: Sequence[Op], memo: object = None) -> ToyGate | None:
        return ToySource(strict).gate_for(order)

    with (
        mock.patch.object(policy, "build_write_gate", build),
        mock.patch.object(policy, "GateBuilder", lambda memo=None: ToySource(strict)),
    ):
        yield


# ---------------------------------------------------------------------- full replay and the plug-in


def test_replay_full_of_ops_verifies_them():
    ops = gen_hb_chain(9, 4)
    assert replay_full(ops)[0].processed_count == 4
    bad = replace(ops[2], sig=bytes(64))
    with pytest.raises(InvalidOpError) as e:
        replay_full([ops[0], ops[1], bad, ops[3]])
    assert e.value.op_id == ops[2].op_id


def test_non_data_ops_and_non_data_keys_count_but_do_not_change_state():
    a = make_op(SK, [], Hlc(1, 0, 0), Data("mv:o:x", b"A"))
    b = make_op(SK, [a.op_id], Hlc(2, 0, 0), Data("not-a-key", b"B"))
    c = make_op(SK, [b.op_id], Hlc(3, 0, 0), KeyGrant(PK, "hv", 1, bytes(32)))
    d = make_op(SK, [c.op_id], Hlc(4, 0, 0), Data("mv:o", b"D"))
    state, _ = full([a, b, c, d])
    assert state.processed_count == 4
    assert state.to_json() == (
        '{"objects":[{"id":"o","fields":[{"name":"x","project":"41","type":"mv","winners":["41"]}]}],'
        '"processed_count":4}'
    )


def test_gate_is_built_once_from_the_whole_order_and_asked_per_data_op():
    ops = [
        make_op(SK, [], Hlc(1, 0, 7), Data("mv:o:x", b"A")),
        make_op(SK, [], Hlc(2, 0, 0), Grant(PK, bytes(32))),
        make_op(SK, [], Hlc(3, 0, 0), Data("set+:o:s:e", b"")),
        make_op(SK, [], Hlc(4, 0, 0), Data("junk", b"")),
    ]
    calls = []
    built = []

    class Gate:
        def permits(self, author_pk, action, tags, pos, hlc):
            calls.append((author_pk, action, tags, pos, hlc))
            return pos == 0

    def build(order):
        built.append([op.op_id for op in order])
        return Gate()

    seen = []
    with mock.patch.object(policy, "build_write_gate", build):
        dag = Dag.from_ops(ops)
        state = State()
        apply_over_order(dag, state, observer=lambda pos, op, d, ok: seen.append((pos, d.action, ok)))
    assert built == [[op.op_id for op in ops]]
    assert calls == [
        (PK, "SetField", frozenset({"hv", "confidential"}), 0, Hlc(1, 0, 7)),
        (PK, "SetAdd", frozenset({"mech"}), 2, Hlc(3, 0, 0)),
    ]
    assert seen == [(0, "SetField", True), (2, "SetAdd", False)]
    assert state.processed_count == 4
    assert state.get_field("o", "s") is None  # denied, so the field is not even created
    assert state.get_field("o", "x").values() == [b"A"]


def test_real_policy_scenarios_give_the_vector_digests(vectors):
    rows = {
        r["source"].split(" ")[1]: r
        for r in vectors.expected["state_digests"]
        if r["source"].startswith("scenario")
    }
    cases = {
        "S1": scenarios.s1_revoke_closes_epochs(),
        "S2": scenarios.s2_vc_time_window(),
        "S3": scenarios.s3_concurrent_adds(),
        "S4": scenarios.s4_policy_split(),
    }
    for name, ops in cases.items():
        state, digest = full(ops)
        assert state.to_json() == rows[name]["state_json"], name
        assert digest.hex() == rows[name]["digest_hex"], name


@pytest.mark.parametrize("with_issuer_key", [False, True])
def test_s4_incremental_parity_at_every_split_with_the_real_policy(with_issuer_key):
    ops = scenarios.s4_policy_split(with_issuer_key)
    want = full(ops)
    if with_issuer_key:
        assert '"winners":["41","43"]' in want[0].to_json()  # A and C (core §16.2 S4)
    for k in range(len(ops) + 1):
        dag = Dag.from_ops(ops[:k])
        r = Replayer()
        r.apply(dag)
        dag.insert_many(ops[k:])
        state, digest = r.apply(dag)
        assert (state.to_json(), digest) == (want[0].to_json(), want[1]), k


# ---------------------------------------------------------------------- decode_and_admit


def test_decode_and_admit_reports_bad_ops_and_keeps_good_ones():
    ops = gen_hb_chain(11, 5)
    bad_sig = replace(ops[1], sig=bytes([ops[1].sig[0] ^ 1]) + ops[1].sig[1:])
    bad_sig = _recode(bad_sig)
    bad_id = _recode(replace(ops[3], op_id=bytes(32)))
    good, rej = decode_and_admit([ops[0].cbor, bad_sig.cbor, ops[2].cbor, bad_id.cbor, ops[4].cbor])
    assert good == [ops[0], ops[2], ops[4]]
    assert sorted((r.op_id, r.reason) for r in rej) == sorted(
        [
            (ops[1].op_id, "invalid signature"),
            (bytes(32), "op_id mismatch (header hash != embedded op_id)"),
        ]
    )
    with pytest.raises(DecodeError, match="op #1"):
        decode_and_admit([ops[0].cbor, b"\x00garbage"])


def _recode(op: Op) -> Op:
    """The op with its fields as given and its canonical bytes recomputed."""
    data = dumps({"header": op.header_obj(), "sig": list(op.sig), "op_id": list(op.op_id)})
    return replace(op, cbor=data)


# ---------------------------------------------------------------------- resume conditions


def test_order_hash_and_policy_flags():
    ops = gen_hb_chain(3, 3)
    assert order_hash(ops) == order_hash(ops + ops, 3)
    assert order_hash(ops, 0) == order_hash([])
    grant = make_op(SK, [], Hlc(1, 0, 0), Grant(PK, bytes(32)))
    assert has_policy([*ops, grant]) and not has_policy(ops)
    cred = make_op(SK, [], Hlc(1, 0, 0), Credential("c", b"x"))
    kg = make_op(SK, [], Hlc(1, 0, 0), KeyGrant(PK, "hv", 1, bytes(32)))
    assert not suffix_keeps_verdicts([cred], True)
    assert not suffix_keeps_verdicts([grant], False)
    assert suffix_keeps_verdicts([grant], True)
    assert suffix_keeps_verdicts([kg, *ops], False)


def test_resume_point_bytes_round_trip_and_validation():
    ops = gen_hb_chain(4, 6)
    dag = Dag.from_ops(ops[:4])
    state, _ = replay_full(dag)
    p = ResumePoint.capture(state, dag.topo_order())
    assert p.k == 4 and not p.has_policy
    back = ResumePoint.from_bytes(p.to_bytes())
    assert back == p
    assert back.restore() == state
    full_order = Dag.from_ops(ops).topo_order()
    assert p.valid_for(full_order)
    assert not p.valid_for(full_order[:3])
    assert not p.valid_for(list(reversed(full_order)))
    with pytest.raises(DecodeError):
        ResumePoint.from_bytes(b"\x01")
    with pytest.raises(DecodeError):
        ResumePoint.from_bytes(
            dumps({"k": 1, "order_hash": [0] * 32, "has_policy": 1, "state_cbor": [], "digest": []})
        )
    with pytest.raises(DecodeError, match="digest mismatch"):
        replace(p, digest=bytes(32)).restore()
    with pytest.raises(DecodeError, match="processed_count"):
        replace(p, k=5).restore()
    with pytest.raises(ValueError):
        ResumePoint.capture(state, full_order)


# ---------------------------------------------------------------------- incremental replay: cases


def test_replay_parity_prefix_180_of_hb_chain_200():
    ops = gen_hb_chain(42, 200)
    want = full(ops)[1]
    dag = Dag.from_ops(ops[:180])
    r = Replayer()
    r.apply(dag)
    dag.insert_many(ops[180:])
    assert r.apply(dag)[1] == want
    assert r.last_start == 180  # continued, not replayed
    # applying again with nothing new changes nothing
    assert r.apply(dag)[1] == want
    assert r.last_start == 200


def _data(parents: Sequence[bytes], ms: int, key: str = "mv:o:x", value: bytes = b"v", sk=SK) -> Op:
    return make_op(sk, parents, Hlc(ms, 0, 0), Data(key, value))


def _resume_case(prefix: list[Op], suffix: list[Op], want_start: int) -> None:
    with toy_policy():
        dag = Dag.from_ops(prefix)
        r = Replayer()
        r.apply(dag)
        dag.insert_many(suffix)
        state, digest = r.apply(dag)
        assert (state.to_json(), digest) == (full(prefix + suffix)[0].to_json(), full(prefix + suffix)[1])
        assert r.last_start == want_start


def test_op_sorting_before_the_processed_prefix_forces_a_restart():
    a = _data([], 10, value=b"A")
    b = _data([a.op_id], 30, value=b"B")
    early = _data([], 20, "set+:o:s:e", b"E")
    _resume_case([a, b], [early], 0)


def test_appended_data_continues():
    a = _data([], 10, value=b"A")
    b = _data([a.op_id], 30, value=b"B")
    _resume_case([a, b], [_data([b.op_id], 40, value=b"C")], 2)


def _policy_log() -> list[Op]:
    ik = make_op(SK, [], Hlc(1, 0, 0), IssuerKey("issuer-1", "k1", "EdDSA", PK, 0, 2**64 - 1))
    cred = make_op(SK, [], Hlc(2, 0, 0), Credential("c", b"jwt"))
    grant = make_op(SK, [cred.op_id], Hlc(3, 0, 0), Grant(PK, bytes(32)))
    w = _data([grant.op_id], 4, value=b"W")
    return [ik, cred, grant, w]


@pytest.mark.parametrize(
    "payload",
    [
        StatusListChunk("list-0", "issuer-1", 1, 0, bytes(32), b"\x01"),
        IssuerKeyRevoke("issuer-1", "k1", "gone"),
        Credential("late", b"jwt2"),
        IssuerKey("issuer-2", "k9", "EdDSA", PK, 0, 1),
    ],
)
def test_appended_retroactive_inputs_force_a_restart(payload):
    log = _policy_log()
    late = make_op(SK, [log[-1].op_id], Hlc(50, 0, 0), payload)
    _resume_case(log, [late], 0)


def test_late_credential_makes_an_earlier_grant_effective():
    ik, _, _, _ = _policy_log()
    grant = make_op(SK, [], Hlc(3, 0, 0), Grant(PK, bytes(32)))
    w = _data([grant.op_id], 4, value=b"W")
    late_cred = make_op(SK, [w.op_id], Hlc(50, 0, 0), Credential("c", b"jwt"))
    with toy_policy():
        dag = Dag.from_ops([ik, grant, w])
        r = Replayer()
        assert r.apply(dag)[0].objects == {}  # no credential yet: the write is denied
        dag.insert(late_cred)
        state, digest = r.apply(dag)
        assert r.last_start == 0
        assert state.get_field("o", "x").values() == [b"W"]  # now allowed from the grant's position on
        assert digest == full([ik, grant, w, late_cred])[1]


def test_first_grant_on_a_data_only_log_forces_a_restart():
    a = _data([], 10, value=b"A")
    b = _data([a.op_id], 20, value=b"B")
    g = make_op(SK, [b.op_id], Hlc(30, 0, 0), Grant(PK, bytes(32)))
    _resume_case([a, b], [g], 0)


def test_more_grants_and_revokes_after_policy_is_on_continue():
    log = _policy_log()
    rv = make_op(SK, [log[-1].op_id], Hlc(60, 0, 0), Revoke(PK, "editor", ("hv",), Hlc(60, 0, 0)))
    w2 = _data([rv.op_id], 70, value=b"X")
    g2 = make_op(SK, [w2.op_id], Hlc(80, 0, 0), Grant(PK, bytes(32)))
    w3 = _data([g2.op_id], 90, value=b"Y")
    _resume_case(log, [rv, w2, g2, w3], len(log))


def test_fallback_uses_the_newest_valid_point():
    ops = gen_hb_chain(6, 30)
    dag = Dag()
    r = Replayer(auto_every=10)
    for i in range(0, 30, 10):
        dag.insert_many(ops[i : i + 10])
        r.apply(dag)
    assert [p.k for p in r.points] == [10, 20, 30]
    # an op that sorts between positions 24 and 25: points 10 and 20 stay valid
    early = make_op(SK, [], Hlc(1024, 0, 0), Data("set+:o:s:e", b""))
    dag.insert(early)
    _, digest = r.apply(dag)
    assert r.last_start == 20
    assert digest == full([*ops, early])[1]


def test_max_points_keeps_the_newest():
    r = Replayer(max_points=2)
    for k in (3, 1, 2):
        r.add_point(ResumePoint(k, bytes(32), False, State().snapshot_cbor(), State().digest()))
    assert [p.k for p in r.points] == [2, 3]


def test_from_point_resumes_or_falls_back():
    ops = gen_hb_chain(8, 12)
    dag = Dag.from_ops(ops[:8])
    r = Replayer()
    r.apply(dag)
    point = ResumePoint.from_bytes(r.save_point().to_bytes())
    dag2 = Dag.from_ops(ops)
    r2 = Replayer.from_point(point)
    assert r2.apply(dag2)[1] == full(ops)[1]
    assert r2.last_start == 8
    # the same point against a DAG whose prefix differs: full replay from 0
    other = gen_hb_chain(9, 10)
    r3 = Replayer.from_point(point)
    assert r3.apply(Dag.from_ops(other))[1] == full(other)[1]
    assert r3.last_start == 0
    with pytest.raises(ValueError):
        Replayer.from_point(point).save_point()


# ---------------------------------------------------------------------- incremental replay: properties


def _check_incremental(seed: int, n: int, restore: bool) -> None:
    rng = random.Random(seed)
    ops = gen_random_dag(
        rng,
        n,
        keys=["mv:o:x", "set+:o:s:e", "set-:o:s:e", "set+:o:s:f", "mv:o:s"],
        n_authors=2,
        random_hlc=True,
        other_kinds=(*OTHER_KINDS, "Grant", "Grant", "Credential", "IssuerKeyRevoke"),
        other_fraction=0.4,
    )
    want_state, want_digest = full(ops)
    perm = ops[:]
    rng.shuffle(perm)
    cut = rng.randint(0, n)
    dag = Dag.from_ops(perm[:cut])
    r = Replayer(auto_every=rng.choice([0, 3, 7]))
    r.apply(dag)
    if restore:
        r = Replayer.from_point(ResumePoint.from_bytes(r.save_point().to_bytes()))
    rest = perm[cut:]
    while rest:  # the remaining ops in one to three batches, applying after each
        k = rng.randint(1, len(rest))
        dag.insert_many(rest[:k])
        rest = rest[k:]
        r.apply(dag)
    state, digest = r.apply(dag)
    assert state.to_json() == want_state.to_json()
    assert digest == want_digest
    assert state.snapshot_cbor() == want_state.snapshot_cbor()


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 24))
def test_incremental_equals_full_for_random_dags_and_splits(seed, n):
    with toy_policy(strict=False):
        _check_incremental(seed, n, restore=False)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 24))
def test_incremental_from_a_restored_snapshot_equals_full(seed, n):
    with toy_policy(strict=False):
        _check_incremental(seed, n, restore=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 24))
def test_incremental_equals_full_for_random_dags_with_the_real_policy(seed, n):
    _check_incremental(seed, n, restore=seed % 2 == 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 20))
def test_insertion_order_never_changes_the_digest(seed, n):
    rng = random.Random(seed)
    ops = gen_random_dag(rng, n)
    want = full(ops)[1]
    for _ in range(3):
        perm = ops[:]
        rng.shuffle(perm)
        assert full(perm)[1] == want


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(0, 12),
    kinds=st.lists(st.sampled_from([*OTHER_KINDS, "Data"]), min_size=1, max_size=4),
)
def test_appending_any_payload_kinds_after_the_prefix_equals_full(seed, n, kinds):
    """The suffix sorts after the prefix (prefix condition holds), so only conditions 2 and 3 decide."""
    rng = random.Random(seed)
    prefix = gen_random_dag(rng, n, n_authors=2)  # data only, HLC {100+i, 0, i%3}
    subject = prefix[0].author_pk if prefix else PK
    heads = [op.op_id for op in prefix][-2:]
    suffix = []
    for i, kind in enumerate(kinds):
        payload = Data("mv:o:x", b"late") if kind == "Data" else random_payload(rng, kind, subject)
        op = make_op(SK, heads, Hlc(10_000 + i, 0, 0), payload)
        suffix.append(op)
        heads = [op.op_id]
    with toy_policy(strict=False):
        dag = Dag.from_ops(prefix)
        r = Replayer()
        r.apply(dag)
        dag.insert_many(suffix)
        state, digest = r.apply(dag)
        want_state, want_digest = full(prefix + suffix)
    assert digest == want_digest
    assert state.snapshot_cbor() == want_state.snapshot_cbor()
    restart = any(k in RETROACTIVE_KINDS or k in ("Grant", "Revoke") for k in kinds)
    assert r.last_start == (0 if restart else n)


def test_switching_to_another_dag_compares_the_whole_prefix():
    a = _data([], 10, value=b"A")
    x = _data([], 11, value=b"X")
    b = _data([], 20, "set+:o:s:e", b"B")
    r = Replayer()
    r.apply(Dag.from_ops([a, b]))
    # same length and same last op, but another op before it: not a prefix
    state, digest = r.apply(Dag.from_ops([x, b]))
    assert r.last_start == 0
    assert digest == full([x, b])[1]
    assert state.get_field("o", "x").values() == [b"X"]


# ---------------------------------------------------------------------- the real policy, memo on and off


def _step_replayers() -> list[Replayer]:
    """The default replayer, one whose memo evicts everything, and one with points to fall back to."""
    return [
        Replayer(),
        Replayer(gates=policy.GateBuilder(VcMemo(max_entries=0))),
        Replayer(auto_every=2, max_points=3),
    ]


def _apply_and_compare(replayers: list[Replayer], dag: Dag, what: object) -> None:
    want_state, want_digest = replay_full(dag)
    want_gate = policy.build_write_gate(dag.topo_order())
    for r in replayers:
        state, digest = r.apply(dag)
        assert (state.to_json(), digest) == (want_state.to_json(), want_digest), what
        assert r.gate == want_gate, what


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_every_scenario_op_by_op_equals_full_with_and_without_the_memo(name):
    ops = scenarios.SCENARIOS[name]()
    for arrival in (ops, ops[::-1], ops[1::2] + ops[::2]):
        dag = Dag()
        replayers = _step_replayers()
        for i, op in enumerate(arrival):
            dag.insert(op)
            _apply_and_compare(replayers, dag, (name, i))


def test_every_vector_log_op_by_op_gives_the_vector_digest(vectors):
    for name in sorted(vectors.op_logs):
        ops = vectors.ops(name)
        want = vectors.op_logs[name]["state_digest_hex"]
        for arrival in (ops, ops[::-1]):
            dag = Dag()
            replayers = _step_replayers()
            for i, op in enumerate(arrival):
                dag.insert(op)
                _apply_and_compare(replayers, dag, (name, i))
            assert [r.digest.hex() for r in replayers] == [want] * len(replayers), name
            assert all(r.gate is None for r in replayers)


def test_vector_policy_scenarios_op_by_op_give_the_vector_digests(vectors):
    rows = {
        r["source"].split(" ")[1]: r
        for r in vectors.expected["state_digests"]
        if r["source"].startswith("scenario")
    }
    for name, ops in {
        "S1": scenarios.s1_revoke_closes_epochs(),
        "S2": scenarios.s2_vc_time_window(),
        "S3": scenarios.s3_concurrent_adds(),
        "S4": scenarios.s4_policy_split(),
    }.items():
        dag = Dag()
        r = Replayer()
        for op in ops:
            dag.insert(op)
            r.apply(dag)
        assert r.state.to_json() == rows[name]["state_json"], name
        assert r.digest.hex() == rows[name]["digest_hex"], name


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(50, 400), batches=st.integers(1, 12))
def test_policy_heavy_logs_in_random_batches_equal_full(seed, n, batches):
    """A generated policy-heavy log (grants, revokes, status lists, key rotation) arriving in
    batches, mostly in order with some ops delayed: after every batch each replayer's digest
    and gate equal a full replay's."""
    rng = random.Random(seed)
    ops = gen_policy_heavy(seed % 1000, n, editors=5)
    arrival = ops[:]
    for _ in range(n // 20):  # delay a few ops (their descendants wait as orphans)
        i = rng.randrange(n)
        arrival.insert(min(n - 1, i + rng.randrange(1, 40)), arrival.pop(i))
    cuts = sorted(rng.sample(range(1, n), min(batches, n - 1)))
    dag = Dag()
    replayers = _step_replayers()
    lo = 0
    for hi in [*cuts, n]:
        dag.insert_many(arrival[lo:hi])
        lo = hi
        _apply_and_compare(replayers, dag, (seed, hi))
    assert len(dag) == n


TRUST_KINDS = ("IssuerKey", "IssuerKeyRevoke", "StatusListChunk")


def test_writes_after_policy_extend_the_gate_and_rebuilds_reuse_verdicts():
    """Appended Data, Grant, Revoke and new-VC Credential ops continue the live state and
    extend the gate; a trust op rebuilds it, and the rebuild verifies only credentials it has
    not seen before."""
    ops = gen_policy_heavy(3, 300, editors=4)
    dag = Dag.from_ops(ops[:250])
    r = Replayer()
    r.apply(dag)
    gates = r.gates
    assert isinstance(gates, policy.GateBuilder)
    memo = gates.memo
    assert gates.builds == 1 and memo.misses > 20
    misses = memo.misses
    for op in ops[250:]:
        dag.insert(op)
        r.apply(dag)
        if op.kind not in TRUST_KINDS:
            assert r.last_start == len(dag) - 1, op.kind  # continued
    tail = [op.kind for op in ops[250:]]
    assert {"Data", "Grant", "Revoke", "Credential"} <= set(tail)
    trust = sum(k in TRUST_KINDS for k in tail)
    assert gates.builds == 1 + trust
    assert gates.extensions == len(tail) - trust
    # each new VC is verified at most once per path (in band when granted, M4 at a rebuild)
    assert memo.misses - misses <= 2 * tail.count("Credential")
    assert r.digest == full(ops)[1]


def test_a_late_credential_for_an_earlier_grant_restarts_but_a_new_vc_continues():
    """Real policy: a Credential whose VC an earlier Grant names makes that Grant effective
    from its position (retroactive: replay restarts); a Credential for a new VC, with its
    Grant after it, changes nothing earlier (the live state continues)."""
    ik = scenarios.issuer_key_op()
    token = scenarios.vc_token(nbf_ms=1000)
    cred = scenarios.credential_op(token, 1000)
    grant = make_op(
        scenarios.ADMIN, [ik.op_id], Hlc(1000, 0, 2), Grant(scenarios.pk(scenarios.USER), cred_hash(token))
    )
    w = scenarios.add(grant, Hlc(1010, 0, 1), "A")
    dag = Dag.from_ops([ik, grant, w])
    r = Replayer()
    assert r.apply(dag)[0].get_field("o", "x") is None  # no credential yet: denied
    dag.insert(make_op(scenarios.ADMIN, [w.op_id], Hlc(1020, 0, 0), cred.payload))
    state, digest = r.apply(dag)
    assert r.last_start == 0  # restarted: the earlier write is now allowed
    assert [e for e, _ in state.get_field("o", "x").iter_present()] == ["A"]
    assert digest == replay_full(dag)[1]
    cred2, grant2 = scenarios.grant_pair(scenarios.MALLORY, 1030, 9000, jti="c2")
    last = dag.topo_order()[-1]
    cred2 = make_op(scenarios.ADMIN, [last.op_id], Hlc(1030, 0, 1), cred2.payload)
    grant2 = make_op(scenarios.ADMIN, [cred2.op_id], Hlc(1030, 0, 2), grant2.payload)
    w2 = scenarios.add(grant2, Hlc(1040, 0, 1), "M", scenarios.MALLORY)
    for op in (cred2, grant2, w2):
        n = len(dag)
        dag.insert(op)
        state, digest = r.apply(dag)
        assert r.last_start == n, op.kind  # continued
        assert digest == replay_full(dag)[1]
    assert [e for e, _ in state.get_field("o", "x").iter_present()] == ["A", "M"]


def _continued_or_restarted(prefix: list[Op], tail: list[Op]) -> list[int]:
    """Apply ``prefix``, then each op of ``tail`` in turn; the start of every tail apply
    (each checked against a full replay)."""
    dag = Dag.from_ops(prefix)
    r = Replayer()
    r.apply(dag)
    starts = []
    for op in tail:
        dag.insert(op)
        state, digest = r.apply(dag)
        want = replay_full(dag)
        assert (state.to_json(), digest) == (want[0].to_json(), want[1]), op.kind
        starts.append(r.last_start)
    return starts


def test_a_credential_for_a_vc_granted_since_the_last_rebuild_restarts():
    """The VC was named by a Grant that extended the gate (not by the last full build)."""
    ik = scenarios.issuer_key_op()
    cred1, grant1 = scenarios.grant_pair(scenarios.MALLORY, 1000, 9000, jti="m")
    token = scenarios.vc_token(nbf_ms=1000, jti="u")
    grant = make_op(
        scenarios.ADMIN,
        [grant1.op_id],
        Hlc(1100, 0, 0),
        Grant(scenarios.pk(scenarios.USER), cred_hash(token)),
    )
    w = scenarios.add(grant, Hlc(1110, 0, 1), "A")
    late = make_op(scenarios.ADMIN, [w.op_id], Hlc(1120, 0, 0), Credential("u", token))
    assert _continued_or_restarted([ik, cred1, grant1], [grant, w, late]) == [3, 4, 0]


def test_a_republished_vc_that_now_verifies_under_m4_restarts():
    """Mallory's self-signed issuer_admin VC first arrives in a Credential op by someone else
    (M4 fails, so no admin epoch); the admin's IssuerKey after her Grant counts and the
    user's write is allowed. The same VC bytes then arrive by Mallory herself: M4 verifies,
    her admin epoch opens at her Grant, the admin's key is ignored and the write is denied,
    retroactively."""
    admin_vc = scenarios.vc_token(
        scenarios.MALLORY, 500, 10**6, role="issuer_admin", signer=scenarios.MALLORY, status=None, jti="adm"
    )
    relayed = make_op(scenarios.USER, [], Hlc(900, 0, 0), Credential("adm", admin_vc))
    m_grant = make_op(
        scenarios.MALLORY,
        [relayed.op_id],
        Hlc(901, 0, 0),
        Grant(scenarios.pk(scenarios.MALLORY), cred_hash(admin_vc)),
    )
    ik = scenarios.issuer_key_op(ms=999, parents=(m_grant.op_id,))
    cred, grant = scenarios.grant_pair(nbf_ms=1000)
    w = scenarios.add(grant, Hlc(1010, 0, 1), "A")
    prefix = [relayed, m_grant, ik, cred, grant, w]
    assert [e for e, _ in replay_full(Dag.from_ops(prefix))[0].get_field("o", "x").iter_present()] == ["A"]
    own = make_op(scenarios.MALLORY, [w.op_id], Hlc(2000, 0, 0), Credential("adm", admin_vc))
    assert _continued_or_restarted(prefix, [own]) == [0]
    assert replay_full(Dag.from_ops([*prefix, own]))[0].get_field("o", "x") is None  # denied: never created


def test_an_exception_mid_apply_drops_the_live_state():
    ops = gen_hb_chain(12, 6)
    dag = Dag.from_ops(ops[:4])
    r = Replayer()
    r.apply(dag)
    dag.insert_many(ops[4:])

    def boom(*args, **kwargs):
        raise RuntimeError("observer failed")

    with pytest.raises(RuntimeError):
        r.apply(dag, observer=boom)
    assert r.state.processed_count == 0 and r.gate is None
    assert r.apply(dag)[1] == full(ops)[1]
    assert r.last_start == 0
