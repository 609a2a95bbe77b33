"""When to reconcile with a peer (``/ecac/reconcile/1``), and what a session counts.

One policy for every driver of ``ecac.sync.reconcile``: the node's ``ecac.net.reconcile.
ReconcileService`` (trio, libp2p streams) and the simulated network (``ecac.bench.simnet``).
``ReconcileSchedule`` holds a node's sessions by peer and role and decides:

* **on connect**: a peer connected since the last ``poll`` gets a session at once if our id is
  the smaller one (so a pair runs one session; the other side only answers);
* **on the anti-entropy tick** (every ``period``, from ``start``): each connected peer whose last
  announce differs from our state (its heads are not our top heads, or its complete-op count is
  not ours; ``announce_differs``) or that never announced, unless a session with it ended less
  than a period ago;
* **at most one session per peer** at a time (either role): a peer's stream is refused while we
  answer it, and while we initiate to it unless both started at once and its id is the smaller
  (its session goes on, ours is reset);
* **at most** ``max_sessions`` **at once** (both roles);
* a peer that does not speak the protocol is not asked again until it reconnects.

``ReconcileCounters`` and ``count_session`` are the counters a node shows in ``/status`` (and the
simulator per node). Pure: the caller passes the time (``now``), the connected peers, the
coordinator's peer states and our snapshot; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from ecac.core.snapshot import StoreSnapshot
from ecac.sync.reconcile import Reconciler

__all__ = [
    "MAX_SESSIONS",
    "POLL_PERIOD",
    "AnnouncedState",
    "ReconcileCounters",
    "ReconcileSchedule",
    "announce_differs",
    "count_session",
    "round_trips",
]

MAX_SESSIONS = 8  # sessions at once, both roles
POLL_PERIOD = 0.2  # how often a driver polls (new connections, the tick): seconds


class AnnouncedState(Protocol):
    """What the schedule reads of a peer's last announce (``SyncCoordinator.peer`` → ``PeerState``)."""

    @property
    def announced_at(self) -> float | None: ...
    @property
    def watermark(self) -> int: ...
    @property
    def heads(self) -> Sequence[bytes]: ...


def announce_differs(state: AnnouncedState | None, snapshot: StoreSnapshot) -> bool:
    """The peer never announced, or its last announce is not our state (heads or complete-op count)."""
    if state is None or state.announced_at is None:
        return True
    heads = tuple(state.heads)
    return state.watermark != snapshot.complete_count or heads != snapshot.top_heads(len(heads))


def round_trips(frames: int) -> int:
    """Round trips of a session of ``frames`` frames in all (both directions)."""
    return (frames + 1) // 2


