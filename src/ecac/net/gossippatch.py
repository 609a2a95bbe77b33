"""Gossipsub router patches of py-libp2p 0.8.1: announces reach every subscriber, IHAVE ids are ours.

:class:`EcacGossipSub` is the router :func:`ecac.net.gossip.build_router` builds. Two deviations
of py-libp2p 0.8.1 from the gossipsub v1.1 spec (and from go-/js-libp2p) made announces miss
subscribers as soon as a node has more than D of them (issue 13 item 6):

(a) **Gossip skips peers in backoff, and the mesh churns them into backoff.** IHAVE emission
    (``GossipSub._handle_topic_heartbeat``, called by ``gossip_heartbeat``) selects peers with
    ``backoff_check=True``; backoff is a GRAFT rule only in the spec. Meanwhile heartbeat
    PRUNEs carry no ``backoff`` field (the receiver applies its default 60 s), the pruner
    records none, opportunistic grafting runs every heartbeat whenever the mesh is at least
    D_low (with our score-less defaults every candidate qualifies) and re-grafts the pruned
    peers, which answer PRUNE with a backoff. In a star of 13 subscribers around one Python node
    only its 3–6 mesh peers got its announce and the others got no IHAVE at all. Fixes:

    * IHAVE goes to every subscribed non-mesh gossipsub peer (at most ``gossip_lazy``, by
      default :data:`GOSSIP_LAZY`), backoff or not, as the spec and go/js do (go's target is
      ``max(Dlazy, GossipFactor × peers)``; ours covers the whole small mesh so that every
      subscriber hears of a message at the first heartbeat after it);
    * own messages are flood-published to every subscribed gossipsub peer (go and js
      default ``floodPublish``), so an originator's announce needs no mesh at all;
    * heartbeat PRUNEs carry ``backoff = prune_back_off`` and the pruner records the same
      backoff (go does both); opportunistic grafting is off (it needs peer scoring, which we
      do not configure, so it only churns).

(b) **The message cache advertises ``from‖seqno``**: ``MessageCache.put`` keys by
    ``default_msg_id_fn`` whatever ``msg_id_constructor`` Pubsub uses, so IHAVE carried
    ``from‖seqno`` ids instead of BLAKE3(data) (docs/protocol.md §1): go/js peers (and we) never
    find them in their seen cache and re-request what they have. :class:`IdMessageCache` keys
    by the Pubsub's own ``get_message_id``; the router installs it when Pubsub attaches.

Every override below names the library behaviour it replaces and has a contract test in
``tests/net/test_gossippatch.py`` that fails when py-libp2p changes that behaviour.

Remove when: py-libp2p's gossip ignores backoff, its heartbeat PRUNEs carry a backoff, its
opportunistic grafting follows the spec (every 60 heartbeats, only below a median score) and its
message cache uses the configured message id (the contract tests then fail and say which).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.mcache import CacheEntry, MessageCache
from libp2p.pubsub.pb import rpc_pb2

__all__ = ["GOSSIP_FACTOR", "GOSSIP_LAZY", "EcacGossipSub", "IdMessageCache"]

#: IHAVE targets per heartbeat and topic: at least this many non-mesh peers (all of them in a
#: mesh of at most ``HostConfig.max_connections`` = 128 connections)
GOSSIP_LAZY = 128
#: and at least this fraction of them (go-libp2p's GossipFactor)
GOSSIP_FACTOR = 0.25


class IdMessageCache(MessageCache):
    """Patch (b): the router's message cache keyed by the configured message id.

    Why: ``MessageCache.put`` keys by ``from_id + seqno`` (``default_msg_id_fn``), and IHAVE
    advertises those keys; the spec and our peers use the Pubsub message id (BLAKE3(data)).
    ``get``, ``window`` and ``shift`` only use the stored key, so only ``put`` changes.
    Remove when: ``MessageCache`` takes the message id function.
    Contract: ``test_contract_mcache_keys_by_from_and_seqno``.
    """

    def __init__(
        self, window_size: int, history_size: int, msg_id: Callable[[rpc_pb2.Message], bytes]
    ) -> None:
        super().__init__(window_size, history_size)
        self._msg_id = msg_id

    def put(self, msg: rpc_pb2.Message) -> None:
        mid = self._msg_id(msg)
        if mid in self.msgs:
            return
        self.msgs[mid] = msg
        self.history[0].append(CacheEntry(mid, msg.topicIDs))


class EcacGossipSub(GossipSub):
    """GossipSub v1.1 with the fixes of the module docstring (all other behaviour unchanged)."""

    def __init__(self, *args: Any, gossip_lazy: int = GOSSIP_LAZY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gossip_lazy = gossip_lazy

    def attach(self, pubsub: Any) -> None:
        """Patch (b): install :class:`IdMessageCache` with the Pubsub's message id function.

        Pubsub's constructor calls ``attach`` before any message exists, so nothing is lost.
        """
        super().attach(pubsub)
        self.mcache = IdMessageCache(self.mcache.window_size, self.mcache.history_size, pubsub.get_message_id)

    # ---- (a) gossip: every non-mesh subscriber, backoff or not ----------------------------

    def gossip_heartbeat(self) -> defaultdict[ID, dict[str, list[bytes]]]:
        """Patch (a): IHAVE for each topic's message-cache window to its non-mesh subscribers.

        Why: the base selects the targets with ``backoff_check=True`` (backoff only governs
        GRAFT in the spec) and at most ``max(6, 25 %)`` of them, so a subscriber outside the mesh
        may hear of a message only after several heartbeats, or, in backoff, never.
        Excluded, as in go-libp2p: mesh (or fanout) peers, direct peers, non-gossipsub peers and
        peers below the gossip score threshold. The choice among more than the target is random
        (network behaviour only; it decides nothing stored).
        Contract: ``test_contract_gossip_skips_peers_in_backoff_and_caps_at_six``.
        """
        out: defaultdict[ID, dict[str, list[bytes]]] = defaultdict(dict)
        pubsub = self.pubsub
        if pubsub is None:
            return out
        topics = [*self.mesh, *(t for t in self.fanout if t not in self.mesh)]
        for topic in topics:
            ids = self.mcache.window(topic)
            if not ids:
                continue
            exclude = self.mesh[topic] if topic in self.mesh else self.fanout.get(topic, set())
            peers = sorted(
                (
                    p
                    for p in pubsub.peer_topics.get(topic, ())
                    if p not in exclude
                    and p not in self.direct_peers
                    and self._is_gossipsub_peer(p)
                    and (self.scorer is None or self.scorer.allow_gossip(p, [topic]))
                ),
                key=lambda p: p.to_bytes(),
            )
            target = max(self.gossip_lazy, int(len(peers) * GOSSIP_FACTOR))
            if len(peers) > target:
                peers = random.sample(peers, target)
            for p in peers:
                out[p][topic] = list(ids)
        return out

    def _get_peers_to_send(
        self,
        topic_ids: Iterable[str],
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterable[ID]:
        """Patch (a): flood-publish our own messages to every subscribed gossipsub peer.

        Why: the base sends even our own messages to the mesh only; with more than D
        subscribers the others wait for gossip. go-libp2p and js-libp2p flood-publish by default
        (``floodPublish``), which is why the same star around a JS node reached every leaf.
        Forwarded messages still go to the mesh only (plus IHAVE gossip).
        Contract: ``test_contract_own_messages_go_to_the_mesh_only``.
        """
        topics = list(topic_ids)
        peers = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is None or origin != pubsub.my_id or msg_forwarder != origin:
            yield from peers
            return
        for topic in topics:
            for p in pubsub.peer_topics.get(topic, ()):
                if p == origin or not self._is_gossipsub_peer(p):
                    continue
                if msg_id is not None and msg_id in self.dont_send_message_ids.get(p, ()):
                    continue
                peers.add(p)  # the caller applies the publish score gate to every peer
        yield from peers

    # ---- (a) mesh churn ------------------------------------------------------------------

    def mesh_heartbeat(self) -> tuple[defaultdict[ID, list[str]], defaultdict[ID, list[str]]]:
        """Patch (a): the pruner backs off from the peers it prunes (go-libp2p does).

        Why: the base prunes without recording a backoff, so its opportunistic grafting (or the
        next under-D fill) re-grafts a peer that is still backing off from us, which answers
        with a PRUNE and a fresh 60 s backoff: churn.
        Contract: ``test_contract_heartbeat_prune_has_no_backoff``.
        """
        to_graft, to_prune = super().mesh_heartbeat()
        for peer, topics in to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return to_graft, to_prune

    def pack_control_msgs(
        self,
        ihave_msgs: list[rpc_pb2.ControlIHave] | None,
        graft_msgs: list[rpc_pb2.ControlGraft] | None,
        prune_msgs: list[rpc_pb2.ControlPrune] | None,
        idontwant_msgs: list[rpc_pb2.ControlIDontWant] | None = None,
    ) -> rpc_pb2.ControlMessage:
        """Patch (a): heartbeat PRUNEs carry ``backoff = prune_back_off`` (spec v1.1, go, js).

        Why: ``_emit_control_msgs`` builds ``ControlPrune(topicID=...)`` with no backoff, so the
        peer falls back to its own default and the two sides disagree on when to re-graft.
        Contract: ``test_contract_heartbeat_prune_has_no_backoff``.
        """
        for prune in prune_msgs or ():
            if prune.backoff == 0:
                prune.backoff = self.prune_back_off
        return super().pack_control_msgs(ihave_msgs, graft_msgs, prune_msgs, idontwant_msgs)

    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: defaultdict[ID, list[str]]) -> int:
        """Patch (a): no opportunistic grafting (it needs peer scoring, which we do not configure).

        Why: the base runs it every heartbeat once the mesh has D_low peers and, with default
        (permissive) score thresholds, grafts two more peers each time; the mesh grows past
        D_high and is pruned back to D at once, over and over.
        Contract: ``test_contract_opportunistic_grafting_every_heartbeat``.
        """
        return 0
