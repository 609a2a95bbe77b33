"""Range-based set reconciliation (ecac.sync.reconcile): both sides learn exactly the symmetric
difference for any two sets; identical sets take one round trip; limits bound adversarial peers."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.errors import DecodeError, ProtocolError
from ecac.core.rangefp import RangeTree
from ecac.sync.reconcile import (
    Diff,
    Fp,
    Ids,
    ReconcileFrame,
    ReconcileLimits,
    Reconciler,
    Skip,
    ids_from_words,
    ids_to_words,
    min_bound,
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
    id_list_max=st.integers(5, 12),
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
    f = ReconcileFrame((5, 1, 0), (b"\xab",), (Fp(3, (1, 2)), Skip()))
    data = f.encode()
    assert data.hex() == (
        "a366626f756e647383050100687072656669786573818118ab656d6f64657382a1624670a2616303616682010264536b6970"
    )
    assert ReconcileFrame.decode(data) == f
    with pytest.raises(DecodeError):
        ReconcileFrame.decode(data + b"\x00")
    with pytest.raises(ProtocolError):
        Fp(1, (1, 2, 3))
    with pytest.raises(ProtocolError):
        Ids((1, 2, 3))


# --------------------------------------------------------------------------- adversarial peers


def _frame(ranges: list[tuple[tuple[int, int, int, bytes] | None, object]]) -> bytes:
    words: list[int] = []
    prefixes: list[bytes] = []
    ms = 0
    for upper, _ in ranges[:-1]:
        assert upper is not None
        words += [upper[0] - ms, upper[1], upper[2]]
        ms = upper[0]
        prefixes.append(upper[3])
    return ReconcileFrame(tuple(words), tuple(prefixes), tuple(m for _, m in ranges)).encode()  # type: ignore[misc]


def test_a_peer_lying_with_wrong_fingerprints_is_bounded_by_the_rounds() -> None:
    ks = [_key(i) for i in range(2000)]
    lim = ReconcileLimits(max_rounds=6)
    victim = Reconciler(RangeTree.from_keys(ks), lim)
    liar = Reconciler(RangeTree.from_keys(ks), lim)
    msg: bytes | None = victim.start()
    rounds = 0
    while msg is not None and rounds < 100:
        # the liar answers every frame with one wrong fingerprint over everything
        liar_frame = _frame([(None, Fp(len(ks), (1, 2)))])
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
        ranges: list[tuple[tuple[int, int, int, bytes] | None, object]] = [
            (b, Fp(10**6, (j, j))) for j, b in enumerate(bounds)
        ]
        ranges.append((None, Fp(10**6, (7, 7))))
        msg = victim.receive(_frame(ranges))
        n += 1
        assert n <= lim.max_rounds + 1
    assert msg is None and not victim.complete


@pytest.mark.parametrize(
    "body, message",
    [
        (_frame([(None, Diff((), b""))]), "answers no id list"),
        (_frame([((5, 0, 0, b""), Skip()), ((5, 0, 0, b""), Skip()), (None, Skip())]), "must increase"),
        (_frame([(None, Ids(ids_to_words([b"\x01" * 32, b"\x01" * 32])))]), "repeats an id"),
        (_frame([(None, Ids(ids_to_words([bytes([i]) * 32 for i in range(100)])))]), "exceed the limit"),
        (ReconcileFrame((), (), ()).encode(), "at least one range"),
        (ReconcileFrame((1, 2), (), (Skip(), Skip())).encode(), "3 bound words"),
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
    a = Reconciler(RangeTree.from_keys(ks))
    a.start()  # 10 keys: one Ids range over everything
    with pytest.raises(ProtocolError, match="bitmap"):
        a.receive(_frame([(None, Diff((), b"\x00"))]))
    b = Reconciler(RangeTree.from_keys(ks))
    b.start()
    b.receive(_frame([(None, Diff((), b"\x00\x00"))]))  # 10 bits, all zero: the peer holds them all
    assert b.done and b.complete and b.have == [] and b.need == []


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
