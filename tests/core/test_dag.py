"""DAG: staging, activation, duplicates, deterministic incremental order, happens-before (core §6).

Includes a Hypothesis state machine that drives one DAG through random out-of-order
arrivals, orphans, duplicates and order-known appends, and checks the order against a plain
Kahn recomputed from scratch and ``hb`` against a plain depth-first search.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from ecac.core.dag import Dag
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op

SK = key_pair(3, b"test/dag")


def fake_op(i: int, parents: list[bytes], hlc: Hlc, tag: bytes = b"") -> Op:
    """An unsigned op with a made-up id: the DAG never verifies (callers admit first)."""
    oid = bytes([i % 256, i // 256 % 256]) + tag.ljust(30, b"\0")[:30]
    return Op(tuple(parents), hlc, bytes(32), Data("mv:o:x", b"v%d" % i), bytes(64), oid)


def random_dag(rng: random.Random, n: int, max_parents: int = 3, dup_parents: bool = True) -> list[Op]:
    """Ops in generation order (parents first); HLCs from a small range so ties are common."""
    ops: list[Op] = []
    for i in range(n):
        k = rng.randint(0, min(max_parents, i))
        parents = [ops[j].op_id for j in rng.sample(range(i), k)] if k else []
        if dup_parents and parents and rng.random() < 0.1:
            parents.append(parents[0])
        hlc = Hlc(rng.randrange(4), rng.randrange(2), rng.randrange(3))
        ops.append(fake_op(i, sorted(parents), hlc, rng.randbytes(30)))
    return ops


def naive_topo(ops: list[Op]) -> list[bytes]:
    """Core §17's pseudo-code over the given (complete) set of ops."""
    by_id = {op.op_id: op for op in ops}
    indeg = {op.op_id: len(op.parents) for op in ops}
    children: dict[bytes, list[bytes]] = {}
    for op in ops:
        for p in op.parents:
            children.setdefault(p, []).append(op.op_id)
    heap = [(by_id[i].sort_key(), i) for i, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, i = heapq.heappop(heap)
        out.append(i)
        for c in children.get(i, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(heap, (by_id[c].sort_key(), c))
    return out


def dfs_hb(ops: list[Op], a: bytes, b: bytes) -> bool:
    """The reference's happens-before: a DFS from b over parents."""
    by_id = {op.op_id: op for op in ops}
    if a == b or b not in by_id:
        return False
    seen: set[bytes] = set()
    stack = list(by_id[b].parents)
    while stack:
        x = stack.pop()
        if x == a:
            return True
        if x in seen or x not in by_id:
            continue
        seen.add(x)
        stack.extend(by_id[x].parents)
    return False


# ---------------------------------------------------------------------- staging and activation


def test_child_before_parent_is_pending_then_ordered():
    parent = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    child = make_op(SK, [parent.op_id], Hlc(11, 0, 1), Data("mv:o:x", b"B"))
    dag = Dag()
    assert dag.insert(child)
    assert len(dag) == 0
    assert dag.topo_order() == []
    assert dag.is_pending(child.op_id)
    assert dag.missing_ids() == [parent.op_id]
    assert child.op_id not in dag
    assert dag.insert(parent)
    assert dag.topo_ids() == [parent.op_id, child.op_id]
    assert not dag.is_pending(child.op_id)
    assert dag.pending_ids() == [] and dag.missing_ids() == []


def test_child_of_two_parents_waits_for_both():
    a = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    b = make_op(SK, [], Hlc(10, 0, 2), Data("mv:o:x", b"B"))
    c = make_op(SK, [a.op_id, b.op_id], Hlc(11, 0, 1), Data("mv:o:x", b"C"))
    dag = Dag()
    dag.insert(c)
    dag.insert(a)
    assert dag.topo_ids() == [a.op_id]
    assert dag.pending_ids() == [c.op_id]
    dag.insert(b)
    assert dag.topo_ids() == [a.op_id, b.op_id, c.op_id]
    assert dag.children(a.op_id) == [c.op_id]


def test_duplicate_first_copy_wins_even_with_another_signature():
    a = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    other = replace(a, sig=bytes(64))
    dag = Dag()
    assert dag.insert(a)
    assert not dag.insert(other)
    assert dag.get(a.op_id).sig == a.sig
    assert len(dag) == 1
    # also while pending
    child = make_op(SK, [b"\x01" * 32], Hlc(11, 0, 1), Data("mv:o:x", b"B"))
    assert dag.insert(child)
    assert not dag.insert(replace(child, sig=bytes(64)))
    assert dag.pending_ids() == [child.op_id]


def test_duplicate_parent_entries_count_twice():
    a = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    c = make_op(SK, [a.op_id, a.op_id], Hlc(11, 0, 1), Data("mv:o:x", b"C"))
    assert c.parents == (a.op_id, a.op_id)
    dag = Dag()
    dag.insert(c)
    assert dag.pending_ids() == [c.op_id]  # the missing set counts the parent once
    dag.insert(a)
    assert dag.topo_ids() == [a.op_id, c.op_id]
    assert dag.children(a.op_id) == [c.op_id, c.op_id]
    assert dag.hb(a.op_id, c.op_id) and not dag.hb(c.op_id, a.op_id)


def test_long_chain_inserted_child_first_does_not_recurse():
    n = 5000
    ops: list[Op] = []
    for i in range(n):
        ops.append(fake_op(i, [ops[-1].op_id] if ops else [], Hlc(i, 0, 0)))
    dag = Dag()
    for op in reversed(ops):
        dag.insert(op)
    assert len(dag) == n
    assert dag.topo_order() == ops
    assert dag.chain_count() == 1
    assert dag.hb(ops[0].op_id, ops[-1].op_id)
    assert not dag.hb(ops[-1].op_id, ops[0].op_id)
    assert dag.position(ops[1234].op_id) == 1234


def test_pending_ops_are_invisible_to_hb_and_order():
    a = fake_op(0, [], Hlc(1, 0, 0))
    b = fake_op(1, [a.op_id, b"\xee" * 32], Hlc(2, 0, 0))
    dag = Dag.from_ops([a, b])
    assert dag.topo_order() == [a]
    assert not dag.hb(a.op_id, b.op_id)
    assert dag.get(b.op_id) is None
    assert dag.missing_ids() == [b"\xee" * 32]


def test_ready_ties_are_broken_by_hlc_then_op_id():
    root = fake_op(0, [], Hlc(100, 0, 0))
    kids = [
        fake_op(1, [root.op_id], Hlc(101, 0, 3)),
        fake_op(2, [root.op_id], Hlc(101, 0, 1)),
        fake_op(3, [root.op_id], Hlc(101, 0, 2)),
        fake_op(
            4, [root.op_id], Hlc(101, 0, 1), b"\x00"
        ),  # same HLC as kid 2: op id decides (0x02.. < 0x04..)
        fake_op(5, [root.op_id], Hlc(100, 7, 9)),
    ]
    dag = Dag.from_ops([root, *kids])
    want = [root, *sorted(kids, key=Op.sort_key)]
    assert dag.topo_order() == want
    assert dag.topo_order()[1] is kids[4]  # (100, 7, 9) sorts before every (101, …)


def test_diamond_order_is_the_same_for_100_shuffles():
    root = fake_op(0, [], Hlc(100, 0, 0))
    a = [fake_op(i, [root.op_id], Hlc(101, 0, i)) for i in (1, 2, 3)]
    merge = fake_op(4, [x.op_id for x in a], Hlc(102, 0, 0))
    b1 = fake_op(5, [merge.op_id], Hlc(103, 0, 0))
    c = [fake_op(6, [b1.op_id], Hlc(104, 0, 2)), fake_op(7, [b1.op_id], Hlc(104, 0, 1))]
    tail = fake_op(8, [x.op_id for x in c], Hlc(105, 0, 0))
    ops = [root, *a, merge, b1, *c, tail]
    want = [root, *a, merge, b1, c[1], c[0], tail]
    rng = random.Random(1)
    for _ in range(100):
        perm = ops[:]
        rng.shuffle(perm)
        assert Dag.from_ops(perm).topo_order() == want


def test_chain_with_extra_edges_to_i_minus_2():
    ops: list[Op] = []
    for i in range(30):
        parents = [ops[i - 1].op_id] if i else []
        if i >= 2:
            parents.append(ops[i - 2].op_id)
        ops.append(fake_op(i, sorted(parents), Hlc(50 - i, 0, 0)))  # HLC decreasing: order from edges only
    rng = random.Random(2)
    for _ in range(20):
        perm = ops[:]
        rng.shuffle(perm)
        assert Dag.from_ops(perm).topo_order() == ops


def test_new_op_sorting_before_the_cached_order_moves_into_place():
    a = fake_op(0, [], Hlc(10, 0, 0))
    b = fake_op(1, [], Hlc(30, 0, 0))
    c = fake_op(2, [a.op_id], Hlc(40, 0, 0))
    dag = Dag.from_ops([a, b, c])
    assert dag.topo_order() == [a, b, c]
    first = dag.topo_order()
    d = fake_op(3, [], Hlc(20, 0, 0))
    dag.insert(d)
    assert dag.topo_order() == [a, d, b, c]
    assert first == [a, b, c]  # a returned order is never mutated afterwards
    assert [dag.position(x.op_id) for x in (a, d, b, c)] == [0, 1, 2, 3]


def test_admit_and_insert_rejects_bad_ops_and_admits_a_later_valid_copy():
    a = make_op(SK, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    bad_sig = replace(a, sig=bytes([a.sig[0] ^ 1]) + a.sig[1:])
    dag = Dag()
    rej = dag.admit_and_insert([bad_sig])
    assert [(r.op_id, r.reason) for r in rej] == [(a.op_id, "invalid signature")]
    assert len(dag) == 0
    assert dag.admit_and_insert([a]) == []
    assert dag.get(a.op_id) == a


# ---------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 45))
def test_any_insertion_order_gives_the_naive_kahn_order(seed, n):
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    want = naive_topo(ops)
    perm = ops[:]
    rng.shuffle(perm)
    dag = Dag()
    for op in perm:
        dag.insert(op)
        if rng.random() < 0.3:
            dag.topo_order()  # exercise incremental maintenance at random points
    order = dag.topo_ids()
    assert order == want
    pos = {oid: i for i, oid in enumerate(order)}
    for op in ops:
        assert dag.position(op.op_id) == pos[op.op_id]
        assert all(pos[p] < pos[op.op_id] for p in op.parents)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 35))
def test_fast_hb_equals_dfs(seed, n):
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    perm = ops[:]
    rng.shuffle(perm)
    dag = Dag.from_ops(perm)
    ids = [op.op_id for op in ops]
    for a in ids:
        for b in ids:
            assert dag.hb(a, b) == dfs_hb(ops, a, b), (a.hex(), b.hex())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(2, 30))
