"""Keeping bootstrap peers dialled, and the node's bans and operator blocks.

Every bootstrap peer is dialled at start and re-dialled with 500 ms doubling backoff (max
30 s) while disconnected, also after connections that dropped within
``STABLE_CONNECTION`` (refused, banned, blocked or flapping); at once after a connection
that lasted. A peer the coordinator banned (``Disconnect.ban_until``) or the operator
blocked (``POST /peers/block``) is not dialled before the ban or block ends.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ecac.net.counters import NodeCounters
from ecac.net.supervise import Supervisor

log = logging.getLogger("ecac.node")

DIAL_BACKOFF_BASE = 0.5
DIAL_BACKOFF_MAX = 30.0
STABLE_CONNECTION = 2.0  # a connection that dropped sooner counts as a failed dial


def dial_backoff(failures: int) -> float:
    return min(DIAL_BACKOFF_MAX, DIAL_BACKOFF_BASE * 2 ** min(failures - 1, 30))


def peer_of(addr: str) -> str:
    """The ``/p2p/<PeerId>`` part of a multiaddr (ValueError when absent)."""
    parts = addr.rstrip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] in ("p2p", "ipfs"):
            return parts[i + 1]
    raise ValueError(f"multiaddr {addr!r} must end with /p2p/<peer-id>")


def check_peer_addr(addr: str) -> str:
    """Validate a bootstrap multiaddr (``…/p2p/<PeerId>``); returns its PeerId or raises ValueError."""
    import multiaddr  # type: ignore[import-untyped]

    peer = peer_of(addr)
    try:
        multiaddr.Multiaddr(addr)
    except Exception as e:
        raise ValueError(f"invalid multiaddr {addr!r}: {e}") from None
    return peer


class Dialer:
    """Dial loops (one supervised task per bootstrap peer), bans and blocks. Event-loop only."""

    def __init__(self, host: Any, own_peer_id: str, counters: NodeCounters, supervisor: Supervisor) -> None:
        self.host = host
        self.own_peer_id = own_peer_id
        self.counters = counters
        self.supervisor = supervisor
        self.bans: dict[str, float] = {}  # coordinator bans (penalties)
        self.blocked: dict[str, float] = {}  # operator blocks (POST /peers/block)
        self.dialled: dict[str, str] = {}  # peer id -> address we keep dialled
        self._disconnected: dict[str, trio.Event] = {}
        self.nursery: trio.Nursery | None = None  # set while the node runs

    def add_bootstrap(self, addr: str) -> str:
        """Keep ``addr`` dialled from now on; returns its PeerId (ValueError if malformed)."""
        peer = peer_of(addr)
        if peer == self.own_peer_id:
            raise ValueError("refusing to dial ourselves")
        known = self.dialled.get(peer)
        self.dialled[peer] = addr
        if known is None and self.nursery is not None:
            self.nursery.start_soon(self.supervisor.supervise, "dialler", lambda: self._keep_dialled(peer))
        elif known is not None and known != addr:
            self.peer_gone(peer)  # dial the new address now
        return peer

    async def dial_now(self, addr: str) -> str:
        """Dial ``addr`` once (raises ``DialError``/ValueError) and keep it dialled afterwards."""
        peer = peer_of(addr)
        await self.host.dial(addr)
        self.add_bootstrap(addr)
        return peer

    def peer_gone(self, peer: str) -> None:
        """Wake ``peer``'s dial loop (it disconnected, or its address changed)."""
        waiter = self._disconnected.get(peer)
        if waiter is not None:
            waiter.set()

    def wake_missing(self, live: set[str]) -> None:
        """Wake the dial loops of peers not in ``live`` (they may have missed the disconnect)."""
        for p, waiter in list(self._disconnected.items()):
            if p not in live and not waiter.is_set():
                waiter.set()

    def ban(self, peer: str, until: float) -> None:
        self.bans[peer] = until

    def is_banned(self, peer: str, now: float) -> bool:
        return now < self.bans.get(peer, 0.0)

    def banned(self, now: float) -> list[str]:
        return sorted(p for p, t in self.bans.items() if t > now)

    def block(self, peer: str, until: float | None) -> None:
        """Block ``peer`` until ``until`` (None lifts the block)."""
        if until is None:
            self.blocked.pop(peer, None)
        else:
            self.blocked[peer] = until

    def is_blocked(self, peer: str) -> bool:
        until = self.blocked.get(peer)
        if until is None:
            return False
        if trio.current_time() >= until:
            del self.blocked[peer]
            return False
        return True

    def blocked_peers(self) -> list[str]:
        return sorted(p for p in list(self.blocked) if self.is_blocked(p))

    async def _keep_dialled(self, peer: str) -> None:
        """Dial ``peer`` while it is disconnected (see the module docstring for the backoff)."""
        from ecac.net.host import DialError

        now = trio.current_time
        failures = 0
        while True:
            addr = self.dialled[peer]
            hold = max(self.bans.get(peer, 0.0), self.blocked.get(peer, 0.0))
            if now() < hold:
                await trio.sleep(min(hold - now(), 0.5))  # re-checked: a block may be lifted early
                continue
            waiter = self._disconnected[peer] = trio.Event()
            if not self.host.is_connected(peer):
                self.counters.dials += 1
                try:
                    await self.host.dial(addr)
                    log.info("dialled %s", addr)
                except (DialError, ValueError) as e:
                    failures += 1
                    self.counters.dial_failures += 1
                    delay = dial_backoff(failures)
                    log.log(
                        logging.INFO if failures <= 3 else logging.DEBUG,
                        "dial %s failed (%s); retry in %.1f s",
                        addr,
                        e,
                        delay,
                    )
                    with trio.move_on_after(delay):
                        await waiter.wait()  # an address change skips the wait
                    continue
            up_since = now()
            if self.host.is_connected(peer):
                await waiter.wait()
            if now() - up_since >= STABLE_CONNECTION:
                failures = 0
            else:
                failures += 1
                await trio.sleep(dial_backoff(failures))
