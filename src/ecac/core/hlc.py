"""Hybrid logical clock values carried in op headers.

Replay never reads a clock; it only compares these values. The two helpers are for op
producers (core §5). ``logical`` saturates at 2**32-1 instead of overflowing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecac.core.codec import U32_MAX, U64_MAX, Serde, U32Int, U64Int, serde

__all__ = ["U32_MAX", "U64_MAX", "Hlc"]


@serde
@dataclass(frozen=True, slots=True, order=True)
class Hlc(Serde):
    """``{physical_ms, logical, node_id}`` (core §3.1); ordered lexicographically in that order."""

    physical_ms: U64Int = 0
    logical: U32Int = 0
    node_id: U32Int = 0

    def tick_local(self, now_ms: int) -> Hlc:
        """Advance for a local event at wall time ``now_ms``."""
        if now_ms > self.physical_ms:
            return Hlc(now_ms, 0, self.node_id)
        return Hlc(self.physical_ms, min(self.logical + 1, U32_MAX), self.node_id)

    def observed(self, remote: Hlc, now_ms: int) -> Hlc:
        """Merge a remote HLC seen at wall time ``now_ms``."""
        p = max(self.physical_ms, now_ms, remote.physical_ms)
        if p == self.physical_ms == remote.physical_ms:
            logical = max(self.logical, remote.logical) + 1
        elif p == self.physical_ms:
            logical = self.logical + 1
        elif p == remote.physical_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        return Hlc(p, min(logical, U32_MAX), self.node_id)
