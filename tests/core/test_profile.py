"""Profiles: the Genesis/AdminAppoint encodings, detection from a log, mixing refused, admission."""

from __future__ import annotations

import pytest

from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import PAYLOAD, AdminAppoint, Data, Genesis, Op, SealedKeyRotate, make_op
from ecac.core.opcodec import decode_op
from ecac.core.profile import (
    HLC_REGRESSION,
    INVALID_ANCESTOR,
    MISSING_PARENT,
    REFERENCE_PROFILE,
    MixedProfileError,
    Profile,
    admission_error,
    admit_batch,
    detect_profile,
    genesis_op,
    is_strict_order,
)

A = key_pair(3, b"profile/a")
B = key_pair(3, b"profile/b")


def _genesis(sk=A, admins=None):
    return genesis_op(sk, "p", admins or [public_key(A)], Hlc(5, 0, 0))


def test_genesis_and_admin_appoint_round_trip_canonically() -> None:
    g = _genesis(admins=[public_key(B), public_key(A), public_key(A)])
    assert decode_op(g.cbor) == g
    assert g.payload == Genesis("strict", "p", tuple(sorted({public_key(A), public_key(B)})))
    ap = make_op(A, [g.op_id], Hlc(6, 0, 0), AdminAppoint(public_key(B)))
    assert decode_op(ap.cbor) == ap
    # externally tagged like the reference's variants: {"Genesis": {"profile", "project", "admins"}}
    obj = PAYLOAD.to_obj(g.payload)
    assert list(obj) == ["Genesis"] and list(obj["Genesis"]) == ["profile", "project", "admins"]


def test_detect_reference_and_strict() -> None:
    assert detect_profile([]) == REFERENCE_PROFILE
    d = make_op(A, [], Hlc(1, 0, 0), Data("mv:o:x", b"1"))
    assert detect_profile([d]) == REFERENCE_PROFILE
    g = _genesis()
    x = make_op(B, [g.op_id], Hlc(6, 0, 0), Data("mv:o:x", b"1"))
    prof = detect_profile(Dag.from_ops([x, g]).topo_order())
    assert prof == Profile("strict", g.op_id, "p", (public_key(A),))
    assert prof.strict and is_strict_order([g, x]) and not is_strict_order([d])
    assert prof.to_obj()["genesis"] == g.op_id.hex()


def test_mixing_is_refused() -> None:
    g = _genesis()
    root = make_op(B, [], Hlc(9, 0, 0), Data("mv:o:x", b"1"))
    with pytest.raises(MixedProfileError, match="second root"):
        detect_profile(Dag.from_ops([g, root]).topo_order())
    early = make_op(B, [], Hlc(1, 0, 0), Data("mv:o:x", b"1"))  # sorts before the genesis
    with pytest.raises(MixedProfileError, match="not the root"):
        detect_profile(Dag.from_ops([g, early]).topo_order())
    g2 = make_op(B, [g.op_id], Hlc(6, 0, 0), Genesis("strict", "q", (public_key(B),)))
    with pytest.raises(MixedProfileError, match="second genesis"):
        detect_profile([g, g2])
    with pytest.raises(MixedProfileError, match="unknown profile"):
        detect_profile([make_op(A, [], Hlc(), Genesis("lax", "p", (public_key(A),)))])
    with pytest.raises(MixedProfileError, match="names no admin"):
        detect_profile([make_op(A, [], Hlc(), Genesis("strict", "p", ()))])


def _par(*ops: Op) -> list[tuple[bytes, Hlc | None]]:
    return [(op.op_id, op.hlc) for op in ops]


def test_admission_error() -> None:
    g = _genesis()
    prof = detect_profile([g])
    ok = make_op(B, [g.op_id], Hlc(5, 0, 0), Data("mv:o:x", b"1"))  # equal HLC is fine
    assert admission_error(prof, g, []) is None
    assert admission_error(prof, ok, _par(g)) is None
    back = make_op(B, [g.op_id], Hlc(4, 9, 9), Data("mv:o:x", b"1"))
    assert (admission_error(prof, back, _par(g)) or "").startswith(HLC_REGRESSION)
    assert (admission_error(prof, ok, [(g.op_id, None)]) or "").startswith(MISSING_PARENT)
    root = make_op(B, [], Hlc(9, 0, 0), Data("mv:o:x", b"1"))
    assert "does not descend" in (admission_error(prof, root, []) or "")
    other = _genesis(sk=B, admins=[public_key(B)])
    assert "second genesis" in (admission_error(prof, other, []) or "")
    # a reference project refuses strict-only payloads, and admits orphans as before
    assert "strict project" in (admission_error(REFERENCE_PROFILE, g, []) or "")
    ap = make_op(A, [], Hlc(1, 0, 0), AdminAppoint(public_key(B)))
    assert "strict project" in (admission_error(REFERENCE_PROFILE, ap, []) or "")
    sealed = make_op(A, [], Hlc(1, 0, 0), SealedKeyRotate("hv", 1, []))
    assert "strict project" in (admission_error(REFERENCE_PROFILE, sealed, []) or "")
    assert admission_error(REFERENCE_PROFILE, root, []) is None
    assert admission_error(REFERENCE_PROFILE, back, [(g.op_id, None)]) is None


def test_admit_batch_decides_parents_first_and_refuses_descendants() -> None:
    g = _genesis()
    prof = detect_profile([g])
    back = make_op(B, [g.op_id], Hlc(4, 0, 0), Data("mv:o:x", b"1"))
    child = make_op(B, [back.op_id], Hlc(9, 0, 0), Data("mv:o:x", b"2"))
    good = make_op(B, [g.op_id], Hlc(6, 0, 0), Data("mv:o:x", b"3"))
    after = make_op(B, [good.op_id], Hlc(7, 0, 0), Data("mv:o:x", b"4"))
    stored = {g.op_id: g.hlc}
    # children before their parents in the input: still decided parents first
    res = admit_batch(prof, [child, after, back, good], stored.get)
    assert res.profile == prof
    assert [i for i, _ in res.refused] == [0, 2]
    assert res.refused[0][1].startswith(INVALID_ANCESTOR) and res.refused[1][1].startswith(HLC_REGRESSION)
    # the same ops in any order get the same verdicts (a function of each op and its parents)
    res2 = admit_batch(prof, [good, back, after, child], stored.get)
    assert {i for i, _ in res2.refused} == {1, 3}
    # an empty store takes the profile of its batch
    empty = admit_batch(None, [g, good, after], {}.get)
    assert empty.profile == prof and empty.refused == ()
    root = make_op(B, [], Hlc(9, 0, 0), Data("mv:o:x", b"1"))
    mixed = admit_batch(None, [root, g], {}.get)
    assert mixed.profile == prof and [i for i, _ in mixed.refused] == [0]
    ref = admit_batch(None, [root], {}.get)
    assert ref.profile == REFERENCE_PROFILE and ref.refused == ()
    assert admit_batch(None, [], {}.get).profile is None
    # a reference store refuses a Genesis (profiles never mix), and nothing else changes
    assert [i for i, _ in admit_batch(REFERENCE_PROFILE, [root, g], {}.get).refused] == [1]
    assert admit_batch(REFERENCE_PROFILE, [child, back], {}.get).refused == ()


def test_genesis_needs_admins() -> None:
    from ecac.core.errors import EcacError

    with pytest.raises(EcacError, match="at least one admin"):
        genesis_op(A, "p", [])
    with pytest.raises(EcacError, match="32-byte"):
        genesis_op(A, "p", [b"x"])
