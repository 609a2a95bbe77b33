"""Thin trio adapter over py-libp2p 0.8.1: TCP + Noise + yamux + gossipsub ``/meshsub/1.1.0``.

The rest of the node talks to :class:`P2PHost` only, so libp2p's fast-moving API (see
``docs/libp2p-notes.md``) stays behind this one module. Everything runs in **trio**; the host
lives inside an async context manager so its tasks are owned by the caller's nursery tree::

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

Public API (all ``async`` methods must be called inside ``run()``; peers are PeerId strings):

* identity: :func:`peer_id_from_seed`, :func:`public_key_from_seed`,
  :func:`peer_id_from_public_key`, :func:`public_key_from_peer_id` (32-byte Ed25519 keys).
* :class:`P2PHost`: ``peer_id``, ``public_key``, ``run(listen_addrs)``, ``listen_addrs()``,
  ``dial(addr)``, ``disconnect(peer)``, ``connected_peers()``, ``is_connected(peer)``,
  ``add_peer_listener(cb)``, ``set_stream_handler(proto, handler)``,
  ``remove_stream_handler(proto)``, ``open_stream(peer, proto)``,
  ``subscribe(topic, on_message, validator=None)``, ``unsubscribe(topic)``,
  ``publish(topic, data)``, ``gossip_peers(topic)``, ``mesh_peers(topic)``.
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

Why each libp2p default is overridden: ``docs/libp2p-notes.md``.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import blake3
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.ed25519 import create_new_key_pair as _ed25519_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.x25519 import create_new_key_pair as _x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

__all__ = [
    "GOSSIP_PROTOCOL",
    "DialError",
    "GossipMessage",
    "HostConfig",
    "P2PError",
    "P2PHost",
    "P2PStream",
    "PeerEvent",
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

GOSSIP_PROTOCOL = str(PROTOCOL_ID_V11)  # "/meshsub/1.1.0"

Validator = Callable[[bytes, bytes], bool]
MessageCallback = Callable[["GossipMessage"], Awaitable[None] | None]
PeerListener = Callable[["PeerEvent"], Awaitable[None] | None]
StreamHandler = Callable[["P2PStream"], Awaitable[None]]


# --------------------------------------------------------------------------------------------
# errors


class P2PError(Exception):
    """Base class of every error this adapter raises (libp2p's own types never leak out)."""


class DialError(P2PError):
    """A dial failed (refused, unreachable, wrong PeerId, timeout); the node backs off and retries."""


class StreamOpenError(P2PError):
    """Opening a stream failed (no connection, protocol not supported by the peer, timeout)."""


class StreamResetError(P2PError):
    """The stream was reset (locally, by the peer, or because the connection died)."""


class StreamClosedError(P2PError):
    """Writing after ``close()``: the write half is already closed."""


# --------------------------------------------------------------------------------------------
# identity


def _check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError("an Ed25519 seed must be exactly 32 bytes")
    return bytes(seed)


def _key_pair(seed: bytes) -> KeyPair:
    """Derive the libp2p identity key pair; the PeerId depends only on the seed."""
    return _ed25519_key_pair(_check_seed(seed))


def public_key_from_seed(seed: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of ``seed`` (the announce ``vk``)."""
    return _key_pair(seed).public_key.to_bytes()


def peer_id_from_seed(seed: bytes) -> str:
    """The base58 PeerId (``12D3KooW…``) a host built from ``seed`` will have."""
    return ID.from_pubkey(_key_pair(seed).public_key).to_base58()


def peer_id_from_public_key(public_key: bytes) -> str:
    """The PeerId of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key must be 32 bytes")
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key))).to_base58()


