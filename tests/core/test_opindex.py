"""OpIndex: completeness with orphans at any depth, heads, Kahn order, generations, bloom vectors.

Includes a Hypothesis state machine that drives one index through random out-of-order
arrivals, orphans, duplicates and bulk loads and checks every query against a naive model
recomputed from scratch (closure for completeness, a plain Kahn for the order).
"""

from __future__ import annotations

import heapq
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import ecac.core.order as order_mod
from conftest import vectors_dir
from ecac.core.opindex import OpIndex, bloom16, bloom_lanes, bloom_may_contain

VECTORS_DIR = vectors_dir()
VECTORS = json.loads((VECTORS_DIR / "expected.json").read_text())
STORE = VECTORS["store"]


def oid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def key(hlc: int, op_id: bytes, node: int = 1) -> tuple[int, int, int, bytes]:
    return (hlc, 0, node, op_id)


def reference_kahn(nodes: dict[bytes, tuple[tuple[bytes, ...], tuple]]) -> list[bytes]:
    """Plain core §6 Kahn over the complete subset, computed from scratch."""
    complete: set[bytes] = set()
    changed = True
    while changed:
        changed = False
        for x, (ps, _) in nodes.items():
            if x not in complete and all(p in complete for p in ps):
                complete.add(x)
                changed = True
    indeg = {x: len(nodes[x][0]) for x in complete}
    children: dict[bytes, list[bytes]] = {}
    for x in complete:
        for p in nodes[x][0]:
            children.setdefault(p, []).append(x)
    ready = [(nodes[x][1], x) for x in complete if indeg[x] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, x = heapq.heappop(ready)
        out.append(x)
        for c in children.get(x, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(ready, (nodes[c][1], c))
    return out


def test_store_vector_chain():
    ids = [bytes.fromhex(h) for h in STORE["topo_ids"]]
    idx = OpIndex()
    # insert child-first: nothing completes until the root arrives
    assert idx.add(ids[2], (ids[1],), (1002, 0, 3, ids[2])) == []
    assert idx.add(ids[1], (ids[0],), (1001, 0, 2, ids[1])) == []
    assert idx.complete_count() == 0 and len(idx) == 2
    assert idx.missing_parents() == {ids[0]}
    assert idx.add(ids[0], (), (1000, 0, 1, ids[0])) == ids
    assert idx.topo_ids() == ids
    assert [h.hex() for h in idx.heads(8)] == STORE["heads_k8"]
    for n, want in STORE["recent_bloom_hex"].items():
        assert idx.recent_bloom(int(n)).hex() == want
    for h, lanes in STORE["bloom_lanes"].items():
        assert list(bloom_lanes(bytes.fromhex(h))) == lanes
    assert [idx.gen(x) for x in ids] == [0, 1, 2]
    assert idx.missing_parents() == set()


def test_heads_and_missing_parents():
    a, b, c, d = oid(1), oid(2), oid(3), oid(4)
    idx = OpIndex()
    idx.add(a, (), key(10, a))
    idx.add(b, (a,), key(11, b))
    idx.add(c, (), key(12, c))
    idx.add(d, (b"\x55" * 32,), key(13, d))
    heads = idx.heads(10)
    assert set(heads) == {b, c}
    assert heads == [c, b]  # descending key
    assert idx.heads(1) == [c]
    assert idx.missing_parents() == {b"\x55" * 32}
    assert not idx.is_complete(d) and idx.contains(d)


def test_transitive_orphans_excluded_until_root_arrives():
    a, b, c = oid(1), oid(2), oid(3)
    idx = OpIndex()
    idx.add(b, (a,), key(20, b))
    idx.add(c, (b,), key(5, c))  # a smaller HLC than its parent: order still parents-first
    assert idx.topo_ids() == [] and idx.heads(8) == []
    assert idx.missing_parents() == {a}
    assert idx.add(a, (), key(30, a)) == [a, b, c]
    assert idx.topo_ids() == [a, b, c]
    assert idx.heads(8) == [c]
    assert idx.add(b, (a,), key(20, b)) == []  # duplicate is a no-op
    assert idx.topo_ids() == [a, b, c]


def test_duplicate_parents_counted_with_multiplicity():
    a, b = oid(1), oid(2)
    idx = OpIndex()
    assert idx.add(b, (a, a), key(2, b)) == []
    assert idx.add(a, (), key(1, a)) == [a, b]
    assert idx.children(a) == (b, b)
    assert idx.topo_ids() == [a, b]


def test_bloom_covers_last_n():
    idx = OpIndex()
    ids = [bytes([t]) * 32 for t in range(1, 21)]
    for t, x in enumerate(ids):
        idx.add(x, (), key(100 + t, x))
    bloom = idx.recent_bloom(8)
    assert idx.topo_ids() == ids
    for x in ids[-8:]:
        v = int.from_bytes(bloom, "little")
        assert all(v >> i & 1 for i in bloom_lanes(x))
        assert bloom_may_contain(bloom, x)
    assert bloom == bloom16(ids[-8:])
    assert idx.recent_bloom(0) == b"\x00\x00"


def test_interleaved_queries_keep_incremental_order_exact():
    """Roots arriving with decreasing keys force the cached order to be rebuilt."""
    idx = OpIndex()
    nodes = {}
    for t in range(30, 0, -1):
        x = oid(t)
        nodes[x] = ((), key(t, x))
        idx.add(x, (), key(t, x))
        assert idx.topo_ids() == reference_kahn(nodes)
    assert [idx.position(x) for x in idx.topo_ids()] == list(range(30))


@st.composite
def dags(draw):
    n = draw(st.integers(1, 40))
    ops = []
    for i in range(n):
        k = draw(st.integers(0, min(i, 3)))
        ps = tuple(sorted(draw(st.lists(st.integers(0, i - 1), min_size=k, max_size=k)))) if i else ()
        hlc = draw(st.integers(0, 15))
        ops.append((i, ps, hlc))
    missing = draw(st.sets(st.integers(0, n - 1), max_size=3))
    seed = draw(st.integers(0, 2**32))
    return ops, missing, seed


@given(dags())
@settings(max_examples=200, deadline=None)
def test_random_dags_match_reference_kahn(case):
    ops, missing, seed = case
    rng = random.Random(seed)
    order = [o for o in ops if o[0] not in missing]
    rng.shuffle(order)
    idx = OpIndex()
    nodes: dict[bytes, tuple] = {}
    became: list[bytes] = []
    for i, ps, hlc in order:
        x = oid(i)
        pids = tuple(oid(p) for p in ps)
        nodes[x] = (pids, key(hlc, x, node=i % 3))
        got = idx.add(x, pids, key(hlc, x, node=i % 3))
        for y in got:  # parent-first
            assert all(idx.is_complete(p) and p not in got[got.index(y) :] for p in nodes[y][0])
        became.extend(got)
        if rng.random() < 0.3:
            assert idx.topo_ids() == reference_kahn(nodes)
    want = reference_kahn(nodes)
    assert idx.topo_ids() == want
    assert sorted(became) == sorted(want)
    assert idx.complete_count() == len(want) and len(idx) == len(nodes)
    complete = set(want)
    parents_of_complete = {p for x in complete for p in nodes[x][0]}
    heads = [x for x in complete if x not in parents_of_complete]
    assert idx.heads(1000) == sorted(heads, key=lambda x: nodes[x][1], reverse=True)
    for x in want:
        ps = nodes[x][0]
        assert idx.gen(x) == (1 + max(idx.gen(p) for p in ps) if ps else 0)
    stored = set(nodes)
    assert idx.missing_parents() == {p for x in nodes for p in nodes[x][0] if p not in stored}


# ---- bulk load


def snapshot(idx: OpIndex, ids: list[bytes]) -> dict:
    """Every query's answer, plus the waiting bookkeeping that decides later ``add`` results."""
    topo = idx.topo_ids()
    return {
        "topo": topo,
        "positions": [idx.position(x) for x in ids],
        "heads": idx.heads(1000),
        "heads2": idx.heads(2),
        "head_count": idx.head_count(),
        "pending": idx.pending_ids(),
        "missing": idx.missing_parents(),
        "complete": [idx.is_complete(x) for x in ids],
        "contains": [x in idx for x in ids],
        "gen": {x: idx.gen(x) for x in topo},
        "children": {x: idx.children(x) for x in topo},
        "bloom": [idx.recent_bloom(n) for n in (1, 3, 8, 100)],
        "len": (len(idx), idx.complete_count()),
        "unmet": list(idx._unmet.items()),
        "waiting": [(p, list(w)) for p, w in idx._waiting.items()],
    }


@st.composite
def load_cases(draw):
    """Ops with 0..3 parents (duplicates allowed), some missing, shuffled, keys in or out of DAG order."""
    n = draw(st.integers(1, 30))
    monotone = draw(st.booleans())  # every parent's key below its child's: the key-ordered sweep
    ops = []
    for i in range(n):
        ps = tuple(draw(st.lists(st.integers(0, i - 1), max_size=3))) if i else ()
        hlc = i if monotone else draw(st.integers(0, 8))
        ops.append((oid(i), tuple(oid(p) for p in ps), key(hlc, oid(i), node=i % 3)))
    missing = draw(st.sets(st.integers(0, n - 1), max_size=3))
    rng = random.Random(draw(st.integers(0, 2**32)))
    items = [o for o in ops if int.from_bytes(o[0], "big") not in missing]
    rng.shuffle(items)
    if items and rng.random() < 0.2:  # a second copy with other parents: the first one wins
        x, _, k = items[rng.randrange(len(items))]
        items.append((x, (oid(n + 5),), k))
    later = [o for o in ops if int.from_bytes(o[0], "big") in missing]
    rng.shuffle(later)
    return items, later, monotone, rng.random() < 0.5


def _no_work_list(*_a, **_k):
    raise AssertionError("key order is Kahn's order here: the key-ordered sweep must not give up")


@given(load_cases())
@settings(max_examples=300, deadline=None)
def test_load_equals_adding_one_by_one(case):
    items, later, monotone, query_between = case
    with pytest.MonkeyPatch.context() as mp:
        if monotone:  # every parent sorts before its child: the sweep alone places everything
            mp.setattr(order_mod, "_activate", _no_work_list)
        _load_equals_adding_one_by_one(items, later, query_between)


def _load_equals_adding_one_by_one(items, later, query_between):
    ids = sorted({x for x, _, _ in items} | {x for x, _, _ in later})
    one_by_one = OpIndex()
    for item in items:
        one_by_one.add(*item)
    parents: dict[bytes, tuple[bytes, ...]] = {}
    keys: dict[bytes, tuple] = {}
    for x, ps, k in items:
        if x not in parents:
            parents[x], keys[x] = ps, k
    bulk = OpIndex()
    bulk.load(parents, keys)
    assert snapshot(bulk, ids) == snapshot(one_by_one, ids)
    nodes = {x: (parents[x], keys[x]) for x in parents}
    assert bulk.topo_ids() == reference_kahn(nodes)
    for x, ps, k in later:  # the missing ops arrive: both complete the same ops in the same order
        assert bulk.add(x, ps, k) == one_by_one.add(x, ps, k)
        if query_between:
            assert snapshot(bulk, ids) == snapshot(one_by_one, ids)
        nodes[x] = (ps, k)
    assert snapshot(bulk, ids) == snapshot(one_by_one, ids)
    assert bulk.topo_ids() == reference_kahn(nodes)


def test_load_of_a_chain_with_a_hole_and_a_key_inversion():
    a, b, c, d, e = (oid(i) for i in range(1, 6))
    parents = {c: (b,), a: (), b: (a, a), e: (d,)}  # d is missing: e waits
    keys = {c: key(3, c), a: key(1, a), b: key(2, b), e: key(5, e)}
    idx = OpIndex()
    idx.load(parents, keys)
    assert idx.topo_ids() == [a, b, c] and idx.heads(8) == [c]
    assert idx.children(a) == (b, b) and [idx.gen(x) for x in (a, b, c)] == [0, 1, 2]
    assert idx.pending_ids() == [e] and idx.missing_parents() == {d}
    assert idx.add(d, (c,), key(4, d)) == [d, e]
    assert idx.topo_ids() == [a, b, c, d, e] and idx.position(e) == 4
    inverted = OpIndex()  # a parent sorting after its child: Kahn's order, not the key order
    inverted.load({b: (a,), a: ()}, {b: key(1, b), a: key(9, a)})
    assert inverted.topo_ids() == [a, b] and inverted.heads(8) == [b]


def test_children_come_by_key_whatever_the_arrival_order():
    a, b, c = oid(1), oid(2), oid(3)
    idx = OpIndex()
    idx.add(a, (), key(1, a))
    idx.add(c, (a,), key(3, c))
    idx.add(b, (a,), key(2, b))
    assert idx.children(a) == (b, c)


def test_load_checks_its_input_and_adds_to_a_nonempty_index():
    a, b = oid(1), oid(2)
    with pytest.raises(ValueError, match="same ops"):
        OpIndex().load({a: ()}, {})
    bad = OpIndex()
    with pytest.raises(ValueError, match="its own op id"):
        bad.load({a: (), b: ()}, {a: key(1, a), b: key(2, a)})
    assert len(bad) == 0 and bad.topo_ids() == []
    idx = OpIndex()
    idx.add(b, (a,), key(2, b))
    idx.load({a: ()}, {a: key(1, a)})
    assert idx.topo_ids() == [a, b]


def test_an_out_of_order_op_resumes_the_order_without_a_full_kahn(monkeypatch):
    """A late op sorting early is inserted where Kahn puts it: nothing re-runs over the whole store."""
    idx = OpIndex()
    prev: tuple[bytes, ...] = ()
    ids = []
    for t in range(1, 2001):
        x = oid(t)
        idx.add(x, prev, key(10 * t, x))
        prev = (x,)
        ids.append(x)
    assert idx.topo_ids() == ids

    def no_kahn(*_a, **_k):
        raise AssertionError("an out-of-order op re-ran Kahn")

    monkeypatch.setattr(order_mod.TotalOrder, "_resume", no_kahn)
    late = oid(5000)
    idx.add(late, (ids[9],), key(105, late))  # after op 10 (key 100), before op 11 (key 110)
    assert idx.topo_slice(9, 12) == [ids[9], late, ids[10]]
    assert idx.position(late) == 10 and idx.position(ids[-1]) == 2000
    assert idx.recent_bloom(3) == bloom16(ids[-3:])


# ---- stateful: one index against a naive model


class OpIndexMachine(RuleBasedStateMachine):
    """Ops arrive in any order (children first, orphans, duplicates); every query matches the model."""

    ids = Bundle("ids")  # ids created so far (stored or not)

    def __init__(self) -> None:
        super().__init__()
        self.idx = OpIndex()
        self.stored: dict[bytes, tuple[tuple[bytes, ...], tuple]] = {}  # the model: id -> (parents, key)
        self.known: list[bytes] = []  # every id seen, stored or only referenced
        self.headers: dict[bytes, tuple[tuple[bytes, ...], tuple]] = {}  # what an id's op looks like
        self.next = 1

    def _new_header(self, data) -> bytes:
        x = oid(self.next)
        self.next += 1
        ps = data.draw(st.lists(st.sampled_from(self.known), max_size=3)) if self.known else []
        if data.draw(st.booleans()) and ps:
            ps.append(ps[0])  # a repeated parent
        k = key(data.draw(st.integers(0, 12)), x, node=data.draw(st.integers(0, 2)))
        self.headers[x] = (tuple(ps), k)
        self.known.append(x)
        return x

    @rule(target=ids, data=st.data())
    def add_new_op(self, data):
        x = self._new_header(data)
        self._add(x)
        return x

    @rule(target=ids, data=st.data())
    def reference_an_op_not_stored_yet(self, data):
        """An id that stored ops name before it arrives: its children are orphans until it does."""
        return self._new_header(data)

    @rule(x=consumes(ids))
    def add_an_op_that_may_be_missing_or_a_duplicate(self, x):
        self._add(x)

    def _add(self, x: bytes) -> None:
        ps, k = self.headers[x]
        before = {y for y in reference_kahn(self.stored)} if x not in self.stored else None
        got = self.idx.add(x, ps, k)
        if before is None:  # a duplicate: the first copy wins
            assert got == []
            return
        self.stored[x] = (ps, k)
        now = reference_kahn(self.stored)
        assert sorted(got) == sorted(set(now) - before)
        assert all(all(p in before or got.index(p) < got.index(y) for p in self.stored[y][0]) for y in got)

    @rule(data=st.data())
    def bulk_load_the_same_ops_elsewhere(self, data):
        parents = {x: ps for x, (ps, _) in self.stored.items()}
        keys = {x: k for x, (_, k) in self.stored.items()}
        other = OpIndex()
        other.load(parents, keys)
        every = sorted(self.known)
        assert snapshot(other, every) == snapshot(self.idx, every)

    @invariant()
    def queries_match_the_model(self):
        want = reference_kahn(self.stored)
        idx = self.idx
        assert idx.topo_ids() == want
        assert idx.complete_count() == len(want) and len(idx) == len(self.stored)
        assert [idx.position(x) for x in want] == list(range(len(want)))
        assert idx.topo_slice(len(want) // 2) == want[len(want) // 2 :]
        assert idx.recent_bloom(5) == bloom16(want[-5:])
        complete = set(want)
        named = {p for x in complete for p in self.stored[x][0]}
        heads = sorted((x for x in complete if x not in named), key=lambda x: self.stored[x][1], reverse=True)
        assert idx.heads(1000) == heads and idx.head_count() == len(heads)
        gen: dict[bytes, int] = {}
        for x in want:
            gen[x] = 1 + max((gen[p] for p in self.stored[x][0]), default=-1)
            assert idx.gen(x) == gen[x]
        stored = set(self.stored)
        assert idx.missing_parents() == {p for x in stored for p in self.stored[x][0] if p not in stored}
        assert idx.pending_ids() == sorted(stored - complete, key=lambda x: self.stored[x][1])
        for x in self.known:  # the monotone point facts readers use
            assert idx.contains(x) == (x in stored) and idx.is_complete(x) == (x in complete)


OpIndexMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_opindex_state_machine = OpIndexMachine.TestCase
