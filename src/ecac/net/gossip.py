"""Gossipsub ``/meshsub/1.1.0`` for the host: topics, validation, delivery, and py-libp2p fixes.

:class:`Gossip` is the gossip half of :class:`~ecac.net.host.P2PHost`: it keeps the topic
subscriptions across runs, uses the per-run router and Pubsub service (:func:`build_router`,
:func:`build_pubsub`, :meth:`Gossip.attach`), runs one drain task per topic, and turns
libp2p's ``(forwarder, rpc_pb2.Message)`` validator into ``validator(data,
originator_ed25519_key) -> bool``.

Semantics: the message id is BLAKE3(data) (32 bytes, spec §2.1), signing is strict, a topic
validator runs before delivery and before forwarding (False or an exception: dropped, not
forwarded), originators whose PeerId does not inline an Ed25519 key are rejected, and our own
publications are validated but not delivered unless ``deliver_own=True``.

Patches of py-libp2p 0.8.1 behaviour, all contained in this module (subclasses and instance
attributes; why, and how to remove each, at its definition and in ``docs/libp2p-notes.md``;
each has a contract test ``test_contract_*`` in ``tests/net/test_host.py`` that fails when
py-libp2p changes the behaviour it relies on or fixes):

* :func:`build_router`: spam protection, adaptive gossip and eclipse protection turned off;
  the router is :class:`~ecac.net.gossippatch.EcacGossipSub` (its patches and contract tests:
  that module and ``tests/net/test_gossippatch.py``).
* :class:`SizedQueues`: per-peer outbound RPC queues of ``rpc_queue_size`` instead of 32.
* :class:`NoValidationCache`: no verdict cache keyed by message id alone.
* :class:`EcacPubsub`: nanosecond seqno start, stale-stream replacement on reconnect, a guarded
  inbound stream handler, subscription events, and the subscription channel size.

Module-level mutable state: none of ours. py-libp2p forces one process-wide setting:
``libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE`` (a module constant read when a subscription
is created; there is no per-instance knob). :meth:`EcacPubsub.subscribe` only ever *raises* it
to ``subscription_buffer``, so hosts in one process cannot shrink each other's channels.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import blake3
import trio
from libp2p.abc import IHost, INetStream, ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue

from ecac.net.gossippatch import EcacGossipSub
from ecac.net.p2perrors import P2PError, call_safely
from ecac.net.p2pkeys import ed25519_from_id

__all__ = [
    "GOSSIP_PROTOCOL",
    "EcacPubsub",
    "Gossip",
    "GossipMessage",
    "GossipSettings",
    "MessageCallback",
    "NoValidationCache",
    "SizedQueues",
    "Validator",
    "build_pubsub",
    "build_router",
    "gossip_message_id",
]

log = logging.getLogger(__name__)

GOSSIP_PROTOCOL = str(PROTOCOL_ID_V11)  # "/meshsub/1.1.0"

#: forwarders remembered between validation and delivery (msg id -> relaying neighbour)
FORWARDER_MEMORY = 4096


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


Validator = Callable[[bytes, bytes], bool]
MessageCallback = Callable[[GossipMessage], Awaitable[None] | None]


class GossipSettings(Protocol):
    """The gossip tunables :class:`~ecac.net.host.HostConfig` provides (see its docs)."""

    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def heartbeat_initial_delay(self) -> float: ...
    @property
    def gossip_degree(self) -> int: ...
    @property
    def gossip_degree_low(self) -> int: ...
    @property
    def gossip_degree_high(self) -> int: ...
    @property
    def gossip_history(self) -> int: ...
    @property
    def gossip_window(self) -> int: ...
    @property
    def seen_ttl(self) -> int: ...
    @property
    def rpc_queue_size(self) -> int: ...
    @property
    def subscription_buffer(self) -> int: ...


def gossip_message_id(msg: rpc_pb2.Message) -> bytes:
    """Gossip message id = BLAKE3(data): byte-identical announces deduplicate (spec §2.1)."""
    return blake3.blake3(msg.data).digest()


# --------------------------------------------------------------------------------------------
# py-libp2p 0.8.1 patches, kept as subclasses/instance attributes instead of global monkeypatches


class NoValidationCache(ValidationCache):
    """Patch: disables Pubsub's verdict cache (``Pubsub.validation_cache``).

    Why: it is keyed by message id alone, but our verdict depends on (data, originator): a
    cached reject of a replayed announce would block the genuine one, and a cached accept
    would skip the originator check for a re-publish under another identity.
    Remove when: py-libp2p can disable the cache or keys it by the whole message.
    Contract: ``test_contract_validation_cache_is_keyed_by_message_id``.
    """

    def get(self, msg_id: bytes) -> ValidationResult | None:
        return None

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        return None


class SizedQueues(dict[ID, RpcQueue]):
    """Patch: ``Pubsub.peer_queues`` that enlarges each per-peer RpcQueue as Pubsub registers it.

    Why: ``_handle_new_peer`` builds ``RpcQueue()`` with the default of 32 RPCs
    (``OutBoundQueueSize``, captured at import); beyond that, gossip to the peer is dropped
    without an error.
    Remove when: Pubsub takes an outbound queue size.
    Contract: ``test_contract_outbound_rpc_queue_holds_32_and_is_registered_by_item``.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def __setitem__(self, key: ID, queue: RpcQueue) -> None:
        inner = getattr(queue, "_queue", None)
        if inner is not None and hasattr(inner, "max_size"):
            inner.max_size = max(inner.max_size, self._size)
        super().__setitem__(key, queue)


