"""Thin trio adapter over py-libp2p 0.8.1: TCP + Noise + yamux + gossipsub ``/meshsub/1.1.0``.

The rest of the node talks to :class:`P2PHost` only, so libp2p's fast-moving API (see
``docs/libp2p-notes.md``) stays behind this package's adapter modules. Everything runs in
**trio**; the host lives inside an async context manager so its tasks are owned by the
caller's nursery tree::

    host = P2PHost(seed32, config=HostConfig(heartbeat_interval=0.2))
    host.set_stream_handler("/ecac/sync/1", serve)            # before or after run()
    async with host.run(["/ip4/127.0.0.1/tcp/0"]):
        addr = host.listen_addrs()[0]                          # /ip4/127.0.0.1/tcp/N/p2p/12D3…
        peer = await host.dial("/ip4/127.0.0.1/tcp/4001/p2p/12D3…")
        await host.subscribe(topic, on_message, validator=check)
        await host.publish(topic, data)
        stream = await host.open_stream(peer, "/ecac/sync/1")
        await stream.write(request); await stream.close()       # half-close: peer sees EOF
        while chunk := await stream.read(65536): ...            # b"" on EOF
    # leaving the block stops gossip, closes connections and listeners

The adapter is split by job; this module is the host (lifecycle, listeners, dialling, peer
events, stream handlers) and re-exports the public names of the others:

* ``ecac.net.p2perrors``: :class:`P2PError` and its subclasses (no libp2p import).
* ``ecac.net.p2pkeys``: identity (key pairs, PeerIds from the node seed).
* ``ecac.net.streams``: :class:`P2PStream` and the inbound-handler guard.
* ``ecac.net.gossip``: gossipsub, topic validation and delivery (:class:`GossipMessage`).
* ``ecac.net.connguard`` (policy, no libp2p) and ``ecac.net.p2ppatch`` (its libp2p glue):
  inbound connection slots, per-peer and total limits with fair eviction, handshake timeout,
  churn rate limits, and yamux flow control (receive window, buffered-bytes budgets, stream
  cap); the limits are ``HostConfig`` fields, the counters ``P2PHost.conn_stats()``.

Public API (all ``async`` methods must be called inside ``run()``; peers are PeerId strings):

* identity: :func:`peer_id_from_seed`, :func:`public_key_from_seed`,
  :func:`peer_id_from_public_key`, :func:`public_key_from_peer_id` (32-byte Ed25519 keys).
* :class:`P2PHost`: ``peer_id``, ``public_key``, ``run(listen_addrs)``, ``listen_addrs()``,
  ``dial(addr)``, ``disconnect(peer)``, ``connected_peers()``, ``is_connected(peer)``,
  ``add_peer_listener(cb)``, ``protect_peer(peer)``, ``conn_stats()``,
  ``set_stream_handler(proto, handler)``,
  ``remove_stream_handler(proto)``, ``open_stream(peer, proto)``,
  ``subscribe(topic, on_message, validator=None)``, ``unsubscribe(topic)``,
  ``publish(topic, data)``, ``gossip_peers(topic)``, ``mesh_peers(topic)``,
  ``set_gossip_peer_filter(accept_from)``.
* :class:`P2PStream`: ``read(max_bytes)``, ``write(data)``, ``close()`` (write half-close),
  ``reset()``; ``peer_id``, ``protocol``.
* events: :class:`PeerEvent` (``connected``/``disconnected``/``subscribed``/``unsubscribed``),
  :class:`GossipMessage`; errors derive from :class:`P2PError`.

Gossip semantics: the message id is BLAKE3(data) (32 bytes), gossipsub signing is strict, and a
topic validator ``validator(data, originator_public_key) -> bool`` runs before delivery and
before forwarding: ``False`` drops the message (not delivered, not forwarded), ``True``
delivers it and forwards it to the mesh. Messages whose originator is not an Ed25519 PeerId
are rejected. The node's own publications are validated too but not delivered to
``on_message`` unless ``deliver_own=True``. Identical bytes are deduplicated for
``seen_ttl``; a peer that (re)joins may be sent the last ~1 s of messages again.

Stream semantics: ``read`` returns b"" only at EOF; EOF is the peer's ``close()`` or a
graceful close of the whole connection, so protocols need their own end marker. A reset,
a dead connection or a peer that reads nothing for ``write_stall_timeout`` raises
:class:`StreamResetError`. Time limits are the caller's (``trio.fail_after``); reset the
stream after one fires. Each ``write`` costs ~0.25 ms: coalesce frames.

Patches of py-libp2p 0.8.1 behaviour in this module (per host instance, no globals; each has a
contract test ``test_contract_*`` in ``tests/net/test_host.py``; why and how to remove, at the
code and in ``docs/libp2p-notes.md``): the swarm's dial retries and auto-connector
(:func:`_tune_swarm`), the negative dial cache and first-address-only dialling (``dial``),
shielded teardown (:func:`_close_host`) and the ``SO_REUSEPORT`` port probe
(:func:`_check_port_free`); the inbound-slot leak and yamux flow control are patched in
``ecac.net.p2ppatch`` (contracts in ``tests/net/test_p2ppatch.py``). Module-level mutable
state: none of ours; :func:`quiet_libp2p_logging`
changes the process-wide ``libp2p.*`` logger settings because py-libp2p pins them at import.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from ecac.net import p2ppatch
from ecac.net.connguard import ConnGuard, GuardLimits
from ecac.net.gossip import (
    GOSSIP_PROTOCOL,
    Gossip,
    GossipMessage,
    MessageCallback,
    Validator,
    build_pubsub,
    build_router,
)
from ecac.net.p2perrors import (
    DialError,
    P2PError,
    ProtocolNotSupportedError,
    StreamClosedError,
    StreamOpenError,
    StreamResetError,
    call_safely,
    root_cause,
)
from ecac.net.p2pkeys import (
    fresh_noise_key,
    key_pair,
    peer_id_from_public_key,
    peer_id_from_seed,
    public_key_from_peer_id,
    public_key_from_seed,
)
from ecac.net.streams import P2PStream, StreamHandler, serve_inbound

__all__ = [
    "GOSSIP_PROTOCOL",
    "DialError",
    "GossipMessage",
    "HostConfig",
    "P2PError",
    "P2PHost",
    "P2PStream",
    "PeerEvent",
    "ProtocolNotSupportedError",
    "StreamClosedError",
    "StreamOpenError",
    "StreamResetError",
    "peer_id_from_public_key",
    "peer_id_from_seed",
    "public_key_from_peer_id",
    "public_key_from_seed",
    "quiet_libp2p_logging",
]

log = logging.getLogger(__name__)

PeerListener = Callable[["PeerEvent"], Awaitable[None] | None]


def quiet_libp2p_logging(level: int = logging.WARNING) -> None:
    """Set libp2p's loggers to ``level`` unless LIBP2P_DEBUG asks for more.

    Some libp2p modules pin their own level (the auto-connector sets INFO at import and logs
    hundreds of lines a minute), so the parent ``libp2p`` logger alone is not enough. libp2p
    also detaches its logger from the root (``propagate=False``, no handler); we re-attach
    it so the node's own logging configuration formats and routes its warnings.
    This is process-wide logging state, forced by py-libp2p 0.8.1 pinning it at import;
    remove when py-libp2p leaves logger levels and propagation to the application.
    Contract: ``test_contract_libp2p_pins_its_loggers_at_import``.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    root = logging.getLogger("libp2p")
    root.setLevel(level)
    root.propagate = True
    for name, obj in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(obj, logging.Logger) and obj.level != 0:
            obj.setLevel(level)


