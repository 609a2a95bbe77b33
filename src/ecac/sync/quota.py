"""Per-peer quotas: ops and bytes per peer per second, for ingested and for served sync data.

One flooding peer must not take the node's whole ingest (decoding, verification, the writer,
the digest) so that other peers' ops wait behind its flood; nor may one peer make it read and
send its whole store again and again. Each peer has two token buckets per direction, one in
ops and one in bytes: a bucket refills at ``rate`` per second up to ``burst`` (so a peer that
was quiet may take ``burst`` at once), and a charge may take it below zero (the debt is paid
off by the refill before the peer is served again, and never exceeds one burst). Pure: time
is the caller's ``now`` (monotonic seconds), nothing here reads a clock.

Work-conserving: a peer is held to its quota only while another peer is also taking from the
same table (charged within the last ``burst_s``). Alone, a peer may use the node's whole
capacity (a late joiner's bulk sync runs at full speed), but its charges still put its buckets in
debt, so the moment an honest peer shows up the flooder is the one that waits.

Memory is bounded: at most ``max_peers`` peers are tracked. A bucket that refilled to its burst
holds no information (a fresh one starts full), so such peers are forgotten first; if none is
full, the least recently charged peer goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Refill rates per second and bucket sizes (``burst``, in seconds of the rate); 0 = unlimited."""

    ops_per_s: float = 0.0
    bytes_per_s: float = 0.0
    burst_s: float = 4.0

    def __post_init__(self) -> None:
        for v in (self.ops_per_s, self.bytes_per_s, self.burst_s):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError("quota rates and burst must be finite numbers >= 0")
        if (self.ops_per_s or self.bytes_per_s) and self.burst_s < 1:
            raise ValueError("a quota's burst must be at least 1 s of its rate")

    @property
    def enabled(self) -> bool:
        return self.ops_per_s > 0 or self.bytes_per_s > 0

    def to_obj(self) -> dict[str, float]:
        return {"ops_per_s": self.ops_per_s, "bytes_per_s": self.bytes_per_s, "burst_s": self.burst_s}


