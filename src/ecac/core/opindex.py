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
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

import blake3

#: the total-order key ``(hlc_ms, hlc_logical, hlc_node, op_id)`` (core §6)
SortKey = tuple[int, int, int, bytes]


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
        "_max_key",
        "_missing",
        "_parents",
        "_pos",
        "_topo",
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
        self._topo: list[bytes] | None = []
        self._pos: dict[bytes, int] | None = {}  # positions in _topo; None: derive on first use
        self._max_key: SortKey | None = None

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
        (a ``SortKey``). On an empty index all ops are completed in one pass, in key order
        when that is Kahn's order (``_complete_in_key_order``), else by a Kahn pass over all
        of them. Adding them one by one costs several times more: rows arrive in id order,
        so most ops would first wait for their parent and be completed later. A non-empty
        index just adds them one by one.
        """
        if parents.keys() != keys.keys():
            raise ValueError("OpIndex.load: parents and keys must cover the same ops")
        if self._parents:
            for op_id, ps in parents.items():
                self.add(op_id, ps, keys[op_id])
            return
        self._parents = parents
        self._key = keys
        try:
            if not self._complete_in_key_order():
                self._complete_by_kahn()
        except ValueError:
            self._parents, self._key = {}, {}
            raise

    def _complete_in_key_order(self) -> bool:
        """Complete the loaded ops in one sweep in key order; False (nothing set) if that is not Kahn's order.

        When every stored parent sorts before its child (the usual case: a child's HLC is
        later), the smallest unswept op has all its stored parents swept, so Kahn's ready
        set always offers it first and the key order of the complete ops is the topological
        order. An op is complete when each parent is (a missing parent excludes all its
        descendants). Meeting a stored parent that is not swept yet means a parent sorts
        after its child: the caller falls back to Kahn.
        """
        parents = self._parents
        gen: dict[bytes, int] = {}
        heads: set[bytes] = set()
        topo: list[bytes] = []
        waiting: set[bytes] = set()  # swept, not complete
        for k in sorted(self._key.values()):
            x = k[3]
            ps = parents[x]
            if len(ps) == 1:  # the bulk of a log: inlined
                p = ps[0]
                g = gen.get(p)
                if g is None:
                    if p in parents and p not in waiting:
                        return False
                    waiting.add(x)
                    continue
                gen[x] = g + 1
                heads.discard(p)
            elif ps:
                g = 0
                for p in ps:
                    gp = gen.get(p)
                    if gp is None:
                        if p in parents and p not in waiting:
                            return False
                        waiting.add(x)
                        break
                    if gp >= g:
                        g = gp + 1
                else:
                    gen[x] = g
                    heads.difference_update(ps)
                    heads.add(x)
                    topo.append(x)
                continue
            else:
                gen[x] = 0
            heads.add(x)
            topo.append(x)
        if len(gen) + len(waiting) != len(parents):
            raise ValueError("OpIndex.load: every key must end with its own op id")
        self._finish_load(gen, heads, topo, self._key[topo[-1]] if topo else None, waiting)
        return True

    def _complete_by_kahn(self) -> None:
        """Complete the loaded ops by Kahn over all of them (ready set by key); ops never ready wait."""
        parents = self._parents
        keys = self._key
        below: dict[bytes, list[bytes]] = {}  # stored op -> the stored ops naming it (once each)
        unmet: dict[bytes, int] = {}  # op -> distinct parents not complete yet
        ready: list[tuple[SortKey, bytes]] = []
        for x, ps in parents.items():
            distinct = dict.fromkeys(ps) if len(ps) > 1 else ps
            for p in distinct:
                if p in parents:
                    below.setdefault(p, []).append(x)
            if distinct:
                unmet[x] = len(distinct)
            else:
                ready.append((keys[x], x))
        heapq.heapify(ready)
        gen: dict[bytes, int] = {}
        heads: set[bytes] = set()
        topo: list[bytes] = []
        while ready:
            _, x = heapq.heappop(ready)
            g = 0
            for p in parents[x]:
                gp = gen[p] + 1
                if gp > g:
                    g = gp
                heads.discard(p)
            gen[x] = g
            heads.add(x)
            topo.append(x)
            for c in below.get(x, ()):
                left = unmet[c] - 1
                if left:
                    unmet[c] = left
                else:
                    del unmet[c]
                    heapq.heappush(ready, (keys[c], c))
        self._finish_load(gen, heads, topo, max(map(keys.__getitem__, topo), default=None), set(unmet))

    def _finish_load(
        self,
        gen: dict[bytes, int],
        heads: set[bytes],
        topo: list[bytes],
        max_key: SortKey | None,
        waiting: set[bytes],
    ) -> None:
        """Install a bulk load's results; the waiting ops get the bookkeeping ``add`` would have left.

        Children and positions are derived when first needed (a Kahn rebuild, ``children``,
        a position query or the next ``add``), not during the open.
        """
        self._gen = gen
        self._heads = heads
        self._topo = topo
        self._max_key = max_key
        self._children = None
        self._pos = None
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
        self._extend_topo(x)

    def _extend_topo(self, x: bytes) -> None:
        """Append ``x`` to the cached order when Kahn would place it last; else drop the cache.

        ``x`` has no complete children, and becomes ready right after its last parent.
        From then on it is popped before the first later op with a larger key, so it goes
        last exactly when its key exceeds every key after its last parent's position.
        """
        topo = self._topo
        if topo is None:
            return
        k = self._key[x]
        mk = self._max_key
        if mk is not None and k < mk:
            pos = self._positions()
            start = max((pos[p] for p in self._parents[x]), default=-1) + 1
            keys = self._key
            for i in range(len(topo) - 1, start - 1, -1):
                if keys[topo[i]] > k:
                    self._topo = None
                    self._pos = None
                    return
        else:
            self._max_key = k
        if self._pos is not None:
            self._pos[x] = len(topo)
        topo.append(x)

    def _positions(self) -> dict[bytes, int]:
        """Positions in the cached order (which must be present), derived on first use."""
        pos = self._pos
        if pos is None:
            topo = self._topo
            assert topo is not None
            pos = self._pos = dict(zip(topo, range(len(topo)), strict=True))
        return pos

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
        return list(self._order())

    def position(self, op_id: bytes) -> int | None:
        """The 0-based position of a complete op in ``topo_ids()``, or None."""
        if op_id not in self._gen:
            return None
        self._order()
        return self._positions()[op_id]

    def positions(self) -> Mapping[bytes, int]:
        """Every complete op's 0-based position in ``topo_ids()`` (a live view: do not mutate)."""
        self._order()
        return self._positions()

    def topo_slice(self, start: int, stop: int | None = None) -> list[bytes]:
        """``topo_ids()[start:stop]`` without copying the whole order."""
        return self._order()[start:stop]

    def recent_bloom(self, n: int) -> bytes:
        """16-bit bloom over the last ``n`` ids of the order (store §1.8)."""
        if n <= 0:
            return b"\x00\x00"
        order = self._order()
        return bloom16(order[-n:])

    def _order(self) -> list[bytes]:
        if self._topo is None:
            self._topo = self._kahn()
            self._pos = None
            self._max_key = max((self._key[x] for x in self._topo), default=None)
        return self._topo

    def _kahn(self) -> list[bytes]:
        keys = self._key
        indeg = {x: len(self._parents[x]) for x in self._gen}
        ready = [(keys[x], x) for x, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        out: list[bytes] = []
        children = self._children_map()
        while ready:
            _, x = heapq.heappop(ready)
            out.append(x)
            for c in children.get(x, ()):
                d = indeg[c] - 1
                indeg[c] = d
                if d == 0:
                    heapq.heappush(ready, (keys[c], c))
        return out