def _ed25519_from_id(peer: ID) -> bytes | None:
    """Raw Ed25519 key inlined in an identity-multihash PeerId, or None for other key types."""
    key = peer.extract_public_key()
    if key is None or key.get_type() != KeyType.Ed25519:
        return None
    raw = key.to_bytes()
    return raw if len(raw) == 32 else None


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The 32-byte Ed25519 key inlined in ``peer_id``; raises ValueError for other key types.

    Used to check that a gossip announce's ``vk`` belongs to the message originator.
    """
    try:
        peer = ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"not a PeerId: {peer_id!r}") from exc
    raw = _ed25519_from_id(peer)
    if raw is None:
        raise ValueError(f"PeerId {peer_id} does not inline an Ed25519 key")
    return raw


def quiet_libp2p_logging(level: int = logging.WARNING) -> None:
    """Set libp2p's loggers to ``level`` unless LIBP2P_DEBUG asks for more.

    Some libp2p modules pin their own level (the auto-connector sets INFO at import and logs
    hundreds of lines a minute), so the parent ``libp2p`` logger alone is not enough. libp2p
    also detaches its logger from the root (``propagate=False``, no handler); we re-attach
    it so the node's own logging configuration formats and routes its warnings.
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
    max_connections: int = 128
    dial_timeout: float = 10.0
    dial_retries: int = 0  # libp2p's own retries; the node does its own backoff
    negotiate_timeout: int = 10
    auto_connect: bool = False  # libp2p's auto-connector re-dials peerstore peers on its own
    shutdown_timeout: float = 5.0
    write_stall_timeout: float = 15.0  # a peer that reads nothing this long gets its stream reset
    event_buffer: int = 1024


@dataclass(frozen=True)
class PeerEvent:
    """A change in the peer set: first connection up, last connection down, or a gossip
    subscription change (``topic`` set)."""

    kind: Literal["connected", "disconnected", "subscribed", "unsubscribed"]
    peer_id: str
    topic: str | None = None


@dataclass(frozen=True)
class GossipMessage:
    """A validated gossip message. ``forwarder`` is the neighbour that relayed it to us."""

    topic: str
    data: bytes
    msg_id: bytes
    originator: str
    originator_public_key: bytes
    forwarder: str
    local: bool


def _msg_id(msg: rpc_pb2.Message) -> bytes:
    """Gossip message id = BLAKE3(data): byte-identical announces deduplicate (spec §2.1)."""
    return blake3.blake3(msg.data).digest()


# --------------------------------------------------------------------------------------------
# libp2p patches, kept as subclasses/instance attributes instead of global monkeypatches


class _NoValidationCache(ValidationCache):
    """Disables Pubsub's verdict cache.

    It is keyed by message id alone, but our verdict depends on (data, originator): a
    cached reject of a replayed announce would block the genuine one, and a cached accept
    would skip the originator check for a re-publish under another identity.
    """

    def get(self, msg_id: bytes) -> ValidationResult | None:
        return None

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        return None