class EcacPubsub(Pubsub):
    """Pubsub with bounded-but-large queues, no verdict cache, and subscription events.

    Each override below is a patch of py-libp2p 0.8.1; its docstring says why and when to
    remove it.
    """

    def __init__(
        self,
        host: IHost,
        router: GossipSub,
        *,
        rpc_queue_size: int,
        subscription_buffer: int,
        on_subscription: Callable[[ID, str, bool], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, **kwargs)
        self.peer_queues = SizedQueues(rpc_queue_size)
        self.validation_cache = NoValidationCache()
        # Patch: seqno starts at int(time()) and +1 per publish: a node that publishes faster
        # than 1/s and restarts would reuse (from, seqno) pairs, which peers' equivocation
        # check treats as equivocation and then silently stops forwarding. Nanoseconds avoid
        # that. Remove when py-libp2p seeds the counter with more than seconds.
        # Contract: test_contract_seqno_counter_starts_at_whole_seconds.
        self.counter = time.time_ns()
        self._subscription_buffer = subscription_buffer
        self._on_subscription = on_subscription

    async def subscribe(self, topic_id: str) -> ISubscriptionAPI:
        """Patch: subscribe with a channel of at least ``subscription_buffer`` messages.

        Why: ``notify_subscriptions`` delivers with ``send_nowait`` into a channel of
        ``SUBSCRIPTION_CHANNEL_SIZE`` (32) and drops the rest ("fail to deliver message to
        subscription"), our own publications included. The size is a py-libp2p module
        constant read here, at subscribe time; it is only ever raised (the one process-wide
        setting; see the module docstring). Remove when ``Pubsub.subscribe`` takes a size.
        Contract: ``test_contract_subscription_channel_size_is_read_at_subscribe_time``.
        """
        _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
            _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, self._subscription_buffer
        )
        return await super().subscribe(topic_id)

    async def stream_handler(self, stream: INetStream) -> None:
        """Patch: inbound gossip stream; its exceptions must not reach the connection's nursery.

        Why: while the service stops, an arriving message makes ``manager.run_task`` raise
        "Nursery is closed to new arrivals"; the base handler only catches stream and parse
        errors, so that error tears down the swarm.
        Remove when: ``Pubsub.stream_handler`` contains every exception.
        Contract: ``test_contract_pubsub_stream_handler_lets_other_errors_escape``.
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
        """Patch: replace an outbound gossip stream left over from a previous connection.

        Why: when a peer reconnects before its old connection's death was processed, libp2p
        sees a stream in ``peers`` and skips the new connection; the dead-peer handler then
        keeps the stale stream because a connection exists, and we never send our
        subscriptions again: no mesh with that peer until it reconnects once more.
        Remove when: ``_handle_new_peer`` checks that the known stream is still live.
        Contract: ``test_contract_new_peer_with_a_known_stream_is_skipped``.
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
        """Extension: report a peer's subscription change (py-libp2p has no such event).

        Remove when: Pubsub emits subscription events.
        Contract: ``test_contract_handle_subscription_updates_peer_topics``.
        """
        topic = sub_message.topicid
        before = origin_id in self.peer_topics.get(topic, ())
        super().handle_subscription(origin_id, sub_message)
        after = origin_id in self.peer_topics.get(topic, ())
        if before != after:
            self._on_subscription(origin_id, topic, after)


