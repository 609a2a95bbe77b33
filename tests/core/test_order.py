"""The one total order (core §6): incremental placement, resumed Kahn and bulk loads equal plain Kahn."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ecac.core.order as order_mod
from ecac.core.order import SortKey, TotalOrder, first_difference, kahn_order

Parents = dict[bytes, tuple[bytes, ...]]
Keys = dict[bytes, SortKey]


def oid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def reference_kahn(parents: Parents, keys: Keys) -> list[bytes]:
    """Core §6 from scratch: Kahn over the ops whose ancestors are all present, ready set by key."""
    complete: set[bytes] = set()
    changed = True
    while changed:
        changed = False
        for x, ps in parents.items():
            if x not in complete and all(p in complete for p in ps):
                complete.add(x)
                changed = True
    indeg = {x: len(parents[x]) for x in complete}
    children: dict[bytes, list[bytes]] = {}
    for x in complete:
        for p in parents[x]:
            children.setdefault(p, []).append(x)
    ready = [(keys[x], x) for x in complete if indeg[x] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, x = heapq.heappop(ready)
        out.append(x)
        for c in children.get(x, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(ready, (keys[c], c))
    return out


def random_dag(rng: random.Random, n: int, hlc_range: int, max_parents: int = 3) -> tuple[Parents, Keys]:
    """Ops in generation order; a narrow HLC range makes ties (broken by id) and inversions common."""
    parents: Parents = {}
    keys: Keys = {}
    for i in range(n):
        x = oid(i)
        k = rng.randint(0, min(i, max_parents))
        ps = [oid(j) for j in rng.sample(range(i), k)] if k else []
        if ps and rng.random() < 0.15:
            ps.append(ps[0])  # a repeated parent counts twice
        parents[x] = tuple(ps)
        keys[x] = (rng.randrange(hlc_range), rng.randrange(2), rng.randrange(3), x)
    return parents, keys


def activation_order(rng: random.Random, parents: Parents, present: set[bytes] | None = None) -> list[bytes]:
    """A random parents-first sequence of the ops (all, or those of ``present``) whose ancestors are there."""
    todo = [x for x in parents if present is None or x in present]
    rng.shuffle(todo)
    done: set[bytes] = set()
    out: list[bytes] = []
    progress = True
    while todo and progress:
        progress = False
        rest = []
        for x in todo:
            if all(p in done for p in parents[x]) and rng.random() < 0.6:
                done.add(x)
                out.append(x)
                progress = True
            else:
                rest.append(x)
        if not progress and any(all(p in done for p in parents[x]) for x in rest):
            progress = True
        todo = rest
    return out


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks of 2 and no direct scans: several maxima levels even for a few dozen ops."""
    monkeypatch.setattr(order_mod, "_BLOCK", 2)
    monkeypatch.setattr(order_mod, "_BLOCK_MASK", 1)
    monkeypatch.setattr(order_mod, "_SCAN_MAX", 0)
    yield


TUNINGS = [  # (block, scan_max, insert_cost, kahn_cost): default, many levels, always insert, always Kahn
    (64, 256, 32, 16),
    (2, 0, 32, 16),
    (4, 3, 0, 1 << 30),
    (2, 1, 1 << 30, 0),
]


def tune(monkeypatch: pytest.MonkeyPatch, tuning: tuple[int, int, int, int]) -> None:
    block, scan_max, insert_cost, kahn_cost = tuning
    monkeypatch.setattr(order_mod, "_BLOCK", block)
    monkeypatch.setattr(order_mod, "_BLOCK_MASK", block - 1)
    monkeypatch.setattr(order_mod, "_SCAN_MAX", scan_max)
    monkeypatch.setattr(order_mod, "_INSERT_COST", insert_cost)
    monkeypatch.setattr(order_mod, "_KAHN_COST", kahn_cost)


