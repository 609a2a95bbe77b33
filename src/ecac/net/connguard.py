"""Inbound connection policy: slots, per-peer and total limits, fair eviction, churn rate limits.

:class:`ConnGuard` decides; the libp2p glue (``ecac.net.p2ppatch``) asks it at two points of an
inbound connection and does what it says:

1. **TCP accepted** (remote IP known, nothing read yet): :meth:`ConnGuard.open_pending` takes a
   token from the remote IP's bucket and a pending-handshake slot (total and per IP). When the
   pending table is full, the oldest handshake older than ``pending_evict_after`` is evicted
   (its cancel callback fires): a staller that connects and sends nothing holds a slot for
   at most the handshake timeout, and only until fresher connections need it.
2. **Noise done** (remote PeerId known, muxer not yet negotiated): :meth:`ConnGuard.admit_peer`
   takes a token from the peer's bucket, checks the per-peer limit and the total limit; at the
   total limit it names a victim to evict: the newest inbound connection of the unprotected
   peer with the most connections (if it has two or more), else of the worst churner (a peer
   whose bucket is less than half full), else nobody, and the newcomer is refused. Peers we
   dialled (outbound connections) and protected peers are never evicted, so an attacker cannot
   push out our bootstrap connections.

Every pending slot is released by :meth:`close_pending` in a ``finally``; established
connections are counted from the swarm's live table each time (:class:`LiveConn` snapshots),
never by our own increments, so a lost callback cannot leak a slot. Time comes in as ``now``
(``trio.current_time()`` in production), so tests need no clock. No libp2p import; no
module-level mutable state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = [
    "Admission",
    "ConnCounters",
    "ConnGuard",
    "GuardLimits",
    "LiveConn",
    "Pending",
    "TokenBucket",
]

#: remembered buckets per kind (IPs, peers); the least recently used is forgotten beyond this
MAX_BUCKETS = 4096


@dataclass(frozen=True)
class GuardLimits:
    """The limits (``HostConfig`` carries them; see docs/protocol.md for the table)."""

    max_connections: int = 128
    max_connections_per_peer: int = 8
    max_pending: int = 64
    max_pending_per_ip: int = 32
    pending_evict_after: float = 1.0
    ip_rate: float = 50.0  # new TCP connections per second per remote IP (token refill)
    ip_burst: float = 100.0
    peer_rate: float = 1.0  # new connections per second per remote PeerId
    peer_burst: float = 16.0

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_peer, self.max_pending) < 1:
            raise ValueError("connection limits must be at least 1")
        if self.max_pending_per_ip < 1 or self.ip_burst < 1 or self.peer_burst < 1:
            raise ValueError("per-IP pending limit and bucket bursts must be at least 1")


@dataclass(slots=True)
class ConnCounters:
    """Plain ints for ``/status`` (``counters.conn``); changed on the event loop only."""

    inbound_accepted: int = 0
    refused_ip_rate: int = 0
    refused_peer_rate: int = 0
    refused_per_peer: int = 0
    refused_full: int = 0
    refused_pending_full: int = 0
    evicted: int = 0
    pending_evicted: int = 0
    handshake_timeouts: int = 0
    handshake_failures: int = 0
    # yamux flow control (``ecac.net.p2ppatch.GuardedYamux``)
    window_overruns: int = 0
    budget_resets: int = 0
    bytes_dropped: int = 0
    frames_dropped: int = 0
    goaways_sent: int = 0  # connections closed for flooding reset or unknown streams
    streams_refused: int = 0  # inbound streams reset beyond the per-connection limit

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one token per new connection."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def level(self, now: float) -> float:
        """Fill level in [0, 1] (1 = full: not churning)."""
        self._refill(now)
        return self.tokens / self.burst


class _Buckets:
    """Token buckets by key, least recently used forgotten beyond ``MAX_BUCKETS``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._by_key: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, key: str, now: float) -> TokenBucket:
        b = self._by_key.get(key)
        if b is None:
            b = self._by_key[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._by_key) > MAX_BUCKETS:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        return b

    def level(self, key: str, now: float) -> float:
        b = self._by_key.get(key)
        return 1.0 if b is None else b.level(now)


@dataclass(eq=False)
class Pending:
    """One inbound connection between TCP accept and a registered muxed connection."""

    ip: str
    started: float
    cancel: Callable[[], None]
    peer: str | None = None  # set once Noise authenticated it
    evicted: bool = False


@dataclass(frozen=True)
class LiveConn:
    """A snapshot of one established connection (from the swarm's table)."""

    peer: str
    conn_id: int
    inbound: bool
    created: float