# --------------------------------------------------------------------------------------------
# configuration and events


@dataclass(frozen=True)
class HostConfig:
    """Tunables; defaults suit a small ECAC mesh. See docs/libp2p-notes.md for why each exists."""

    heartbeat_interval: float = 0.5
    heartbeat_initial_delay: float = 0.1
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    gossip_history: int = 5
    gossip_window: int = 3
    seen_ttl: int = 120
    rpc_queue_size: int = 1024  # per-peer outbound gossip RPCs (libp2p default 32 drops silently)
    subscription_buffer: int = 1024  # delivered-but-undrained messages per topic (libp2p: 32)
    # inbound connection policy (ecac.net.connguard; limits table in docs/protocol.md)
    max_connections: int = 128  # established, both directions; inbound beyond it evicts or is refused
    max_connections_per_peer: int = 8
    max_pending_handshakes: int = 64  # accepted TCP connections still in Noise/muxer negotiation
    max_pending_per_ip: int = 32
    pending_evict_after: float = 1.0  # a full pending table evicts the oldest handshake this old
    handshake_timeout: float = 10.0  # Noise + muxer negotiation of an inbound connection
    conn_rate_per_ip: float = 50.0  # token bucket: new inbound TCP connections per second per IP
    conn_burst_per_ip: float = 100.0
    conn_rate_per_peer: float = 1.0  # token bucket: new inbound connections per second per PeerId
    conn_burst_per_peer: float = 16.0
    # yamux flow control (ecac.net.p2ppatch.FlowGuard): unread received bytes
    buffer_per_connection: int = 32 << 20
    buffer_total: int = 128 << 20
    max_inbound_streams: int = 256  # open inbound streams per connection; more are reset
    dial_timeout: float = 10.0
    dial_retries: int = 0  # libp2p's own retries; the node does its own backoff
    negotiate_timeout: int = 10
    auto_connect: bool = False  # libp2p's auto-connector re-dials peerstore peers on its own
    shutdown_timeout: float = 5.0
    write_stall_timeout: float = 15.0  # a peer that reads nothing this long gets its stream reset
    event_buffer: int = 1024

    def guard_limits(self) -> GuardLimits:
        """The connection-policy part, for :class:`~ecac.net.connguard.ConnGuard`."""
        return GuardLimits(
            max_connections=self.max_connections,
            max_connections_per_peer=self.max_connections_per_peer,
            max_pending=self.max_pending_handshakes,
            max_pending_per_ip=self.max_pending_per_ip,
            pending_evict_after=self.pending_evict_after,
            ip_rate=self.conn_rate_per_ip,
            ip_burst=self.conn_burst_per_ip,
            peer_rate=self.conn_rate_per_peer,
            peer_burst=self.conn_burst_per_peer,
        )


