"""Immutable store snapshots: what every reader of a running node sees of its store.

One writer owns the store and its ``OpIndex`` (``ecac.store.writer``). After each commit it
publishes a ``StoreSnapshot``; readers (the sync coordinator, announces, serving, the
gateway, ``status``) hold a reference to the latest one and never take a lock.

Point facts about single ops come from ``IndexFacts`` (the live index, read-only). They are
*monotone*: an op once stored stays stored with the same parents and key; once complete it
stays complete with the same generation. A reader that meets a fact newer than its snapshot
therefore only sees more of the same history, never a contradiction. Readers must not
iterate the live index (its dicts grow while they read); everything that needs a whole view
(heads, the recent bloom, boundary samples, counts) is in the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from ecac.core.rangefp import EMPTY as EMPTY_RANGES
from ecac.core.rangefp import RangeTree

#: heads kept in a snapshot (all of them up to this; the sync boundary uses ≤ 128, announces 16)
SNAPSHOT_HEADS_MAX = 4096
#: ids of the order's tail covered by ``recent_bloom`` (store §1.8; ``wire.BLOOM_WINDOW``)
SNAPSHOT_BLOOM_WINDOW = 256


class IndexFacts(Protocol):
    """Monotone point queries over stored ops (``OpIndex`` implements them)."""

    def contains(self, op_id: bytes) -> bool: ...
    def is_complete(self, op_id: bytes) -> bool: ...
    def parents(self, op_id: bytes) -> tuple[bytes, ...]: ...
    def gen(self, op_id: bytes) -> int: ...
    def key(self, op_id: bytes) -> tuple[int, int, int, bytes]: ...


class SnapshotSource(Protocol):
    """What ``take_snapshot`` reads: an ``OpIndex`` (only ever called by the store's writer)."""

    def __len__(self) -> int: ...
    def complete_count(self) -> int: ...
    def head_count(self) -> int: ...
    def heads(self, k: int) -> list[bytes]: ...
    def recent_bloom(self, n: int) -> bytes: ...
    def topo_slice(self, start: int, stop: int | None = None) -> list[bytes]: ...
    def missing_parents(self) -> set[bytes]: ...
    def range_tree(self) -> RangeTree: ...


def boundary_positions(n: int) -> list[int]:
    """Topo positions sampled for a sync boundary: n−2, n−3, n−5, n−9, …, n−1−2^i (≥ 0)."""
    out: list[int] = []
    step = 1
    while n - 1 - step >= 0:
        out.append(n - 1 - step)
        step *= 2
    return out


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The store after commit ``seq``: counts, heads, bloom, boundary samples, digest when known.

    ``heads`` are the complete ops without complete children, largest key first (all of
    them up to ``SNAPSHOT_HEADS_MAX``; ``head_count`` is the true number). ``samples`` are
    the ids at ``boundary_positions(complete_count)`` of the total order. ``digest`` is the
    state digest over the first ``digest_ops`` complete ops when the node has computed it
    (it may lag the counts: it is computed after the commit, off the write path).
    ``ranges`` is the immutable range-fingerprint tree of the complete ops
    (``ecac.core.rangefp``), which set reconciliation reads.
    """

    seq: int = 0
    op_count: int = 0
    complete_count: int = 0
    pending_count: int = 0
    missing_count: int = 0
    head_count: int = 0
    heads: tuple[bytes, ...] = ()
    recent_bloom: bytes = b"\x00\x00"
    samples: tuple[bytes, ...] = ()
    digest: bytes | None = None
    digest_ops: int = 0
    ranges: RangeTree = field(default=EMPTY_RANGES, compare=False, repr=False)

    @property
    def topo_watermark(self) -> int:
        """The number of ops in the total order (= ``complete_count``; store §1.6)."""
        return self.complete_count

    def top_heads(self, k: int) -> tuple[bytes, ...]:
        """The ``k`` newest heads (by key)."""
        return self.heads[: max(k, 0)]

    def with_digest(self, digest: bytes, digest_ops: int) -> StoreSnapshot:
        """The same snapshot with a newer digest (the digest task publishes it)."""
        return replace(self, digest=digest, digest_ops=digest_ops)


def take_snapshot(
    index: SnapshotSource, seq: int, digest: bytes | None = None, digest_ops: int = 0
) -> StoreSnapshot:
    """Build the snapshot of ``index`` after commit ``seq`` (the writer calls this, nobody else)."""
    n = index.complete_count()
    positions = boundary_positions(n)
    samples = tuple(index.topo_slice(p, p + 1)[0] for p in positions)
    op_count = len(index)
    return StoreSnapshot(
        seq=seq,
        op_count=op_count,
        complete_count=n,
        pending_count=op_count - n,
        missing_count=len(index.missing_parents()),
        head_count=index.head_count(),
        heads=tuple(index.heads(SNAPSHOT_HEADS_MAX)),
        recent_bloom=index.recent_bloom(SNAPSHOT_BLOOM_WINDOW),
        samples=samples,
        digest=digest,
        digest_ops=digest_ops,
        ranges=index.range_tree(),
    )