def test_hb_over_a_partial_dag_ignores_pending_ops(seed, n):
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    held_back = set(rng.sample(range(n), rng.randint(1, n // 2 + 1)))
    dag = Dag.from_ops([op for i, op in enumerate(ops) if i not in held_back])
    active = [op for op in ops if op.op_id in dag]
    assert len(dag) == len(active)
    for a in ops:
        for b in ops:
            want = dfs_hb(active, a.op_id, b.op_id) if a.op_id in dag and b.op_id in dag else False
            assert dag.hb(a.op_id, b.op_id) == want


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40))
def test_an_earlier_order_is_a_subsequence_of_a_later_one(seed, n):
    """Replay relies on this to check "the old order is a prefix" in O(1)."""
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    perm = ops[:]
    rng.shuffle(perm)
    dag = Dag()
    snapshots = []
    for op in perm:
        dag.insert(op)
        if rng.random() < 0.4:
            snapshots.append(dag.topo_order())
    final = dag.topo_order()
    for old in snapshots:
        it = iter(final)
        assert all(any(x is y for y in it) for x in old)  # subsequence, by identity
        k = len(old)
        is_prefix = final[:k] == old
        assert is_prefix == (k == 0 or final[k - 1] is old[-1])


def test_an_op_may_extend_a_chain_whose_tail_is_a_non_parent_ancestor():
    def mk(first: int, parents: list[Op], ms: int) -> Op:
        return Op(
            tuple(sorted(p.op_id for p in parents)),
            Hlc(ms, 0, 0),
            bytes(32),
            Data("k", b""),
            bytes(64),
            bytes([first]) * 32,
        )

    t = mk(9, [], 1)  # chain 0
    u = mk(1, [], 2)  # chain 1
    q = mk(5, [u, t], 3)  # parents sorted (u, t): extends u's chain, t stays tail of chain 0
    w1 = mk(6, [q], 4)  # extends q
    w2 = mk(7, [q], 5)  # q is no longer a tail, but t (an ancestor) is: reuses chain 0
    ops = [t, u, q, w1, w2]
    dag = Dag.from_ops(ops)
    assert dag.chain_count() == 2
    for a in ops:
        for b in ops:
            assert dag.hb(a.op_id, b.op_id) == dfs_hb(ops, a.op_id, b.op_id)


def test_fork_heavy_history_keeps_few_chains():
    # 8 writers in rounds, each writing on a random subset of the current heads
    rng = random.Random(4)
    ops: list[Op] = []
    heads: list[bytes] = []
    for r in range(60):
        new = []
        for w in range(8):
            ps = sorted(rng.sample(heads, min(len(heads), rng.randint(1, 8)))) if heads else []
            new.append(fake_op(len(ops) + len(new), ps, Hlc(r, 0, w), rng.randbytes(30)))
        used = {p for op in new for p in op.parents}
        heads = sorted((set(heads) - used) | {op.op_id for op in new})
        ops.extend(new)
    dag = Dag.from_ops(ops)
    assert dag.chain_count() <= 24  # about the width of the DAG, not the number of forks
    sample = rng.sample(ops, 40)
    for a in sample:
        for b in sample:
            assert dag.hb(a.op_id, b.op_id) == dfs_hb(ops, a.op_id, b.op_id)


# ---------------------------------------------------------------------- bounded hb index


def rooty_dag(rng: random.Random, n: int, p_root: float, max_parents: int, authors: int = 3) -> list[Op]:
    """Many roots and wide merges (the shape that makes summaries overflow), parents first."""
    ops: list[Op] = []
    for i in range(n):
        if not ops or rng.random() < p_root:
            parents: list[bytes] = []
        else:
            k = rng.randint(1, min(max_parents, len(ops)))
            parents = sorted(ops[j].op_id for j in rng.sample(range(len(ops)), k))
        author = bytes([rng.randrange(authors)]) * 32
        op = fake_op(i, parents, Hlc(i, 0, 0), rng.randbytes(30))
        ops.append(replace(op, author_pk=author))
    return ops


def ancestor_sets(ops: list[Op]) -> dict[bytes, int]:
    """Exact strict-ancestor sets as bitsets over the generation order (parents first)."""
    index = {op.op_id: i for i, op in enumerate(ops)}
    anc: dict[bytes, int] = {}
    for op in ops:
        bits = 0
        for p in op.parents:
            bits |= anc[p] | (1 << index[p])
        anc[op.op_id] = bits
    return anc


class CountingDag(Dag):
    """Counts how often ``hb`` needs the bounded search (the path past the O(1) checks)."""

    __slots__ = ("searches",)

    def __init__(self, **kw: int) -> None:
        super().__init__(**kw)
        self.searches = 0

    def _search(self, na, nb):  # type: ignore[no-untyped-def]
        self.searches += 1
        return super()._search(na, nb)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(2, 45),
    k=st.integers(1, 4),
    bits=st.integers(1, 8),
    p_root=st.sampled_from([0.1, 0.3, 0.6]),
)
def test_hb_with_tiny_summaries_equals_dfs(seed, n, k, bits, p_root):
    """Summaries of 1-4 entries and a filter of 1-8 bits: floors and the search carry the answers."""
    rng = random.Random(seed)
    ops = rooty_dag(rng, n, p_root, max_parents=5)
    perm = ops[:]
    rng.shuffle(perm)
    small = Dag(summary_max=k, filter_bits=bits)
    small.insert_many(perm)
    full = Dag.from_ops(ops)
    assert small.hb_index_stats()["largest_summary"] <= k
    for a in ops:
        for b in ops:
            want = dfs_hb(ops, a.op_id, b.op_id)
            assert small.hb(a.op_id, b.op_id) == want, (a.op_id.hex(), b.op_id.hex())
            assert full.hb(a.op_id, b.op_id) == want


