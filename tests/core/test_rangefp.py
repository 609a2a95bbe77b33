"""Range fingerprints (ecac.core.rangefp): incremental = from scratch, order independence, range
queries against a naive sorted list, immutability of published roots, and the OpIndex hook."""

from __future__ import annotations

import bisect
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ecac.core.opindex import OpIndex
from ecac.core.rangefp import NODE_MAX, RangeTree, fingerprint_of, naive_fingerprint
from ecac.core.snapshot import take_snapshot


def _key(n: int, ms: int, logical: int = 0, node: int = 1) -> tuple[int, int, int, bytes]:
    return (ms, logical, node, hashlib.blake2b(n.to_bytes(8, "little"), digest_size=32).digest())


keys_st = st.lists(
    st.builds(_key, st.integers(0, 10**6), st.integers(0, 50), st.integers(0, 2), st.integers(0, 2)),
    max_size=400,
    unique_by=lambda k: k[3],
)


def _naive_rank(sorted_keys: list[tuple[int, int, int, bytes]], bound: object) -> int:
    return bisect.bisect_left(sorted_keys, bound)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(keys_st, st.data())
def test_incremental_equals_from_scratch_in_any_order(
    keys: list[tuple[int, int, int, bytes]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(keys))
    sizes = data.draw(st.lists(st.integers(1, 150), min_size=1, max_size=20))
    t = RangeTree()
    pos = 0
    i = 0
    while pos < len(order):
        n = sizes[i % len(sizes)]
        t = t.insert_many(order[pos : pos + n])
        pos += n
        i += 1
    full = RangeTree.from_keys(keys)
    s = sorted(keys)
    assert t.keys() == full.keys() == s
    assert len(t) == len(s)
    assert t.fingerprint(0, len(t)) == full.fingerprint(0, len(full)) == naive_fingerprint(k[3] for k in s)


@settings(max_examples=60, deadline=None)
@given(keys_st, st.data())
def test_range_queries_match_a_sorted_list(
    keys: list[tuple[int, int, int, bytes]], data: st.DataObject
) -> None:
    t = RangeTree.from_keys(keys)
    s = sorted(keys)
    for _ in range(10):
        lo = data.draw(st.integers(0, len(s)))
        hi = data.draw(st.integers(lo, len(s)))
        assert t.fingerprint(lo, hi) == naive_fingerprint(k[3] for k in s[lo:hi])
        assert t.keys(lo, hi) == s[lo:hi]
        bound = (
            data.draw(st.integers(0, 10**6)),
            data.draw(st.integers(0, 50)),
            data.draw(st.integers(0, 2)),
            data.draw(st.binary(max_size=3)),
        )
        assert t.rank(bound) == _naive_rank(s, bound)
        if s:
            assert t.rank(s[lo % len(s)]) == lo % len(s)
            assert t.key_at(lo % len(s)) == s[lo % len(s)]
    assert t.rank(None) == len(s)


def test_large_tree_many_levels_and_both_split_paths() -> None:
    ks = [_key(i, 1000 + i) for i in range(NODE_MAX**2 * 2 + 7)]  # three levels
    appended = RangeTree()
    for lo in range(0, len(ks), 97):
        appended = appended.insert_many(ks[lo : lo + 97])  # the append path
    middle = RangeTree.from_sorted(ks[::2]).insert_many(ks[1::2])  # inserts between existing keys
    s = sorted(ks)
    for t in (appended, middle):
        assert t.keys() == s
        for lo, hi in [(0, len(s)), (5, 4000), (4095, 4097), (100, 100), (len(s) - 3, len(s))]:
            assert t.fingerprint(lo, hi) == naive_fingerprint(k[3] for k in s[lo:hi])
        assert all(t.key_at(i) == s[i] for i in range(0, len(s), 131))


def test_published_roots_never_change() -> None:
    ks = [_key(i, i) for i in range(3000)]
    old = RangeTree.from_sorted(ks[:2000])
    before = (old.keys(), old.fingerprint(0, len(old)))
    new = old.insert_many(ks[2000:] + [_key(10**6 + i, 5) for i in range(300)])
    assert (old.keys(), old.fingerprint(0, len(old))) == before
    assert len(new) == 3300 and len(old) == 2000


def test_duplicates_are_ignored_and_fingerprint_definition() -> None:
    ks = [_key(i, i) for i in range(10)]
    t = RangeTree.from_keys(ks)
    assert t.insert_many(ks[:5]) is t
    assert len(t.insert_many([*ks, _key(99, 99)])) == 11
    total = sum(int.from_bytes(k[3], "little") for k in ks) % 2**256
    assert t.fingerprint(0, 10) == fingerprint_of(total, 10)
    assert RangeTree().fingerprint(0, 0) == fingerprint_of(0, 0) != fingerprint_of(0, 1)
    assert len(t.fingerprint(0, 3)) == 4  # FP_LEN: two different sets collide with probability 2^-32
    assert t.fingerprint(0, 10, b"s") == fingerprint_of(total, 10, b"s") != t.fingerprint(0, 10)


def test_opindex_keeps_the_tree_of_its_complete_ops() -> None:
    idx = OpIndex()
    a = _key(1, 10)
    b = _key(2, 20)
    c = _key(3, 30)
    idx.add(a[3], (), a)
    assert take_snapshot(idx, 1).ranges.keys() == [a]  # built on first use
    idx.add(c[3], (b[3],), c)  # waits for b: not complete, not in the tree
    snap2 = take_snapshot(idx, 2)
    assert snap2.ranges.keys() == [a]
    idx.add(b[3], (a[3],), b)  # completes b and c
    snap3 = take_snapshot(idx, 3)
    assert snap3.ranges.keys() == [a, b, c]
    assert snap2.ranges.keys() == [a]  # the older snapshot's tree is unchanged
    bulk = OpIndex()
    bulk.load({a[3]: (), b[3]: (a[3],), c[3]: (b[3],)}, {a[3]: a, b[3]: b, c[3]: c})
    assert bulk.range_tree().fingerprint(0, 3) == snap3.ranges.fingerprint(0, 3)
