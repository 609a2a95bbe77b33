"""The causal DAG: staging, activation, the deterministic total order and happens-before (core §6).

Only admitted (verified) ops may be inserted (core §4.4); ``admit_and_insert`` does both.
An op whose parents have not all arrived is *pending*: invisible to ``len``, the order,
replay and ``hb`` until its last missing ancestor activates it.

Total order: Kahn's algorithm over the activated ops with the ready set keyed by
``(physical_ms, logical, node_id, op_id)``. It is computed lazily and incrementally: new
activations only invalidate the order from the first position whose op sorts after the
smallest new key (found by bisecting a prefix-maximum list), and Kahn resumes from there.
Appending ops that sort after everything (the usual case) costs O(new · log new).

Happens-before index: every activated op is put on a *chain*, a set of ops totally
ordered by ancestry. It extends the chain of a parent that is currently that chain's
tail, else any chain whose tail is an ancestor, else it starts a new chain; so in practice the
number of chains stays near the width of the DAG (the concurrent writers), not the
number of forks. Each op stores ``(chain, idx)`` and a *summary* mapping every other
chain to the highest index of one of its strict ancestors there. Because a chain is
totally ordered, ``hb(a, b)`` is O(1): same chain → ``idx(a) < idx(b)``, else
``summary(b)[chain(a)] >= idx(a)``. An op that only extends its single parent's chain
shares that parent's summary object, so chain-like histories (one chain per writer) use
O(1) index memory per op. An op with several parents (or a forked parent) gets its own
summary: O(parents · chains) time and O(chains) memory for that op, so the worst case is
O(ops · chains) memory, with chains ≈ DAG width.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from heapq import heapify, heappop, heappush

from ecac.op import Op, Rejection, admit

_EMPTY: dict[int, int] = {}  # shared summary of ops with no ancestors on other chains; never mutated
_UNPLACED = 1 << 62  # position of an activated op not yet placed in the order


class _Node:
    """An activated op with its index data.

    ``children`` holds the child nodes once per parent entry: None, a single node (the
    common case, no list allocated) or a list.
    """

    __slots__ = ("chain", "children", "deg", "idx", "op", "pos", "summary")

    def __init__(self, op: Op, chain: int, idx: int, summary: dict[int, int]) -> None:
        self.op = op
        self.chain = chain
        self.idx = idx
        self.summary = summary
        self.children: _Node | list[_Node] | None = None
        self.pos = _UNPLACED
        self.deg = 0


def _kids(n: _Node) -> tuple[_Node, ...] | list[_Node]:
    ch = n.children
    if ch is None:
        return ()
    if type(ch) is _Node:
        return (ch,)
    return ch  # type: ignore[return-value]


class _Pending:
    __slots__ = ("missing", "op")

    def __init__(self, op: Op, missing: set[bytes]) -> None:
        self.op = op
        self.missing = missing


class Dag:
    """Activated ops, pending ops, the cached total order and the happens-before index."""

    __slots__ = ("__weakref__", "_fresh", "_nodes", "_order", "_pending", "_pmax", "_tails", "_waiting")

    def __init__(self) -> None:
        self._nodes: dict[bytes, _Node] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._waiting: dict[bytes, list[bytes]] = {}  # missing parent id -> waiting child ids
        self._tails: list[_Node] = []  # chain id -> its current last node
        self._order: list[Op] = []
        self._pmax: list[Op] = []  # _pmax[i] = the op with the largest sort key in _order[: i + 1]
        self._fresh: list[_Node] = []  # activated since the order was last computed

    @classmethod
    def from_ops(cls, ops: Iterable[Op]) -> Dag:
        """A DAG of already admitted ops (any order)."""
        dag = cls()
        for op in ops:
            dag.insert(op)
        return dag

    # ------------------------------------------------------------------ insertion

    def insert(self, op: Op) -> bool:
        """Insert an admitted op; False if its id is already activated or pending (first copy wins)."""
        oid = op.op_id
        if oid in self._nodes or oid in self._pending:
            return False
        nodes = self._nodes
        missing = None
        for p in op.parents:
            if p not in nodes:
                if missing is None:
                    missing = {p}
                else:
                    missing.add(p)
        if missing is None:
            self._activate_from(op)
        else:
            self._pending[oid] = _Pending(op, missing)
            waiting = self._waiting
            for p in sorted(missing):
                lst = waiting.get(p)
                if lst is None:
                    waiting[p] = [oid]
                else:
                    lst.append(oid)
        return True

    def insert_many(self, ops: Iterable[Op]) -> int:
        """Insert admitted ops; returns how many were new."""
        return sum(1 for op in ops if self.insert(op))

    def admit_and_insert(self, ops: Iterable[Op]) -> list[Rejection]:
        """Verify ops (core §4.4), insert those that pass, return one rejection per failing op."""
        good, bad = admit(list(ops))
        for op in good:
            self.insert(op)
        return bad

    def _activate_from(self, first: Op) -> None:
        """Activate ``first`` and, with an explicit work list, every pending op it completes."""
        work = [first]
        pending = self._pending
        waiting = self._waiting
        while work:
            op = work.pop()
            self._activate(op)
            oid = op.op_id
            waiters = waiting.pop(oid, None)
            if waiters:
                for cid in waiters:
                    entry = pending[cid]
                    entry.missing.discard(oid)
                    if not entry.missing:
                        del pending[cid]
                        work.append(entry.op)

    def _activate(self, op: Op) -> None:
        nodes = self._nodes
        tails = self._tails
        parents = [nodes[p] for p in op.parents]
        first = parents[0] if parents else None
        if first is None:
            chain, idx, summary = -1, 0, _EMPTY
        elif tails[first.chain] is first and all(pn is first for pn in parents):
            # the common case: extend the single parent's chain and share its summary
            chain, idx, summary = first.chain, first.idx + 1, first.summary
        else:
            # merged summary: highest ancestor index per chain, parents included
            summary = {}
            for pn in parents:
                for c, i in pn.summary.items():
                    if summary.get(c, -1) < i:
                        summary[c] = i
                if summary.get(pn.chain, -1) < pn.idx:
                    summary[pn.chain] = pn.idx
            # extend a chain whose tail is an ancestor (chains stay totally ordered by
            # ancestry): a parent's chain first, else the lowest such chain id
            chain = -1
            for pn in parents:
                if tails[pn.chain] is pn:
                    chain = pn.chain
                    break
            else:
                for c in sorted(summary):
                    if tails[c].idx == summary[c]:
                        chain = c
                        break
            idx = tails[chain].idx + 1 if chain >= 0 else 0
            summary.pop(chain, None)
            if not summary:
                summary = _EMPTY
        if chain < 0:
            chain = len(tails)
            tails.append(None)  # type: ignore[arg-type]
        node = _Node(op, chain, idx, summary)
        tails[chain] = node
        for pn in parents:
            ch = pn.children
            if ch is None:
                pn.children = node
            elif type(ch) is _Node:
                pn.children = [ch, node]
            else:
                ch.append(node)
        nodes[op.op_id] = node
        self._fresh.append(node)

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Number of activated ops (pending ops are invisible)."""
        return len(self._nodes)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._nodes

    def get(self, op_id: bytes) -> Op | None:
        """The activated op with this id, or None (also for pending ops)."""
        n = self._nodes.get(op_id)
        return None if n is None else n.op

    def is_pending(self, op_id: bytes) -> bool:
        return op_id in self._pending

    def pending_ids(self) -> list[bytes]:
        """Ids of ops waiting for an ancestor, sorted."""
        return sorted(self._pending)

    def missing_ids(self) -> list[bytes]:
        """Ids that pending ops wait for and that are neither activated nor pending, sorted."""
        return sorted(p for p in self._waiting if p not in self._pending)

    def children(self, op_id: bytes) -> list[bytes]:
        """Child ids of an activated op, once per parent entry, in activation order."""
        n = self._nodes.get(op_id)
        if n is None:
            return []
        return [c.op.op_id for c in _kids(n)]

    def hb(self, a: bytes, b: bytes) -> bool:
        """True iff ``a`` is a strict ancestor of ``b`` (both activated); O(1)."""
        nodes = self._nodes
        na = nodes.get(a)
        nb = nodes.get(b)
        if na is None or nb is None:
            return False
        if na.chain == nb.chain:
            return na.idx < nb.idx
        return nb.summary.get(na.chain, -1) >= na.idx

    is_strict_ancestor = hb

    def chain_count(self) -> int:
        """Number of chains of the happens-before index (a measure of its cost)."""
        return len(self._tails)

    # ------------------------------------------------------------------ total order

    def topo_order(self) -> list[Op]:
        """The activated ops in the deterministic total order.

        The returned list is never mutated afterwards (a new list is made when the order
        changes), so callers may keep it to compare with a later order. An earlier order of
        the same DAG is always a subsequence of a later one: new ops are never parents of
        old ones, so they cannot change when an old op becomes ready. Hence an earlier
        order ``P`` is a prefix of the current one iff ``current[len(P) - 1] is P[-1]``.
        """
        if self._fresh:
            self._refresh()
        return self._order

    def topo_ids(self) -> list[bytes]:
        return [op.op_id for op in self.topo_order()]

    def position(self, op_id: bytes) -> int:
        """0-based position of an activated op in the total order; KeyError if not activated."""
        if self._fresh:
            self._refresh()
        return self._nodes[op_id].pos

    def __iter__(self) -> Iterator[Op]:
        return iter(self.topo_order())

    def _refresh(self) -> None:
        fresh = self._fresh
        self._fresh = []
        order = self._order
        pmax = self._pmax
        kmin = min(n.op.sort_key() for n in fresh)
        # positions before j keep their op: everything there sorts before every new op
        if not pmax or pmax[-1].sort_key() < kmin:
            j = len(order)
        else:
            j = bisect_right(pmax, kmin, key=Op.sort_key)
        nodes = self._nodes
        rest = [nodes[op.op_id] for op in order[j:]]
        for n in rest:
            n.pos = _UNPLACED
        rest.extend(fresh)
        ready: list[tuple[tuple[int, int, int, bytes], _Node]] = []
        for n in rest:
            d = 0
            for p in n.op.parents:
                if nodes[p].pos >= j:
                    d += 1
            n.deg = d
            if d == 0:
                ready.append((n.op.sort_key(), n))
        heapify(ready)
        new_tail: list[Op] = []
        new_pmax = pmax[:j]
        best = new_pmax[-1] if new_pmax else None
        best_key = best.sort_key() if best is not None else None
        pos = j
        while ready:
            key, n = heappop(ready)
            n.pos = pos
            pos += 1
            op = n.op
            new_tail.append(op)
            if best_key is None or key > best_key:
                best, best_key = op, key
            new_pmax.append(best)  # type: ignore[arg-type]
            for c in _kids(n):
                c.deg -= 1
                if c.deg == 0:
                    heappush(ready, (c.op.sort_key(), c))
        if len(new_tail) != len(rest):  # cannot happen: activated ops form a closed DAG
            raise AssertionError("topological sort lost ops")
        self._order = order[:j] + new_tail
        self._pmax = new_pmax
