"""The causal DAG: staging, activation, the deterministic total order and happens-before (core §6).

Only admitted (verified) ops may be inserted (core §4.4); ``admit_and_insert`` does both.
An op whose parents have not all arrived is *pending*: invisible to ``len``, the order,
replay and ``hb`` until its last missing ancestor activates it.

Total order: Kahn's algorithm over the activated ops with the ready set keyed by
``(physical_ms, logical, node_id, op_id)``, kept by ``ecac.core.order.TotalOrder`` (the one
implementation, shared with the store's ``OpIndex``). Activated ops are placed lazily, at the
next order query: an op that sorts after everything that could precede it is appended in
O(1), an out-of-order one is inserted where Kahn puts it, and a batch that would shift too
much resumes Kahn from the first invalidated position. A source that already has the order
(the op store's index computes exactly this order) appends with ``extend_ordered``: no Kahn
at all, O(1) per op plus the happens-before index.

Happens-before index (exact, bounded memory). Every activated op ``x`` gets:

* ``gen(x)`` = 1 + max gen of its parents (0 for roots): an ancestor has a strictly smaller gen;
* a *chain* and an index on it. A chain is a sequence of ops totally ordered by ancestry.
  An op extends the chain of a parent that is currently that chain's tail, preferring a
  parent with the same author (so chains follow writers), else a chain whose tail is a
  known non-parent ancestor, else it starts a new chain;
* a *summary*: for at most ``SUMMARY_MAX`` (K) other chains, the exact highest index of an
  ancestor of ``x`` there, plus a *floor*: every ancestor on a chain missing from the
  summary has gen < floor (0 when nothing was left out). A merge keeps the K entries whose
  ancestor has the highest gen and raises the floor above the ones it drops, so the newest
  history stays exact and only old history is forgotten;
* a *chain filter*: a ``CHAIN_FILTER_BITS``-bit set of (chain id mod bits) over every chain
  holding an ancestor, never truncated (exact while there are fewer chains than bits).

``hb(a, b)``: same chain → ``idx(a) < idx(b)``; chain(a) in summary(b) → compare indexes;
``gen(a) >= floor(b)`` or chain(a) not in b's filter → False. All O(1). Only when a is
older than b's floor and its chain may hold an ancestor of b does a search run: a DFS from
b over parents that never expands a node whose gen is <= gen(a) (it cannot reach a) and
that answers at every visited node with the same O(1) checks instead of expanding it.

Cost model. Memory: an op that extends its only parent's chain shares the parent's summary
and filter (O(1)); any other op stores at most K entries (a dict of <= 32 entries, ~1.2 KB)
and a filter of at most ``CHAIN_FILTER_BITS`` bits, so the index is O(ops · K) for ANY DAG,
whatever the number of roots, chains and merges. Insert: O(1) for a chain extension,
O(parents · K) otherwise. Queries: O(1) when a and b share a chain, when b's summary lists
a's chain, when a is newer than b's floor, or when no ancestor of b is on a's chain (filter,
exact below ``CHAIN_FILTER_BITS`` chains). In particular every query is O(1) while the DAG
has at most K + 1 chains (one writer, concurrent writers, writers merging each other's
heads: floors stay 0) and when writers do not merge each other (policy-heavy: editors merge
only the admin's head). Otherwise the search visits each ancestor of b whose gen lies in
``(gen(a), gen(b)]`` and that cannot answer itself at most once (one visited set per
query): it never goes below gen(a), but within that window it is a DFS, so the worst case
(built on purpose: thousands of roots merged one by one, then queries about the oldest
root) is O(window) per query. Replay asks about one b many times in a row (each winner of
a register against the new write), so a second costly search about the same b summarises
b's whole ancestry once (one pass over its ancestors that have a floor, O(chains) memory,
kept for the last b only) and answers every further query about b in O(1): 5,000
concurrent winners against a merge of 5,000 roots take ~25 ms instead of ~35 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter

from ecac import _native
from ecac.core.op import Op
from ecac.core.order import SortKey, TotalOrder
from ecac.core.sig import Rejection, Verify, admit, check_sigs

#: K: the most chains a summary lists exactly (see the module docstring)
SUMMARY_MAX = 32
#: size of the per-op set of chains holding an ancestor (chain id mod this many bits)
CHAIN_FILTER_BITS = 1024

#: nodes a search for one b must have visited before a second search for it summarises b instead
_MEMO_AFTER = 32

_EMPTY: dict[int, int] = {}  # shared summary of ops with no ancestors on other chains; never mutated
_OP_ID = attrgetter("op_id")
_UNPLACED = 1 << 62  # what ``extend_chains`` writes into ``_Node.pos`` (the order lives in TotalOrder)


class _Node:
    """An activated op with its index data (see the module docstring).

    ``children`` holds the child nodes once per parent entry: None, a single node (the
    common case, no list allocated) or a list. ``summary`` and ``filt`` may be shared
    with the parent whose chain this node extends; they are never mutated. ``pos`` and
    ``deg`` are part of the layout ``ecac._native.extend_chains`` builds; the order does
    not use them (positions live in the DAG's ``TotalOrder``).
    """

    __slots__ = ("chain", "children", "deg", "filt", "floor", "gen", "idx", "op", "pos", "summary")

    def __init__(
        self, op: Op, chain: int, idx: int, gen: int, summary: dict[int, int], floor: int, filt: int
    ) -> None:
        self.op = op
        self.chain = chain
        self.idx = idx
        self.gen = gen
        self.summary = summary
        self.floor = floor
        self.filt = filt
        self.children: _Node | list[_Node] | None = None
        self.pos = _UNPLACED
        self.deg = 0


_native.configure_dag(_Node)  # extend_chains builds _Node instances (docs/decisions.md D39)


def _summary_size(n: _Node) -> int:
    return len(n.summary)


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
    """Activated ops, pending ops, the total order and the happens-before index."""

    __slots__ = (
        "__weakref__",
        "_chains",
        "_fbits",
        "_k",
        "_last_search",
        "_memo",
        "_nodes",
        "_ops",
        "_order",
        "_ordered",
        "_pending",
        "_waiting",
    )

    def __init__(self, *, summary_max: int = SUMMARY_MAX, filter_bits: int = CHAIN_FILTER_BITS) -> None:
        """An empty DAG; ``summary_max`` and ``filter_bits`` size the hb index (tests shrink them)."""
        if summary_max < 1 or filter_bits < 1:
            raise ValueError("summary_max and filter_bits must be at least 1")
        self._k = summary_max
        self._fbits = filter_bits
        self._last_search: tuple[_Node, int] | None = None  # (b, nodes visited) of the last search
        self._memo: tuple[_Node, dict[int, int]] | None = None  # (b, highest ancestor index per chain)
        self._nodes: dict[bytes, _Node] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._waiting: dict[bytes, list[bytes]] = {}  # missing parent id -> waiting child ids
        self._chains: list[list[_Node]] = []  # chain id -> its nodes by index (the last is the tail)
        self._order = _order_of(self._nodes)
        # the ops of the placed part of _order, in order; replaced (never mutated) when it changes
        self._ops: list[Op] = []
        # _ops[:_ordered] are in _order; ops appended by extend_ordered after that are handed to
        # it when it is next needed (a store replay never needs it: no second pass over the ops)
        self._ordered = 0

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

    def admit_and_insert(self, ops: Iterable[Op], verify: Verify = check_sigs) -> list[Rejection]:
        """Verify ops (core §4.4; signatures by ``verify``), insert those that pass, reject the rest."""
        good, bad = admit(list(ops), verify)
        for op in good:
            self.insert(op)
        return bad

    def extend_ordered(self, ops: Iterable[Op]) -> int:
        """Append ops that are already in the deterministic total order, without Kahn.

        For a source that knows the order (the op store's index computes exactly this
        order): ``ops`` must continue the current order, i.e. ``topo_order() + ops`` is what
        inserting them would give. Only cheap checks are made (each op new, its parents
        already activated; ValueError otherwise), the order itself is trusted. The
        happens-before index is built as by ``insert``. Returns the number of ops added.
        """
        if self._pending:
            raise ValueError("extend_ordered needs a DAG without pending ops")
        order = list(self.topo_order())  # returned orders are never mutated: work on a copy
        nodes = self._nodes
        chains = self._chains
        activate = self._activate
        start = len(order)
        todo = ops if type(ops) is list else list(ops)
        i = 0
        try:
            while True:
                # chain extensions in bulk (C), each placed at the end of the order; the rest here
                done = i
                i = _native.extend_chains(todo, i, nodes, chains, None, _UNPLACED)
                order.extend(todo[done:i])
                if i >= len(todo):
                    break
                op = todo[i]
                if op.op_id in nodes:
                    raise ValueError(f"op {op.op_id.hex()} is already in the DAG")
                try:
                    activate(op)  # nothing is changed before every parent is found
                except KeyError:
                    missing = next((p for p in op.parents if p not in nodes), None)
                    if missing is None:
                        raise
                    raise ValueError(f"op {op.op_id.hex()} comes before its parent {missing.hex()}") from None
                order.append(op)
                i += 1
        finally:  # what was activated is placed, also when a check failed
            self._ops = order
        return len(order) - start

    def _sync_order(self) -> None:
        """Hand the ops appended by ``extend_ordered`` to the total order (before it is used)."""
        ops = self._ops
        if self._ordered < len(ops):
            self._order.extend_trusted(list(map(_OP_ID, ops[self._ordered :])))
            self._ordered = len(ops)

    def _activate_from(self, first: Op) -> None:
        """Activate ``first`` and, with an explicit work list, every pending op it completes."""
        self._sync_order()
        work = [first]
        pending = self._pending
        waiting = self._waiting
        place = self._order.add
        while work:
            op = work.pop()
            self._activate(op)
            oid = op.op_id
            place(oid)
            waiters = waiting.pop(oid, None)
            if waiters:
                for cid in waiters:
                    entry = pending[cid]
                    entry.missing.discard(oid)
                    if not entry.missing:
                        del pending[cid]
                        work.append(entry.op)

    def _activate(self, op: Op) -> _Node:
        """Index ``op`` (all parents activated) and link it to its parents; the caller places it."""
        nodes = self._nodes
        ps = op.parents
        if len(ps) == 1 and _native.extend_chains([op], 0, nodes, self._chains, None, _UNPLACED):
            # the common case, in C: extend the single parent's chain and share its index data
            return nodes[op.op_id]
        parents = [nodes[p] for p in ps]
        if not parents:
            chains = self._chains
            node = _Node(op, len(chains), 0, 0, _EMPTY, 0, 0)
            chains.append([node])
        else:
            first = parents[0]
            line = self._chains[first.chain]
            if line[-1] is first and all(pn is first for pn in parents):  # the same parent repeated
                node = _Node(
                    op, first.chain, first.idx + 1, first.gen + 1, first.summary, first.floor, first.filt
                )
                line.append(node)
            else:
                node = self._merged(op, parents)
            for pn in parents:
                ch = pn.children
                if ch is None:
                    pn.children = node
                elif isinstance(ch, list):
                    ch.append(node)
                else:
                    pn.children = [ch, node]
        nodes[op.op_id] = node
        return node

    def _merged(self, op: Op, parents: list[_Node]) -> _Node:
        """The node of an op with several parents or a forked parent: O(parents · K)."""
        chains = self._chains
        fbits = self._fbits
        k = self._k
        gen = 0
        floor = 0
        filt = 0
        base = max(parents, key=_summary_size).summary  # copied in C; the others are merged in
        summary = dict(base)
        for pn in parents:
            if pn.gen >= gen:
                gen = pn.gen + 1
            if pn.floor > floor:
                floor = pn.floor
            filt |= pn.filt | (1 << (pn.chain % fbits))
            if pn.summary is not base:
                for c, i in pn.summary.items():
                    if summary.get(c, -1) < i:
                        summary[c] = i
            c = pn.chain
            if summary.get(c, -1) < pn.idx:
                summary[c] = pn.idx
        if floor:
            # an entry whose ancestor is below a parent's floor may be short of an ancestor
            # that parent forgot: below the floor, the summary knows nothing
            for c in [c for c, i in summary.items() if chains[c][i].gen < floor]:
                del summary[c]
        chain = self._chain_to_extend(op.author_pk, parents, summary)
        if chain < 0:
            chain = len(chains)
            chains.append([])
        line = chains[chain]
        summary.pop(chain, None)  # the own chain is implicit: every earlier index is an ancestor
        excess = len(summary) - k
        if excess > 0:
            # forget the chains whose newest ancestor is oldest (ties: lowest chain id)
            by_age = sorted((chains[c][i].gen, c) for c, i in summary.items())[:excess]
            for _, c in by_age:
                del summary[c]
            floor = max(floor, by_age[-1][0] + 1)
        node = _Node(op, chain, len(line), gen, summary or _EMPTY, floor, filt)
        line.append(node)
        return node

    def _chain_to_extend(self, author: bytes, parents: list[_Node], summary: dict[int, int]) -> int:
        """A chain whose tail is an ancestor: a parent's (same author first), else a summary's; or -1."""
        chains = self._chains
        fallback = -1
        for pn in parents:
            if chains[pn.chain][-1] is pn:
                if pn.op.author_pk == author:
                    return pn.chain
                if fallback < 0:
                    fallback = pn.chain
        if fallback >= 0:
            return fallback
        for c in sorted(summary):
            tail = chains[c][-1]
            if tail.idx == summary[c]:
                if tail.op.author_pk == author:
                    return c
                if fallback < 0:
                    fallback = c
        return fallback

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
        """True iff ``a`` is a strict ancestor of ``b`` (both activated); O(1) in the common cases."""
        nodes = self._nodes
        na = nodes.get(a)
        nb = nodes.get(b)
        if na is None or nb is None:
            return False
        ca = na.chain
        if ca == nb.chain:
            return na.idx < nb.idx
        i = nb.summary.get(ca)
        if i is not None:
            return i >= na.idx
        if na.gen >= nb.floor or not nb.filt >> (ca % self._fbits) & 1:
            return False
        return self._search(na, nb)

    is_strict_ancestor = hb

    def _search(self, na: _Node, nb: _Node) -> bool:
        """``hb`` when b's summary forgot a's region: DFS from b, bounded by gen(a) (module docstring).

        Replay asks about one b many times in a row (every current winner of a register
        against the new write): once a second search for the same b is due after a costly
        first one, b's whole ancestry is summarised once (``_ancestry``) and every later
        query about that b is O(1).
        """
        memo = self._memo
        if memo is not None and memo[0] is nb:
            return memo[1].get(na.chain, -1) >= na.idx
        last = self._last_search
        if last is not None and last[0] is nb and last[1] >= _MEMO_AFTER:
            ancestry = self._ancestry(nb)
            self._memo = (nb, ancestry)
            return ancestry.get(na.chain, -1) >= na.idx
        nodes = self._nodes
        ca, ia, ga = na.chain, na.idx, na.gen
        bit = ca % self._fbits
        seen: set[int] = set()
        stack = [nodes[p] for p in nb.op.parents]
        try:
            while stack:
                n = stack.pop()
                if n.chain == ca:
                    if n.idx >= ia:
                        return True
                    continue
                if n.gen <= ga:
                    continue
                i = n.summary.get(ca)
                if i is not None:
                    if i >= ia:
                        return True
                    continue
                if ga >= n.floor or not n.filt >> bit & 1:
                    continue
                key = id(n)
                if key in seen:
                    continue
                seen.add(key)
                stack.extend(nodes[p] for p in n.op.parents)
            return False
        finally:
            self._last_search = (nb, len(seen))

    def _ancestry(self, nb: _Node) -> dict[int, int]:
        """For every chain, the highest index of an ancestor of ``nb`` on it (exact).

        A visited node contributes itself and its summary (exact entries); only a node with
        a floor (it forgot some chains) is expanded to its parents. O(chains) memory, kept
        for one b at a time.
        """
        nodes = self._nodes
        best: dict[int, int] = {}
        seen: set[int] = set()
        stack = [nodes[p] for p in nb.op.parents]
        while stack:
            n = stack.pop()
            key = id(n)
            if key in seen:
                continue
            seen.add(key)
            if best.get(n.chain, -1) < n.idx:
                best[n.chain] = n.idx
            for c, i in n.summary.items():
                if best.get(c, -1) < i:
                    best[c] = i
            if n.floor:
                stack.extend(nodes[p] for p in n.op.parents)
        return best

    def chain_count(self) -> int:
        """Number of chains of the happens-before index (a measure of its cost)."""
        return len(self._chains)

    def hb_index_stats(self) -> dict[str, int]:
        """Size of the happens-before index: chains, stored summaries and entries, largest summary."""
        seen: set[int] = set()
        entries = largest = floored = filter_bits = 0
        for n in self._nodes.values():
            s = n.summary
            if n.floor:
                floored += 1
            filter_bits = max(filter_bits, n.filt.bit_length())
            if id(s) in seen:
                continue
            seen.add(id(s))
            entries += len(s)
            largest = max(largest, len(s))
        return {
            "ops": len(self._nodes),
            "chains": len(self._chains),
            "summaries": len(seen),
            "summary_entries": entries,
            "largest_summary": largest,
            "floored_ops": floored,
            "largest_filter_bits": filter_bits,
        }

    # ------------------------------------------------------------------ total order

    def topo_order(self) -> list[Op]:
        """The activated ops in the deterministic total order.

        The returned list is never mutated afterwards (a new list is made when the order
        changes), so callers may keep it to compare with a later order. An earlier order of
        the same DAG is always a subsequence of a later one: new ops are never parents of
        old ones, so they cannot change when an old op becomes ready. Hence an earlier
        order ``P`` is a prefix of the current one iff ``current[len(P) - 1] is P[-1]``.
        """
        j = self._order.resolve()
        if j is not None:
            nodes = self._nodes
            ops = self._ops[:j]
            ops.extend([nodes[x].op for x in self._order.ids()[j:]])
            self._ops = ops
            self._ordered = len(ops)
        return self._ops

    def topo_ids(self) -> list[bytes]:
        return list(map(_OP_ID, self.topo_order()))

    def position(self, op_id: bytes) -> int:
        """0-based position of an activated op in the total order; KeyError if not activated."""
        if op_id not in self._nodes:
            raise KeyError(op_id)
        self.topo_order()
        self._sync_order()
        return self._order.position(op_id)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.topo_order())


def _order_of(nodes: dict[bytes, _Node]) -> TotalOrder:
    """The DAG's total order, reading keys, parents and children from its nodes (no reference to the Dag)."""

    def key(x: bytes) -> SortKey:
        return nodes[x].op.sort_key()

    def parents(x: bytes) -> Sequence[bytes]:
        return nodes[x].op.parents

    def children(x: bytes) -> list[bytes] | tuple[bytes, ...] | None:
        ch = nodes[x].children
        if ch is None or isinstance(ch, list):
            return None if ch is None else [c.op.op_id for c in ch]
        return (ch.op.op_id,)

    return TotalOrder(key, parents, children)
