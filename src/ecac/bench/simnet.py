"""A simulated network for the sans-I/O sync core: no sockets, a simulated clock, real writer threads.

Used by the sync tests (``tests/sync/test_sim_sync.py``, through ``tests/sim/simnet.py``), the
simulated-network tests (``tests/sim``) and ``ecac bench --scenario sim`` (``ecac.bench.sim``). It
lives in ``ecac.bench`` rather than ``ecac.testing`` because it drives the node's commit path
(``ecac.net.writeio.apply_commit``) and ``ecac.net`` already imports ``ecac.testing``.

Each ``SimNode`` holds a ``MemoryOpStore``, a ``SimWriter`` (its one writer thread) and a
``SyncCoordinator`` built on the store's live index (``IndexFacts``) and the writer's
snapshots. The simulator plays the I/O layer of the node exactly as
``ecac.sync.coordinator`` documents it:

* gossip: ``PublishAnnounce`` goes to the node's gossip mesh peers (its links: every topology
  used here keeps a node's links within gossipsub's mesh bounds, D_hi = 12, except a star's
  centre) and each receiver validates, delivers and forwards a new message to its own mesh
  peers (multi-hop, one latency per hop, deduplicated by message id like gossipsub's seen
  cache, kept as one bit per node and message). So every node receives every announce once,
  as a gossipsub subscriber does, at about mean-degree copies. Announces may be dropped,
  duplicated and reordered (random latency);
* requests: ``SendRequest`` reaches the peer after a latency (or is lost), the peer serves
  it with ``ecac.sync.syncserve`` over its live facts and its writer's latest snapshot, and
  the blobs travel back as a stream, split at random points so the ``FrameReader`` sees
  partial frames. A batch may arrive twice, a stream may be cut (EOF without trailer) or
  stall (the requester's idle timeout fires); the next blob is read only when the
  requester is ``accepting`` (back-pressure);
* commits and local writes: ``CommitOps`` (and ``write``) go to the node's writer thread
  at once; it sleeps a seeded random delay, runs ``put_many`` and publishes
  ``take_snapshot(store.index, seq)``, **while the event loop goes on** delivering frames,
  announces and timers and reading the same store's facts from this thread. The outcome
  is reported (``commit_finished`` / ``snapshot_changed``) at a simulated time drawn when
  the commit was handed over, in FIFO order; the loop waits for the thread only then;
* links go down and up (partitions, heals, ``Disconnect``); timers fire at
  ``next_wakeup``; ``restart`` replaces a coordinator as the node's supervisor would;
* set reconciliation (``reconcile=True``): each node runs the node's ``/ecac/reconcile/1``
  policy (``ecac.sync.reconcile_sched.ReconcileSchedule``, the one ``ecac.net.reconcile``
  uses), polled as the node's loop polls it: every ``POLL_PERIOD`` (200 ms) from a seeded
  random phase per node, the anti-entropy tick from a seeded random instant (only the polls
  that can start something are simulated: the first after a link change and the first at or
  after the tick). A node starts a session on link-up when its name is the smaller one, and on
  the tick with every neighbour whose last announce (the coordinator's ``PeerState``) differs
  from its writer's latest snapshot or that never announced; one per peer, at most
  ``MAX_SESSIONS`` at once. A session is two real ``Reconciler`` s over the two writers'
  snapshots at its start exchanging the real encoded frames (length-prefixed, read back by a
  ``FrameReader``), each after one latency (stream negotiation is not modelled, as for sync
  requests); the responder accepts or refuses (``accept``; the reset reaches the initiator a
  latency later) when the first frame arrives. A side done with nothing to send half-closes
  (its peer sees EOF a latency later). Each side, when it ends, is counted (``SimNode.rc``, the
  node's ``ReconcileCounters``) and hands the ids it lacks to ``coordinator.reconciled``, whose
  effects are carried out as any others. A link going down fails the sessions across it at
  both ends (``reconcile_failures``; the ids found before are kept, as the node does). Stream
  cuts, stalls and lost requests of ``Faults`` are not applied to reconcile streams; delay and
  loss are;
* network conditions (``Faults.delay``, ``Faults.loss``): every message (announce, request,
  stream chunk, reconcile frame) may carry a fixed one-way delay, and with probability ``loss``
  it needs a TCP retransmission that adds ``rto`` — libp2p runs gossip and sync over TCP, so a lost packet
  delays the bytes behind it instead of dropping a message (``tc netem delay 100ms loss 1%``);
* at scale (``threaded=False``) each writer runs its jobs inline on the loop thread when they
  are submitted (same reports, same order, no thread per node); with ``tick`` > 0 every event
  time is rounded up to a multiple of ``tick`` and the events of one tick are handled as a
  batch: a node's timer is re-armed (``next_wakeup``) once per tick, not after every event;
  ``stats`` counts messages and bytes of every kind.

What the loop decides comes from one ``random.Random(seed)``; each writer has its own
seeded generator for its delays. Thread timing decides only what the loop *sees* of a
store that a commit is changing (a fact may turn true before its commit is reported), so
the outcome checks — convergence, digests, penalties, duplicate bounds — hold for every
interleaving, and ``SimNode.overlaps`` counts the events handled while that node's writer
was mid-commit (the interleavings actually exercised).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from ecac.core.codec import b2l, dumps
from ecac.core.errors import ProtocolError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, header_obj, make_op
from ecac.core.opcodec import decode_op
from ecac.core.snapshot import StoreSnapshot, take_snapshot
from ecac.net.writeio import apply_commit
from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig, SyncCoordinator
from ecac.sync.effects import (
    CancelRequest,
    CommitOps,
    Disconnect,
    Effect,
    Penalise,
    PublishAnnounce,
    SendRequest,
)
from ecac.sync.reconcile import ReconcileLimits, Reconciler
from ecac.sync.reconcile_sched import POLL_PERIOD, ReconcileCounters, ReconcileSchedule, count_session
from ecac.sync.syncserve import plan_response, response_blobs
from ecac.sync.wire import (
    FrameReader,
    OpBytes,
    SignedAnnounce,
    SyncRequest,
    decode_rpc_frame,
    encode_frame,
    gossip_message_id,
)

T = TypeVar("T")


class _KnownAnnounce(SignedAnnounce):
    """A validated announce with its message id computed once: the simulator hands the same announce to
    every node, and ``SignedAnnounce.message_id`` re-encodes it on every call (same bytes either way)."""

    __slots__ = ("_mid",)
    _mid: bytes

    @staticmethod
    def of(sa: SignedAnnounce, mid: bytes) -> _KnownAnnounce:
        if sa.message_id() != mid:
            raise AssertionError("the announce's message id is not the gossip message id of its bytes")
        ka = _KnownAnnounce(sa.announce, sa.sig, sa.vk)
        object.__setattr__(ka, "_mid", mid)
        return ka

    def message_id(self) -> bytes:
        return self._mid


# --------------------------------------------------------------------------- the store adapter


class SimWriter:
    """One node's writer thread: owns every mutation of its store and publishes a snapshot after each job.

    Jobs run in submission order, each after a random delay from the writer's own seeded
    generator (``max_delay`` seconds at most; half of them only yield the GIL). ``snapshot``
    is the latest published snapshot (one reference assignment, read without a lock);
    ``busy`` is true while a job runs.
    """

    def __init__(self, store: MemoryOpStore, seed: int, max_delay: float = 0.001, name: str = "") -> None:
        self.store = store
        self.max_delay = max_delay
        self._rng = random.Random(seed)  # used on the writer thread only
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._seq = 0
        self.snapshot: StoreSnapshot = take_snapshot(store.index, 0)
        self.busy = False
        self.started = 0  # jobs begun (the writer thread counts; the loop only compares)
        self.jobs_done = 0
        self._thread = threading.Thread(target=self._run, name=f"sim-writer-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[tuple[T, StoreSnapshot]]:
        """Run ``fn`` (a store mutation) on the writer thread; the future gives its result and snapshot."""
        fut: Future[tuple[T, StoreSnapshot]] = Future()
        self._jobs.put((fn, fut))
        return fut

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if self._rng.random() < 0.5:
                time.sleep(0)
            else:
                time.sleep(self._rng.uniform(0.0, self.max_delay))
            self.started += 1
            self.busy = True
            try:
                result = fn()
                self._seq += 1
                snap = take_snapshot(self.store.index, self._seq)
                self.snapshot = snap
            except BaseException as e:  # reported to the loop, which fails the test
                self.busy = False
                fut.set_exception(e)
                continue
            self.busy = False
            self.jobs_done += 1
            fut.set_result((result, snap))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


class InlineWriter:
    """``SimWriter`` without a thread: each job runs when it is submitted (networks of 1,000 nodes)."""

    def __init__(self, store: MemoryOpStore) -> None:
        self.store = store
        self._seq = 0
        self.snapshot: StoreSnapshot = take_snapshot(store.index, 0)
        self.busy = False
        self.started = 0
        self.jobs_done = 0

    def submit(self, fn: Callable[[], T]) -> Future[tuple[T, StoreSnapshot]]:
        fut: Future[tuple[T, StoreSnapshot]] = Future()
        self.started += 1
        try:
            result = fn()
            self._seq += 1
            self.snapshot = take_snapshot(self.store.index, self._seq)
        except BaseException as e:  # reported to the loop, which fails the run
            fut.set_exception(e)
            return fut
        self.jobs_done += 1
        fut.set_result((result, self.snapshot))
        return fut

    def close(self) -> None:
        return None


#: a writer job due for reporting but still running is polled for this long (simulated seconds) before the
#: loop waits for it: meanwhile the loop keeps handling events while the writer changes the store
REPORT_LAG_MAX = 0.01
POLL_STEP = 0.00025
POLL_SLEEP = 0.00005

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
    delay: float = 0.0  # fixed one-way delay of every message (netem ``delay``)
    loss: float = 0.0  # probability that a message needs a TCP retransmission (netem ``loss``)
    rto: float = 0.2  # what a retransmission adds (Linux's minimum retransmission timeout)


def netem(delay: float = 0.1, loss: float = 0.01) -> Faults:
    """The delay/loss model of ``tc qdisc … netem delay 100ms loss 1%`` (see the module docstring)."""
    return Faults(latency=(0.0, 0.002), delay=delay, loss=loss)


@dataclass(slots=True)
class SimStats:
    """Messages and payload bytes the simulated network carried (each transfer counted once)."""

    announces: int = 0  # announce copies sent to a neighbour (relayed copies included)
    announce_bytes: int = 0
    requests: int = 0  # sync requests that reached a server
    request_bytes: int = 0
    responses: int = 0
    response_frames: int = 0  # frames in the responses (OpBytes + trailers)
    response_bytes: int = 0
    reconcile_sessions: int = 0  # /ecac/reconcile/1 sessions opened (one per pair and session)
    reconcile_refused: int = 0  # of them refused by the responder (a session with the pair ran already)
    reconcile_frames: int = 0  # their frames, both directions
    reconcile_bytes: int = 0  # with their 4-byte length prefixes

    @property
    def messages(self) -> int:
        return self.announces + self.requests + self.response_frames + self.reconcile_frames

    @property
    def bytes(self) -> int:
        return self.announce_bytes + self.request_bytes + self.response_bytes + self.reconcile_bytes


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


@dataclass(slots=True, eq=False)
class _RecSession:
    """One ``/ecac/reconcile/1`` session: ``a`` initiates, ``b`` responds (compared by identity)."""

    a: str
    b: str
    ra: Reconciler
    rb: Reconciler | None = None  # made when the first frame reaches ``b`` and it accepts
    readers: dict[str, FrameReader] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # sides that ended (and were counted)
    dead: bool = False  # reset (refused, link down, bad frame): nothing more is delivered

    def other(self, side: str) -> str:
        return self.b if side == self.a else self.a

    def rec(self, side: str) -> Reconciler | None:
        return self.ra if side == self.a else self.rb

    @property
    def over(self) -> bool:
        return self.dead or len(self.ended) == (1 if self.rb is None else 2)


@dataclass(frozen=True, slots=True)
class _Report:
    due: float  # simulated time before which the outcome is not reported
    fut: Future[tuple[Any, StoreSnapshot]]
    event: Callable[[Any, StoreSnapshot], list[Effect]]


@dataclass(slots=True)
class SimNode:
    name: str
    idx: int
    store: MemoryOpStore
    writer: SimWriter | InlineWriter
    coord: SyncCoordinator
    tamper: str | None = None  # None, "bad_sig" or "child_first": how this node corrupts what it serves
    commit_free_at: float = 0.0
    timer_at: float | None = None
    writes: int = 0
    penalties: list[tuple[str, str]] = field(default_factory=list)
    published: int = 0
    outstanding: int = 0  # writer jobs whose outcome the coordinator has not been told yet
    reported: int = 0  # writer jobs whose outcome it has been told
    overlaps: int = 0  # events reading this node's store while its writer changed it
    ahead: int = 0  # events handled while the facts were ahead of what the coordinator was told
    restarts: int = 0
    reports: deque[_Report] = field(default_factory=deque)  # writer jobs to report, FIFO
    polling: bool = False
    sched: ReconcileSchedule | None = None  # when to reconcile (None: reconciliation off)
    rc: ReconcileCounters = field(default_factory=ReconcileCounters)
    rec_phase: float = 0.0  # its reconcile loop polls at rec_phase + k × POLL_PERIOD
    rec_poll_at: float | None = None  # the pending poll (None: none)


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
        writer_delay: float = 0.001,
        threaded: bool = True,
        tick: float = 0.0,
        reconcile: bool = False,
        reconcile_limits: ReconcileLimits | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.faults = faults or Faults()
        self.gossip = gossip
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._marks: list[tuple[SimNode, bool, int]] = []
        self._seq = 0
        self.links: set[frozenset[str]] = set()
        self._adj: dict[str, set[str]] = {}  # the links as adjacency sets (fast at 1,000 nodes)
        self._sorted_adj: dict[str, list[str]] = {}
        self.nodes: dict[str, SimNode] = {}
        self.streams: dict[tuple[str, int], _Stream] = {}
        self.sent_requests: list[tuple[str, SendRequest]] = []
        self.server_config = server_config
        self.stats = SimStats()
        self.tick = tick
        self.threaded = threaded
        self._dirty: dict[int, SimNode] = {}  # nodes whose timer is re-armed at the end of the tick
        self._valid: dict[bytes, SignedAnnounce] = {}
        self._seen: dict[bytes, bytearray] = {}  # message id -> one bit per node that has seen it
        self._seen_len = (n + 7) // 8
        self.reconcile = reconcile
        self.reconcile_limits = reconcile_limits or ReconcileLimits()
        self._rec_pairs: dict[frozenset[str], list[_RecSession]] = {}  # sessions by pair of nodes
        for i in range(n):
            name = f"n{i}"
            sk = key_pair(i, b"sim-node")
            store = MemoryOpStore()
            writer: SimWriter | InlineWriter = (
                SimWriter(store, seed * 1009 + i, writer_delay, name) if threaded else InlineWriter(store)
            )
            coord = SyncCoordinator(sk, store.index, config, writer.snapshot)
            self.nodes[name] = SimNode(name, i, store, writer, coord)
        for node in self.nodes.values():
            self._apply(node, node.coord.start(self.now))
        if reconcile:
            period = config.anti_entropy_period
            for node in self.nodes.values():  # the nodes did not start at the same instant
                node.sched = ReconcileSchedule(period)
                node.rec_phase = self.now + self.rng.uniform(0.0, POLL_PERIOD)
                node.sched.start(node.name, self.now + self.rng.uniform(0.0, period))
                self._rec_poll_at(node, node.sched.next_tick)

    def close(self) -> None:
        """Stop the writer threads (and the stores' verify pools)."""
        for node in self.nodes.values():
            node.writer.close()
            node.store.verify_pool.close()

    def __enter__(self) -> SimNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ scheduling

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        if self.tick:  # the next tick boundary, never before ``t`` (a timer must not fire early)
            r = math.ceil(t / self.tick) * self.tick
            t = r if r >= t else r + self.tick
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn))

    def _latency(self) -> float:
        """One message's one-way latency: jitter, plus the fixed delay and a retransmission if modelled."""
        f = self.faults
        lo, hi = f.latency
        t = self.rng.uniform(lo, hi)
        if f.delay:
            t += f.delay
        if f.loss and self.rng.random() < f.loss:
            t += f.rto
        return t

    def _chunk_gap(self) -> float:
        """Time between two chunks of one stream: they are pipelined, only a retransmission adds to it."""
        f = self.faults
        if not (f.delay or f.loss):
            return self._latency() / 4
        lo, hi = f.latency
        t = self.rng.uniform(lo, hi) / 4
        if f.loss and self.rng.random() < f.loss:
            t += f.rto
        return t

    def run_until(self, t: float) -> None:
        self._flush_timers()
        while self._queue and self._queue[0][0] <= t:
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()
            for node, busy, started in self._marks:
                w = node.writer
                if busy or w.busy or w.started != started:
                    node.overlaps += 1
            self._marks.clear()
            if self._dirty and (not self._queue or self._queue[0][0] > when):
                self._flush_timers()  # the tick's last event: arm the timers it changed
        self.now = max(self.now, t)

    def _flush_timers(self) -> None:
        while self._dirty:
            _, node = self._dirty.popitem()
            self._arm_timer(node)

    def _reading(self, node: SimNode) -> None:
        """The current event reads ``node``'s store: count the interleaving it meets (see ``run_until``)."""
        w = node.writer
        self._marks.append((node, w.busy, w.started))
        if w.jobs_done > node.reported:
            node.ahead += 1

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
        """Every writer job reported, and every store holds the same complete ops (and no others)."""
        if any(n.outstanding for n in self.nodes.values()):
            return False
        stores = [n.store for n in self.nodes.values()]  # the writers are idle: safe to iterate
        first = stores[0].topo_ids()
        return all(s.op_count() == s.complete_count() for s in stores) and all(
            s.topo_ids() == first for s in stores[1:]
        )

    # ------------------------------------------------------------------ topology

    def linked(self, a: str, b: str) -> bool:
        return b in self._adj.get(a, ())

    def neighbours(self, a: str) -> list[str]:
        """``a``'s links in name order (cached until its links change: gossip asks for every copy)."""
        out = self._sorted_adj.get(a)
        if out is None:
            out = self._sorted_adj[a] = sorted(self._adj.get(a, ()))
        return out

    def connect(self, a: str, b: str) -> None:
        if a == b or self.linked(a, b):
            return
        self.links.add(frozenset((a, b)))
        self._adj.setdefault(a, set()).add(b)
        self._adj.setdefault(b, set()).add(a)
        self._sorted_adj.pop(a, None)
        self._sorted_adj.pop(b, None)
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            self._apply(node, node.coord.peer_connected(y, self.now))
            if self.linked(a, b):
                self._apply(node, node.coord.peer_subscribed(y, self.now))
        if self.reconcile:
            self._rec_poll_at(self.nodes[a], self.now)
            self._rec_poll_at(self.nodes[b], self.now)

    def disconnect(self, a: str, b: str) -> None:
        if not self.linked(a, b):
            return
        self.links.discard(frozenset((a, b)))
        self._adj[a].discard(b)
        self._adj[b].discard(a)
        self._sorted_adj.pop(a, None)
        self._sorted_adj.pop(b, None)
        self.streams = {k: st for k, st in self.streams.items() if not st.dead}
        for st in self.streams.values():
            if {st.requester, st.server} == {a, b}:
                st.dead = True
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            self._apply(node, node.coord.peer_disconnected(y, self.now))
        if self.reconcile:
            for sess in self._rec_pairs.pop(frozenset((a, b)), []):
                self._rec_reset(sess)  # the connection's streams are reset at both ends
            self._rec_poll_at(self.nodes[a], self.now)
            self._rec_poll_at(self.nodes[b], self.now)

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

    def random_mesh(self, extra: float = 1.0) -> list[tuple[str, str]]:
        """A random connected mesh: a random spanning tree plus ``extra`` × n more links (from ``rng``)."""
        names = sorted(self.nodes, key=lambda x: self.nodes[x].idx)
        edges = {(names[self.rng.randrange(j)], names[j]) for j in range(1, len(names))}
        want = len(edges) + int(extra * len(names))
        limit = len(names) * (len(names) - 1) // 2
        while len(edges) < min(want, limit):
            i, j = sorted(self.rng.sample(range(len(names)), 2))
            edges.add((names[i], names[j]))
        out = sorted(edges)
        self.set_topology(out)
        return out

    def cut(self, edges: Iterable[tuple[str, str]], groups: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
        """Keep only the ``edges`` inside one group (a partition of a mesh); returns the kept links."""
        side = {x: g for g, members in enumerate(groups) for x in members}
        kept = [(a, b) for a, b in edges if side[a] == side[b]]
        self.set_topology(kept)
        return kept

    # ------------------------------------------------------------------ local writes

    def write(self, name: str, count: int = 1, max_parents: int = 2) -> list[Op]:
        """``count`` new ops on ``name`` whose parents are random heads of its latest snapshot.

        The ops go to the node's writer (one batch); the coordinator hears of them
        (``snapshot_changed(local=True)``) when the write is reported, like a node's
        ``POST /append-ops``. Heads of writes not reported yet are not known here, so
        back-to-back writes may branch.
        """
        node = self.nodes[name]
        sk = key_pair(node.idx, b"sim-author")
        out: list[Op] = []
        heads = list(node.coord.snapshot.top_heads(8))
        for _ in range(count):
            k = min(len(heads), self.rng.randint(1, max_parents))
            parents = self.rng.sample(heads, k) if k else []
            node.writes += 1
            hlc = Hlc(1000 + self.rng.randrange(10_000), self.rng.randrange(3), node.idx)
            key = f"mv:o{self.rng.randrange(3)}:f{self.rng.randrange(2)}"
            op = make_op(sk, parents, hlc, Data(key, f"{name}-{node.writes}".encode()))
            heads = [*[h for h in heads if h not in parents][-7:], op.op_id]
            out.append(op)
        fut = node.writer.submit(lambda: node.store.put_many(out))
        self._report(node, fut, lambda _r, snap: node.coord.snapshot_changed(snap, self.now, local=True))
        return out

    def preload(self, name: str, ops: Sequence[Op]) -> None:
        """Store ``ops`` on ``name`` now, through its writer, and tell its coordinator at once."""
        node = self.nodes[name]
        _, snap = node.writer.submit(lambda: node.store.put_many(list(ops))).result(timeout=60)
        node.reported += 1
        self._apply(node, node.coord.snapshot_changed(snap, self.now, local=True))

    def restart(self, name: str) -> None:
        """Replace ``name``'s coordinator, as the node's supervisor does after an exception."""
        node = self.nodes[name]
        node.restarts += 1
        node.coord, effects = node.coord.restarted(node.writer.snapshot, self.now)
        self._apply(node, effects)

    # ------------------------------------------------------------------ effects

    def _apply(self, node: SimNode, effects: Sequence[Effect]) -> None:
        for e in effects:
            if isinstance(e, PublishAnnounce):
                node.published += 1
                if self.gossip:
                    mid = gossip_message_id(e.data)
                    self._saw(node, mid)
                    self._gossip(node.name, node.name, e.data, mid)
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
        if self.tick:
            self._dirty[node.idx] = node
        else:
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
            self._reading(node)
            self._apply(node, node.coord.timer(self.now))

        self._at(t, fire)

    # ------------------------------------------------------------------ gossip

    def _saw(self, node: SimNode, mid: bytes) -> bool:
        """Mark ``mid`` seen by ``node``; whether it had been seen already (gossipsub's seen cache)."""
        bits = self._seen.get(mid)
        if bits is None:
            bits = self._seen[mid] = bytearray(self._seen_len)
        i, m = node.idx >> 3, 1 << (node.idx & 7)
        if bits[i] & m:
            return True
        bits[i] |= m
        return False

    def _gossip(self, origin: str, sender: str, data: bytes, mid: bytes) -> None:
        # With inline writers a copy to a node that has seen the message already does nothing on
        # arrival (the seen cache drops it), so it is counted and its latency drawn (the same random
        # sequence) but no event is scheduled: most copies of a flood are such duplicates.
        seen = None if self.threaded else self._seen.get(mid)
        for peer in self.neighbours(sender):
            if peer == origin:
                continue
            copies = 0 if self.rng.random() < self.faults.drop_announce else 1
            if copies and self.rng.random() < self.faults.dup_announce:
                copies = 2
            i = self.nodes[peer].idx if seen is not None else 0
            dup = seen is not None and bool(seen[i >> 3] & (1 << (i & 7)))
            for _ in range(copies):
                self.stats.announces += 1
                self.stats.announce_bytes += len(data)
                t = self.now + self._latency()
                if not dup:
                    self._at(t, partial(self._deliver_announce, origin, sender, peer, data, mid))

    def _deliver_announce(self, origin: str, sender: str, to: str, data: bytes, mid: bytes) -> None:
        if not self.linked(sender, to):
            return
        node = self.nodes[to]
        self._reading(node)
        if self._saw(node, mid):
            return
        sa = self._valid.get(mid)  # a valid announce is valid at every node: verify it once
        if sa is None:
            checked = node.coord.validate_announce(data)
            if checked is None:
                return  # rejected: not delivered, not forwarded
            sa = self._valid[mid] = _KnownAnnounce.of(checked, mid)
        self._apply(node, node.coord.announce_received(origin, sa, sender, self.now))
        self._gossip(origin, to, data, mid)

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
        self._reading(srv)
        reader = FrameReader(64 * 1024)
        (body,) = reader.feed(frame)
        self.stats.requests += 1
        self.stats.request_bytes += len(frame)
        cfg = self.server_config or srv.coord.config
        # like a node's server: the live facts and the writer's latest snapshot, whatever it commits meanwhile
        plan = plan_response(
            srv.store.index, srv.writer.snapshot, SyncRequest.decode(body), cfg.server_max_ops
        )
        blobs = list(response_blobs(plan, srv.store.load_ops_cbor, cfg.batch_ops, cfg.max_frame))
        if srv.tamper is not None:
            blobs = self._tampered(blobs, srv.tamper)
        if self.faults.dup_batch:
            doubled: list[bytes] = []
            for i, blob in enumerate(blobs):
                doubled.append(blob)
                if i < len(blobs) - 1 and self.rng.random() < self.faults.dup_batch:
                    doubled.append(blob)
            blobs = doubled
        self.stats.responses += 1
        self.stats.response_frames += len(plan.ids) + 1
        self.stats.response_bytes += sum(len(b) for b in blobs)
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
            self._forget(st)
            return
        self._reading(node)
        if not self.linked(st.requester, st.server):
            self._forget(st)
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
                self._forget(st)
                self._apply(node, node.coord.request_failed(st.rid, str(e), self.now, violation=True))
                return
            self._apply(node, node.coord.frames_received(st.rid, bodies, self.now))
            self._at(self.now + self._chunk_gap(), lambda: self._pump_stream(st))
            return
        if st.ending == "stall":
            return  # never another byte: the requester's idle timeout must fire
        self._forget(st)
        with contextlib.suppress(ProtocolError):
            st.reader.eof()  # truncated inside a frame: a failure, not penalised (see the coordinator)
        self._apply(node, node.coord.stream_closed(st.rid, self.now))

    def _forget(self, st: _Stream) -> None:
        """A stream that ended: dead, its bytes freed, out of ``streams``."""
        st.dead = True
        st.chunks = []
        if self.streams.get((st.requester, st.rid)) is st:
            del self.streams[(st.requester, st.rid)]

    # ------------------------------------------------------------------ set reconciliation

    def _rec_poll_at(self, node: SimNode, t: float | None) -> None:
        """Make sure ``node``'s reconcile loop polls at its first poll instant at or after ``t``
        (a link change: it notices the connection there; the anti-entropy tick: it is checked there)."""
        if t is None:
            return
        k = math.ceil((t - node.rec_phase) / POLL_PERIOD)
        at = node.rec_phase + max(k, 0) * POLL_PERIOD
        if at < t:
            at += POLL_PERIOD
        if node.rec_poll_at is None or at < node.rec_poll_at:
            node.rec_poll_at = at
            self._at(at, partial(self._rec_poll, node, at))

    def _rec_poll(self, node: SimNode, at: float) -> None:
        """One pass of the node's reconcile loop: start the sessions its schedule asks for."""
        if node.rec_poll_at != at:
            return  # superseded by an earlier poll
        node.rec_poll_at = None
        sched = node.sched
        assert sched is not None
        for peer in sched.poll(self.now, self.neighbours(node.name), node.coord.peer, node.writer.snapshot):
            self._rec_open(node, peer)
        self._rec_poll_at(node, sched.next_tick)

    def _rec_open(self, node: SimNode, peer: str) -> None:
        """``node`` initiates a session with ``peer`` (reserved by its schedule): the first frame."""
        lim = self.reconcile_limits
        rec = Reconciler(node.writer.snapshot.ranges, lim, nonce=node.rc.reconcile_sessions)
        sess = _RecSession(node.name, peer, rec)
        sess.readers = {node.name: FrameReader(lim.max_frame), peer: FrameReader(lim.max_frame)}
        self._rec_pairs.setdefault(frozenset((node.name, peer)), []).append(sess)
        self.stats.reconcile_sessions += 1
        self._rec_send(sess, node.name, rec.start())
        if rec.done:  # pragma: no cover - a first frame always asks for an answer
            self._rec_end(sess, node.name)

    def _rec_send(self, sess: _RecSession, sender: str, body: bytes) -> None:
        frame = encode_frame(body, self.reconcile_limits.max_frame)
        self.nodes[sender].rc.reconcile_bytes_sent += len(frame)
        self.stats.reconcile_frames += 1
        self.stats.reconcile_bytes += len(frame)
        to = sess.other(sender)
        self._at(self.now + self._latency(), partial(self._rec_deliver, sess, to, frame))

    def _rec_deliver(self, sess: _RecSession, to: str, frame: bytes) -> None:
        if sess.dead:
            return
        node = self.nodes[to]
        node.rc.reconcile_bytes_received += len(frame)
        if sess.rec(to) is None:  # the stream opens at the responder with the first frame
            assert node.sched is not None
            if not node.sched.accept(sess.a):
                sess.dead = True  # refused: a stream reset, which the initiator sees a latency later
                self.stats.reconcile_refused += 1
                self._forget_rec(sess)
                self._at(self.now + self._latency(), partial(self._rec_end, sess, sess.a, True))
                return
            sess.rb = Reconciler(node.writer.snapshot.ranges, self.reconcile_limits)
        rec = sess.rec(to)
        assert rec is not None
        if rec.done:
            return  # (cannot happen: a side that is done is never sent another frame)
        try:
            (body,) = sess.readers[to].feed(frame)
            reply = rec.receive(body)
        except (ProtocolError, ValueError):  # a bad frame ends the session: a reset at both ends
            self._forget_rec(sess)
            self._rec_reset(sess)
            return
        if reply is not None:
            self._rec_send(sess, to, reply)
        if rec.done:
            self._rec_end(sess, to)
            peer = sess.other(to)
            if reply is None and peer not in sess.ended:  # we stopped (a round limit): EOF for the peer
                self._at(self.now + self._latency(), partial(self._rec_eof, sess, peer))

    def _rec_eof(self, sess: _RecSession, to: str) -> None:
        """The peer half-closed: the session ends for ``to`` too (what it found stays valid)."""
        if not sess.dead and to not in sess.ended:
            self._rec_end(sess, to)

    def _rec_reset(self, sess: _RecSession) -> None:
        """The session's stream is reset: each side still in it fails."""
        if sess.dead:
            return
        sess.dead = True
        for side in (sess.a, sess.b):
            if side not in sess.ended and sess.rec(side) is not None:
                self._rec_end(sess, side, failed=True)

    def _rec_end(self, sess: _RecSession, side: str, failed: bool = False) -> None:
        """``side``'s part of the session ended: count it and hand what it lacks to its coordinator."""
        rec = sess.rec(side)
        assert rec is not None and side not in sess.ended
        sess.ended.add(side)
        node, peer = self.nodes[side], sess.other(side)
        assert node.sched is not None
        node.sched.ended(peer, self.now, initiator=side == sess.a)
        if failed:
            node.rc.reconcile_failures += 1
        count_session(node.rc, rec)
        if sess.over:
            self._forget_rec(sess)
        if rec.need:
            self._reading(node)
            self._apply(node, node.coord.reconciled(peer, list(rec.need), self.now))

    def _forget_rec(self, sess: _RecSession) -> None:
        key = frozenset((sess.a, sess.b))
        live = self._rec_pairs.get(key)
        if live is not None and sess in live:
            live.remove(sess)
            if not live:
                del self._rec_pairs[key]

    # ------------------------------------------------------------------ commits

    def _commit(self, node: SimNode, e: CommitOps) -> None:
        fut = node.writer.submit(lambda: apply_commit(node.store, e))
        self._report(node, fut, lambda outcome, snap: node.coord.commit_finished(outcome, snap, self.now))

    def _report(
        self,
        node: SimNode,
        fut: Future[tuple[Any, StoreSnapshot]],
        event: Callable[[Any, StoreSnapshot], list[Effect]],
    ) -> None:
        """Report a writer job to the coordinator, in FIFO order, not before a simulated time drawn now."""
        due = max(self.now, node.commit_free_at) + self.rng.uniform(0.0005, 0.005)
        node.commit_free_at = due
        node.reports.append(_Report(due, fut, event))
        node.outstanding += 1
        self._at(due, lambda: self._deliver_reports(node))

    def _deliver_reports(self, node: SimNode) -> None:
        """Report the jobs that are due and done. A due job still running is polled for up to
        ``REPORT_LAG_MAX`` simulated seconds (the loop goes on meanwhile), then waited for."""
        if node.polling:
            node.polling = False
        while node.reports and node.reports[0].due <= self.now:
            r = node.reports[0]
            if not r.fut.done() and self.now - r.due < REPORT_LAG_MAX:
                time.sleep(POLL_SLEEP)  # give the writer the GIL
                if not r.fut.done():
                    node.polling = True
                    self._at(self.now + POLL_STEP, lambda: self._deliver_reports(node))
                    return
            result, snap = r.fut.result(timeout=60)
            node.reports.popleft()
            node.outstanding -= 1
            node.reported += 1
            self._apply(node, r.event(result, snap))