def check_levels(o: TotalOrder) -> None:
    """The block maxima describe the keyed prefix of the order exactly."""
    levels = o._levels
    keys = [o._key(x) for x in o._ids[: len(levels[0])]]
    assert levels[0] == keys
    b = order_mod._BLOCK
    for h in range(len(levels) - 1):
        below = levels[h]
        assert levels[h + 1] == [max(below[i * b : (i + 1) * b]) for i in range(len(below) // b)]
    assert o._kmax == (max(keys) if keys else None)


# ---------------------------------------------------------------------- incremental == from scratch


@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    hlc_range=st.sampled_from([2, 8, 1000]),
    tuning=st.sampled_from(TUNINGS),
)
# a batch over 4x the order re-runs Kahn from 0 and once reported 0 though position 0 kept its op
@example(seed=26, n=26, hlc_range=8, tuning=(2, 1, 1_073_741_824, 0))
@settings(max_examples=150, deadline=None)
def test_incremental_order_equals_kahn_from_scratch(seed, n, hlc_range, tuning):
    with pytest.MonkeyPatch.context() as mp:
        tune(mp, tuning)
        rng = random.Random(seed)
        parents, keys = random_dag(rng, n, hlc_range)
        o = TotalOrder(keys.__getitem__, parents.__getitem__)
        have: Parents = {}
        before: list[bytes] = []
        for x in activation_order(rng, parents):
            o.add(x)
            have[x] = parents[x]
            if rng.random() < 0.35:
                changed = o.resolve()
                now = list(o.ids())
                assert now == reference_kahn(have, keys)
                # resolve names the first changed position exactly
                assert changed == first_difference(before, now) or (
                    changed == len(before) and now[: len(before)] == before
                )
                assert all(o.position(y) == i for i, y in enumerate(now))
                assert dict(o.positions()) == {y: i for i, y in enumerate(now)}
                check_levels(o)
                before = now
            if rng.random() < 0.05:  # start over from a trusted copy: keys not kept, positions lazy
                o2 = TotalOrder(keys.__getitem__, parents.__getitem__)
                o2.extend_trusted(o.ids())
                o = o2
                before = list(o.ids())
        assert o.ids() == reference_kahn(have, keys)
        assert len(o) == len(have)
        check_levels(o)


@given(seed=st.integers(0, 2**32), n=st.integers(1, 50), hlc_range=st.sampled_from([3, 1000]))
@settings(max_examples=120, deadline=None)
def test_bulk_load_both_ways_equals_kahn_and_the_naive_facts(seed, n, hlc_range):
    rng = random.Random(seed)
    parents, keys = random_dag(rng, n, hlc_range)
    for x in rng.sample(sorted(parents), min(3, n)) if rng.random() < 0.5 else []:
        del parents[x], keys[x]  # missing ops: their descendants wait
    want = reference_kahn(parents, keys)
    complete = set(want)
    gen: dict[bytes, int] = {}
    for x in want:
        gen[x] = 1 + max((gen[p] for p in parents[x]), default=-1)
    heads = complete - {p for x in complete for p in parents[x]}
    assert kahn_order(parents, keys) == want  # the verifier's plain Kahn
    for sweep in (True, False):
        bulk = TotalOrder.load(parents, keys, sweep=sweep)
        assert bulk.order.ids() == want
        assert bulk.gen == gen and bulk.heads == heads
        assert bulk.waiting == set(parents) - complete
        # the loaded order goes on incrementally
        extra = oid(10_000)
        parents2 = dict(parents, **{})
        parents2[extra] = (want[rng.randrange(len(want))],) if want else ()
        keys2 = dict(keys)
        keys2[extra] = (rng.randrange(hlc_range), 0, 0, extra)
        o = TotalOrder(keys2.__getitem__, parents2.__getitem__)
        o.extend_trusted(bulk.order.ids())
        o.add(extra)
        assert o.ids() == reference_kahn({x: parents2[x] for x in [*want, extra]}, keys2)


def test_bulk_load_sweeps_in_key_order_when_parents_sort_first(monkeypatch):
    """When every parent sorts before its child the sweep places everything: no work list runs."""
    rng = random.Random(5)
    parents: Parents = {}
    keys: Keys = {}
    for i in range(300):
        ps = tuple(oid(j) for j in rng.sample(range(i), min(i, rng.randint(0, 2))))
        parents[oid(i)] = ps
        keys[oid(i)] = (i, 0, 0, oid(i))

    def no_work_list(*_a, **_k):
        raise AssertionError("the key-ordered sweep gave up")

    monkeypatch.setattr(order_mod, "_activate", no_work_list)
    assert TotalOrder.load(parents, keys).order.ids() == reference_kahn(parents, keys)


def test_bulk_load_leaves_only_the_inverted_part_to_the_incremental_path(monkeypatch):
    """A parent sorting after its child sends exactly that child and its descendants to the work list."""
    a, b, c, d, e = (oid(i) for i in range(1, 6))
    parents: Parents = {a: (), b: (a,), c: (b,), d: (), e: (d,)}
    keys: Keys = {a: (1, 0, 0, a), b: (9, 0, 0, b), c: (3, 0, 0, c), d: (4, 0, 0, d), e: (5, 0, 0, e)}
    seen: list[list[bytes]] = []
    real = order_mod._activate

    def spy(parents_, todo, *rest):
        seen.append(list(todo))
        return real(parents_, todo, *rest)

    monkeypatch.setattr(order_mod, "_activate", spy)
    bulk = TotalOrder.load(parents, keys)
    assert seen == [[c]]  # c sorts before its parent b
    assert bulk.order.ids() == reference_kahn(parents, keys) == [a, d, e, b, c]
    assert bulk.heads == {c, e} and bulk.gen == {a: 0, b: 1, c: 2, d: 0, e: 1}


def test_bulk_load_checks_its_input():
    a, b = oid(1), oid(2)
    with pytest.raises(ValueError, match="same ops"):
        TotalOrder.load({a: ()}, {})
    for sweep in (True, False):
        with pytest.raises(ValueError, match="its own op id"):
            TotalOrder.load({a: (), b: ()}, {a: (1, 0, 0, a), b: (2, 0, 0, a)}, sweep=sweep)
        with pytest.raises(ValueError, match="its own op id"):
            TotalOrder.load({a: ()}, {a: (1, 0, 0, b)}, sweep=sweep)


# ---------------------------------------------------------------------- the incremental rule


def test_an_out_of_order_op_is_inserted_and_the_rest_keeps_its_sequence():
    ids = [oid(i) for i in range(1, 8)]
    parents: Parents = {x: () for x in ids}
    keys: Keys = {x: (10 * i, 0, 0, x) for i, x in enumerate(ids)}
    o = TotalOrder(keys.__getitem__, parents.__getitem__)
    o.add_many(ids[:6])
    assert o.resolve() == 0 and o.ids() == ids[:6]
    late = ids[6]
    keys[late] = (25, 0, 0, late)  # sorts between positions 2 and 3
    o.add(late)
    assert o.resolve() == 3
    assert o.ids() == [*ids[:3], late, *ids[3:6]]
    assert o.position(ids[5]) == 6
    assert o.resolve() is None  # nothing new


def test_a_child_never_moves_before_its_parent():
    a, b, c = oid(1), oid(2), oid(3)
    parents: Parents = {a: (), b: (), c: (b,)}
    keys: Keys = {a: (5, 0, 0, a), b: (9, 0, 0, b), c: (1, 0, 0, c)}
    o = TotalOrder(keys.__getitem__, parents.__getitem__)
    o.add_many([a, b, c])
    assert o.ids() == [a, b, c]  # c has the smallest key but becomes ready only after b


def test_many_ops_sorting_first_resume_kahn_once(monkeypatch):
    """Roots arriving newest first would shift the whole order each time: one Kahn pass instead."""
    n = 400
    ids = [oid(i) for i in range(n)]
    parents: Parents = {x: () for x in ids}
    keys: Keys = {x: (i, 0, 0, x) for i, x in enumerate(ids)}
    resumed: list[tuple[int, int]] = []
    real = TotalOrder._resume

    def spy(self, start, fresh):
        resumed.append((start, len(fresh)))
        return real(self, start, fresh)

    monkeypatch.setattr(TotalOrder, "_resume", spy)
    o = TotalOrder(keys.__getitem__, parents.__getitem__)
    o.add_many(ids[n // 2 :])
    o.ids()
    o.add_many(reversed(ids[: n // 2]))  # each sorts before everything placed so far
    assert o.ids() == ids
    assert len(resumed) == 1 and resumed[0][0] == 0  # after a few inserts, one resume from 0


def test_first_above_over_lagging_and_truncated_levels(tiny_blocks):
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randint(0, 80)
        ks = [(rng.randrange(30), 0, 0, oid(i)) for i in range(n)]
        by_id = {k[3]: k for k in ks}
        o = TotalOrder(by_id.__getitem__, lambda _x: ())
        o.extend_trusted([k[3] for k in ks])
        cov = rng.randint(0, n)
        o._levels[0].extend(ks[:cov])
        o._kmax = max(ks[:cov]) if cov else None
        o._rebuild_levels(0)
        if cov and rng.random() < 0.4:
            o._truncate_levels(rng.randint(0, cov))
        check_levels(o)
        for _ in range(10):
            j = rng.randint(0, n)
            limit = rng.randint(j, n)
            k = (rng.randrange(32), 0, 0, b"\xff" * 32)
            want = next((t for t in range(j, limit) if ks[t] > k), limit)
            assert o._first_above(j, k, limit) == want
        check_levels(o)


def test_extend_trusted_refuses_while_ops_wait_to_be_placed():
    a = oid(1)
    o = TotalOrder({a: (1, 0, 0, a)}.__getitem__, {a: ()}.__getitem__)
    o.add(a)
    with pytest.raises(ValueError, match="resolve"):
        o.extend_trusted([a])


def test_first_difference():
    a, b, c = oid(1), oid(2), oid(3)
    assert first_difference([a, b], [a, b]) is None
    assert first_difference([a, b], [a, c]) == 1
    assert first_difference([a], [a, b]) == 1
    assert first_difference([a, b], []) == 0


def test_a_positions_map_handed_out_never_changes_an_entry():
    """Readers keep ``positions()`` with a copy of ``ids()``: inserts and resumes move ops in a copy."""
    ids = [oid(i) for i in range(1, 40)]
    parents: Parents = {x: () for x in ids}
    keys: Keys = {x: (10 * i, 0, 0, x) for i, x in enumerate(ids)}
    o = TotalOrder(keys.__getitem__, parents.__getitem__)
    o.add_many(ids[:20])
    snap_ids = list(o.ids())
    snap_pos = o.positions()
    frozen = dict(snap_pos)
    o.add(ids[20])  # an append: the shared map may gain it
    o.ids()
    keys[ids[21]] = (5, 0, 0, ids[21])  # sorts second: an insert moves everything after it
    o.add(ids[21])
    o.ids()
    o.add_many(reversed(ids[22:]))
    for x in ids[22:]:
        keys[x] = (-keys[x][0], 0, 0, x)  # all sort first: a resumed Kahn
    assert o.ids() == reference_kahn({x: () for x in ids}, keys)
    assert all(snap_pos[x] == i for x, i in frozen.items())  # the reader's pair is still consistent
    assert [snap_ids[snap_pos[x]] for x in snap_ids] == snap_ids
    assert dict(o.positions()) == {x: i for i, x in enumerate(o.ids())}