def test_the_search_path_runs_and_agrees_with_dfs():
    rng = random.Random(7)
    ops = rooty_dag(rng, 300, 0.3, max_parents=6)
    anc = ancestor_sets(ops)
    index = {op.op_id: i for i, op in enumerate(ops)}
    dag = CountingDag(summary_max=2, filter_bits=3)
    dag.insert_many(ops)
    stats = dag.hb_index_stats()
    assert stats["floored_ops"] > 0 and stats["largest_summary"] <= 2
    for a in ops:
        for b in ops[::3]:
            assert dag.hb(a.op_id, b.op_id) == bool(anc[b.op_id] >> index[a.op_id] & 1)
    assert dag.searches > 100


def test_adversarial_roots_then_merges_keep_summaries_bounded():
    """3000 roots, then a merge chain over them, a merge of every head and random wide merges."""
    rng = random.Random(11)
    ops: list[Op] = []

    def add(parents: list[bytes]) -> Op:
        op = fake_op(len(ops), sorted(parents), Hlc(len(ops), 0, 0), rng.randbytes(30))
        ops.append(op)
        return op

    roots = [add([]) for _ in range(3000)]
    acc = add([roots[0].op_id, roots[1].op_id])
    for r in roots[2:1500]:
        acc = add([acc.op_id, r.op_id])  # every step sees one more chain
    everything = add([acc.op_id] + [r.op_id for r in roots[1500:]])
    for _ in range(1000):
        add([ops[j].op_id for j in rng.sample(range(len(ops)), 20)])
    add([everything.op_id, ops[-1].op_id])
    dag = Dag.from_ops(ops)
    stats = dag.hb_index_stats()
    n = len(ops)
    assert stats["ops"] == n
    assert stats["largest_summary"] <= 32
    assert stats["summary_entries"] <= 32 * (n - 3000)  # roots store nothing
    assert stats["largest_filter_bits"] <= 1024
    anc = ancestor_sets(ops)
    index = {op.op_id: i for i, op in enumerate(ops)}
    sample = [*rng.sample(ops, 60), roots[0], roots[2999], acc, everything, ops[-1]]
    for a in sample:
        for b in sample:
            assert dag.hb(a.op_id, b.op_id) == bool(anc[b.op_id] >> index[a.op_id] & 1)


