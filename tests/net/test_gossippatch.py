"""Contracts of the gossipsub router patches (``ecac.net.gossippatch``) against py-libp2p 0.8.1.

Each test runs the same situation through py-libp2p's own ``GossipSub`` and through ours, on a
Pubsub that is built but never started (no sockets): it fails when py-libp2p changes the
behaviour a patch works around (then the patch may be removable: see its "Remove when") or
renames what it overrides (then the patch would silently do nothing). The real-process check
is ``tests/integration/test_gossip_star.py``.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import blake3
import trio
from libp2p import new_host
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.mcache import MessageCache
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from ecac.net.gossip import build_router, gossip_message_id
from ecac.net.gossippatch import GOSSIP_LAZY, EcacGossipSub, IdMessageCache
from ecac.net.host import HostConfig, peer_id_from_seed
from ecac.net.p2pkeys import key_pair

TOPIC = "ecac/v1/proj/announce"
CFG = HostConfig(heartbeat_interval=0.2)
LIBP2P_VERSION = "0.8.1"


def changed(what: str) -> str:
    return f"py-libp2p changed: {what}; re-check ecac.net.gossippatch (its 'Remove when')"


def peer(n: int) -> ID:
    return ID.from_base58(peer_id_from_seed(bytes([n]) * 32))


def library_router() -> GossipSub:
    """py-libp2p's own router with the settings of ``build_router`` (D = 6, low 4, high 12)."""
    return GossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=CFG.gossip_degree,
        degree_low=CFG.gossip_degree_low,
        degree_high=CFG.gossip_degree_high,
        gossip_window=CFG.gossip_window,
        gossip_history=CFG.gossip_history,
        heartbeat_interval=1,
        spam_protection_enabled=False,
        adaptive_gossip_enabled=False,
        eclipse_protection_enabled=False,
    )


def attached(router: GossipSub, subscribers: range, mesh: range = range(0)) -> GossipSub:
    """``router`` on an offline Pubsub (host seed 1) whose topic has gossipsub peers ``subscribers``."""
    host = new_host(key_pair=key_pair(bytes([1]) * 32))
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=gossip_message_id)
    pubsub.peer_topics[TOPIC] = {peer(n) for n in subscribers}
    for n in subscribers:
        router.add_peer(peer(n), PROTOCOL_ID_V11)
    router.mesh[TOPIC] = {peer(n) for n in mesh}
    return router


def message(data: bytes = b"announce") -> rpc_pb2.Message:
    return rpc_pb2.Message(
        data=data, topicIDs=[TOPIC], from_id=peer(9).to_bytes(), seqno=(7).to_bytes(8, "big")
    )


def ihave_targets(router: GossipSub) -> set[ID]:
    return {p for p, topics in router.gossip_heartbeat().items() if TOPIC in topics}


def test_contract_libp2p_version() -> None:
    assert importlib.metadata.version("libp2p") == LIBP2P_VERSION, changed(
        "the installed version; re-run every contract below and update LIBP2P_VERSION"
    )


def test_build_router_builds_ours() -> None:
    assert type(build_router(CFG)) is EcacGossipSub


def test_contract_mcache_keys_by_from_and_seqno() -> None:
    """(b) py-libp2p advertises from‖seqno in IHAVE; ours advertises BLAKE3(data), the message id."""
    msg = message()
    theirs = MessageCache(3, 5)
    theirs.put(msg)
    assert theirs.window(TOPIC) == [msg.from_id + msg.seqno], changed("MessageCache.put's key")
    lib = attached(library_router(), range(2, 4))
    assert type(lib.mcache) is MessageCache, changed("GossipSub's message cache")
    ours = attached(build_router(CFG), range(2, 4))
    assert isinstance(ours.mcache, IdMessageCache)
    ours.mcache.put(msg)
    mid = blake3.blake3(msg.data).digest()
    assert ours.mcache.window(TOPIC) == [mid]
    assert ours.mcache.get(mid) is msg  # IWANT for the advertised id finds the message
    ours.mcache.put(msg)  # the same message again is not advertised twice
    assert ours.mcache.window(TOPIC) == [mid]
    for _ in range(CFG.gossip_history):
        ours.mcache.shift()
    assert ours.mcache.get(mid) is None and ours.mcache.window(TOPIC) == []


def test_contract_gossip_skips_peers_in_backoff_and_caps_at_six() -> None:
    """(a) IHAVE: py-libp2p skips backed-off peers and targets at most max(6, 25 %); ours: all non-mesh."""
    subscribers, mesh = range(2, 12), range(2, 3)  # 10 subscribers, 1 in the mesh, 9 outside
    lib = attached(library_router(), subscribers, mesh)
    ours = attached(build_router(CFG), subscribers, mesh)
    for router in (lib, ours):
        router.mcache.put(message())
        router._add_back_off(peer(3), TOPIC, False)
    for _ in range(5):  # the library's choice among the 8 not backed off is random
        got = ihave_targets(lib)
        assert peer(3) not in got, changed("gossip now reaches peers in backoff")
        assert len(got) == 6, changed("the number of IHAVE targets")
    assert ihave_targets(ours) == {peer(n) for n in range(3, 12)}
    assert CFG.max_connections <= GOSSIP_LAZY  # every peer a node can have


