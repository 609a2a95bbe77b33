"""A simulated network for the sans-I/O sync core: no sockets, a simulated monotonic clock.

Each ``SimNode`` holds a ``MemoryOpStore`` and a ``SyncCoordinator``. The simulator plays
the I/O layer of the node exactly as ``ecac.sync.peersync`` documents it:

* gossip: ``PublishAnnounce`` goes to every neighbour; receivers validate, deliver and
  forward (multi-hop, with a per-node seen cache like gossipsub). Announces may be
  dropped, duplicated and reordered (random latency);
* requests: ``SendRequest`` reaches the peer after a latency (or is lost), the peer serves
  it with ``ecac.sync.syncserve`` and the blobs travel back as a stream, split at random points
  so the ``FrameReader`` sees partial frames. A batch may arrive twice, a stream may be
  cut (EOF without trailer) or stall (the requester's idle timeout fires); the next blob
  is read only when the requester is ``accepting`` (back-pressure);
* commits: ``CommitOps`` run through ``apply_commit`` on a per-node FIFO worker with a
  delay, then ``commit_finished``;
* links go down and up (partitions, heals, ``Disconnect``); timers fire at
  ``next_wakeup``.

Everything random comes from one ``random.Random(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ecac.core.codec import b2l, dumps
from ecac.core.errors import ProtocolError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, header_obj, make_op
from ecac.core.opcodec import decode_op
from ecac.store.memory import MemoryOpStore
from ecac.sync.peersync import (
    CancelRequest,
    CommitOps,
    Disconnect,
    Effect,
    Penalise,
    PublishAnnounce,
    SendRequest,
    SyncConfig,
    SyncCoordinator,
    apply_commit,
)
from ecac.sync.syncserve import plan_response, response_blobs
from ecac.sync.wire import (
    FrameReader,
    OpBytes,
    SyncRequest,
    decode_rpc_frame,
    encode_frame,
    gossip_message_id,
)

#: fast timers so that simulated runs cover many rounds
SIM_CONFIG = SyncConfig(
    announce_debounce=0.05,
    anti_entropy_period=0.2,
    idle_timeout=1.0,
    request_deadline=5.0,
    backoff_base=0.05,
    backoff_max=1.0,
    ban_period=2.0,
    want_ttl=10.0,
)


@dataclass(slots=True)
class Faults:
    """Per-message fault probabilities (0 = reliable network)."""

    drop_announce: float = 0.0
    dup_announce: float = 0.0
    cut_stream: float = 0.0
    stall_stream: float = 0.0
    drop_request: float = 0.0  # the request is lost: nothing ever comes back (idle timeout)
    dup_batch: float = 0.0  # a response batch (not the last) is delivered twice: duplicates in one response
    latency: tuple[float, float] = (0.001, 0.03)


@dataclass(slots=True)
class _Stream:
    requester: str
    server: str
    rid: int
    chunks: list[bytes]
    ending: str  # "eof", "cut" or "stall"
    reader: FrameReader
    pos: int = 0
    dead: bool = False


@dataclass(slots=True)
class SimNode:
    name: str
    idx: int
    store: MemoryOpStore
    coord: SyncCoordinator
    tamper: str | None = None  # None, "bad_sig" or "child_first": how this node corrupts what it serves
    seen: set[bytes] = field(default_factory=set)
    commit_free_at: float = 0.0
    timer_at: float | None = None
    writes: int = 0
    penalties: list[tuple[str, str]] = field(default_factory=list)
    published: int = 0


class SimNet:
    """Discrete-event simulation of ``n`` nodes; see the module docstring."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        config: SyncConfig = SIM_CONFIG,
        faults: Faults | None = None,
        gossip: bool = True,
        server_config: SyncConfig | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.faults = faults or Faults()
        self.gossip = gossip
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.links: set[frozenset[str]] = set()
        self.nodes: dict[str, SimNode] = {}
        self.streams: dict[tuple[str, int], _Stream] = {}
        self.sent_requests: list[tuple[str, SendRequest]] = []
        self.server_config = server_config
        for i in range(n):
            name = f"n{i}"
            sk = key_pair(i, b"sim-node")
            store = MemoryOpStore()
            self.nodes[name] = SimNode(name, i, store, SyncCoordinator(store, sk, config))
        for node in self.nodes.values():
            self._apply(node, node.coord.start(self.now))

    # ------------------------------------------------------------------ scheduling

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn))

    def _latency(self) -> float:
        lo, hi = self.faults.latency
        return self.rng.uniform(lo, hi)

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_converged(self, limit: float, step: float = 0.5) -> bool:
        """Run until every node holds the same complete ops and is idle, or ``limit`` seconds pass."""
        end = self.now + limit
        while self.now < end:
            self.run_for(step)
            if self.converged():
                return True
        return self.converged()

    def converged(self) -> bool:
        stores = [n.store for n in self.nodes.values()]
        first = stores[0].topo_ids()
        return all(s.op_count() == s.complete_count() for s in stores) and all(
            s.topo_ids() == first for s in stores[1:]
        )

    # ------------------------------------------------------------------ topology

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.links

    def neighbours(self, a: str) -> list[str]:
        return sorted(b for b in self.nodes if b != a and self.linked(a, b))

    def connect(self, a: str, b: str) -> None:
        if a == b or self.linked(a, b):
            return
        self.links.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            self._apply(node, node.coord.peer_connected(y, self.now))
            if self.linked(a, b):
                self._apply(node, node.coord.peer_subscribed(y, self.now))

    def disconnect(self, a: str, b: str) -> None:
        if not self.linked(a, b):
            return
        self.links.discard(frozenset((a, b)))
        for st in self.streams.values():
            if {st.requester, st.server} == {a, b}:
                st.dead = True
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            self._apply(node, node.coord.peer_disconnected(y, self.now))

    def set_topology(self, edges: Iterable[tuple[str, str]]) -> None:
        want = {frozenset(e) for e in edges}
        for link in sorted(self.links - want, key=sorted):
            self.disconnect(*sorted(link))
        for link in sorted(want - self.links, key=sorted):
            self.connect(*sorted(link))

    def full_mesh(self) -> None:
        names = sorted(self.nodes)
        self.set_topology((a, b) for i, a in enumerate(names) for b in names[i + 1 :])

    def line(self) -> None:
        names = sorted(self.nodes, key=lambda x: self.nodes[x].idx)
        self.set_topology(itertools.pairwise(names))

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Full mesh inside each group, no link across groups."""
        self.set_topology((a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1 :])

    # ------------------------------------------------------------------ local writes

    def write(self, name: str, count: int = 1, max_parents: int = 2) -> list[Op]:
        """``count`` new ops on ``name`` whose parents are random heads of its store."""
        node = self.nodes[name]
        sk = key_pair(node.idx, b"sim-author")
        out: list[Op] = []
        for _ in range(count):
            heads = node.store.heads(8)
            k = min(len(heads), self.rng.randint(1, max_parents))
            parents = self.rng.sample(heads, k) if k else []
            node.writes += 1
            hlc = Hlc(1000 + self.rng.randrange(10_000), self.rng.randrange(3), node.idx)
            key = f"mv:o{self.rng.randrange(3)}:f{self.rng.randrange(2)}"
            op = make_op(sk, parents, hlc, Data(key, f"{name}-{node.writes}".encode()))
            node.store.put_many([op])
            out.append(op)
        self._apply(node, node.coord.local_write(self.now))
        return out

    # ------------------------------------------------------------------ effects

    def _apply(self, node: SimNode, effects: Sequence[Effect]) -> None:
        for e in effects:
            if isinstance(e, PublishAnnounce):
                node.published += 1
                if self.gossip:
                    node.seen.add(gossip_message_id(e.data))
                    self._gossip(node.name, node.name, e.data)
            elif isinstance(e, SendRequest):
                self.sent_requests.append((node.name, e))
                self._send_request(node, e)
            elif isinstance(e, CommitOps):
                self._commit(node, e)
            elif isinstance(e, CancelRequest):
                st = self.streams.get((node.name, e.request_id))
                if st is not None:
                    st.dead = True
            elif isinstance(e, Penalise):
                node.penalties.append((e.peer, e.reason))
            elif isinstance(e, Disconnect):
                self.disconnect(node.name, e.peer)
            else:  # pragma: no cover - every effect type is handled above
                raise AssertionError(f"unknown effect {e!r}")
        self._arm_timer(node)

    def _arm_timer(self, node: SimNode) -> None:
        t = node.coord.next_wakeup()
        if t is None:
            return
        t = max(t, self.now)
        if node.timer_at is not None and self.now <= node.timer_at <= t:
            return
        node.timer_at = t

        def fire() -> None:
            if node.timer_at == t:
                node.timer_at = None
            self._apply(node, node.coord.timer(self.now))

        self._at(t, fire)

    # ------------------------------------------------------------------ gossip

    def _gossip(self, origin: str, sender: str, data: bytes) -> None:
        for peer in self.neighbours(sender):
            if peer == origin:
                continue
            copies = 0 if self.rng.random() < self.faults.drop_announce else 1
            if copies and self.rng.random() < self.faults.dup_announce:
                copies = 2
            for _ in range(copies):
                self._at(
                    self.now + self._latency(), lambda p=peer: self._deliver_announce(origin, sender, p, data)
                )

    def _deliver_announce(self, origin: str, sender: str, to: str, data: bytes) -> None:
        if not self.linked(sender, to):
            return
        node = self.nodes[to]
        mid = gossip_message_id(data)
        if mid in node.seen:
            return
        node.seen.add(mid)
        sa = node.coord.validate_announce(data)
        if sa is None:
            return  # rejected: not delivered, not forwarded
        self._apply(node, node.coord.announce_received(origin, sa, sender, self.now))
        self._gossip(origin, to, data)

    def deliver_announce_directly(self, to: str, origin: str, data: bytes) -> list[Effect]:
        """Bypass gossip dedup (duplicate-storm tests); returns the effects after applying them."""
        node = self.nodes[to]
        sa = node.coord.validate_announce(data)
        assert sa is not None
        effects = node.coord.announce_received(origin, sa, origin, self.now)
        self._apply(node, effects)
        return effects

    # ------------------------------------------------------------------ requests and streams

    def _send_request(self, node: SimNode, e: SendRequest) -> None:
        if not self.linked(node.name, e.peer):
            self._at(
                self.now + self._latency(),
                lambda: self._apply(node, node.coord.request_failed(e.request_id, "dial failed", self.now)),
            )
            return
        frame = e.frame()
        if self.rng.random() < self.faults.drop_request:
            return
        self._at(self.now + self._latency(), lambda: self._serve(node.name, e.peer, e.request_id, frame))

    def _serve(self, requester: str, server: str, rid: int, frame: bytes) -> None:
        if not self.linked(requester, server):
            req = self.nodes[requester]
            self._apply(req, req.coord.request_failed(rid, "stream reset", self.now))
            return
        srv = self.nodes[server]
        reader = FrameReader(64 * 1024)
        (body,) = reader.feed(frame)
        cfg = self.server_config or srv.coord.config
        plan = plan_response(srv.store, SyncRequest.decode(body), cfg.server_max_ops)
        blobs = list(response_blobs(srv.store, plan, cfg.batch_ops, cfg.max_frame))
        if srv.tamper is not None:
            blobs = self._tampered(blobs, srv.tamper)
        if self.faults.dup_batch:
            doubled: list[bytes] = []
            for i, blob in enumerate(blobs):
                doubled.append(blob)
                if i < len(blobs) - 1 and self.rng.random() < self.faults.dup_batch:
                    doubled.append(blob)
            blobs = doubled
        chunks: list[bytes] = []
        for blob in blobs:  # split at random points: partial frames for the reader
            cuts = (
                sorted(self.rng.sample(range(1, len(blob)), min(2, len(blob) - 1))) if len(blob) > 2 else []
            )
            prev = 0
            for c in [*cuts, len(blob)]:
                chunks.append(blob[prev:c])
                prev = c
        ending = "eof"
        r = self.rng.random()
        if r < self.faults.cut_stream:
            ending = "cut"
        elif r < self.faults.cut_stream + self.faults.stall_stream:
            ending = "stall"
        if ending != "eof" and chunks:
            chunks = chunks[: self.rng.randrange(len(chunks))]
        st = _Stream(
            requester, server, rid, chunks, ending, FrameReader(self.nodes[requester].coord.config.max_frame)
        )
        self.streams[(requester, rid)] = st
        self._at(self.now + self._latency(), lambda: self._pump_stream(st))

    @staticmethod
    def _tampered(blobs: list[bytes], how: str) -> list[bytes]:
        """Corrupt a response: forge an op (new payload, old id and sig) or put a child before its parent."""
        reader = FrameReader()
        bodies = [b for blob in blobs for b in reader.feed(blob)]
        frames = [decode_rpc_frame(b) for b in bodies]
        op_idx = [i for i, f in enumerate(frames) if isinstance(f, OpBytes)]
        if not op_idx:
            return blobs
        if how == "bad_sig":
            i = op_idx[len(op_idx) // 2]
            f = frames[i]
            assert isinstance(f, OpBytes)
            op = decode_op(f.data)
            forged = dumps(
                {
                    "header": header_obj(op.parents, op.hlc, op.author_pk, Data("mv:o0:f0", b"forged")),
                    "sig": b2l(op.sig),
                    "op_id": b2l(op.op_id),
                }
            )
            bodies[i] = OpBytes(forged).encode()
        elif how == "child_first" and len(op_idx) >= 2:
            i, j = op_idx[0], op_idx[-1]
            bodies[i], bodies[j] = bodies[j], bodies[i]
        return [b"".join(encode_frame(b) for b in bodies)]

    def _pump_stream(self, st: _Stream) -> None:
        node = self.nodes[st.requester]
        if st.dead:
            return
        if not self.linked(st.requester, st.server):
            st.dead = True
            self._apply(node, node.coord.request_failed(st.rid, "connection reset", self.now))
            return
        if st.pos < len(st.chunks):
            if not node.coord.accepting(st.rid) and node.coord.request_peer(st.rid) is not None:
                self._at(self.now + 0.002, lambda: self._pump_stream(st))  # back-pressure
                return
            chunk = st.chunks[st.pos]
            st.pos += 1
            try:
                bodies = st.reader.feed(chunk)
            except ProtocolError as e:
                st.dead = True
                self._apply(node, node.coord.request_failed(st.rid, str(e), self.now, violation=True))
                return
            self._apply(node, node.coord.frames_received(st.rid, bodies, self.now))
            self._at(self.now + self._latency() / 4, lambda: self._pump_stream(st))
            return
        if st.ending == "stall":
            return  # never another byte: the requester's idle timeout must fire
        st.dead = True
        with contextlib.suppress(ProtocolError):
            st.reader.eof()  # truncated inside a frame: a failure, not penalised (see peersync)
        self._apply(node, node.coord.stream_closed(st.rid, self.now))

    # ------------------------------------------------------------------ commits

    def _commit(self, node: SimNode, e: CommitOps) -> None:
        start = max(self.now, node.commit_free_at)
        done = start + self.rng.uniform(0.0005, 0.005)
        node.commit_free_at = done

        def finish() -> None:
            outcome = apply_commit(node.store, e)
            self._apply(node, node.coord.commit_finished(outcome, self.now))

        self._at(done, finish)