def test_chains_follow_authors_when_writers_merge_a_shared_head():
    """Editors merging the admin's head extend their own chains; the admin keeps its chain."""
    admin = bytes([1]) * 32
    editors = [bytes([10 + e]) * 32 for e in range(5)]
    rng = random.Random(5)
    ops: list[Op] = []
    last: dict[bytes, bytes] = {}
    for i in range(400):
        author = admin if rng.random() < 0.2 else rng.choice(editors)
        parents = {last[author]} if author in last else set()
        if author != admin and admin in last:
            parents.add(last[admin])
        op = replace(fake_op(i, sorted(parents), Hlc(i, 0, 0), rng.randbytes(30)), author_pk=author)
        last[author] = op.op_id
        ops.append(op)
    dag = Dag.from_ops(ops)
    assert dag.chain_count() == 1 + len(editors)
    sample = ops[::7]
    for a in sample:
        for b in sample:
            assert dag.hb(a.op_id, b.op_id) == dfs_hb(ops, a.op_id, b.op_id)


def test_dag_rejects_an_empty_index_size():
    for kw in ({"summary_max": 0}, {"filter_bits": 0}):
        try:
            Dag(**kw)
        except ValueError as e:
            assert "at least 1" in str(e)
        else:
            raise AssertionError(f"Dag({kw}) accepted")


