"""Range-based set reconciliation (ecac.sync.reconcile): both sides learn exactly the symmetric
difference for any two sets; identical sets take one round trip; limits bound adversarial peers."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecac.core.errors import DecodeError, ProtocolError
from ecac.core.rangefp import RangeTree, id_value, total_fingerprint
from ecac.sync.reconcile import (
    Diff,
    Fp,
    Ids,
    Mode,
    ReconcileFrame,
    ReconcileLimits,
    Reconciler,
    Skip,
    encode_ranges,
    ids_from_words,
    ids_to_words,
    min_bound,
    wire_fp,
)

Key = tuple[int, int, int, bytes]


def _key(n: int, ms: int | None = None) -> Key:
    h = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=32).digest()
    return (1_700_000_000_000 + (n if ms is None else ms), n % 3, n % 2, h)


def run(
    a_keys: list[Key], b_keys: list[Key], limits: ReconcileLimits | None = None
) -> tuple[Reconciler, Reconciler, int]:
    """A full session between an initiator holding ``a_keys`` and a responder holding ``b_keys``."""
    lim = limits or ReconcileLimits()
    a = Reconciler(RangeTree.from_keys(a_keys), lim)
    b = Reconciler(RangeTree.from_keys(b_keys), lim)
    msg: bytes | None = a.start()
    frames = 1
    side = b
    while msg is not None:
        msg = side.receive(msg)
        if msg is not None:
            frames += 1
        side = a if side is b else b
    assert a.done and b.done
    return a, b, frames


def check_difference(a: Reconciler, b: Reconciler, a_keys: list[Key], b_keys: list[Key]) -> None:
    sa = {k[3] for k in a_keys}
    sb = {k[3] for k in b_keys}
    assert set(a.need) == sb - sa and len(a.need) == len(sb - sa)
    assert set(a.have) == sa - sb and len(a.have) == len(sa - sb)
    assert set(b.need) == sa - sb
    assert set(b.have) == sb - sa
    assert a.complete and b.complete


small_limits = st.builds(
    ReconcileLimits,
    buckets=st.integers(2, 5),
    id_list_max=st.integers(1, 12),
    max_frame=st.sampled_from([4096, 8192, 256 * 1024]),
    max_ids=st.integers(12, 40),
    max_ranges=st.integers(9, 64),
    max_rounds=st.just(400),
)


@settings(max_examples=80, deadline=None)
@given(
    st.sets(st.integers(0, 3000), max_size=300),
    st.sets(st.integers(0, 3000), max_size=300),
    st.sets(st.integers(0, 3000), max_size=300),
    small_limits | st.just(ReconcileLimits()),
)
@example(  # a split into k buckets once reserved room for one range only: 10 ranges sent, limit 9
    shared={2, 3, 6, 7, 10},
    only_a={0, 1},
    only_b={8, 9, 4, 5},
    limits=ReconcileLimits(
        buckets=4, id_list_max=1, max_frame=4096, max_ids=12, max_ranges=9, max_rounds=400
    ),
)
def test_any_two_sets_both_sides_learn_the_symmetric_difference(
    shared: set[int], only_a: set[int], only_b: set[int], limits: ReconcileLimits
) -> None:
    a_keys = [_key(n) for n in shared | only_a]
    b_keys = [_key(n) for n in shared | (only_b - only_a)]
    a, b, _ = run(a_keys, b_keys, limits)
    check_difference(a, b, a_keys, b_keys)


@pytest.mark.parametrize("n", [0, 1, 31, 33, 5000])
def test_identical_sets_take_one_round_trip(n: int) -> None:
    ks = [_key(i) for i in range(n)]
    a, b, frames = run(ks, ks)
    assert frames == 2  # the initiator's buckets, the responder's all-Skip answer
    assert a.need == a.have == b.need == b.have == []


def test_empty_vs_full_both_ways() -> None:
    full = [_key(i) for i in range(20_000)]
    for a_keys, b_keys in ((full, []), ([], full)):
        a, b, frames = run(a_keys, b_keys)
        check_difference(a, b, a_keys, b_keys)
        # 4096 ids per frame: about 20000 / 4096 frames of ids each way, not a walk of the tree
        assert frames <= 2 * (20_000 // 4096 + 2)


def test_one_and_two_sided_differences_cost_few_round_trips_and_bytes() -> None:
    shared = [_key(i) for i in range(100_000)]
    new = [_key(100_000 + i) for i in range(3)]
    for a_keys, b_keys in (
        (shared + new[:1], shared),
        (shared, shared + new[:1]),
        (shared + new[:1], shared + new[1:]),
    ):
        a, b, frames = run(a_keys, b_keys)
        check_difference(a, b, a_keys, b_keys)
        assert (frames + 1) // 2 <= 4
        assert a.bytes_sent + b.bytes_sent <= 4096
        assert a.bytes_sent == b.bytes_received and b.bytes_sent == a.bytes_received


def test_a_recent_divergence_costs_about_the_ids() -> None:
    shared = [_key(i) for i in range(20_000)]
    a_keys = shared + [_key(20_000 + i) for i in range(500)]
    b_keys = shared + [_key(30_000 + i) for i in range(500)]
    a, b, _frames = run(a_keys, b_keys)
    check_difference(a, b, a_keys, b_keys)
    assert a.bytes_sent + b.bytes_sent <= 2 * 32 * 1000


def test_min_bound_separates_adjacent_keys() -> None:
    ks = sorted(_key(i, ms=i // 7) for i in range(500))
    for x, y in itertools.pairwise(ks):
        b = min_bound(x, y)
        assert x < b <= y
        assert len(b[3]) <= 32
    same = (5, 0, 0, b"\x01" * 31 + b"\x02")
    other = (5, 0, 0, b"\x01" * 31 + b"\x03")
    assert min_bound(same, other) == (5, 0, 0, other[3])


def test_ids_words_round_trip() -> None:
    ids = [_key(i)[3] for i in range(5)]
    assert ids_from_words(ids_to_words(ids)) == ids
    assert len(ids_to_words(ids)) == 20


def test_frame_encoding_is_canonical_and_strict() -> None:
    f = encode_ranges([((5, 1, 0, b"\xab"), Fp(3, 2**31)), (None, Skip())])
    assert f == ReconcileFrame((13, 0), (5, 1, 0), (b"\xab",), (3,), (2**31,), (), (), ())
    data = f.encode()
    assert (
        data.hex() == "a9616d820d006162830501006170818118ab616381036166811a80000000616e80616980617880617480"
    )
    assert ReconcileFrame.decode(data) == f
    assert f.ranges() == [
        ((0, 0, 0, b""), (5, 1, 0, b"\xab"), Fp(3, 2**31)),
        ((5, 1, 0, b"\xab"), None, Skip()),
    ]
    with pytest.raises(DecodeError):
        ReconcileFrame.decode(data + b"\x00")
    one = bytes(range(32))
    assert encode_ranges([(None, Ids((one,)))]).encode().hex() == (
        "a9616d8102616280617080616380616680616e8101616984"
        "1b00010203040506071b08090a0b0c0d0e0f1b10111213141516171b18191a1b1c1d1e1f617880617480"
    )
    nothing = "a9616d8100616280617080616380616680616e80616980617880617480"
    assert encode_ranges([(None, Skip())]).encode().hex() == nothing
    first = encode_ranges([(None, Skip())], (1, 2, 3)).encode().hex()
    assert first == nothing[:-2] + "83010203"  # t: the sender's total fingerprint (+ the nonce)


def test_the_wire_fingerprint_is_4_salted_bytes_of_the_hashed_sum() -> None:
    ks = [_key(i) for i in range(50)]
    t = RangeTree.from_keys(ks)
    assert len(t.fingerprint(0, 50)) == 4
    assert 0 <= wire_fp(t.fingerprint(0, 50)) < 2**32
    assert t.fingerprint(0, 50, b"salt") != t.fingerprint(0, 50, b"other")


# --------------------------------------------------------------------------- adversarial peers


def _frame(ranges: list[tuple[tuple[int, int, int, bytes] | None, Mode]], t: tuple[int, ...] = ()) -> bytes:
    """A frame as a peer would send it; ``t``: 3 words in an initiator's first frame, 2 in a responder's."""
    return encode_ranges(ranges, t).encode()


FIRST = (0, 0, 0)  # t of an initiator's first frame (a made-up total and nonce)
REPLY = (0, 0)  # t of a responder's first frame


def test_a_peer_lying_with_wrong_fingerprints_is_bounded_by_the_rounds() -> None:
    ks = [_key(i) for i in range(2000)]
    lim = ReconcileLimits(max_rounds=6)
    victim = Reconciler(RangeTree.from_keys(ks), lim)
    liar = Reconciler(RangeTree.from_keys(ks), lim)
    msg: bytes | None = victim.start()
    rounds = 0
    while msg is not None and rounds < 100:
        # the liar answers every frame with one wrong fingerprint over everything
        liar_frame = _frame([(None, Fp(len(ks), 12))], REPLY if not rounds else ())
        msg = victim.receive(liar_frame)
        rounds += 1
    assert victim.done and not victim.complete
    assert victim.frames_sent <= lim.max_rounds
    assert set(victim.need) == set()  # lies about fingerprints reveal no ids
    del liar


def test_endless_splitting_by_a_peer_ends_at_the_round_limit() -> None:
    ks = [_key(i) for i in range(5000)]
    lim = ReconcileLimits(max_rounds=10)
    victim = Reconciler(RangeTree.from_keys(ks), lim)
    victim.start()
    n = 0
    msg: bytes | None = b""
    while not victim.done:
        # always 16 differing fingerprints with ever finer fake bounds
        bounds = [((1_700_000_000_000 + n * 16 + j), 0, 0, b"") for j in range(15)]
        ranges: list[tuple[tuple[int, int, int, bytes] | None, Mode]] = [
            (b, Fp(10**6, j)) for j, b in enumerate(bounds)
        ]
        ranges.append((None, Fp(10**6, 7)))
        msg = victim.receive(_frame(ranges, REPLY if not n else ()))
        n += 1
        assert n <= lim.max_rounds + 1
    assert msg is None and not victim.complete


def _raw(**arrays: tuple[object, ...]) -> bytes:
    fields = dict.fromkeys("mbpcfnix", ())
    fields.update(arrays)
    return ReconcileFrame(**fields).encode()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body, message",
    [
        (_frame([(None, Diff(()))], FIRST), "answers no Ids or Fp"),
        (_frame([((5, 0, 0, b""), Skip()), ((5, 0, 0, b""), Skip()), (None, Skip())]), "must increase"),
        (_frame([(None, Ids((b"\x01" * 32, b"\x01" * 32)))], FIRST), "repeats an id"),
        (_frame([(None, Skip())]), "t holds 3 words, not 0"),
        (_frame([(None, Skip())], REPLY), "t holds 3 words, not 2"),
        (_frame([(None, Ids(tuple(bytes([i]) * 32 for i in range(100))))]), "exceed the limit"),
        (_raw(), "at least one range"),
        (_raw(m=(0, 0)), "shorter than its modes"),
        (_raw(m=(0,), b=(1,)), "longer than its modes"),
        (_raw(m=(1,)), "shorter than its modes"),
        (_raw(m=(1,), c=(1,), f=(1,), n=(3,)), "longer than its modes"),
        (_raw(m=(2,), n=(2,), i=(1, 2, 3, 4)), "beyond the ids"),
        (_raw(m=(16,)), "not 0-15"),
        (_raw(m=(4,)), "no upper bound to flag"),
        (_raw(m=(4, 0), b=(1, 0, 0)), "must not be 0, 0"),
        (_raw(m=(8, 0), b=(1,), p=(b"",)), "1 to 32 bytes"),
        (_raw(m=(8, 0), b=(1,), p=(b"\x01" * 33,)), "1 to 32 bytes"),
        (_raw(m=(1,), c=(1,), f=(2**32,)), "fingerprint is 4 bytes"),
        (b"\xff", "bad frame"),
        (b"\x00" * 70_000, "exceeds"),
    ],
)
def test_malformed_frames_are_protocol_errors(body: bytes, message: str) -> None:
    lim = ReconcileLimits(max_ids=64, max_frame=65_536)
    r = Reconciler(RangeTree.from_keys([_key(i) for i in range(10)]), lim)
    with pytest.raises(ProtocolError, match=message):
        r.receive(body)


def test_a_diff_with_a_wrong_bitmap_is_rejected() -> None:
    ks = [_key(i) for i in range(10)]
    lim = ReconcileLimits(id_list_max=16)
    a = Reconciler(RangeTree.from_keys(ks), lim)
    a.start()  # 10 keys: one Ids range over everything
    with pytest.raises(ProtocolError, match="bitmap"):
        a.receive(_frame([(None, Diff((), b"\x00"))], REPLY))
    b = Reconciler(RangeTree.from_keys(ks), lim)
    b.start()
    # 10 bits, all zero: the peer holds them all (and says so with its total, the same as ours)
    words = _t_words(RangeTree.from_keys(ks))
    b.receive(_frame([(None, Diff((), b"\x00\x00"))], words))
    assert b.done and b.complete and b.verified and b.have == [] and b.need == []


def test_frames_respect_the_frame_limit() -> None:
    lim = ReconcileLimits(max_frame=4096, max_ids=4096, max_rounds=100)
    big = [_key(i) for i in range(3000)]
    a = Reconciler(RangeTree.from_keys([]), lim)
    b = Reconciler(RangeTree.from_keys(big), lim)
    msg: bytes | None = a.start()
    side = b
    sizes = []
    while msg is not None:
        sizes.append(len(msg))
        msg = side.receive(msg)
        side = a if side is b else b
    assert max(sizes) <= 4096
    assert set(a.need) == {k[3] for k in big} and a.complete


def test_the_bench_scenario_reports_the_required_fields() -> None:
    import json

    from conftest import cli_ok

    out = cli_ok("bench", "--scenario", "reconcile", "--ops", "300", "--diff", "10", "--json").output
    d = json.loads(out.strip().splitlines()[-1])
    assert d["ids_found"] == 10 and d["only_a"] == 5 and d["only_b"] == 5
    assert d["round_trips"] <= 4 and d["complete"]
    assert d["bytes_total"] == d["reconcile_bytes"] + d["fetch_bytes"]
    assert d["baseline_bytes_total"] > 0 and d["baseline_ae_bytes_total"] > 0


def test_the_coordinator_fetches_what_reconciliation_found_from_that_peer() -> None:
    from nacl.signing import SigningKey

    from ecac.core.opindex import OpIndex
    from ecac.core.snapshot import take_snapshot
    from ecac.sync.coordinator import SyncCoordinator
    from ecac.sync.effects import SendRequest

    idx = OpIndex()
    held = _key(1)
    idx.add(held[3], (), held)
    coord = SyncCoordinator(SigningKey(bytes(32)), idx, snapshot=take_snapshot(idx, 1))
    missing = [_key(2)[3], _key(3)[3]]
    assert coord.reconciled("peer-x", missing, 0.0) == []  # not connected: nothing to fetch from
    coord.peer_connected("peer-x", 0.0)
    coord.peer_connected("peer-y", 0.0)
    effects = coord.reconciled("peer-x", [*missing, held[3], missing[0]], 1.0)
    sends = [e for e in effects if isinstance(e, SendRequest)]
    assert [(e.peer, set(e.request.want)) for e in sends] == [("peer-x", set(missing))]
    assert held[3] in sends[0].request.boundary
    assert coord.check_invariants() == []


# --------------------------------------------------------------------------- decoding and shared prefixes


def _prefixed(n: int) -> Key:
    """Keys of one ms, logical and node whose ids share 30 leading bytes: every bound between two of
    them needs a 31- or 32-byte id prefix."""
    return (1_700_000_000_000, 1, 1, b"\x5a" * 30 + n.to_bytes(2, "big"))


@settings(max_examples=40, deadline=None)
@given(
    st.sets(st.integers(0, 2000), max_size=200),
    st.sets(st.integers(0, 2000), max_size=40),
    st.sets(st.integers(0, 2000), max_size=40),
    small_limits | st.just(ReconcileLimits()),
)
@example(  # {183, 237, 239, 240} without {239, 240} has the sum and count of {182, 238}: a collision
    shared=set(),
    only_a={240, 239, 237, 183},
    only_b={182, 238},
    limits=ReconcileLimits(
        buckets=2, id_list_max=1, max_frame=4096, max_ids=12, max_ranges=9, max_rounds=400
    ),
)
def test_ids_sharing_long_prefixes_reconcile_exactly_up_to_sum_collisions(
    shared: set[int], only_a: set[int], only_b: set[int], limits: ReconcileLimits
) -> None:
    """Ids that share 30 leading bytes differ only in the sum's top 16 bits, so different sets
    with the same sum and count are common, and no fingerprint can tell them apart (docs/protocol.md,
    "Fingerprints"). The session is exact, or it stops at such a collision: what each side then
    believes the other holds has the other's exact sum and count (and is a wrong guess)."""
    a_keys = [_prefixed(n) for n in shared | only_a]
    b_keys = [_prefixed(n) for n in shared | (only_b - only_a)]
    a, b, _ = run(a_keys, b_keys, limits)
    sa = {k[3] for k in a_keys}
    sb = {k[3] for k in b_keys}
    if set(a.need) == sb - sa and set(a.have) == sa - sb:
        check_difference(a, b, a_keys, b_keys)
        return
    # not exact: only an additive collision may explain it, and the totals cannot see it
    believed_b = (sa - set(a.have)) | set(a.need)
    assert believed_b != sb
    assert len(believed_b) == len(sb)
    assert sum(id_value(x) for x in believed_b) % 2**256 == sum(id_value(x) for x in sb) % 2**256
    assert a.verified is True  # the documented blind spot: the totals agree too