class _Bucket:
    """A token bucket: ``level`` at time ``at``; refills at ``rate`` per second up to ``cap``."""

    __slots__ = ("at", "cap", "level", "rate")

    def __init__(self, rate: float, cap: float, now: float) -> None:
        self.rate, self.cap, self.level, self.at = rate, cap, cap, now

    def refill(self, now: float) -> float:
        if now > self.at:
            self.level = min(self.cap, self.level + (now - self.at) * self.rate)
            self.at = now
        return self.level

    def ready_in(self, need: float, now: float) -> float:
        """Seconds until ``level >= need`` (``need`` is clamped to ``cap``)."""
        short = min(need, self.cap) - self.refill(now)
        return 0.0 if short <= 0 else short / self.rate


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a peer may take now: ``ops`` and ``bytes`` (``math.inf`` when unlimited)."""

    ops: float
    bytes: float


UNLIMITED = Allowance(math.inf, math.inf)


@dataclass(slots=True)
class _PeerQuota:
    ops: _Bucket | None
    bytes: _Bucket | None
    used_ops: int = 0
    used_bytes: int = 0
    last: float = 0.0

    def full(self, now: float) -> bool:
        return all(b is None or b.refill(now) >= b.cap for b in (self.ops, self.bytes))


@dataclass(slots=True)
class QuotaCounters:
    """Totals over all peers (carried in ``/status``)."""

    ops: int = 0
    bytes: int = 0
    cuts: int = 0  # responses cut (ingest) or capped/stopped (serve) by a quota
    deferred: int = 0  # times a peer had to wait for its quota to refill

    def as_dict(self, prefix: str) -> dict[str, int]:
        return {
            f"{prefix}_ops": self.ops,
            f"{prefix}_bytes": self.bytes,
            f"{prefix}_cuts": self.cuts,
            f"{prefix}_deferred": self.deferred,
        }


@dataclass
class QuotaTable:
    """The buckets of every tracked peer for one direction (ingest or serve)."""

    limits: QuotaLimits
    max_peers: int = 4096
    counters: QuotaCounters = field(default_factory=QuotaCounters)
    _peers: dict[str, _PeerQuota] = field(default_factory=dict)
    #: (time, peer) of the last charge of the two most recently charged distinct peers: the latest
    #: charge by anyone other than a given peer is one of them
    _recent: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_peers < 1:
            raise ValueError("max_peers must be positive")

    def _get(self, peer: str, now: float) -> _PeerQuota:
        q = self._peers.get(peer)
        if q is None:
            if len(self._peers) >= self.max_peers:
                self._evict(now)
            lim = self.limits
            ops = _Bucket(lim.ops_per_s, lim.ops_per_s * lim.burst_s, now) if lim.ops_per_s > 0 else None
            nb = _Bucket(lim.bytes_per_s, lim.bytes_per_s * lim.burst_s, now) if lim.bytes_per_s > 0 else None
            q = _PeerQuota(ops, nb, last=now)
            self._peers[peer] = q
        return q

    def _evict(self, now: float) -> None:
        victim = next((p for p, q in self._peers.items() if q.full(now)), None)
        if victim is None:
            victim = min(self._peers, key=lambda p: (self._peers[p].last, p))
        del self._peers[victim]

    def contended(self, peer: str, now: float) -> bool:
        """Another peer took from this table within the last burst: only then is ``peer`` held back."""
        horizon = now - self.limits.burst_s
        return any(p != peer and t >= horizon for t, p in self._recent)

    def allowance(self, peer: str, now: float) -> Allowance:
        """What ``peer`` may take at ``now`` (a negative level means it is in debt; unlimited while
        no other peer is taking, see ``contended``)."""
        if not self.limits.enabled or not self.contended(peer, now):
            return UNLIMITED
        q = self._peers.get(peer)
        if q is None:
            lim = self.limits
            return Allowance(
                lim.ops_per_s * lim.burst_s if lim.ops_per_s > 0 else math.inf,
                lim.bytes_per_s * lim.burst_s if lim.bytes_per_s > 0 else math.inf,
            )
        return Allowance(
            q.ops.refill(now) if q.ops is not None else math.inf,
            q.bytes.refill(now) if q.bytes is not None else math.inf,
        )

    def charge(self, peer: str, ops: int, nbytes: int, now: float) -> None:
        """``peer`` took ``ops`` ops of ``nbytes`` bytes at ``now`` (may leave it in debt)."""
        if ops < 0 or nbytes < 0:
            raise ValueError("a charge must not be negative")
        self.counters.ops += ops
        self.counters.bytes += nbytes
        if not self.limits.enabled or (ops == 0 and nbytes == 0):
            return
        q = self._get(peer, now)
        q.last = now
        q.used_ops += ops
        q.used_bytes += nbytes
        # debt is capped at one burst: a peer that flooded alone waits at most two bursts once
        # another peer shows up, not for everything it took while the node had nothing else to do
        if q.ops is not None:
            q.ops.refill(now)
            q.ops.level = max(q.ops.level - ops, -q.ops.cap)
        if q.bytes is not None:
            q.bytes.refill(now)
            q.bytes.level = max(q.bytes.level - nbytes, -q.bytes.cap)
        self._recent = [(now, peer), *[(t, p) for t, p in self._recent if p != peer][:1]]

    def ready_in(self, peer: str, ops: float, nbytes: float, now: float) -> float:
        """Seconds until ``peer`` may take ``ops`` ops and ``nbytes`` bytes (each clamped to its burst;
        0 while uncontended)."""
        q = self._peers.get(peer)
        if q is None or not self.contended(peer, now):
            return 0.0
        return max(
            q.ops.ready_in(ops, now) if q.ops is not None else 0.0,
            q.bytes.ready_in(nbytes, now) if q.bytes is not None else 0.0,
        )

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def __len__(self) -> int:
        return len(self._peers)

    def status(self, now: float, top: int = 8) -> dict[str, object]:
        """Limits and the ``top`` peers by use (levels after refill at ``now``), for ``/status``."""
        rows = sorted(self._peers.items(), key=lambda kv: (-kv[1].used_ops, -kv[1].used_bytes, kv[0]))[:top]
        peers = []
        for p, q in rows:
            a = self.allowance(p, now)
            peers.append(
                {
                    "peer_id": p,
                    "ops": q.used_ops,
                    "bytes": q.used_bytes,
                    "ops_left": None if math.isinf(a.ops) else int(a.ops),
                    "bytes_left": None if math.isinf(a.bytes) else int(a.bytes),
                }
            )
        return {"limits": self.limits.to_obj(), "tracked_peers": len(self._peers), "peers": peers}
