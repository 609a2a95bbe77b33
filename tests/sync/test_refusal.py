"""The pure ``/ecac/refused/1`` notice (``ecac.sync.refusal``): byte layout, strict decoding, limits."""

from __future__ import annotations

import cbor2
import pytest

from ecac.core.errors import DecodeError, EcacError, ProtocolError
from ecac.core.keys import key_pair, public_key
from ecac.core.liveness import NOT_LIVE_REASONS, LiveSubjects, subject_is_live
from ecac.sync.refusal import (
    MAX_REFUSAL_FRAME,
    REFUSAL_REASONS,
    REFUSED_PROTOCOL_ID,
    REFUSED_WHAT,
    RefusalNotice,
    make_notice,
    not_live_text,
    verify_notice,
)

SUBJECT = public_key(key_pair(1, b"doc/subject"))  # 62bbacf4…6640, as in the hello vector
OTHER = public_key(key_pair(1, b"refusal/other"))


@pytest.mark.parametrize("what", REFUSED_WHAT)
@pytest.mark.parametrize("reason", REFUSAL_REASONS)
def test_every_what_and_reason_round_trips(what: str, reason: str) -> None:
    n = make_notice(what, reason, SUBJECT)
    data = n.encode()
    assert verify_notice(data, SUBJECT) == n
    assert (n.v, n.what, n.reason, n.subject_pk) == (1, what, reason, SUBJECT)
    assert len(data) <= 120 < MAX_REFUSAL_FRAME


def test_the_reasons_are_the_liveness_codes() -> None:
    """One source of truth: the notice carries exactly what ``subject_is_live`` answers."""
    assert REFUSAL_REASONS == NOT_LIVE_REASONS
    assert set(REFUSAL_REASONS) == {
        "no_grant",
        "revoked",
        "expired_cred",
        "untrusted_issuer",
        "self_issued_vc",
        "state_not_loaded",
    }
    # the codes subject_is_live computes itself (the rest come from the strict gate's state)
    before = LiveSubjects.admins_only([OTHER])
    assert subject_is_live(before, SUBJECT) in REFUSAL_REASONS
    loaded = LiveSubjects(frozenset([OTHER]), ops=3)
    assert subject_is_live(loaded, SUBJECT) in REFUSAL_REASONS
    assert REFUSED_PROTOCOL_ID == "/ecac/refused/1"


DOC_VECTOR = (
    "a461760164776861746473796e6366726561736f6e686e6f5f6772616e746a7375626a6563745f706b"
    "9820186218bb18ac18f4183918f218e5184b0418d6182f189b1860188a189418fc183218b4185c1846"
    "188518d81821187418bb185718c9181d18e418ae18661840"
)


def test_notice_vector() -> None:
    """The vector of docs/protocol.md "Refusal notice": sync refused, no_grant, the doc subject."""
    data = make_notice("sync", "no_grant", SUBJECT).encode()
    assert len(data) == 106 and data.hex() == DOC_VECTOR
    obj = cbor2.loads(data)
    assert list(obj) == ["v", "what", "reason", "subject_pk"]
    assert obj["subject_pk"] == list(SUBJECT)
    n = verify_notice(bytes.fromhex(DOC_VECTOR), SUBJECT)
    assert n.describe() == f"subject {SUBJECT.hex()} holds no live role (no_grant)"
    assert not_live_text(SUBJECT, "revoked") == f"subject {SUBJECT.hex()} holds no live role (revoked)"


@pytest.mark.parametrize(
    ("what", "reason", "why"),
    [
        ("fetch", "no_grant", "what 'fetch' is not one of sync, reconcile, announces"),
        ("announce", "no_grant", "what 'announce'"),
        ("sync", "banned", "reason 'banned' is not one of no_grant"),
        ("sync", "subject x holds no live role (no_grant)", "reason 'subject x"),  # prose is not a code
        ("sync", "", "reason ''"),
    ],
)
def test_unknown_what_or_reason_is_refused_both_ways(what: str, reason: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        make_notice(what, reason, SUBJECT)
    data = RefusalNotice(1, what, reason, SUBJECT).encode()  # a peer that sends it anyway
    with pytest.raises(ProtocolError, match=f"refusal notice: {why}"):
        verify_notice(data, SUBJECT)


def test_another_version_and_another_subject_are_refused() -> None:
    with pytest.raises(ProtocolError, match="version 2 is not 1"):
        verify_notice(RefusalNotice(2, "sync", "no_grant", SUBJECT).encode(), SUBJECT)
    with pytest.raises(ProtocolError, match=f"judges subject {OTHER.hex()}, this node speaks for"):
        verify_notice(make_notice("sync", "revoked", OTHER).encode(), SUBJECT)
    with pytest.raises(ValueError, match="32 bytes"):
        make_notice("sync", "no_grant", SUBJECT[:31])


GOOD = make_notice("reconcile", "revoked", SUBJECT).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"refused",
        cbor2.dumps({"v": 1}),
        cbor2.dumps([1, "sync", "no_grant", list(SUBJECT)]),  # the array form serde reads: not canonical
        GOOD + b"\x00",  # trailing byte
        GOOD[:-1],  # truncated
        cbor2.dumps(cbor2.loads(GOOD) | {"extra": 1}),
        cbor2.dumps({**cbor2.loads(GOOD), "subject_pk": SUBJECT}),  # a byte string, not a uint array
        cbor2.dumps({**cbor2.loads(GOOD), "subject_pk": list(SUBJECT[:31])}),
        cbor2.dumps({**cbor2.loads(GOOD), "reason": 7}),
        cbor2.dumps(dict(reversed(list(cbor2.loads(GOOD).items())))),  # reordered keys
        bytes.fromhex("a461761801") + GOOD[4:],  # v as a non-minimal uint (0x18 0x01)
    ],
)
def test_garbage_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(EcacError, match="refusal notice"):
        verify_notice(data, SUBJECT)


def test_non_canonical_is_a_decode_error() -> None:
    obj = cbor2.loads(GOOD)
    with pytest.raises(DecodeError, match="not a canonical RefusalNotice"):
        verify_notice(cbor2.dumps(dict(reversed(list(obj.items())))), SUBJECT)


def test_oversize_is_refused_before_decoding() -> None:
    with pytest.raises(ProtocolError, match=f"exceeds the {MAX_REFUSAL_FRAME}-byte limit"):
        verify_notice(b"\xa4" + bytes(MAX_REFUSAL_FRAME), SUBJECT)
    # a well-formed notice padded past the limit is refused by size, not by its unknown reason
    padded = RefusalNotice(1, "sync", "x" * MAX_REFUSAL_FRAME, SUBJECT).encode()
    with pytest.raises(ProtocolError, match="byte limit"):
        verify_notice(padded, SUBJECT)