class _SizedQueues(dict[ID, RpcQueue]):
    """``peer_queues`` that enlarges each per-peer RpcQueue as Pubsub registers it.

    ``RpcQueue()`` is built with a default of 32 RPCs captured at import; beyond that,
    gossip to the peer is dropped without an error.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def __setitem__(self, key: ID, queue: RpcQueue) -> None:
        inner = getattr(queue, "_queue", None)
        if inner is not None and hasattr(inner, "max_size"):
            inner.max_size = max(inner.max_size, self._size)
        super().__setitem__(key, queue)


class _EcacPubsub(Pubsub):
    """Pubsub with bounded-but-large queues, no verdict cache, and subscription events."""

    def __init__(
        self,
        host: IHost,
        router: GossipSub,
        *,
        rpc_queue_size: int,
        on_subscription: Callable[[ID, str, bool], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, **kwargs)
        self.peer_queues = _SizedQueues(rpc_queue_size)
        self.validation_cache = _NoValidationCache()
        # seqno starts at int(time()) and +1 per publish: a node that publishes faster than
        # 1/s and restarts would reuse (from, seqno) pairs, which peers' equivocation check
        # treats as equivocation and then silently stops forwarding. Nanoseconds avoid that.
        self.counter = time.time_ns()
        self._on_subscription = on_subscription

    async def stream_handler(self, stream: INetStream) -> None:
        """Inbound gossip stream; its exceptions must not reach the connection's nursery.

        While the service stops, an arriving message makes ``manager.run_task`` raise
        "Nursery is closed to new arrivals"; unguarded, that error tears down the swarm.
        """
        try:
            await super().stream_handler(stream)
        except Exception as exc:
            stopping = not self.manager.is_running or self.manager.is_cancelled
            level = logging.DEBUG if stopping else logging.WARNING
            log.log(level, "gossip stream from %s failed: %s", stream.muxed_conn.peer_id, exc)
            with trio.CancelScope(shield=True), suppress(Exception):
                await stream.reset()

    async def _handle_new_peer(self, peer_id: ID) -> None:
        """Replace an outbound gossip stream left over from a previous connection.

        When a peer reconnects before its old connection's death was processed, libp2p
        sees a stream in ``peers`` and skips the new connection; the dead-peer handler then
        keeps the stale stream because a connection exists, and we never send our
        subscriptions again: no mesh with that peer until it reconnects once more.
        """
        stale = self.peers.get(peer_id)
        if stale is not None and not self._is_live(peer_id, stale):
            del self.peers[peer_id]
            queue = self.peer_queues.pop(peer_id, None)
            if queue is not None:
                queue.close()
            self.router.remove_peer(peer_id)
            with trio.CancelScope(shield=True), suppress(Exception):
                await stale.reset()
        await super()._handle_new_peer(peer_id)

    def _is_live(self, peer_id: ID, stream: INetStream) -> bool:
        muxed = getattr(stream, "muxed_conn", None)
        if muxed is None or getattr(muxed, "is_closed", False):
            return False
        conns = self.host.get_network().get_connections(peer_id)
        return any(getattr(c, "muxed_conn", None) is muxed for c in conns)

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        topic = sub_message.topicid
        before = origin_id in self.peer_topics.get(topic, ())
        super().handle_subscription(origin_id, sub_message)
        after = origin_id in self.peer_topics.get(topic, ())
        if before != after:
            self._on_subscription(origin_id, topic, after)


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


async def _noop() -> None:
    return None


# --------------------------------------------------------------------------------------------
# streams


class P2PStream:
    """A yamux stream over Noise with plain byte semantics.

    ``read`` returns up to ``max_bytes`` (never b"" unless at EOF); ``close`` sends FIN (our
    write half only: keep reading until b"" to get the peer's answer); ``reset`` aborts both
    directions. Reads and writes raise :class:`StreamResetError` once the stream is reset.
    Deadlines are the caller's job (``trio.fail_after``); after a timeout, call ``reset``.
    A write waits at most ``write_stall_timeout`` for a peer that stopped reading, then
    resets the stream.
    """

    def __init__(self, raw: INetStream, *, write_stall_timeout: float = 15.0) -> None:
        self._raw = raw
        self._stall_timeout = write_stall_timeout
        self.peer_id: str = raw.muxed_conn.peer_id.to_base58()
        self.protocol: str = str(raw.get_protocol() or "")
        self._eof = False
        self._write_closed = False
        self._reset = False
        self._released = False

    @property
    def at_eof(self) -> bool:
        """True once the peer's FIN has been read."""
        return self._eof

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Read at most ``max_bytes``; b"" means the peer closed its write half (EOF)."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._reset:
            raise StreamResetError("stream was reset")
        if self._eof:
            return b""
        try:
            data = await self._raw.read(max_bytes)
        except StreamEOF:
            # yamux drops a stream's bookkeeping as soon as an RST arrives, so the read
            # reports EOF; the stream object still remembers the reset.
            if getattr(getattr(self._raw, "muxed_stream", None), "reset_received", False):
                self._reset = True
                raise StreamResetError(f"stream from {self.peer_id} reset") from None
            data = b""
        except (StreamReset, StreamClosed) as exc:
            self._reset = True
            raise StreamResetError(f"stream from {self.peer_id} reset") from exc
        except (StreamError, OSError) as exc:
            self._reset = True
            raise StreamResetError(f"stream from {self.peer_id} failed: {exc}") from exc
        if not data:
            self._eof = True
            await self._release_if_done()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; returns when yamux accepted it (flow control applies).

        One call costs ~0.2 ms of Python overhead: coalesce many frames into one write.
        """
        if self._reset:
            raise StreamResetError("stream was reset")
        if self._write_closed:
            raise StreamClosedError("write half already closed")
        view = memoryview(data).cast("B")
        muxed = getattr(self._raw, "muxed_stream", None)
        if not isinstance(getattr(muxed, "send_window", None), int):
            await self._write_raw(view.tobytes())
            return
        # yamux fails a write whose send window stays empty for 5 s (hard-coded), leaving
        # the peer waiting forever; write only what the window allows and wait ourselves.
        while view:
            window = muxed.send_window
            if window <= 0 and not muxed.closed:
                await self._wait_for_window(muxed)
                continue
            n = min(len(view), window) if window > 0 else len(view)  # closed: let yamux raise
            await self._write_raw(view[:n].tobytes())
            view = view[n:]

    async def _wait_for_window(self, muxed: Any) -> None:
        with trio.move_on_after(self._stall_timeout) as scope:
            while muxed.send_window <= 0 and not muxed.closed:
                await trio.sleep(0.01)  # yamux offers no window event; it polls the same way
        if scope.cancelled_caught:
            await self.reset()
            raise StreamResetError(f"{self.peer_id} stopped reading for {self._stall_timeout:g} s")

    async def _write_raw(self, data: bytes) -> None:
        try:
            await self._raw.write(data)
        except (StreamClosed, StreamReset, StreamError, OSError) as exc:
            await self.reset()  # tell the peer, which would otherwise wait for more data
            raise StreamResetError(f"stream to {self.peer_id} failed: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        """Half-close: send FIN so the peer reads EOF; reading stays possible. Idempotent."""
        if self._write_closed or self._reset:
            return
        self._write_closed = True
        try:
            await self._raw.close_write()
        except Exception as exc:  # a dead connection: nothing more to flush
            log.debug("close_write failed on stream to %s: %s", self.peer_id, exc)
        await self._release_if_done()

    async def reset(self) -> None:
        """Abort both directions (the peer's reads and writes fail). Idempotent."""
        if self._reset:
            return
        self._reset = True
        with trio.CancelScope(shield=True):
            try:
                await self._raw.reset()
            except Exception as exc:
                log.debug("reset failed on stream to %s: %s", self.peer_id, exc)

    async def _release_if_done(self) -> None:
        """Drop libp2p's bookkeeping once both halves are closed."""
        if self._released or not (self._eof and self._write_closed):
            return
        self._released = True
        try:
            await self._raw.close()
        except Exception as exc:
            log.debug("final close failed on stream to %s: %s", self.peer_id, exc)

    async def __aenter__(self) -> P2PStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.reset()


# --------------------------------------------------------------------------------------------
# host


@dataclass
class _Topic:
    on_message: MessageCallback
    validator: Validator | None
    deliver_own: bool
    cancel: trio.CancelScope | None = None


class P2PHost:
    """One libp2p node: identity, listeners, connections, streams and gossip."""

    def __init__(self, seed: bytes, *, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()
        self._key_pair = _key_pair(seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._id.to_base58()
        self.public_key: bytes = self._key_pair.public_key.to_bytes()
        self._handlers: dict[str, StreamHandler] = {}
        self._topics: dict[str, _Topic] = {}
        self._listeners: list[PeerListener] = []
        self._connected: set[str] = set()
        self._forwarders: OrderedDict[bytes, str] = OrderedDict()
        self._host: IHost | None = None
        self._pubsub: _EcacPubsub | None = None
        self._router: GossipSub | None = None
        self._nursery: trio.Nursery | None = None
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
        noise_key = _x25519_key_pair().private_key
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(self._key_pair, noise_privkey=noise_key)},
            muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
            listen_addrs=maddrs,
            negotiate_timeout=cfg.negotiate_timeout,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,  # avoids a 250 ms happy-eyeballs wait per dial
                max_connections=cfg.max_connections,
                high_watermark=cfg.max_connections,  # the pruner trims above this
                low_watermark=0,  # both only drive the (disabled) auto-connector and
                min_connections=0,  # reserve inbound slots for its outbound dials
                dial_timeout=cfg.dial_timeout,
            ),
        )
        swarm: Any = host.get_network()
        swarm.retry_config = RetryConfig(max_retries=cfg.dial_retries)
        if not cfg.auto_connect:
            swarm.auto_connector.start = _noop  # never started → never dials on its own
        quiet_libp2p_logging()

        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=cfg.gossip_degree,
            degree_low=cfg.gossip_degree_low,
            degree_high=cfg.gossip_degree_high,
            gossip_window=cfg.gossip_window,
            gossip_history=cfg.gossip_history,
            heartbeat_initial_delay=cfg.heartbeat_initial_delay,
            heartbeat_interval=cfg.heartbeat_interval,  # type: ignore[arg-type]
            spam_protection_enabled=False,  # 10 msg/s/topic/peer, then silent drops
            adaptive_gossip_enabled=False,  # would stretch the heartbeat to 30-60 s on small meshes
            eclipse_protection_enabled=False,  # IP-diversity grafts churn a small mesh
        )
        # The subscription channel size is a module constant read at subscribe time.
        _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
            _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, cfg.subscription_buffer
        )
        pubsub = _EcacPubsub(
            host,
            router,
            rpc_queue_size=cfg.rpc_queue_size,
            on_subscription=self._on_subscription,
            strict_signing=True,
            msg_id_constructor=_msg_id,
            seen_ttl=cfg.seen_ttl,
        )
        swarm.register_notifee(_PeerNotifee(self))
        for proto in self._handlers:
            host.set_stream_handler(TProtocol(proto), self._wrap_handler(proto))

        events_send, events_recv = trio.open_memory_channel[PeerEvent](cfg.event_buffer)
        self._host, self._pubsub, self._router = host, pubsub, router
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
                            self._nursery = nursery
                            nursery.start_soon(self._dispatch_events, events_recv)
                            for topic in list(self._topics):
                                await self._start_topic(topic)
                            try:
                                yield self
                            except BaseException as exc:
                                if isinstance(exc, trio.Cancelled):
                                    raise
                                # Re-raised below, after a clean teardown, so callers see their
                                # own exception instead of ~10 nested ExceptionGroups.
                                body_error = exc
                            finally:
                                self._nursery = None
                                nursery.cancel_scope.cancel()
                finally:
                    await _close_host(host, (router, pubsub), cfg.shutdown_timeout)
        finally:
            self._host = self._pubsub = self._router = None
            self._events_send = None
            self._connected.clear()
            self._forwarders.clear()
            for t in self._topics.values():
                t.cancel = None
        if body_error is not None:
            raise body_error

    def _require(self) -> tuple[IHost, _EcacPubsub]:
        if self._host is None or self._pubsub is None:
            raise P2PError("host is not running (use `async with host.run(...)`)")
        return self._host, self._pubsub

    # ---- addresses and peers ------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Bound listen addresses with the real port and ``/p2p/<peer-id>``."""
        host, _ = self._require()
        return [f"{a}/p2p/{self.peer_id}" for a in host.get_transport_addrs()]

    async def dial(self, addr: str, *, timeout: float | None = None) -> str:
        """Connect to a full multiaddr ``…/p2p/<peer-id>``; returns the PeerId.

        Succeeds immediately if already connected. Raises :class:`DialError` (refused,
        unreachable, PeerId mismatch, timeout) and ValueError for a malformed address.
        """
        host, _ = self._require()
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
            raise DialError(f"dial {addr} failed: {_root_cause(exc)}") from exc
        return info.peer_id.to_base58()

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (no-op when not connected)."""
        host, _ = self._require()
        try:
            await host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("disconnect %s: %s", peer_id, exc)

    def connected_peers(self) -> list[str]:
        """PeerIds with at least one live connection, sorted."""
        host, _ = self._require()
        return sorted(p.to_base58() for p in host.get_connected_peers())

    def is_connected(self, peer_id: str) -> bool:
        """Whether at least one connection to ``peer_id`` is open."""
        host, _ = self._require()
        return bool(host.get_network().get_connections(ID.from_base58(peer_id)))

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
                    await _call_safely(listener, event, what="peer listener")

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
            stream = P2PStream(raw, write_stall_timeout=self.config.write_stall_timeout)
            handler = self._handlers.get(protocol)
            if handler is None:
                await stream.reset()
                return
            try:
                await handler(stream)
            except Exception:
                log.exception("handler for %s from %s failed", protocol, stream.peer_id)
                await stream.reset()
                return
            if not stream._reset:
                await stream.close()

        return serve

    async def open_stream(self, peer_id: str, protocol: str, *, timeout: float | None = None) -> P2PStream:
        """Open a stream for ``protocol`` to a peer (dialling known addresses if needed)."""
        host, _ = self._require()
        limit = self.config.dial_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                raw = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        except trio.TooSlowError as exc:
            raise StreamOpenError(f"opening {protocol} to {peer_id} timed out") from exc
        except Exception as exc:
            raise StreamOpenError(f"opening {protocol} to {peer_id} failed: {_root_cause(exc)}") from exc
        return P2PStream(raw, write_stall_timeout=self.config.write_stall_timeout)

    # ---- gossip -------------------------------------------------------------------------

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
        if topic in self._topics:
            raise P2PError(f"already subscribed to {topic}")
        self._topics[topic] = _Topic(on_message, validator, deliver_own)
        if self._pubsub is not None:
            await self._start_topic(topic)

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic`` (no-op if not subscribed)."""
        entry = self._topics.pop(topic, None)
        if entry is None:
            return
        if entry.cancel is not None:
            entry.cancel.cancel()
        if self._pubsub is not None:
            self._pubsub.remove_topic_validator(topic)
            await self._pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> bool:
        """Sign and publish ``data``; True if it was new and passed our own validator.

        Identical bytes published again within ``seen_ttl`` are deduplicated (False).
        Publishing with no gossip peer is not an error; the message is simply not sent.
        """
        _, pubsub = self._require()
        mid = blake3.blake3(data).digest()
        if pubsub.seen_messages.has(mid):
            return False
        await pubsub.publish(topic, bytes(data))
        return pubsub.seen_messages.has(mid)

    def gossip_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``."""
        _, pubsub = self._require()
        return sorted(p.to_base58() for p in pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our gossipsub mesh for ``topic`` (the ones we forward full messages to)."""
        if self._router is None:
            raise P2PError("host is not running")
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, ()))

    async def _start_topic(self, topic: str) -> None:
        _, pubsub = self._require()
        if self._nursery is None:
            raise P2PError("host is shutting down")
        pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        sub = await pubsub.subscribe(topic)
        scope = trio.CancelScope()
        self._topics[topic].cancel = scope
        self._nursery.start_soon(self._drain, topic, sub, scope)

    def _make_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            entry = self._topics.get(topic)
            if entry is None:
                return False
            try:
                origin_key = _ed25519_from_id(ID(msg.from_id))
                if origin_key is None:
                    return False
                if entry.validator is not None and entry.validator(msg.data, origin_key) is not True:
                    return False
            except Exception:
                log.exception("gossip validator for %s raised; rejecting", topic)
                return False
            self._remember_forwarder(_msg_id(msg), forwarder.to_base58())
            return True

        return validate

    def _remember_forwarder(self, mid: bytes, forwarder: str) -> None:
        """Bounded map msg id → relaying neighbour, read back on delivery."""
        self._forwarders[mid] = forwarder
        self._forwarders.move_to_end(mid)
        while len(self._forwarders) > 4096:
            self._forwarders.popitem(last=False)

    async def _drain(self, topic: str, sub: Any, scope: trio.CancelScope) -> None:
        """One task per subscription: libp2p drops deliveries once 32+ are left unread."""
        with scope:
            while True:
                try:
                    msg = await sub.get()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                entry = self._topics.get(topic)
                if entry is None:
                    return
                mid = _msg_id(msg)
                origin = ID(msg.from_id)
                local = origin == self._id
                forwarder = self._forwarders.pop(mid, self.peer_id if local else "")
                if local and not entry.deliver_own:
                    continue
                gm = GossipMessage(
                    topic=topic,
                    data=bytes(msg.data),
                    msg_id=mid,
                    originator=origin.to_base58(),
                    originator_public_key=_ed25519_from_id(origin) or b"",
                    forwarder=forwarder,
                    local=local,
                )
                await _call_safely(entry.on_message, gm, what=f"gossip callback for {topic}")