def test_contract_own_messages_go_to_the_mesh_only() -> None:
    """(a) py-libp2p sends its own messages to the mesh only; ours flood-publishes them."""
    subscribers, mesh = range(2, 12), range(2, 5)
    lib = attached(library_router(), subscribers, mesh)
    ours = attached(build_router(CFG), subscribers, mesh)
    me = peer(1)
    assert set(lib._get_peers_to_send([TOPIC], me, me)) == {peer(n) for n in mesh}, changed(
        "own messages now go beyond the mesh (flood publish)"
    )
    assert set(ours._get_peers_to_send([TOPIC], me, me)) == {peer(n) for n in subscribers}
    # a forwarded message still goes to the mesh only, minus its forwarder and originator
    assert set(ours._get_peers_to_send([TOPIC], peer(2), peer(7))) == {peer(3), peer(4)}
    # a peer that sent IDONTWANT for it is skipped
    ours.dont_send_message_ids[peer(9)] = {b"mid"}
    assert peer(9) not in set(ours._get_peers_to_send([TOPIC], me, me, b"mid"))
    assert "_get_peers_to_send(" in inspect.getsource(GossipSub.publish), changed("publish's peer choice")


def test_contract_heartbeat_prune_has_no_backoff() -> None:
    """(a) py-libp2p prunes above D_high without a backoff field or a local backoff; ours sets both."""
    subscribers = range(2, 16)  # 14 > D_high = 12 in the mesh
    lib = attached(library_router(), subscribers, subscribers)
    ours = attached(build_router(CFG), subscribers, subscribers)
    _, lib_pruned = lib.mesh_heartbeat()
    assert len(lib_pruned) == len(subscribers) - CFG.gossip_degree, changed("pruning down to D")
    assert not any(lib._check_back_off(p, TOPIC) for p in lib_pruned), changed(
        "the pruner now backs off from the peers it prunes"
    )
    source = inspect.getsource(GossipSub._emit_control_msgs)
    assert "rpc_pb2.ControlPrune(topicID=topic)" in source, changed("how heartbeat PRUNEs are built")
    assert "self.pack_control_msgs(" in source, changed("heartbeat control messages are no longer packed")
    theirs = lib.pack_control_msgs(None, None, [rpc_pb2.ControlPrune(topicID=TOPIC)])
    assert theirs.prune[0].backoff == 0, changed("PRUNE packing now sets a backoff")
    _, pruned = ours.mesh_heartbeat()
    assert len(pruned) == len(subscribers) - CFG.gossip_degree
    assert all(ours._check_back_off(p, TOPIC) for p in pruned)
    packed = ours.pack_control_msgs(None, None, [rpc_pb2.ControlPrune(topicID=TOPIC)])
    assert packed.prune[0].backoff == ours.prune_back_off > 0
    explicit = ours.pack_control_msgs(None, None, [rpc_pb2.ControlPrune(topicID=TOPIC, backoff=10)])
    assert explicit.prune[0].backoff == 10  # an unsubscribe's own backoff is kept


def test_contract_opportunistic_grafting_every_heartbeat() -> None:
    """(a) py-libp2p grafts two more peers every heartbeat once the mesh has D_low; ours does not."""
    subscribers, mesh = range(2, 12), range(2, 2 + CFG.gossip_degree_low)
    lib = attached(library_router(), subscribers, mesh)
    ours = attached(build_router(CFG), subscribers, mesh)
    grafted, _ = lib.mesh_heartbeat()
    assert len(grafted) == 2, changed("opportunistic grafting")
    assert "_perform_opportunistic_grafting(" in inspect.getsource(GossipSub.mesh_heartbeat), changed(
        "who grafts opportunistically"
    )
    grafted, _ = ours.mesh_heartbeat()
    assert not grafted
    assert ours.mesh[TOPIC] == {peer(n) for n in mesh}


def test_contract_ihave_of_a_message_the_peer_has_makes_it_ask_again() -> None:
    """(b) end to end: py-libp2p's IHAVE ids are never in the receiver's seen cache (keyed by BLAKE3),
    so it sends IWANT for a message it already has; ours it recognises."""
    msg = message()

    def iwants_for(sender: GossipSub) -> list[bytes]:
        sender.mcache.put(msg)
        ids = sender.gossip_heartbeat()[peer(2)][TOPIC]
        receiver = attached(build_router(CFG), range(3, 4))
        assert receiver.pubsub is not None
        receiver.pubsub.seen_messages.add(gossip_message_id(msg))  # the receiver has the message
        asked: list[bytes] = []

        async def emit_iwant(msg_ids: list[bytes], to_peer: ID) -> None:
            asked.extend(msg_ids)

        receiver.emit_iwant = emit_iwant  # type: ignore[method-assign]
        trio.run(receiver.handle_ihave, rpc_pb2.ControlIHave(topicID=TOPIC, messageIDs=ids), peer(9))
        return asked

    assert iwants_for(attached(library_router(), range(2, 3))) == [msg.from_id + msg.seqno], changed(
        "IHAVE of a known message no longer triggers IWANT"
    )
    assert iwants_for(attached(build_router(CFG), range(2, 3))) == []
