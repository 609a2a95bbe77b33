"""The deterministic total order (core §6), maintained incrementally: the one implementation.

Both the in-memory ``Dag`` and the store's ``OpIndex`` keep their order in a ``TotalOrder``.
The order is Kahn's algorithm over the activated ops (every parent present) with the ready
set ascending by ``SortKey = (physical_ms, logical, node_id, op_id)``. Items are op ids; the
owner supplies each item's key and parents (with multiplicity) as two callables and feeds
ops with ``add`` once they are activated, parents before children. They are placed lazily,
at the next query (``ids``, ``position``, ``positions``, ``resolve``).

Why an increment is exact. Let ``O`` be the order of a closed set ``S`` and ``x`` a new op
whose parents are all in ``S``. Let ``j`` be one past the position of its last parent
(0 for a root) and ``f`` the first position ``>= j`` whose key is larger than ``x``'s
(``len(O)`` if none). In Kahn over ``S + {x}``, ``x`` is ready from step ``j`` on, and every
``O[t]`` with ``j <= t < f`` sorts before it, so ``O[:f]`` is unchanged; at step ``f`` it
sorts before ``O[f]``, the old minimum of the ready set, so it is placed there. ``x`` has no
children yet, so once it is placed the ready set is the old one again and Kahn goes on as
before: the new order is ``O`` with ``x`` inserted at ``f``. Ops are fed parents first, so
each new op is childless when it is placed: the common case (``f == len(O)``) is an O(1)
append, an out-of-order op a list insert at ``f`` plus shifting the positions after it.

For a batch ``F`` of new ops the same argument gives the first position that changes:
``i* = min f(r)`` over the *roots* of ``F`` (new ops whose parents are all placed). When
inserting one op at a time would shift more than a Kahn pass costs (many ops that sort
early), the order resumes Kahn at ``i*`` over ``O[i*:] + F`` instead: the cost scales with
the suffix after the first invalidated position, never with the whole order.

``f`` is found with block maxima: the keys by position (level 0) and, per level, the maximum
of each complete block of ``_BLOCK`` entries of the level below. A query scans at most one
block per level up, the unsummarised tail of each level, and one block per level down.
Keys are only kept once a query needs them: an order that only ever appends after the last
parent (a chain) never computes one, and bulk appends do not either. Until then queries scan
the unkeyed range directly, until those scans add up to the cost of keying the whole order,
which then happens once; from then on every placed op's key is kept.

Bulk loads (a store's open) use ``TotalOrder.load``: where sorting by key is a topological
order it *is* Kahn's order (the smallest unplaced key then always has its parents placed, so
it is ready and the smallest ready), found in one sweep; the ops it cannot place (a stored
parent sorting after its child) are fed to the incremental path above. Tests check both
(and ``sweep=False``: everything through the incremental path) against a from-scratch Kahn.

``kahn_order`` is store §1.6's algorithm written out plainly and sharing no code with
``TotalOrder``: the integrity checks (``verify-store``, ``replay-from-store --verify-sigs``)
recompute the order with it and compare.

Pure: no I/O, no clock, no randomness, no global state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush

#: the total-order key ``(hlc_ms, hlc_logical, hlc_node, op_id)`` (core §6)
SortKey = tuple[int, int, int, bytes]

_BLOCK = 64  # entries per block of the maxima levels (a power of two)
_BLOCK_MASK = _BLOCK - 1
_SCAN_MAX = 256  # a lagging range longer than this is caught up instead of scanned
# cost model of ``resolve`` in units of one shifted position (measured: ~0.25 µs, a random dict
# write): an insert's fixed part, and one op placed by a Kahn pass (~3.5 µs)
_INSERT_COST = 32
_KAHN_COST = 16
_BATCH_MIN = 64  # fewer ops than this left to place: keep inserting


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """The result of ``TotalOrder.load``: the order and what the same pass learnt of the DAG.

    ``gen`` maps every complete op to its generation (``1 + max`` over its parents, 0 for
    roots; core §6), ``heads`` are the complete ops without complete children, ``waiting``
    the stored ops that are not complete (an ancestor is missing).
    """

    order: TotalOrder
    gen: dict[bytes, int]
    heads: set[bytes]
    waiting: set[bytes]


class TotalOrder:
    """The Kahn order of a growing set of activated ops, kept incrementally (module docstring).

    ``key(x)`` and ``parents(x)`` must answer for every op added so far (parents with
    multiplicity, as in the header); ``children(x)``, optional, the added ops naming ``x``,
    once per entry (without it a resumed Kahn derives them from ``parents``). The owner
    adds each op once, after its parents.
    Lists returned by ``ids`` are the live order: read them, never change them, and do not
    keep them across an ``add`` (take a copy).
    """

    __slots__ = (
        "_children",
        "_fresh",
        "_ids",
        "_key",
        "_kmax",
        "_levels",
        "_parents",
        "_pos",
        "_scanned",
        "_shared",
    )

    def __init__(
        self,
        key: Callable[[bytes], SortKey],
        parents: Callable[[bytes], Sequence[bytes]],
        children: Callable[[bytes], Iterable[bytes] | None] | None = None,
    ) -> None:
        """``children(x)``, if given, lists the added ops naming ``x`` once per entry (or None)."""
        self._key = key
        self._parents = parents
        self._children = children
        self._ids: list[bytes] = []
        self._pos: dict[bytes, int] | None = {}  # None: derived from _ids on first use
        self._shared = False  # _pos was handed out by ``positions``: copy it before moving an entry
        self._fresh: list[bytes] = []  # added, not placed yet (activation order)
        # _levels[0][t] = key of _ids[t] for t < len(_levels[0]) (may lag behind _ids);
        # _levels[h + 1][b] = max(_levels[h][b * _BLOCK : (b + 1) * _BLOCK]) for complete blocks
        self._levels: list[list[SortKey]] = [[]]
        self._kmax: SortKey | None = None  # max of _levels[0]
        self._scanned = 0  # unkeyed positions scanned by queries since level 0 last caught up

    # ------------------------------------------------------------------ feeding

    def add(self, x: bytes) -> None:
        """Add an activated op (its parents were added before); it is placed at the next query."""
        self._fresh.append(x)

    def add_many(self, xs: Iterable[bytes]) -> None:
        """``add`` each op, in the order given (parents before children)."""
        self._fresh.extend(xs)

    def extend_trusted(self, xs: Sequence[bytes]) -> None:
        """Append ops that are known to continue the order (e.g. a sweep proved it), without checks.

        For sources that have already computed exactly this order. Nothing may be waiting
        to be placed. Keys are not computed (the maxima catch up when a query needs them).
        """
        if self._fresh:
            raise ValueError("extend_trusted: resolve the ops already added first")
        ids = self._ids
        start = len(ids)
        ids.extend(xs)
        pos = self._pos
        if pos is not None:
            if len(xs) > _SCAN_MAX:
                self._pos = None  # cheaper to derive once when first needed
                self._shared = False
            else:
                for i, x in enumerate(xs, start):
                    pos[x] = i

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Ops added so far (placed or not)."""
        return len(self._ids) + len(self._fresh)

    def ids(self) -> list[bytes]:
        """The order (the live list: do not mutate it or keep it across an ``add``)."""
        if self._fresh:
            self.resolve()
        return self._ids

    def position(self, x: bytes) -> int:
        """0-based position of an added op; KeyError if it was never added."""
        if self._fresh:
            self.resolve()
        return self._positions()[x]

    def positions(self) -> Mapping[bytes, int]:
        """Every op's position (do not mutate it).

        The map may gain the positions of ops appended later, but an entry it holds never
        changes: an insert or a resumed Kahn that moves ops works on a copy. So a reader
        holding it together with a copy of ``ids()`` keeps a consistent pair.
        """
        if self._fresh:
            self.resolve()
        self._shared = True
        return self._positions()

    def _movable_positions(self) -> dict[bytes, int]:
        """The positions map, copied first if ``positions`` handed it out."""
        pos = self._positions()
        if self._shared:
            pos = self._pos = dict(pos)
            self._shared = False
        return pos

    def _positions(self) -> dict[bytes, int]:
        pos = self._pos
        if pos is None:
            ids = self._ids
            pos = self._pos = dict(zip(ids, range(len(ids)), strict=True))
        return pos

    # ------------------------------------------------------------------ placing

    def resolve(self) -> int | None:
        """Place the added ops; returns the first position that changed (None: nothing to place).

        Each op in turn is appended or inserted where Kahn puts it (module docstring). When
        the work spent on inserts would exceed the cost of one Kahn pass over the rest,
        Kahn resumes once from the first invalidated position instead.
        """
        fresh = self._fresh
        if not fresh:
            return None
        self._fresh = []
        ids = self._ids
        changed = len(ids)
        pos = self._positions()
        key = self._key
        parents = self._parents
        lv0 = self._levels[0]
        kmax = self._kmax  # a local copy: written back before any method that reads it
        spent = 0
        for t, x in enumerate(fresh):
            n = len(ids)
            if n and len(lv0) == n:  # keys kept: an op sorting after every key goes last
                k = key(x)
                if kmax is not None and k < kmax:
                    j = 0
                    for p in parents(x):
                        q = pos[p]
                        if q >= j:
                            j = q + 1
                    if j < n:
                        self._kmax = kmax
                        f = self._first_above(j, k, n)
                        if f < n:
                            spent += _INSERT_COST + n - f
                            if _kahn_pays(spent, n - f, len(fresh) - t, t):
                                return min(changed, self._resume_batch(fresh[t:]))
                            self._insert(f, x, k)
                            pos = self._positions()  # the insert may have copied it
                            if f < changed:
                                changed = f
                            kmax = self._kmax
                            continue
                else:
                    kmax = k
                pos[x] = n
                ids.append(x)
                lv0.append(k)
                if not n + 1 & _BLOCK_MASK:
                    self._summarise()
                continue
            j = 0
            for p in parents(x):
                q = pos[p]
                if q >= j:
                    j = q + 1
            if j < n:
                self._kmax = kmax
                k = key(x)
                f = self._first_above(j, k, n)
                kmax = self._kmax
                if f < n:
                    spent += _INSERT_COST + n - f
                    if _kahn_pays(spent, n - f, len(fresh) - t, t):
                        return min(changed, self._resume_batch(fresh[t:]))
                    self._insert(f, x, k)
                    pos = self._positions()  # the insert may have copied it
                    if f < changed:
                        changed = f
                    kmax = self._kmax
                    continue
                if len(lv0) == n:  # the query keyed the whole order
                    pos[x] = n
                    ids.append(x)
                    lv0.append(k)
                    if kmax is None or k > kmax:
                        kmax = k
                    if not n + 1 & _BLOCK_MASK:
                        self._summarise()
                    continue
            pos[x] = n  # after its last parent and every key in between: last (keys not kept)
            ids.append(x)
        self._kmax = kmax
        return changed

    def _insert(self, f: int, x: bytes, k: SortKey) -> None:
        """Put the childless op ``x`` at position ``f`` (the rest of the order keeps its sequence)."""
        ids = self._ids
        pos = self._movable_positions()
        ids.insert(f, x)
        pos.update(zip(ids[f:], range(f, len(ids)), strict=True))
        lv0 = self._levels[0]
        if f <= len(lv0):
            lv0.insert(f, k)
            if self._kmax is None or k > self._kmax:
                self._kmax = k
            self._rebuild_levels(f)

    def _resume_batch(self, fresh: list[bytes]) -> int:
        """Place ``fresh`` (activation order) by resuming Kahn at the first position they change."""
        ids = self._ids
        if len(ids) * 4 < len(fresh):  # finding where they start costs more than re-placing the order
            old = list(ids)  # small next to the batch: report the first position that really changed
            self._resume(0, fresh)
            changed = first_difference(old, self._ids)
            return len(old) if changed is None else changed
        pos = self._positions()
        key = self._key
        parents = self._parents
        best = len(ids)
        for x in fresh:
            j = 0
            for p in parents(x):
                q = pos.get(p)
                if q is None:  # a new parent: x is not a root of the batch
                    break
                if q >= j:
                    j = q + 1
            else:
                best = self._first_above(j, key(x), best)
        self._resume(best, fresh)
        return best

    def _resume(self, start: int, fresh: list[bytes]) -> None:
        """Kahn from position ``start`` over ``ids[start:] + fresh``; ``ids[:start]`` is kept.

        In-degrees count the parent entries (with multiplicity) that are not in the kept
        prefix; each such parent lists the child once per entry (the owner's ``children``,
        or a map built here), so the counts agree. The keys of the new suffix are not kept
        (a query that needs them keys the order again), so a large pass allocates little
        that outlives it.
        """
        ids = self._ids
        pos = self._movable_positions()
        key = self._key
        parents = self._parents
        tail = ids[start:]
        del ids[start:]
        for x in tail:
            del pos[x]
        self._truncate_levels(start)
        tail.extend(fresh)
        deg: dict[bytes, int] = {}
        ready: list[tuple[SortKey, bytes]] = []
        below_of = self._children
        if below_of is None:
            kids: dict[bytes, list[bytes]] = {}
            below_of = kids.get
            for x in tail:
                d = 0
                for p in parents(x):
                    if p not in pos:
                        d += 1
                        lst = kids.get(p)
                        if lst is None:
                            kids[p] = [x]
                        else:
                            lst.append(x)
                if d:
                    deg[x] = d
                else:
                    ready.append((key(x), x))
        else:
            for x in tail:
                d = 0
                for p in parents(x):
                    if p not in pos:
                        d += 1
                if d:
                    deg[x] = d
                else:
                    ready.append((key(x), x))
        heapify(ready)
        place = ids.append
        none: tuple[bytes, ...] = ()
        while ready:
            x = heappop(ready)[1]
            place(x)
            for c in below_of(x) or none:
                d = deg[c] - 1
                deg[c] = d
                if not d:
                    heappush(ready, (key(c), c))
        if len(ids) - start != len(tail):  # cannot happen for activated ops: they form a closed DAG
            raise AssertionError(f"total order: {start + len(tail) - len(ids)} ops never became ready")
        pos.update(zip(ids[start:], range(start, len(ids)), strict=True))

    # ------------------------------------------------------------------ block maxima

    def _first_above(self, j: int, k: SortKey, limit: int) -> int:
        """The first position in ``[j, limit)`` whose key is larger than ``k``, else ``limit``."""
        if j >= limit:
            return limit
        cov = len(self._levels[0])
        scan = limit - max(j, cov)
        if scan > 0:  # unkeyed positions to scan: key the whole order once that costs less in total
            self._scanned += scan
            if scan > _SCAN_MAX or self._scanned > len(self._ids) - cov:
                self._cover()
                cov = len(self._levels[0])
        if j < cov:
            t = self._levels_first_above(j, k)
            if t < cov:
                return min(t, limit)
        key = self._key
        ids = self._ids
        for t in range(max(j, cov), limit):
            if key(ids[t]) > k:
                return t
        return limit

    def _levels_first_above(self, j: int, k: SortKey) -> int:
        """The first position ``>= j`` among the keyed ones whose key exceeds ``k`` (or their count)."""
        levels = self._levels
        lv0 = levels[0]
        cov = len(lv0)
        kmax = self._kmax
        if j >= cov or kmax is None or not k < kmax:
            return cov
        top = len(levels) - 1
        h = 0
        i = j
        while True:  # up: the rest of i's block on each level, then the next level's next block
            arr = levels[h]
            end = len(arr) if h == top else min(len(arr), (i // _BLOCK + 1) * _BLOCK)
            if i < end and max(arr[i:end]) > k:
                return self._descend(h, _first_in(arr, i, end, k), k)
            if end >= len(arr):
                break
            i = end // _BLOCK
            h += 1
        for g in range(h - 1, -1, -1):  # the tail of each lower level that no block above covers
            arr = levels[g]
            lo = len(levels[g + 1]) * _BLOCK
            if lo < len(arr) and max(arr[lo:]) > k:
                return self._descend(g, _first_in(arr, lo, len(arr), k), k)
        return cov

    def _descend(self, h: int, t: int, k: SortKey) -> int:
        levels = self._levels
        while h:
            h -= 1
            lo = t * _BLOCK
            t = _first_in(levels[h], lo, lo + _BLOCK, k)
        return t

    def _summarise(self) -> None:
        """Level 0 just completed a block: add its maximum above (and so on up the levels)."""
        levels = self._levels
        arr = levels[0]
        h = 0
        while not len(arr) & _BLOCK_MASK:
            if h + 1 == len(levels):
                levels.append([])
            up = levels[h + 1]
            up.append(max(arr[-_BLOCK:]))
            h += 1
            arr = up

    def _cover(self) -> None:
        """Key every position of the order (level 0 catches up) and complete the blocks above."""
        self._scanned = 0
        lv0 = self._levels[0]
        start = len(lv0)
        lv0.extend(map(self._key, self._ids[start:]))
        if len(lv0) > start:
            m = max(lv0[start:])
            if self._kmax is None or m > self._kmax:
                self._kmax = m
        self._rebuild_levels(start)

    def _rebuild_levels(self, start: int) -> None:
        """Recompute every block maximum that covers a level-0 position ``>= start``."""
        levels = self._levels
        h = 0
        b = start // _BLOCK
        while True:
            arr = levels[h]
            complete = len(arr) // _BLOCK
            if h + 1 == len(levels):
                if complete == 0:
                    return
                levels.append([])
            up = levels[h + 1]
            del up[b:]
            for i in range(len(up), complete):
                up.append(max(arr[i * _BLOCK : (i + 1) * _BLOCK]))
            h += 1
            b //= _BLOCK

    def _truncate_levels(self, n: int) -> None:
        """Forget the keys of positions ``>= n`` and every block that covered one of them."""
        levels = self._levels
        if len(levels[0]) <= n:
            return
        for arr in levels:
            del arr[n:]
            n //= _BLOCK
        while len(levels) > 1 and not levels[-1]:
            levels.pop()
        best: SortKey | None = None
        for h, arr in enumerate(levels):  # each level's part that no block above summarises
            lo = len(levels[h + 1]) * _BLOCK if h + 1 < len(levels) else 0
            if lo < len(arr):
                m = max(arr[lo:])
                if best is None or m > best:
                    best = m
        self._kmax = best

    # ------------------------------------------------------------------ bulk

    @classmethod
    def load(
        cls,
        parents: Mapping[bytes, tuple[bytes, ...]],
        keys: Mapping[bytes, SortKey],
        *,
        sweep: bool = True,
    ) -> BulkLoad:
        """The order of every op of ``parents`` whose ancestors are all in it, and that pass's DAG facts.

        ``keys[x]`` must end with ``x`` (ValueError otherwise). With ``sweep`` (a store's open)
        one pass in key order places every op whose stored ancestors all sort before it (all
        of them, usually: a child's HLC is later); the others are activated smallest key first
        and fed to the incremental order. Without ``sweep`` every op takes the incremental
        path, fed in a last-in-first-out work list's sequence (parents first, otherwise
        unrelated to the keys): the tests' cross-check of the two paths. The mappings are
        read, never changed; the order keeps ``parents.__getitem__`` and ``keys.__getitem__``.
        """
        if parents.keys() != keys.keys():
            raise ValueError("TotalOrder.load: parents and keys must cover the same ops")
        order = cls(keys.__getitem__, parents.__getitem__)
        gen: dict[bytes, int] = {}
        heads: set[bytes] = set()
        waiting: set[bytes] = set()
        if sweep:
            topo, later = _sweep_in_key_order(parents, keys, gen, heads, waiting)
            order.extend_trusted(topo)
        else:
            if any(k[3] != x for x, k in keys.items()):
                raise ValueError("TotalOrder.load: every key must end with its own op id")
            later = list(parents)
        if later:
            order.add_many(_activate(parents, later, gen, heads, waiting, keys if sweep else None))
            order.resolve()
        return BulkLoad(order, gen, heads, waiting)


def _kahn_pays(spent: int, shift: int, left: int, done: int) -> bool:
    """Whether ``resolve`` should stop inserting and resume Kahn for the ``left`` ops still to place.

    ``spent`` is the cost of the inserts so far, this one included, and ``shift`` the
    positions this one would move. Kahn is chosen once the inserts cost more than the pass
    would (so the inserts never cost more than twice the cheaper way), or once many ops are
    left and a quarter of those placed so far needed an insert (a batch out of key order).
    """
    if spent > _KAHN_COST * (shift + left):
        return True
    return left > _BATCH_MIN and spent > _INSERT_COST * (done + _BATCH_MIN) // 4


def _first_in(arr: list[SortKey], lo: int, hi: int, k: SortKey) -> int:
    hi = min(hi, len(arr))
    for i in range(lo, hi):
        if arr[i] > k:
            return i
    return hi


def _sweep_in_key_order(
    parents: Mapping[bytes, tuple[bytes, ...]],
    keys: Mapping[bytes, SortKey],
    gen: dict[bytes, int],
    heads: set[bytes],
    waiting: set[bytes],
) -> tuple[list[bytes], list[bytes]]:
    """One sweep in key order: ``(order, later)``; fills ``gen``, ``heads`` and ``waiting``.

    An op all of whose parents are complete when the sweep reaches it is the smallest op
    not yet placed, and every op it depends on is placed: it is ready and the smallest
    ready op, so the swept complete ops, in key order, are Kahn's order of themselves (a
    set closed under parents). An op with a missing or waiting parent waits. An op meeting
    a stored parent that is not complete yet (it sorts after its child, or was itself left
    for later) is left for later, in key order, with everything that depends on it.
    """
    topo: list[bytes] = []
    later: list[bytes] = []
    try:
        for k in sorted(keys.values()):
            x = k[3]
            ps = parents[x]
            if len(ps) == 1:  # the bulk of a log: inlined
                p = ps[0]
                g = gen.get(p)
                if g is None:
                    if p in parents and p not in waiting:
                        later.append(x)
                    else:
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
                            later.append(x)
                        else:
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
    except KeyError:
        raise ValueError("TotalOrder.load: every key must end with its own op id") from None
    if len(gen) + len(waiting) + len(later) != len(parents):
        raise ValueError("TotalOrder.load: every key must end with its own op id")
    return topo, later


def _activate(
    parents: Mapping[bytes, tuple[bytes, ...]],
    todo: list[bytes],
    gen: dict[bytes, int],
    heads: set[bytes],
    waiting: set[bytes],
    keys: Mapping[bytes, SortKey] | None = None,
) -> list[bytes]:
    """Activate the ops of ``todo`` whose ancestors are all complete; returns them parents first.

    A work list: an op is activated once every distinct parent is complete (already in
    ``gen``, or activated here). With ``keys`` the ready op with the smallest key goes next
    (a sequence close to the order, so that placing it mostly appends), else the last one
    that became ready. ``gen`` and ``heads`` are extended; ops never activated join ``waiting``.
    """
    pending: Mapping[bytes, object] | set[bytes] = parents if len(todo) == len(parents) else set(todo)
    below: dict[bytes, bytes | list[bytes]] = {}  # op of todo -> the ops of todo naming it (once each)
    unmet: dict[bytes, int] = {}  # op -> distinct parents not complete yet (missing ones included)
    ready: list[bytes] = []
    for x in todo:
        ps = parents[x]
        n = 0
        for p in dict.fromkeys(ps) if len(ps) > 1 else ps:
            if p in gen:
                continue
            n += 1
            if p in pending:
                lst = below.get(p)
                if lst is None:
                    below[p] = x  # one child: no list (the usual case)
                elif isinstance(lst, bytes):
                    below[p] = [lst, x]
                else:
                    lst.append(x)
        if n:
            unmet[x] = n
        else:
            ready.append(x)
    activated: list[bytes] = []
    if keys is None:
        work = ready
        take: Callable[[], bytes] = work.pop
        put: Callable[[bytes], None] = work.append
    else:
        heap = [(keys[x], x) for x in ready]
        heapify(heap)

        def take() -> bytes:
            return heappop(heap)[1]

        def put(x: bytes) -> None:
            heappush(heap, (keys[x], x))

        work = heap  # type: ignore[assignment]
    while work:
        x = take()
        g = 0
        for p in parents[x]:
            gp = gen[p] + 1
            if gp > g:
                g = gp
            heads.discard(p)
        gen[x] = g
        heads.add(x)
        activated.append(x)
        cs = below.get(x)
        if cs is None:
            continue
        for c in (cs,) if isinstance(cs, bytes) else cs:
            left = unmet[c] - 1
            if left:
                unmet[c] = left
            else:
                del unmet[c]
                put(c)
    waiting.update(unmet)
    return activated


def kahn_order(parents: Mapping[bytes, tuple[bytes, ...]], keys: Mapping[bytes, SortKey]) -> list[bytes]:
    """The order of the complete ops computed from scratch, exactly as store §1.6 spells it out.

    The independent check of ``TotalOrder`` (``verify-store``, ``replay-from-store
    --verify-sigs``): in-degree = number of parent entries, missing ones included; each
    stored parent lists its child once per entry; Kahn with the ready set ascending by key.
    An op with a missing ancestor never becomes ready. Shares no code with ``TotalOrder``.
    """
    indeg: dict[bytes, int] = {}
    children: dict[bytes, list[bytes]] = {}
    ready: list[tuple[SortKey, bytes]] = []
    for x, ps in parents.items():
        if ps:
            indeg[x] = len(ps)
            for p in ps:
                if p in parents:
                    lst = children.get(p)
                    if lst is None:
                        children[p] = [x]
                    else:
                        lst.append(x)
        else:
            ready.append((keys[x], x))
    heapify(ready)
    out: list[bytes] = []
    while ready:
        x = heappop(ready)[1]
        out.append(x)
        for c in children.get(x, ()):
            d = indeg[c] - 1
            indeg[c] = d
            if not d:
                heappush(ready, (keys[c], c))
    return out


def first_difference(a: Sequence[bytes], b: Sequence[bytes]) -> int | None:
    """The first position where two orders differ (a missing entry counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