async def _close_host(host: IHost, services: Sequence[Any], timeout: float) -> None:
    """Stop gossip, then close listeners, connections (concurrently) and the swarm, shielded.

    libp2p's own teardown runs in an unshielded ``finally`` of a cancelled task: its first
    await raises Cancelled and the rest is skipped, so the TCP listener (a trio *system*
    task) keeps accepting connections after the host "stopped". Each connection close also
    sleeps ~0.2 s, so closing them one by one scales badly with the peer count.
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
    """Refuse an unusable listen address, and a fixed TCP port another socket listens on.

    libp2p listens with SO_REUSEPORT, so a second node (say, a stale process after a
    restart) on the same port would silently share it and get half the connections. A
    probe bind without SO_REUSEPORT fails with EADDRINUSE in that case.
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


async def _call_safely(fn: Callable[[Any], Awaitable[None] | None], arg: Any, *, what: str) -> None:
    """Run a user callback (sync or async) without letting its exceptions kill our tasks."""
    try:
        result = fn(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("%s raised", what)


def _root_cause(exc: BaseException) -> str:
    """Walk __cause__ chains (libp2p nests 3-4 deep) to the most specific message."""
    seen: list[str] = []
    cur: BaseException | None = exc
    depth = 0
    while cur is not None and depth < 8:
        text = str(cur).strip()
        if text and text not in seen:
            seen.append(text)
        cur = cur.__cause__ or (cur.__context__ if not cur.__suppress_context__ else None)
        depth += 1
    return " <- ".join(seen[-2:]) if seen else type(exc).__name__