def build_router(settings: GossipSettings) -> GossipSub:
    """The gossipsub v1.1 router, with three py-libp2p defaults that fail silently turned off.

    ``spam_protection_enabled`` (10 msg/s per topic per peer, then silent drops),
    ``adaptive_gossip_enabled`` (stretches the heartbeat to 30-60 s on a small mesh) and
    ``eclipse_protection_enabled`` (IP-diversity grafts churn a small mesh). Remove an
    argument when py-libp2p's default turns it off. Contract:
    ``test_contract_gossipsub_defaults_we_turn_off``. The router class is
    :class:`~ecac.net.gossippatch.EcacGossipSub` (gossip to every subscriber, flood publish,
    no mesh churn, IHAVE with our message ids; see that module).
    """
    return EcacGossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=settings.gossip_degree,
        degree_low=settings.gossip_degree_low,
        degree_high=settings.gossip_degree_high,
        gossip_window=settings.gossip_window,
        gossip_history=settings.gossip_history,
        heartbeat_initial_delay=settings.heartbeat_initial_delay,
        # annotated int in py-libp2p, but only ever slept on: fractions of a second work
        heartbeat_interval=settings.heartbeat_interval,  # type: ignore[arg-type]
        spam_protection_enabled=False,
        adaptive_gossip_enabled=False,
        eclipse_protection_enabled=False,
    )


def build_pubsub(
    host: IHost,
    router: GossipSub,
    settings: GossipSettings,
    on_subscription: Callable[[ID, str, bool], None],
) -> EcacPubsub:
    """This run's Pubsub service on ``host``: strict signing, BLAKE3(data) message ids."""
    return EcacPubsub(
        host,
        router,
        rpc_queue_size=settings.rpc_queue_size,
        subscription_buffer=settings.subscription_buffer,
        on_subscription=on_subscription,
        strict_signing=True,
        msg_id_constructor=gossip_message_id,
        seen_ttl=settings.seen_ttl,
    )


# --------------------------------------------------------------------------------------------
# topics, validation and delivery


@dataclass
class _Topic:
    """One subscription; ``cancel`` ends its drain task (set while the host runs)."""

    on_message: MessageCallback
    validator: Validator | None
    deliver_own: bool
    cancel: trio.CancelScope | None = None