def test_bounds_carry_the_shortest_distinguishing_prefix() -> None:
    x, y = _prefixed(0x0100), _prefixed(0x0101)
    bound = min_bound(x, y)
    assert bound == (x[0], 1, 1, y[3]) and len(bound[3]) == 32
    frame = encode_ranges([(bound, Skip()), (None, Skip())])
    assert frame.p == (y[3],) and frame.m == (4 | 8, 0)
    assert ReconcileFrame.decode(frame.encode()).ranges()[0][1] == bound


def test_a_single_scattered_difference_is_decoded_not_walked_to_a_leaf() -> None:
    shared = [_key(i) for i in range(100_000)]
    extra = _key(7_777_777, ms=50_000)  # in the middle of the key space
    for a_keys, b_keys in (([*shared, extra], shared), (shared, [*shared, extra])):
        a, b, frames = run(a_keys, b_keys)
        check_difference(a, b, a_keys, b_keys)
        assert frames <= 3  # buckets; the decoded Diff (or our Fp, then the peer's Diff)
        assert a.bytes_sent + b.bytes_sent <= 600


def test_a_diff_answering_our_fp_must_not_carry_a_bitmap() -> None:
    ks = [_key(i) for i in range(100)]
    a = Reconciler(RangeTree.from_keys(ks), ReconcileLimits(buckets=2, id_list_max=2))
    first = ReconcileFrame.decode(a.start()).ranges()
    upper = first[0][1]
    assert upper is not None
    with pytest.raises(ProtocolError, match="empty bitmap"):
        a.receive(_frame([(upper, Diff((), b"\x01")), (None, Skip())], REPLY))