@dataclass(frozen=True)
class PeerEvent:
    """A change in the peer set: first connection up, last connection down, or a gossip
    subscription change (``topic`` set)."""

    kind: Literal["connected", "disconnected", "subscribed", "unsubscribed"]
    peer_id: str
    topic: str | None = None


class _PeerNotifee(INotifee):
    """Turns per-connection swarm callbacks into per-peer connected/disconnected events."""

    def __init__(self, owner: P2PHost) -> None:
        self._owner = owner

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_up(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.get_connections(peer):
            self._owner._on_conn_down(peer)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


# --------------------------------------------------------------------------------------------
# swarm patches (py-libp2p 0.8.1), per host instance


async def _noop() -> None:
    return None


def _tune_swarm(swarm: Any, config: HostConfig) -> None:
    """Patches: no libp2p dial retries, and no auto-connector unless ``config.auto_connect``.

    * ``RetryConfig`` (3 retries with backoff) cannot be passed through ``new_host``; slow
      failures, and the node does its own backoff. We set ``swarm.retry_config``, which the
      dial loop reads on every dial. Remove when ``new_host`` accepts a retry config.
    * The auto-connector dials peerstore peers until the connection count reaches its
      watermarks (re-dialling peers the node dropped or banned) and logs at INFO. Its
      ``start`` (awaited by ``Swarm.run``) becomes a no-op, so it never runs. Remove when
      ``new_host`` can disable it.

    Contract: ``test_contract_swarm_retry_config_and_auto_connector``.
    """
    swarm.retry_config = RetryConfig(max_retries=config.dial_retries)
    if not config.auto_connect:
        swarm.auto_connector.start = _noop  # never started → never dials on its own


async def _close_host(host: IHost, services: Sequence[Any], timeout: float) -> None:
    """Patch: stop gossip, then close listeners, connections (concurrently) and the swarm, shielded.

    Why: libp2p's own teardown runs in an unshielded ``finally`` of a cancelled task: its
    first await raises Cancelled and the rest is skipped, so the TCP listener (a trio *system*
    task) keeps accepting connections after the host "stopped". Each connection close also
    sleeps ~0.2 s, so closing them one by one scales badly with the peer count.
    Remove when: leaving ``host.run()`` reliably closes listeners and connections.
    Contract: ``test_contract_running_host_internals`` and
    ``test_stopped_host_releases_its_port_for_a_restart``.
    """
    swarm: Any = host.get_network()
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        for service in services:  # gossip first, so it does not race the closing connections
            manager = getattr(service, "_manager", None)
            if manager is not None and manager.is_running:
                await manager.stop()
        for cancel in list(getattr(host, "_identify_tasks", ())):
            cancel.cancel()
        for listener in list(swarm.listeners.values()):
            try:
                await listener.close()
            except Exception as exc:
                log.debug("closing listener: %s", exc)
        async with trio.open_nursery() as nursery:
            for conns in list(swarm.connections.values()):
                for conn in list(conns):
                    nursery.start_soon(_close_quietly, conn)
        try:
            await host.close()
        except Exception as exc:
            log.debug("closing host: %s", exc)
    if scope.cancelled_caught:
        log.warning("libp2p host did not close within %.1f s", timeout)


async def _close_quietly(conn: INetConn) -> None:
    try:
        await conn.close()
    except Exception as exc:
        log.debug("closing connection: %s", exc)


def _check_port_free(maddr: multiaddr.Multiaddr) -> None:
    """Patch: refuse an unusable listen address, and a fixed TCP port another socket listens on.

    Why: libp2p listens with SO_REUSEPORT, so a second node (say, a stale process after a
    restart) on the same port would silently share it and get half the connections. A
    probe bind without SO_REUSEPORT fails with EADDRINUSE in that case.
    Remove when: py-libp2p's TCP listener stops setting SO_REUSEPORT.
    Contract: ``test_contract_tcp_listener_sets_so_reuseport``.
    """
    try:
        port = int(maddr.value_for_protocol("tcp") or 0)
    except Exception:
        return
    family, ip = socket.AF_INET, "0.0.0.0"
    for proto, fam in (("ip4", socket.AF_INET), ("ip6", socket.AF_INET6)):
        try:
            value = maddr.value_for_protocol(proto)
        except Exception:
            value = None
        if value:
            family, ip = fam, str(value)
            break
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((ip, port))
        probe.listen(1)
    except OSError as exc:
        raise P2PError(f"cannot listen on {maddr}: {exc.strerror or exc}") from exc
    finally:
        probe.close()


# --------------------------------------------------------------------------------------------
# host


class P2PHost:
    """One libp2p node: identity, listeners, connections, streams and gossip."""

    def __init__(self, seed: bytes, *, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()
        self._key_pair = key_pair(seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._id.to_base58()
        self.public_key: bytes = self._key_pair.public_key.to_bytes()
        self._handlers: dict[str, StreamHandler] = {}
        self._listeners: list[PeerListener] = []
        self._connected: set[str] = set()
        self._gossip = Gossip(self._id)
        self._guard = ConnGuard(self.config.guard_limits())  # counters persist across runs
        self._budget: p2ppatch.BufferBudget | None = None
        self._host: IHost | None = None
        self._events_send: trio.MemorySendChannel[PeerEvent] | None = None
        quiet_libp2p_logging()

    # ---- lifecycle ----------------------------------------------------------------------

    @asynccontextmanager
    async def run(self, listen_addrs: Sequence[str]) -> AsyncIterator[P2PHost]:
        """Start listening and gossiping; leaving the block shuts everything down cleanly.

        Raises :class:`P2PError` if a listen address cannot be bound.
        """
        if self._host is not None:
            raise P2PError("host is already running")
        cfg = self.config
        maddrs = [multiaddr.Multiaddr(a) for a in listen_addrs]
        for maddr in maddrs:
            _check_port_free(maddr)
        swarm_cap = cfg.max_connections + cfg.max_pending_handshakes + 16
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(self._key_pair, noise_privkey=fresh_noise_key())},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=maddrs,
            negotiate_timeout=cfg.negotiate_timeout,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,  # avoids a 250 ms happy-eyeballs wait per dial
                # libp2p's own caps sit above ours (ConnGuard decides inbound; the headroom is for
                # pending handshakes and evictions in progress), so it never refuses first
                max_connections=swarm_cap,
                high_watermark=swarm_cap,  # the pruner trims above this
                low_watermark=0,  # both only drive the (disabled) auto-connector and
                min_connections=0,  # reserve inbound slots for its outbound dials
                dial_timeout=cfg.dial_timeout,
                inbound_upgrade_timeout=cfg.handshake_timeout,
            ),
        )
        swarm: Any = host.get_network()
        _tune_swarm(swarm, cfg)
        budget = p2ppatch.BufferBudget(
            cfg.buffer_per_connection, cfg.buffer_total, self._guard.counters, cfg.max_inbound_streams
        )
        p2ppatch.install(swarm, self._guard, budget, handshake_timeout=cfg.handshake_timeout)
        self._budget = budget
        quiet_libp2p_logging()

        router = build_router(cfg)
        pubsub = build_pubsub(host, router, cfg, self._on_subscription)
        swarm.register_notifee(_PeerNotifee(self))
        for proto in self._handlers:
            host.set_stream_handler(TProtocol(proto), self._wrap_handler(proto))

        events_send, events_recv = trio.open_memory_channel[PeerEvent](cfg.event_buffer)
        self._host = host
        self._gossip.attach(pubsub, router)
        self._events_send = events_send
        body_error: BaseException | None = None
        try:
            async with (
                host.run(listen_addrs=maddrs),
                background_trio_service(pubsub),
                background_trio_service(router),
            ):
                try:
                    if len(host.get_transport_addrs()) < len(maddrs):
                        # Raised after teardown (below), not inside libp2p's nurseries.
                        body_error = P2PError(f"cannot listen on {list(listen_addrs)} (see libp2p log)")
                    else:
                        await pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._dispatch_events, events_recv)
                            await self._gossip.start(nursery)
                            try:
                                yield self
                            except BaseException as exc:
                                if isinstance(exc, trio.Cancelled):
                                    raise
                                # Re-raised below, after a clean teardown, so callers see their
                                # own exception instead of ~10 nested ExceptionGroups.
                                body_error = exc
                            finally:
                                self._gossip.stop()
                                nursery.cancel_scope.cancel()
                finally:
                    await _close_host(host, (router, pubsub), cfg.shutdown_timeout)
        finally:
            self._host = None
            self._gossip.detach()
            self._events_send = None
            self._connected.clear()
        if body_error is not None:
            raise body_error

    def _require(self) -> IHost:
        if self._host is None:
            raise P2PError("host is not running (use `async with host.run(...)`)")
        return self._host

    # ---- addresses and peers ------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Bound listen addresses with the real port and ``/p2p/<peer-id>``."""
        host = self._require()
        return [f"{a}/p2p/{self.peer_id}" for a in host.get_transport_addrs()]

    async def dial(self, addr: str, *, timeout: float | None = None) -> str:
        """Connect to a full multiaddr ``…/p2p/<peer-id>``; returns the PeerId.

        Succeeds immediately if already connected. Raises :class:`DialError` (refused,
        unreachable, PeerId mismatch, timeout) and ValueError for a malformed address.

        Two patches of py-libp2p 0.8.1 (contract: ``test_contract_negative_dial_cache``):
        libp2p blocks a peer for 60 s after one failed dial, so we evict it from
        ``swarm._negative_peer_cache`` (remove when the cache can be disabled); and the swarm
        dials only the first TCP address in the peerstore, so we clear the peer's stored
        addresses when not connected (remove when the swarm tries every address, or the one
        given to ``connect``).
        """
        host = self._require()
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise ValueError(f"not a dialable multiaddr with /p2p/: {addr!r}") from exc
        if info.peer_id == self._id:
            raise DialError("refusing to dial ourselves")
        # libp2p blocks a peer for 60 s after one failed dial ("negative cache"); our node
        # applies its own backoff, so clear it to let the next attempt really dial.
        neg = getattr(host.get_network(), "_negative_peer_cache", None)
        if neg is not None:
            neg.evict(str(info.peer_id))
        # The swarm tries only one TCP address per peer, the first one in the peerstore;
        # after a peer restarts on a new port that is its stale old address. Dial exactly
        # the address we were given.
        if not host.get_network().get_connections(info.peer_id):
            host.get_peerstore().clear_addrs(info.peer_id)
        limit = self.config.dial_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                await host.connect(info)
        except trio.TooSlowError as exc:
            raise DialError(f"dial {addr} timed out after {limit} s") from exc
        except Exception as exc:
            raise DialError(f"dial {addr} failed: {root_cause(exc)}") from exc
        return info.peer_id.to_base58()

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (no-op when not connected)."""
        host = self._require()
        try:
            await host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("disconnect %s: %s", peer_id, exc)

    def connected_peers(self) -> list[str]:
        """PeerIds with at least one live connection, sorted."""
        host = self._require()
        return sorted(p.to_base58() for p in host.get_connected_peers())

    def is_connected(self, peer_id: str) -> bool:
        """Whether at least one connection to ``peer_id`` is open."""
        host = self._require()
        return bool(host.get_network().get_connections(ID.from_base58(peer_id)))

    def protect_peer(self, peer_id: str, protected: bool = True) -> None:
        """Never evict ``peer_id``'s connections to make room (bootstrap peers); peers we
        dialled are protected anyway while an outbound connection to them is open."""
        if protected:
            self._guard.protected.add(peer_id)
        else:
            self._guard.protected.discard(peer_id)

    def conn_stats(self) -> dict[str, int]:
        """Connection and flow-control counters and gauges (``/status`` ``counters.conn``)."""
        out = self._guard.counters.as_dict()
        host = self._host
        live = p2ppatch.live_connections(host.get_network()) if host is not None else []
        out["connections"] = len(live)
        out["connections_inbound"] = sum(1 for c in live if c.inbound)
        out["pending_handshakes"] = self._guard.pending_count
        out["buffered_bytes"] = self._budget.buffered if self._budget is not None and host is not None else 0
        return out

    def add_peer_listener(self, listener: PeerListener) -> None:
        """Call ``listener(PeerEvent)`` (sync or async) for every peer event, in order.

        Listeners run in one dispatcher task: a slow listener delays later events, and
        events beyond ``config.event_buffer`` pending ones are dropped with a warning.
        """
        self._listeners.append(listener)

    def _emit(self, event: PeerEvent) -> None:
        if self._events_send is None:
            return
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            log.warning("peer event queue full, dropping %s", event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _dispatch_events(self, recv: trio.MemoryReceiveChannel[PeerEvent]) -> None:
        async with recv:
            async for event in recv:
                for listener in list(self._listeners):
                    await call_safely(listener, event, what="peer listener")

    def _on_conn_up(self, peer: ID) -> None:
        pid = peer.to_base58()
        if pid not in self._connected:
            self._connected.add(pid)
            self._emit(PeerEvent("connected", pid))

    def _on_conn_down(self, peer: ID) -> None:
        pid = peer.to_base58()
        if pid in self._connected:
            self._connected.discard(pid)
            self._emit(PeerEvent("disconnected", pid))

    def _on_subscription(self, peer: ID, topic: str, subscribed: bool) -> None:
        self._emit(PeerEvent("subscribed" if subscribed else "unsubscribed", peer.to_base58(), topic))

    # ---- streams ------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``await handler(stream)`` per inbound stream.

        An exception in the handler resets the stream (it never reaches libp2p, where it
        would tear down the connection); a normal return half-closes the stream if the
        handler did not.
        """
        self._handlers[protocol] = handler
        if self._host is not None:
            self._host.set_stream_handler(TProtocol(protocol), self._wrap_handler(protocol))

    def remove_stream_handler(self, protocol: str) -> None:
        """Stop serving ``protocol``; new streams for it are refused."""
        self._handlers.pop(protocol, None)
        if self._host is not None:
            self._host.remove_stream_handler(TProtocol(protocol))

    def _wrap_handler(self, protocol: str) -> Callable[[INetStream], Awaitable[None]]:
        async def serve(raw: INetStream) -> None:
            await serve_inbound(
                raw, protocol, self._handlers.get, write_stall_timeout=self.config.write_stall_timeout
            )

        return serve

    async def open_stream(self, peer_id: str, protocol: str, *, timeout: float | None = None) -> P2PStream:
        """Open a stream for ``protocol`` to a peer (dialling known addresses if needed)."""
        host = self._require()
        limit = self.config.dial_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                raw = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        except trio.TooSlowError as exc:
            raise StreamOpenError(f"opening {protocol} to {peer_id} timed out") from exc
        except Exception as exc:
            cause = root_cause(exc)
            if "protocols not supported" in cause or "protocol not supported" in cause:
                raise ProtocolNotSupportedError(f"{peer_id} does not speak {protocol}") from exc
            raise StreamOpenError(f"opening {protocol} to {peer_id} failed: {cause}") from exc
        return P2PStream(raw, write_stall_timeout=self.config.write_stall_timeout)

    # ---- gossip (ecac.net.gossip) -------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        on_message: MessageCallback,
        *,
        validator: Validator | None = None,
        deliver_own: bool = False,
    ) -> None:
        """Join ``topic``; validated messages go to ``on_message`` (sync or async).

        ``validator(data, originator_public_key)`` decides acceptance (True: deliver and
        forward; False or an exception: drop, do not forward). It runs synchronously on the
        gossip path for every message, including our own publications, so keep it fast.
        May be called before ``run()``; the subscription starts with the host.
        """
        await self._gossip.subscribe(topic, on_message, validator=validator, deliver_own=deliver_own)

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic`` (no-op if not subscribed)."""
        await self._gossip.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> bool:
        """Sign and publish ``data``; True if it was new and passed our own validator.

        Identical bytes published again within ``seen_ttl`` are deduplicated (False).
        Publishing with no gossip peer is not an error; the message is simply not sent.
        """
        return await self._gossip.publish(topic, data)

    def set_gossip_peer_filter(self, accept_from: Callable[[str], bool] | None) -> None:
        """Drop every gossip message forwarded by a neighbour for which ``accept_from(peer_id)`` is
        False (before the topic validator; not delivered, not forwarded). None accepts all."""
        self._gossip.accept_from = accept_from

    def gossip_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``."""
        return self._gossip.gossip_peers(topic)

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our gossipsub mesh for ``topic`` (the ones we forward full messages to)."""
        return self._gossip.mesh_peers(topic)