class Gossip:
    """The host's gossip: subscriptions that outlive a run, and the services of one run."""

    def __init__(self, own_id: ID) -> None:
        self._id = own_id
        self.peer_id: str = own_id.to_base58()
        self._topics: dict[str, _Topic] = {}
        self._forwarders: OrderedDict[bytes, str] = OrderedDict()
        self._pubsub: EcacPubsub | None = None
        self._router: GossipSub | None = None
        self._nursery: trio.Nursery | None = None
        #: ``accept_from(forwarder_peer_id)``: False drops a message the neighbour forwarded before
        #: the topic validator runs (a strict node takes announces only from authorised peers)
        self.accept_from: Callable[[str], bool] | None = None

    # ---- lifecycle (driven by P2PHost.run) ------------------------------------------------

    def attach(self, pubsub: EcacPubsub, router: GossipSub) -> None:
        """Use this run's services (built by :func:`build_pubsub`); the host runs them."""
        self._pubsub, self._router = pubsub, router

    async def start(self, nursery: trio.Nursery) -> None:
        """Services are ready: start every subscription's drain task in ``nursery``."""
        self._nursery = nursery
        for topic in list(self._topics):
            await self._start_topic(topic)

    def stop(self) -> None:
        """The run's nursery is closing: refuse new drain tasks."""
        self._nursery = None

    def detach(self) -> None:
        """The run is over: forget its services; subscriptions stay for the next run."""
        self._pubsub = self._router = None
        self._nursery = None
        self._forwarders.clear()
        for t in self._topics.values():
            t.cancel = None

    def _require(self) -> EcacPubsub:
        if self._pubsub is None:
            raise P2PError("host is not running (use `async with host.run(...)`)")
        return self._pubsub

    # ---- API ----------------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        on_message: MessageCallback,
        *,
        validator: Validator | None = None,
        deliver_own: bool = False,
    ) -> None:
        """Join ``topic`` (see :meth:`ecac.net.host.P2PHost.subscribe`)."""
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
        """Sign and publish ``data``; True if it was new and passed our own validator."""
        pubsub = self._require()
        mid = blake3.blake3(data).digest()
        if pubsub.seen_messages.has(mid):
            return False
        await pubsub.publish(topic, bytes(data))
        return pubsub.seen_messages.has(mid)

    def gossip_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``, sorted."""
        pubsub = self._require()
        return sorted(p.to_base58() for p in pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our gossipsub mesh for ``topic`` (the ones we forward full messages to)."""
        if self._router is None:
            raise P2PError("host is not running")
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, ()))

    # ---- internals ----------------------------------------------------------------------

    async def _start_topic(self, topic: str) -> None:
        pubsub = self._require()
        if self._nursery is None:
            raise P2PError("host is shutting down")
        pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        sub = await pubsub.subscribe(topic)
        scope = trio.CancelScope()
        self._topics[topic].cancel = scope
        self._nursery.start_soon(self._drain, topic, sub, scope)

    def _make_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        """libp2p's sync topic validator around ours.

        An exception escaping a sync validator would propagate out of ``validate_msg`` and
        kill the Pubsub service (contract: ``test_contract_validator_exceptions_escape_pubsub``);
        here it rejects the message.
        """

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            entry = self._topics.get(topic)
            if entry is None:
                return False
            try:
                accept = self.accept_from
                if accept is not None and forwarder != self._id and not accept(forwarder.to_base58()):
                    return False
                origin_key = ed25519_from_id(ID(msg.from_id))
                if origin_key is None:
                    return False
                if entry.validator is not None and entry.validator(msg.data, origin_key) is not True:
                    return False
            except Exception:
                log.exception("gossip validator for %s raised; rejecting", topic)
                return False
            self._remember_forwarder(gossip_message_id(msg), forwarder.to_base58())
            return True

        return validate

    def _remember_forwarder(self, mid: bytes, forwarder: str) -> None:
        """Bounded map msg id → relaying neighbour, read back on delivery."""
        self._forwarders[mid] = forwarder
        self._forwarders.move_to_end(mid)
        while len(self._forwarders) > FORWARDER_MEMORY:
            self._forwarders.popitem(last=False)

    async def _drain(self, topic: str, sub: ISubscriptionAPI, scope: trio.CancelScope) -> None:
        """One task per subscription: libp2p drops deliveries once its channel is full."""
        with scope:
            while True:
                try:
                    msg = await sub.get()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                entry = self._topics.get(topic)
                if entry is None:
                    return
                mid = gossip_message_id(msg)
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
                    originator_public_key=ed25519_from_id(origin) or b"",
                    forwarder=forwarder,
                    local=local,
                )
                await call_safely(entry.on_message, gm, what=f"gossip callback for {topic}")
