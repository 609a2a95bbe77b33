"""Range fingerprints over the sorted keys of complete ops: a persistent B-tree of summed ids.

Range-based set reconciliation (``ecac.sync.reconcile``) compares *fingerprints* of ranges of
the sorted set of keys ``(physical_ms, logical, node_id, op_id)`` (core §6's ``SortKey``) of
the complete ops two nodes hold. The fingerprint must be order-independent (it depends on the
set only) and cheap to keep current, so it is built from an additive sum:

    value(op_id)      = op_id read as a 256-bit little-endian integer (an op id is already BLAKE3)
    sum(S)            = Σ value mod 2^256, kept per tree node
    fp(S, salt)       = BLAKE3("ECAC_RBSR_FP_V2" ‖ salt ‖ LE256(sum(S)) ‖ LE64(|S|))[:4]
    total_fp(S)       = BLAKE3("ECAC_RBSR_TOTAL_V1" ‖ LE256(sum(S)) ‖ LE64(|S|))[:16]

Sums commute, so every node computes the same fingerprint for the same set whatever order
the ops arrived in; the count makes a sum collision across set sizes useless. A range
fingerprint is short (4 bytes: two different sets of a range look equal with probability
2^-32) because a session sends thousands of them; it is *salted* by the session, so a
collision is not repeated by the next session, and it is a hash of the sum (not the sum), so a
collision found for one range carries over to no other. ``total_fp`` (16 bytes, 2^-128) is
sent once per side and session: it checks the session's result (see ``ecac.sync.reconcile``).
The reconciler *decodes* a range that differs by one key by trying each of its keys
(``fingerprint_of(sum - value(k), count - 1, salt)``).

``RangeTree`` is an **immutable** B-tree (at most ``NODE_MAX`` entries per node) whose inner
nodes keep, per child, its largest key and the cumulative counts and sums of the children up
to it. Queries are by *rank* (position in key order): ``rank(bound)`` (keys below a bound),
``key_at(i)``, ``fingerprint(lo, hi, salt)`` over ranks ``[lo, hi)`` and ``keys(lo, hi)``, each
O(log n) (plus the keys returned). ``insert_many`` returns a **new** tree sharing every
untouched node with the old one (path copying): O(k log n) for k keys, one path for a batch
appended at the end (the common case: new ops have the newest HLCs). So the store's writer
builds a new root per commit and publishes it in the ``StoreSnapshot``; readers on other
threads query the root they hold without any lock, and it never changes under them.

Pure: no I/O, no clock, no randomness, no global mutable state.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import TypeVar

import blake3

from ecac.core.order import SortKey

__all__ = [
    "FP_LEN",
    "NODE_MAX",
    "TOTAL_FP_LEN",
    "Bound",
    "RangeTree",
    "fingerprint_of",
    "id_value",
    "naive_fingerprint",
    "total_fingerprint",
]

#: bytes of a range fingerprint
FP_LEN = 4
#: bytes of the fingerprint of a whole set (one per side and session)
TOTAL_FP_LEN = 16
#: entries (keys of a leaf, children of an inner node) per tree node at most
NODE_MAX = 64
_MOD_MASK = (1 << 256) - 1
_DOMAIN = b"ECAC_RBSR_FP_V2"
_TOTAL_DOMAIN = b"ECAC_RBSR_TOTAL_V1"
_T = TypeVar("_T")

#: a position in key space: ``(physical_ms, logical, node_id, op-id prefix)``; it compares with
#: ``SortKey`` tuples, and a prefix shorter than 32 bytes sorts before every id extending it
Bound = tuple[int, int, int, bytes]


def id_value(op_id: bytes) -> int:
    """The summand of one op: its 32-byte id as a little-endian integer."""
    return int.from_bytes(op_id, "little")


def fingerprint_of(total: int, count: int, salt: bytes = b"") -> bytes:
    """The 4-byte fingerprint of a set with id sum ``total`` (mod 2^256) and ``count`` elements."""
    data = _DOMAIN + salt + (total & _MOD_MASK).to_bytes(32, "little") + count.to_bytes(8, "little")
    return blake3.blake3(data).digest(length=FP_LEN)


def total_fingerprint(total: int, count: int) -> bytes:
    """The 16-byte fingerprint of a whole set (id sum ``total``, ``count`` elements)."""
    data = _TOTAL_DOMAIN + (total & _MOD_MASK).to_bytes(32, "little") + count.to_bytes(8, "little")
    return blake3.blake3(data).digest(length=TOTAL_FP_LEN)


def naive_fingerprint(op_ids: Iterable[bytes], salt: bytes = b"") -> bytes:
    """The fingerprint of a set of ids computed directly (tests, and the definition)."""
    total = 0
    n = 0
    for x in op_ids:
        total += id_value(x)
        n += 1
    return fingerprint_of(total, n, salt)


# --------------------------------------------------------------------------- nodes


class _Leaf:
    """Sorted keys; ``total`` = sum of their values mod 2^256. Never changed after construction."""

    __slots__ = ("count", "keys", "max_key", "total")

    def __init__(self, keys: tuple[SortKey, ...], total: int | None = None) -> None:
        self.keys = keys
        self.count = len(keys)
        self.max_key = keys[-1]
        self.total = (sum(id_value(k[3]) for k in keys) if total is None else total) & _MOD_MASK


class _Inner:
    """Children with their largest keys and cumulative counts / sums. Never changed after construction."""

    __slots__ = ("children", "count", "ends", "max_key", "maxkeys", "sums", "total")
    count: int
    total: int
    max_key: SortKey

    def __init__(self, children: tuple[_Node, ...]) -> None:
        self.children = children
        self.maxkeys: tuple[SortKey, ...] = tuple(c.max_key for c in children)
        self.ends: tuple[int, ...] = tuple(accumulate(c.count for c in children))
        self.sums: tuple[int, ...] = tuple(accumulate(c.total for c in children))
        self.count = self.ends[-1]
        self.total = self.sums[-1] & _MOD_MASK
        self.max_key = self.maxkeys[-1]

    def replaced(self, i: int, child: _Node) -> _Inner:
        """This node with child ``i`` replaced by ``child`` (cheap when ``i`` is the last child)."""
        old = self.children[i]
        dc = child.count - old.count
        ds = child.total - old.total
        new = object.__new__(_Inner)
        new.children = (*self.children[:i], child, *self.children[i + 1 :])
        new.maxkeys = (*self.maxkeys[:i], child.max_key, *self.maxkeys[i + 1 :])
        new.ends = self.ends[:i] + tuple(e + dc for e in self.ends[i:])
        new.sums = self.sums[:i] + tuple(x + ds for x in self.sums[i:])
        new.count = new.ends[-1]
        new.total = new.sums[-1] & _MOD_MASK
        new.max_key = new.maxkeys[-1]
        return new


_Node = _Leaf | _Inner


def _chunks(n: int, appended: bool) -> list[int]:
    """Sizes of the nodes ``n`` > NODE_MAX entries are cut into: full ones when they were appended
    at the end (later appends fill the last one), else even ones (room on both sides)."""
    if n <= NODE_MAX:
        return [n]
    if appended:
        full, rest = divmod(n, NODE_MAX)
        return [NODE_MAX] * full + ([rest] if rest else [])
    parts = -(-n // NODE_MAX)
    base, extra = divmod(n, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def _cut(items: Sequence[_T], sizes: list[int]) -> list[tuple[_T, ...]]:
    out: list[tuple[_T, ...]] = []
    pos = 0
    for s in sizes:
        out.append(tuple(items[pos : pos + s]))
        pos += s
    return out


def _build_level(nodes: list[_Node]) -> _Node:
    while len(nodes) > 1:
        nodes = [_Inner(tuple(g)) for g in _cut(nodes, _chunks(len(nodes), True))]
    return nodes[0]


def _insert(node: _Node, keys: list[SortKey]) -> list[_Node]:
    """``node`` with ``keys`` (sorted, not present) added: one node, or several after a split."""
    if isinstance(node, _Leaf):
        appended = keys[0] > node.max_key
        merged = node.keys + tuple(keys) if appended else tuple(sorted(node.keys + tuple(keys)))
        if len(merged) <= NODE_MAX:
            return [_Leaf(merged, node.total + sum(id_value(k[3]) for k in keys))]
        return [_Leaf(g) for g in _cut(merged, _chunks(len(merged), appended))]
    children = node.children
    maxkeys = node.maxkeys
    last = len(children) - 1
    n = len(keys)
    appended = keys[0] > node.max_key
    out: list[_Node]
    first = min(bisect_left(maxkeys, keys[0]), last)
    if first == last or bisect_right(keys, maxkeys[first]) == n:  # one child takes them all
        parts = _insert(children[first], keys)
        if len(parts) == 1:
            return [node.replaced(first, parts[0])]
        out = [*children[:first], *parts, *children[first + 1 :]]
    else:
        out = list(children[:first])
        start = 0
        for i in range(first, last + 1):
            stop = n if i == last else bisect_right(keys, maxkeys[i], start)
            if stop > start:
                out.extend(_insert(children[i], keys[start:stop]))
                start = stop
            else:
                out.append(children[i])
            if start >= n:
                out.extend(children[i + 1 :])
                break
    if len(out) <= NODE_MAX:
        return [_Inner(tuple(out))]
    return [_Inner(g) for g in _cut(out, _chunks(len(out), appended))]


# --------------------------------------------------------------------------- the tree


class RangeTree:
    """An immutable set of ``SortKey``s with O(log n) rank, select and range fingerprints."""

    __slots__ = ("_root",)

    def __init__(self, root: _Node | None = None) -> None:
        self._root = root

    @staticmethod
    def from_sorted(keys: Sequence[SortKey]) -> RangeTree:
        """The tree of ``keys`` (ascending, distinct: not checked beyond a cheap assertion of order)."""
        if not keys:
            return EMPTY
        leaves: list[_Node] = [_Leaf(g) for g in _cut(keys, _chunks(len(keys), True))]
        return RangeTree(_build_level(leaves))

    @staticmethod
    def from_keys(keys: Iterable[SortKey]) -> RangeTree:
        """The tree of ``keys`` in any order (duplicates collapse)."""
        return RangeTree.from_sorted(sorted(set(keys)))

    def insert_many(self, keys: Iterable[SortKey]) -> RangeTree:
        """A new tree with ``keys`` added (keys already present are ignored); ``self`` is unchanged."""
        ks = sorted(set(keys))
        if not ks:
            return self
        root = self._root
        if root is None:
            return RangeTree.from_sorted(ks)
        ks = [k for k in ks if not self.contains(k)]
        if not ks:
            return self
        return RangeTree(_build_level(_insert(root, ks)))

    def __len__(self) -> int:
        return 0 if self._root is None else self._root.count

    def contains(self, key: SortKey) -> bool:
        i = self.rank(key)
        return i < len(self) and self.key_at(i) == key

    def rank(self, bound: Bound | SortKey | None) -> int:
        """The number of keys sorting before ``bound`` (None: +infinity, i.e. every key)."""
        node = self._root
        if node is None:
            return 0
        if bound is None:
            return node.count
        acc = 0
        while isinstance(node, _Inner):
            i = bisect_left(node.maxkeys, bound)
            if i == len(node.children):
                return acc + node.count
            if i:
                acc += node.ends[i - 1]
            node = node.children[i]
        return acc + bisect_left(node.keys, bound)

    def key_at(self, i: int) -> SortKey:
        """The key of rank ``i`` (IndexError outside ``[0, len)``)."""
        node = self._root
        if node is None or not 0 <= i < node.count:
            raise IndexError(f"rank {i} outside the tree's {len(self)} keys")
        while isinstance(node, _Inner):
            j = bisect_right(node.ends, i)
            if j:
                i -= node.ends[j - 1]
            node = node.children[j]
        return node.keys[i]

    def _prefix_sum(self, r: int) -> int:
        """Sum of the values of the ``r`` smallest keys (not reduced)."""
        node = self._root
        acc = 0
        if node is None or r <= 0:
            return 0
        while isinstance(node, _Inner):
            if r >= node.count:
                return acc + node.total
            j = bisect_right(node.ends, r)
            if j:
                acc += node.sums[j - 1]
                r -= node.ends[j - 1]
            node = node.children[j]
        keys = node.keys
        if r * 2 <= len(keys):
            return acc + sum(id_value(k[3]) for k in keys[:r])
        return acc + node.total - sum(id_value(k[3]) for k in keys[r:])

    def sum_range(self, lo: int, hi: int) -> int:
        """Sum of the values of the keys of rank ``[lo, hi)``, mod 2^256."""
        if hi <= lo:
            return 0
        return (self._prefix_sum(hi) - self._prefix_sum(lo)) & _MOD_MASK

    def fingerprint(self, lo: int, hi: int, salt: bytes = b"") -> bytes:
        """The fingerprint of the keys of rank ``[lo, hi)`` (clamped to the tree)."""
        n = len(self)
        lo = max(0, min(lo, n))
        hi = max(lo, min(hi, n))
        return fingerprint_of(self.sum_range(lo, hi), hi - lo, salt)

    def keys(self, lo: int = 0, hi: int | None = None) -> list[SortKey]:
        """The keys of rank ``[lo, hi)``, ascending."""
        n = len(self)
        hi = n if hi is None else min(hi, n)
        lo = max(lo, 0)
        out: list[SortKey] = []
        if hi <= lo or self._root is None:
            return out
        _collect(self._root, lo, hi, out)
        return out

    def __iter__(self) -> Iterator[SortKey]:
        return iter(self.keys())


def _collect(node: _Node, lo: int, hi: int, out: list[SortKey]) -> None:
    if isinstance(node, _Leaf):
        out.extend(node.keys[lo:hi])
        return
    start = 0
    for child, end in zip(node.children, node.ends, strict=True):
        if end > lo and start < hi:
            _collect(child, max(lo - start, 0), min(hi, end) - start, out)
        if end >= hi:
            return
        start = end


EMPTY = RangeTree()