# ---------------------------------------------------------------------- appending a known order


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), cut=st.floats(0, 1))
def test_extend_ordered_equals_inserting_then_grows_like_insert(seed, n, cut):
    rng = random.Random(seed)
    ops = random_dag(rng, n)
    by_id = {op.op_id: op for op in ops}
    k = int(n * cut)
    first, later = ops[:k], ops[k:]  # parents first: ``first`` is closed under ancestors
    order = [by_id[x] for x in naive_topo(first)]
    dag = Dag()
    assert dag.extend_ordered(order) == len(order)
    ref = Dag.from_ops(first)
    assert dag.topo_order() == ref.topo_order() == order
    assert all(dag.position(op.op_id) == i for i, op in enumerate(order))
    perm = later[:]
    rng.shuffle(perm)
    for op in perm:  # later inserts (some sort before the appended ops) keep the incremental order right
        dag.insert(op)
        ref.insert(op)
        if rng.random() < 0.3:
            assert dag.topo_order() == ref.topo_order()
    assert dag.topo_ids() == naive_topo(ops)
    for a in ops:
        for b in ops:
            assert dag.hb(a.op_id, b.op_id) == ref.hb(a.op_id, b.op_id)


def test_extend_ordered_refuses_what_it_cannot_place():
    a = fake_op(0, [], Hlc(1, 0, 0))
    b = fake_op(1, [a.op_id], Hlc(2, 0, 0))
    c = fake_op(2, [b.op_id], Hlc(3, 0, 0))
    dag = Dag()
    try:
        dag.extend_ordered([a, c])
    except ValueError as e:
        assert "comes before its parent" in str(e) and b.op_id.hex() in str(e)
    else:
        raise AssertionError("a child before its parent was accepted")
    assert dag.topo_order() == [a] and c.op_id not in dag  # the valid prefix stays, consistently
    dag.extend_ordered([b, c])
    assert dag.topo_order() == [a, b, c] and dag.hb(a.op_id, c.op_id)
    try:
        dag.extend_ordered([b])
    except ValueError as e:
        assert "already in the DAG" in str(e)
    else:
        raise AssertionError("a duplicate was accepted")
    dag.insert(fake_op(3, [b"\x01" * 32], Hlc(4, 0, 0)))
    try:
        dag.extend_ordered([fake_op(4, [c.op_id], Hlc(5, 0, 0))])
    except ValueError as e:
        assert "pending" in str(e)
    else:
        raise AssertionError("extend_ordered ran with pending ops")