@dataclass(frozen=True)
class Admission:
    """``admit_peer``'s answer: accept (maybe after evicting ``evict``) or refuse for ``reason``."""

    accept: bool
    reason: Literal["ok", "peer-rate", "per-peer", "full"] = "ok"
    evict: LiveConn | None = None


@dataclass
class ConnGuard:
    """The inbound connection policy (see the module docstring)."""

    limits: GuardLimits = field(default_factory=GuardLimits)
    counters: ConnCounters = field(default_factory=ConnCounters)
    protected: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        lim = self.limits
        self._ip_buckets = _Buckets(lim.ip_rate, lim.ip_burst)
        self._peer_buckets = _Buckets(lim.peer_rate, lim.peer_burst)
        self._pending: list[Pending] = []  # in arrival order

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ---- 1. TCP accepted -------------------------------------------------------------------

    def open_pending(self, ip: str, now: float, cancel: Callable[[], None]) -> Pending | None:
        """A slot for a new inbound handshake from ``ip``, or None (refused: close the socket).

        May evict (call ``cancel`` of) the oldest pending handshake older than
        ``pending_evict_after`` when the total or the per-IP pending table is full.
        """
        lim = self.limits
        if not self._ip_buckets.get(ip, now).take(now):
            self.counters.refused_ip_rate += 1
            return None
        same_ip = [p for p in self._pending if p.ip == ip]
        if len(same_ip) >= lim.max_pending_per_ip and not self._evict_pending(same_ip, now):
            self.counters.refused_pending_full += 1
            return None
        if len(self._pending) >= lim.max_pending and not self._evict_pending(self._pending, now):
            self.counters.refused_pending_full += 1
            return None
        p = Pending(ip, now, cancel)
        self._pending.append(p)
        return p

    def _evict_pending(self, candidates: list[Pending], now: float) -> bool:
        """Evict the oldest not-yet-authenticated candidate older than ``pending_evict_after``."""
        for p in candidates:  # arrival order: the first match is the oldest
            if p.peer is None and not p.evicted and now - p.started >= self.limits.pending_evict_after:
                p.evicted = True
                self._pending.remove(p)
                self.counters.pending_evicted += 1
                p.cancel()
                return True
        return False

    def close_pending(self, p: Pending) -> None:
        """Release the slot (idempotent; call in ``finally``)."""
        if p in self._pending:
            self._pending.remove(p)

    # ---- 2. Noise done ---------------------------------------------------------------------

    def admit_peer(self, p: Pending, peer: str, now: float, live: Iterable[LiveConn]) -> Admission:
        """Whether the authenticated inbound connection ``p`` of ``peer`` may proceed."""
        lim = self.limits
        conns = list(live)
        if not self._peer_buckets.get(peer, now).take(now):
            self.counters.refused_peer_rate += 1
            return Admission(False, "peer-rate")
        authed = [q for q in self._pending if q.peer is not None and q is not p]
        mine = sum(1 for c in conns if c.peer == peer) + sum(1 for q in authed if q.peer == peer)
        if mine >= lim.max_connections_per_peer:
            self.counters.refused_per_peer += 1
            return Admission(False, "per-peer")
        p.peer = peer
        if len(conns) + len(authed) < lim.max_connections:
            self.counters.inbound_accepted += 1
            return Admission(True)
        victim = self._victim(conns, peer, now)
        if victim is None:
            p.peer = None
            self.counters.refused_full += 1
            return Admission(False, "full")
        self.counters.inbound_accepted += 1
        self.counters.evicted += 1
        return Admission(True, evict=victim)

    def _victim(self, conns: list[LiveConn], newcomer: str, now: float) -> LiveConn | None:
        """The newest inbound connection of the unprotected peer with most connections (≥ 2),
        else of the worst churner (bucket below half), else None."""
        outbound_peers = {c.peer for c in conns if not c.inbound}
        evictable = [
            c
            for c in conns
            if c.inbound
            and c.peer not in self.protected
            and c.peer not in outbound_peers
            and c.peer != newcomer
        ]
        if not evictable:
            return None
        per_peer: dict[str, list[LiveConn]] = {}
        for c in evictable:
            per_peer.setdefault(c.peer, []).append(c)
        # ties broken by the peer id, so the choice does not depend on dict order
        most = max(per_peer, key=lambda k: (len(per_peer[k]), k))
        if len(per_peer[most]) >= 2:
            return max(per_peer[most], key=lambda c: (c.created, c.conn_id))
        churn = min(per_peer, key=lambda k: (self._peer_buckets.level(k, now), k))
        if self._peer_buckets.level(churn, now) < 0.5:
            return max(per_peer[churn], key=lambda c: (c.created, c.conn_id))
        return None