@dataclass(slots=True)
class ReconcileSchedule:
    """One node's reconciliation sessions and the policy that starts them (see the module docstring).

    The driver calls ``start`` once, then ``poll`` every ``POLL_PERIOD`` with the connected peers
    (the simulator only at the polls that can start something) and starts a session
    with every peer it returns (already counted as initiating). ``begin`` reserves a session the
    driver starts by itself, ``accept`` decides whether to answer a peer's session, ``ended``
    releases either role, ``refused_protocol`` notes a peer without the protocol.
    """

    period: float
    max_sessions: int = MAX_SESSIONS
    my_id: str | None = None  # breaks the tie of two sessions started at once; set by ``start``
    next_tick: float | None = None  # the next anti-entropy tick (None before ``start``)
    initiating: set[str] = field(default_factory=set)
    responding: set[str] = field(default_factory=set)
    last: dict[str, float] = field(default_factory=dict)  # peer -> when its last session ended
    seen: set[str] = field(default_factory=set)  # peers connected at the last poll
    unsupported: set[str] = field(default_factory=set)  # connected peers without the protocol

    @property
    def active(self) -> set[str]:
        """Peers with a session running (either role)."""
        return self.initiating | self.responding

    def start(self, my_id: str, first_tick: float) -> None:
        """Our id, and when the first anti-entropy tick is due (then every ``period``)."""
        self.my_id = my_id
        self.next_tick = first_tick

    def due(self, peer: str, now: float, state: AnnouncedState | None, snapshot: StoreSnapshot) -> bool:
        """The anti-entropy rule: a free slot, no session with ``peer`` running or ended less than a
        period ago, and its last announce differs from ``snapshot`` (or it never announced)."""
        active = self.active
        if peer in active or len(active) >= self.max_sessions or peer in self.unsupported:
            return False
        last = self.last.get(peer)
        if last is not None and now - last < self.period:
            return False
        return announce_differs(state, snapshot)

    def poll(
        self,
        now: float,
        live: Iterable[str],
        peer_state: Callable[[str], AnnouncedState | None],
        snapshot: StoreSnapshot,
    ) -> list[str]:
        """The peers to start a session with now, in order (each already counted as initiating).

        ``live``: the connected peers we may talk to (blocked ones left out). New ones since the
        last poll get a session if our id is the smaller; on the tick, every peer ``due``.
        """
        live_set = set(live)
        fresh = sorted(live_set - self.seen)
        self.seen = live_set
        out: list[str] = []
        for p in fresh:
            if (
                self.my_id is not None
                and self.my_id < p
                and p not in self.active
                and p not in self.unsupported
                and len(self.active) < self.max_sessions
            ):
                self.last.pop(p, None)
                self.initiating.add(p)
                out.append(p)
        if self.next_tick is not None and now >= self.next_tick:
            self.next_tick = now + self.period
            for p in sorted(live_set):
                if self.due(p, now, peer_state(p), snapshot):
                    self.initiating.add(p)
                    out.append(p)
        for p in [p for p in self.last if p not in live_set and p not in self.active]:
            del self.last[p]
        self.unsupported &= live_set
        return out

    def begin(self, peer: str) -> bool:
        """Reserve a session we initiate with ``peer`` outside ``poll``; False if one is running."""
        if peer in self.active:
            return False
        self.initiating.add(peer)
        return True

    def accept(self, peer: str) -> bool:
        """``peer`` opened a session: answer it (counted as responding) or refuse it (False).

        One session per peer (it serves both sides); when both started one at once, the session
        of the smaller id goes on (its peer refuses ours)."""
        tie_won = peer in self.initiating and self.my_id is not None and peer < self.my_id
        busy = peer in self.responding or (peer in self.initiating and not tie_won)
        if busy or len(self.initiating) + len(self.responding) >= self.max_sessions:
            return False
        self.responding.add(peer)
        return True

    def ended(self, peer: str, now: float, initiator: bool) -> None:
        """A session with ``peer`` in that role ended (any way): its slot is free, the period starts."""
        (self.initiating if initiator else self.responding).discard(peer)
        self.last[peer] = now

    def refused_protocol(self, peer: str, now: float) -> bool:
        """``peer`` does not speak the protocol: not asked again until it reconnects; True the first time."""
        self.initiating.discard(peer)
        self.last[peer] = now
        if peer in self.unsupported:
            return False
        self.unsupported.add(peer)
        return True


@dataclass(slots=True)
class ReconcileCounters:
    """Plain ints, shown in ``/status`` (see ``ecac.net.reconcile``)."""

    reconcile_sessions: int = 0
    reconcile_rounds: int = 0
    reconcile_round_trips_max: int = 0
    reconcile_bytes_sent: int = 0
    reconcile_bytes_received: int = 0
    reconcile_ids_found: int = 0
    reconcile_ids_needed: int = 0
    reconcile_failures: int = 0
    reconcile_incomplete: int = 0
    reconcile_unverified: int = 0  # ended by itself but the result missed the peer's total fingerprint
    reconcile_unsupported: int = 0  # peers that answered they do not speak /ecac/reconcile/1

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def count_session(c: ReconcileCounters, rec: Reconciler) -> int:
    """Count one ended session (either role, failed or not) of ``rec``; its round trips."""
    rt = round_trips(rec.frames_sent + rec.frames_received)
    c.reconcile_sessions += 1
    c.reconcile_rounds += rt
    c.reconcile_round_trips_max = max(c.reconcile_round_trips_max, rt)
    c.reconcile_ids_found += len(rec.need) + len(rec.have)
    c.reconcile_ids_needed += len(rec.need)
    if not rec.complete:
        c.reconcile_incomplete += 1
    if rec.verified is False:
        c.reconcile_unverified += 1
    return rt
