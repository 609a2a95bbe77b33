"""The values the sync coordinator hands to the I/O layer (effects) and gets back (commit outcomes).

Every coordinator event returns ``list[Effect]``; the node carries them out in order and
reports what happened through further events. Effects and outcomes are frozen values:
they can cross threads (the writer thread carries out ``CommitOps``) without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecac.core.op import Op
from ecac.sync.planner import PeerId
from ecac.sync.wire import SyncRequest


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Open a sync stream to ``peer`` and write ``frame()``; report frames under ``request_id``."""

    peer: PeerId
    request_id: int
    request: SyncRequest

    def frame(self) -> bytes:
        return self.request.frame()


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Reset the stream of ``request_id`` (timeout or protocol violation); report nothing more for it."""

    peer: PeerId
    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class CommitOps:
    """Commit ``ops`` (decoded, parent-first, deduplicated, ≤ one batch) through the store's writer.

    The writer runs them through the store's validating ``put_many`` (all or nothing, every
    signature verified once) and the node reports ``commit_finished`` with the outcome and
    the snapshot published after the commit. Commits must land in emission order.
    """

    commit_id: int
    peer: PeerId
    request_id: int
    ops: tuple[Op, ...]

    @property
    def nbytes(self) -> int:
        """Canonical bytes of the ops (what the commit holds in memory)."""
        return sum(len(op.cbor) for op in self.ops)


@dataclass(frozen=True, slots=True)
class PublishAnnounce:
    """Publish ``data`` (a SignedAnnounce) on the announce topic."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Penalise:
    """``peer`` misbehaved (invalid op, broken framing, child before parent)."""

    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``peer``; refuse it until ``ban_until`` (None: no ban)."""

    peer: PeerId
    reason: str
    ban_until: float | None = None


Effect = SendRequest | CancelRequest | CommitOps | PublishAnnounce | Penalise | Disconnect


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What became of one ``CommitOps``.

    ``stored``: the ids newly written (the others of the batch were duplicates, counted in
    ``duplicates``). ``rejected_index`` (with ``error``): the store refused that op of the
    batch (invalid: the peer's fault) and wrote nothing. ``error`` alone: a local store
    failure (not the peer's fault), nothing written.
    """

    commit_id: int
    stored: tuple[bytes, ...] = ()
    duplicates: int = 0
    rejected_index: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.rejected_index is not None and self.error is None:
            raise ValueError("a rejected commit needs the store's error message")
        if self.error is not None and self.stored:
            raise ValueError("a failed commit stores nothing")
        if self.duplicates < 0:
            raise ValueError("duplicates must not be negative")