@pytest.fixture
def monkeypatch_memo(monkeypatch):
    """Summarise b on its second search however cheap the first one was."""
    import ecac.core.dag as dag_mod

    monkeypatch.setattr(dag_mod, "_MEMO_AFTER", 0)


class MemoCountingDag(Dag):
    """Counts how often a b's whole ancestry is summarised for repeated queries about it."""

    __slots__ = ("summaries_built",)

    def __init__(self, **kw: int) -> None:
        super().__init__(**kw)
        self.summaries_built = 0

    def _ancestry(self, nb):  # type: ignore[no-untyped-def]
        self.summaries_built += 1
        return super()._ancestry(nb)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), n=st.integers(2, 45), k=st.integers(1, 3), bits=st.integers(1, 5))
def test_repeated_queries_about_one_op_use_its_summarised_ancestry(seed, n, k, bits, monkeypatch_memo):
    """Every query about one b after the first search goes through ``_ancestry``: same answers as DFS."""
    rng = random.Random(seed)
    ops = rooty_dag(rng, n, 0.3, max_parents=5)
    anc = ancestor_sets(ops)
    index = {op.op_id: i for i, op in enumerate(ops)}
    dag = MemoCountingDag(summary_max=k, filter_bits=bits)
    dag.insert_many(ops)
    for b in ops:  # b outer: the replay pattern (all winners against one new write)
        for a in ops:
            assert dag.hb(a.op_id, b.op_id) == bool(anc[b.op_id] >> index[a.op_id] & 1)


def test_many_concurrent_winners_against_one_merge_summarise_it_once(monkeypatch_memo):
    rng = random.Random(3)
    ops: list[Op] = []
    roots = []
    for i in range(600):
        roots.append(fake_op(i, [], Hlc(i, 0, 0), rng.randbytes(30)))
    ops.extend(roots)
    acc = fake_op(600, [roots[0].op_id, roots[1].op_id], Hlc(600, 0, 0), rng.randbytes(30))
    ops.append(acc)
    for r in roots[2:]:
        acc = fake_op(len(ops), sorted([acc.op_id, r.op_id]), Hlc(len(ops), 0, 0), rng.randbytes(30))
        ops.append(acc)
    dag = MemoCountingDag()
    dag.insert_many(ops)
    assert all(dag.hb(r.op_id, acc.op_id) for r in roots)  # every root is an ancestor of the last merge
    assert not any(dag.hb(acc.op_id, r.op_id) for r in roots)
    assert dag.summaries_built == 1


