"""In-memory index of stored ops: completeness, generations, heads, total order, recent bloom.

Pure (no I/O, no clock, no randomness). Both the RocksDB store and the in-memory store
keep one ``OpIndex`` so that ``contains``/``heads``/``topo_ids``/``recent_bloom`` never
touch the disk (store §1.6–§1.8).

An op is *complete* when every ancestor at any depth is stored (store §1.6): a
transitive orphan (its grandparent missing) is neither ordered nor a head, which fixes
the reference defect of checking only direct parents. Completion is incremental: adding
the op that a waiting subtree lacked completes exactly that subtree, in time linear in
its size. A store's open hands over every stored op at once (``load``), which completes
them all in one pass and leaves exactly the state adding them one by one would. The
complete set equals what an in-memory DAG holding the same ops activates (core §6), so
``topo_ids()`` equals the core ``topo_sort`` of that DAG.

The order is ``ecac.core.order.TotalOrder``, the same implementation the in-memory ``Dag``
uses: completed ops are fed to it parent-first and placed at the next order query, in O(1)
when they sort after everything that could precede them and otherwise by inserting them (or
resuming Kahn) from the first invalidated position, never by a Kahn pass over the whole store.

Readers on other threads use ``contains``, ``is_complete``, ``parents``, ``gen`` and ``key``
as ``IndexFacts`` (``ecac.core.snapshot``): each is one dict lookup, and the dicts behind
them (``_parents``, ``_key``, ``_gen``) only ever grow once the index is loaded.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

import blake3

from ecac.core.order import SortKey, TotalOrder
from ecac.core.rangefp import RangeTree

__all__ = ["OpIndex", "SortKey", "bloom16", "bloom_lanes", "bloom_may_contain"]


def bloom_lanes(op_id: bytes) -> tuple[int, int, int]:
    """The three bit indexes (0..15) an id sets in the 16-bit recent bloom (store §1.8)."""
    h = blake3.blake3(op_id).digest()
    return ((h[0] | h[1] << 8) % 16, (h[2] | h[3] << 8) % 16, (h[4] | h[5] << 8) % 16)


def bloom16(ids: Iterable[bytes]) -> bytes:
    """The 2-byte bloom over ``ids``: bit i of the little-endian u16 for every lane i."""
    v = 0
    for op_id in ids:
        for i in bloom_lanes(op_id):
            v |= 1 << i
    return v.to_bytes(2, "little")


def bloom_may_contain(bloom: bytes, op_id: bytes) -> bool:
    """Soft membership test: all three lane bits set means "maybe present"."""
    v = int.from_bytes(bloom, "little")
    return all(v >> i & 1 for i in bloom_lanes(op_id))


class OpIndex:
    """Ids, parents and sort keys of every stored op, with the derived DAG views.

    ``add`` accepts ops in any order (orphans allowed) and returns the ids that became
    complete, parent-first. All queries are over complete ops except ``contains``,
    ``parents``, ``key`` and ``__len__``, which cover every stored op.
    """

    __slots__ = (
        "_children",
        "_gen",
        "_heads",
        "_key",
        "_missing",
        "_order",
        "_parents",
        "_rfp",
        "_rfp_new",
        "_unmet",
        "_waiting",
    )

    def __init__(self) -> None:
        self._parents: dict[bytes, tuple[bytes, ...]] = {}
        self._key: dict[bytes, SortKey] = {}
        self._gen: dict[bytes, int] = {}  # complete ops only
        # complete parent -> complete children (with multiplicity); None: derive on first use
        self._children: dict[bytes, list[bytes]] | None = {}
        self._heads: set[bytes] = set()
        self._unmet: dict[bytes, int] = {}  # incomplete op -> number of distinct incomplete parents
        self._waiting: dict[bytes, dict[bytes, None]] = {}  # incomplete parent -> waiting children
        self._missing: set[bytes] = set()  # referenced as a parent but not stored
        self._order = TotalOrder(self._key.__getitem__, self._parents.__getitem__)  # the complete ops
        # range fingerprints of the complete ops (``range_tree``): None until first asked for, then
        # kept current from ``_rfp_new``, the keys completed since the last call
        self._rfp: RangeTree | None = None
        self._rfp_new: list[SortKey] = []

    # ------------------------------------------------------------------ mutation

    def add(self, op_id: bytes, parents: tuple[bytes, ...], key: SortKey) -> list[bytes]:
        """Record a stored op; returns the ids that became complete (parent-first, Kahn order).

        Adding an id that is already present is a no-op (the first copy wins) and returns [].
        """
        if op_id in self._parents:
            return []
        parents = tuple(parents)
        self._parents[op_id] = parents
        self._key[op_id] = key
        self._missing.discard(op_id)
        unmet = 0
        for p in dict.fromkeys(parents):
            if p in self._gen:
                continue
            unmet += 1
            self._waiting.setdefault(p, {})[op_id] = None
            if p not in self._parents:
                self._missing.add(p)
        if unmet:
            self._unmet[op_id] = unmet
            return []
        return self._complete_from(op_id)

    def load(self, parents: dict[bytes, tuple[bytes, ...]], keys: dict[bytes, SortKey]) -> None:
        """Bulk ``add``: the state of adding every op of ``parents`` (in its order) with its key.

        For a store's open, which hands over every stored op at once; the dicts are kept,
        not copied (the caller must not change them), and each key ends with its op's id
        (a ``SortKey``). On an empty index all ops are completed and ordered in one pass
        (``TotalOrder.load``: one sweep in key order when that is Kahn's order, which it is
        when every parent sorts before its child). Adding them one by one costs several
        times more: rows arrive in id order, so most ops would first wait for their parent
        and be completed later. A non-empty index just adds them one by one.
        """
        if self._parents:
            if parents.keys() != keys.keys():
                raise ValueError("OpIndex.load: parents and keys must cover the same ops")
            for op_id, ps in parents.items():
                self.add(op_id, ps, keys[op_id])
            return
        bulk = TotalOrder.load(parents, keys)  # ValueError (nothing changed) for bad input
        self._parents = parents
        self._key = keys
        self._finish_load(bulk.order, bulk.gen, bulk.heads, bulk.waiting)

    def _finish_load(
        self, order: TotalOrder, gen: dict[bytes, int], heads: set[bytes], waiting: set[bytes]
    ) -> None:
        """Install a bulk load's results; the waiting ops get the bookkeeping ``add`` would have left.

        Children and positions are derived when first needed (``children``, a position
        query or an out-of-order ``add``), not during the open.
        """
        self._order = order
        self._gen = gen
        self._heads = heads
        self._children = None
        self._rfp = None
        self._rfp_new = []
        if not waiting:
            return
        for x in [x for x in self._parents if x in waiting]:  # arrival order, as ``add`` met them
            unmet = 0
            for p in dict.fromkeys(self._parents[x]):
                if p in gen:
                    continue
                unmet += 1
                self._waiting.setdefault(p, {})[x] = None
                if p not in self._parents:
                    self._missing.add(p)
            self._unmet[x] = unmet

    def _complete_from(self, root: bytes) -> list[bytes]:
        done: list[bytes] = []
        ready = [(self._key[root], root)]
        while ready:
            _, x = heapq.heappop(ready)
            self._mark_complete(x)
            done.append(x)
            for c in self._waiting.pop(x, {}):
                left = self._unmet[c] - 1
                if left:
                    self._unmet[c] = left
                else:
                    del self._unmet[c]
                    heapq.heappush(ready, (self._key[c], c))
        return done

    def _mark_complete(self, x: bytes) -> None:
        ps = self._parents[x]
        children = self._children
        g = 0
        for p in ps:
            gp = self._gen[p] + 1
            if gp > g:
                g = gp
            if children is not None:
                children.setdefault(p, []).append(x)
            self._heads.discard(p)
        self._gen[x] = g
        self._heads.add(x)
        self._order.add(x)
        if self._rfp is not None:
            self._rfp_new.append(self._key[x])

    def _children_map(self) -> dict[bytes, list[bytes]]:
        """Complete parent -> complete children (with multiplicity), derived on first use."""
        children = self._children
        if children is None:
            children = {}
            parents = self._parents
            for x in self._gen:
                for p in parents[x]:
                    ch = children.get(p)
                    if ch is None:
                        children[p] = [x]
                    else:
                        ch.append(x)
            self._children = children
        return children

    # ------------------------------------------------------------------ queries over stored ops

    def __len__(self) -> int:
        return len(self._parents)

    def contains(self, op_id: bytes) -> bool:
        return op_id in self._parents

    __contains__ = contains

    def parents(self, op_id: bytes) -> tuple[bytes, ...]:
        """The stored op's parents, in header order (KeyError when not stored)."""
        return self._parents[op_id]

    def key(self, op_id: bytes) -> SortKey:
        """The stored op's sort key (KeyError when not stored)."""
        return self._key[op_id]

    def missing_parents(self) -> set[bytes]:
        """Ids referenced as parents by stored ops but not stored themselves."""
        return set(self._missing)

    def pending_ids(self) -> list[bytes]:
        """Stored ops that are not complete, sorted by key."""
        return sorted((x for x in self._parents if x not in self._gen), key=self._key.__getitem__)

    # ------------------------------------------------------------------ queries over complete ops

    def is_complete(self, op_id: bytes) -> bool:
        return op_id in self._gen

    def complete_count(self) -> int:
        return len(self._gen)

    def gen(self, op_id: bytes) -> int:
        """``1 + max(gen(parents))``, 0 for roots (core §6); KeyError when not complete."""
        return self._gen[op_id]

    def children(self, op_id: bytes) -> tuple[bytes, ...]:
        """Complete children of a complete op, with multiplicity, by key (whatever order they arrived in)."""
        return tuple(sorted(self._children_map().get(op_id, ()), key=self._key.__getitem__))

    def heads(self, k: int) -> list[bytes]:
        """Complete ops without complete children, largest key first, at most ``k`` (store §1.7)."""
        if k <= 0:
            return []
        key = self._key.__getitem__
        return heapq.nlargest(k, self._heads, key=key)

    def head_count(self) -> int:
        return len(self._heads)

    def topo_ids(self) -> list[bytes]:
        """Kahn order of the complete ops, ready set ascending by key (store §1.6). A copy."""
        return list(self._order.ids())

    def position(self, op_id: bytes) -> int | None:
        """The 0-based position of a complete op in ``topo_ids()``, or None."""
        if op_id not in self._gen:
            return None
        return self._order.position(op_id)

    def positions(self) -> Mapping[bytes, int]:
        """Every complete op's 0-based position in ``topo_ids()`` (a live view: do not mutate)."""
        return self._order.positions()

    def topo_slice(self, start: int, stop: int | None = None) -> list[bytes]:
        """``topo_ids()[start:stop]`` without copying the whole order."""
        return self._order.ids()[start:stop]

    def range_tree(self) -> RangeTree:
        """The immutable range-fingerprint tree of the complete ops (``ecac.core.rangefp``).

        Built on the first call (one sort of the complete keys), then brought up to date with
        the keys completed since the previous call in one ``insert_many`` (path copying). The
        writer calls it for each snapshot; the tree it returns never changes, so readers on
        other threads use it without a lock.
        """
        tree = self._rfp
        if tree is None:
            key = self._key.__getitem__
            tree = RangeTree.from_sorted(sorted(map(key, self._gen)))
        elif self._rfp_new:
            tree = tree.insert_many(self._rfp_new)
        self._rfp = tree
        self._rfp_new = []
        return tree

    def recent_bloom(self, n: int) -> bytes:
        """16-bit bloom over the last ``n`` ids of the order (store §1.8)."""
        if n <= 0:
            return b"\x00\x00"
        return bloom16(self._order.ids()[-n:])
