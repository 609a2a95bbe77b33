"""Profiles: the Genesis/AdminAppoint encodings, detection from a log, mixing refused, admission."""

from __future__ import annotations

import pytest

from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import PAYLOAD, AdminAppoint, Data, Genesis, make_op
from ecac.core.opcodec import decode_op
from ecac.core.profile import (
    HLC_REGRESSION,
    REFERENCE_PROFILE,
    MixedProfileError,
    Profile,
    admission_error,
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


def test_admission_error() -> None:
    g = _genesis()
    prof = detect_profile([g])
    ok = make_op(B, [g.op_id], Hlc(5, 0, 0), Data("mv:o:x", b"1"))  # equal HLC is fine
    assert admission_error(prof, g, []) is None
    assert admission_error(prof, ok, [g]) is None
    back = make_op(B, [g.op_id], Hlc(4, 9, 9), Data("mv:o:x", b"1"))
    assert (admission_error(prof, back, [g]) or "").startswith(HLC_REGRESSION)
    root = make_op(B, [], Hlc(9, 0, 0), Data("mv:o:x", b"1"))
    assert "does not descend" in (admission_error(prof, root, []) or "")
    other = _genesis(sk=B, admins=[public_key(B)])
    assert "second genesis" in (admission_error(prof, other, []) or "")
    # a reference project refuses strict-only payloads
    assert "strict project" in (admission_error(REFERENCE_PROFILE, g, []) or "")
    ap = make_op(A, [], Hlc(1, 0, 0), AdminAppoint(public_key(B)))
    assert "strict project" in (admission_error(REFERENCE_PROFILE, ap, []) or "")
    assert admission_error(REFERENCE_PROFILE, root, []) is None


def test_genesis_needs_admins() -> None:
    from ecac.core.errors import EcacError

    with pytest.raises(EcacError, match="at least one admin"):
        genesis_op(A, "p", [])
    with pytest.raises(EcacError, match="32-byte"):
        genesis_op(A, "p", [b"x"])