# ---------------------------------------------------------------------- stateful: against naive models


def activated(ops: dict[bytes, Op]) -> list[Op]:
    """The ops whose ancestors are all present (core §6's activated set), recomputed from scratch."""
    done: set[bytes] = set()
    changed = True
    while changed:
        changed = False
        for x, op in ops.items():
            if x not in done and all(p in done for p in op.parents):
                done.add(x)
                changed = True
    return [op for x, op in ops.items() if x in done]


class DagMachine(RuleBasedStateMachine):
    """Ops arrive in any order, some never, some twice; the order and hb always match the models."""

    ops = Bundle("ops")  # ops made so far (inserted or not)

    def __init__(self) -> None:
        super().__init__()
        self.dag = Dag(summary_max=2, filter_bits=4)  # tiny hb index: its search paths run too
        self.inserted: dict[bytes, Op] = {}  # the model: first copies, in arrival order
        self.made: list[Op] = []
        self.orders: list[list[Op]] = []  # earlier orders, to check they stay subsequences
        self.n = 0

    def _make(self, data) -> Op:
        picked = data.draw(st.lists(st.sampled_from(self.made), max_size=3)) if self.made else []
        ps = [op.op_id for op in picked]
        if ps and data.draw(st.booleans()):
            ps.append(ps[0])
        hlc = Hlc(data.draw(st.integers(0, 6)), data.draw(st.integers(0, 1)), data.draw(st.integers(0, 2)))
        op = fake_op(self.n, sorted(ps), hlc, tag=b"sm")
        self.n += 1
        self.made.append(op)
        return op

    @rule(target=ops, data=st.data())
    def insert_a_new_op(self, data):
        op = self._make(data)
        self._insert(op)
        return op

    @rule(target=ops, data=st.data())
    def make_an_op_that_arrives_later(self, data):
        return self._make(data)  # its children, inserted first, wait for it

    @rule(op=consumes(ops))
    def insert_a_late_op_or_a_duplicate(self, op):
        self._insert(op)

    @rule(op=ops, data=st.data())
    def insert_another_copy(self, op, data):
        other = replace(op, sig=bytes([data.draw(st.integers(1, 255))]) * 64)
        self._insert(other)  # a second copy with another signature: the first one wins

    def _insert(self, op: Op) -> None:
        new = op.op_id not in self.inserted and not self.dag.is_pending(op.op_id)
        assert self.dag.insert(op) == new
        if new:
            self.inserted[op.op_id] = op

    @rule()
    def rebuild_from_the_known_order(self):
        """A DAG appended in the known order (as store replay builds it) equals this one."""
        order = self.dag.topo_order()
        other = Dag()
        assert other.extend_ordered(order) == len(order)
        assert other.topo_order() == order
        for a in order:
            for b in order[:5]:
                assert other.hb(a.op_id, b.op_id) == self.dag.hb(a.op_id, b.op_id)

    @invariant()
    def order_matches_kahn_from_scratch(self):
        act = activated(self.inserted)
        order = self.dag.topo_order()
        assert [op.op_id for op in order] == naive_topo(act)
        assert all(a is self.inserted[a.op_id] for a in order)  # the first copies
        assert [self.dag.position(op.op_id) for op in order] == list(range(len(order)))
        assert len(self.dag) == len(order)
        act_ids = {op.op_id for op in act}
        assert self.dag.pending_ids() == sorted(x for x in self.inserted if x not in act_ids)
        for old in self.orders:  # an earlier order is a subsequence of the current one
            it = iter(order)
            assert all(any(o is x for o in it) for x in old)
        self.orders = [*self.orders[-3:], order]

    @invariant()
    def hb_matches_dfs(self):
        act = activated(self.inserted)
        sample = act[-8:]
        for a in sample:
            for b in sample:
                assert self.dag.hb(a.op_id, b.op_id) == dfs_hb(act, a.op_id, b.op_id)
        act_ids = {op.op_id for op in act}
        for x in self.inserted:  # pending ops are invisible to hb, both ways
            if x not in act_ids and sample:
                assert not self.dag.hb(x, sample[-1].op_id) and not self.dag.hb(sample[0].op_id, x)


DagMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
test_dag_state_machine = DagMachine.TestCase