def test_a_peer_echoing_our_fingerprint_gets_a_split_not_an_echo() -> None:
    ks = [_key(i) for i in range(1000)]
    t = RangeTree.from_keys(ks)
    a = Reconciler(t, ReconcileLimits(buckets=4, id_list_max=4))
    a.start()
    # the peer claims one key more than we hold over the whole key space: we answer our Fp of it
    reply = ReconcileFrame.decode(a.receive(_frame([(None, Fp(1001, 99))], REPLY)) or b"").ranges()
    salt = b"".join(w.to_bytes(8, "big") for w in (*_t_words(t), 0))
    assert [m for _, _, m in reply] == [Fp(1000, wire_fp(t.fingerprint(0, 1000, salt)))]
    # the same claim again (a peer echoing instead of decoding): we split rather than echo forever
    again = ReconcileFrame.decode(a.receive(_frame([(None, Fp(1001, 99))])) or b"").ranges()
    assert len(again) == 4 and all(isinstance(m, Fp) for _, _, m in again)
    assert not a.need and not a.have


def test_decoding_needs_exactly_one_matching_key() -> None:
    ks = [_key(i) for i in range(300)]
    t = RangeTree.from_keys(ks)
    r = Reconciler(t)
    without = RangeTree.from_keys(ks[:100] + ks[101:])
    assert r._decode_one(0, 300, wire_fp(without.fingerprint(0, 299))) == ks[100][3]
    assert r._decode_one(0, 300, 12345) is None  # no key's removal gives that fingerprint


def _t_words(t: RangeTree) -> tuple[int, int]:
    f = total_fingerprint(t.sum_range(0, len(t)), len(t))
    return int.from_bytes(f[:8], "big"), int.from_bytes(f[8:], "big")


def test_the_result_is_checked_against_the_peers_total() -> None:
    ks = [_key(i) for i in range(10)]
    lim = ReconcileLimits(id_list_max=16)
    honest = Reconciler(RangeTree.from_keys(ks), lim)
    honest.start()
    # the peer says it holds every id we listed, but its total says it holds another set: the
    # session ends by itself, yet it is not complete (a later session, with another salt, retries)
    other = RangeTree.from_keys(ks[:9])
    assert honest.receive(_frame([(None, Diff((), b"\x00\x00"))], _t_words(other))) is None
    assert honest.done and honest.verified is False and not honest.complete


def test_both_sides_verify_a_real_session() -> None:
    shared = [_key(i) for i in range(3000)]
    a, b, _ = run(
        shared + [_key(10**6 + i) for i in range(40)], shared + [_key(2 * 10**6 + i) for i in range(9)]
    )
    assert a.verified and b.verified and a.complete and b.complete
