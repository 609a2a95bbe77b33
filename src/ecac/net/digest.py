"""The node's state digest, kept up to date incrementally off the event loop.

``DigestState`` is the thread-side work: a ``Dag`` of the store's ops and a ``Replayer``
that continues from its live state when new ops only append to the order (the usual
case) and replays otherwise. ``DigestTracker`` drives it from trio: it subscribes to the
writer's commits, applies them in a worker thread under its own ``CapacityLimiter`` (one
thread: the DAG is not shared), and publishes each new digest into the writer's snapshot
(``StoreWriter.publish_digest``), where ``/status`` and the gateway read it.

Bounded: ops committed while an apply runs wait in one list (the next apply takes them
all); past ``MAX_PENDING_OPS`` the list is dropped and the next apply reloads what the
DAG lacks from the store instead (reading ids captured on the writer thread).

Views: the gateway's documents (state, ops, access, explain, trust) are computed from this
same DAG and replayed state by ``DigestTracker.view``, in the digest thread (under its
limiter, so never during an apply) and cached per ``DigestState.version``: repeated reads of
an unchanged node cost a dict lookup. After each apply the tracker tells its ``listeners``
(the gateway's event stream) which ops arrived and the gate's verdict on each data op.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ecac.core.dag import Dag
from ecac.core.op import Op
from ecac.core.replay import Replayer
from ecac.core.resources import DataAction
from ecac.net.writeio import AsyncWriter
from ecac.store.memory import IndexedOpStore
from ecac.store.writer import CommitEvent

log = logging.getLogger("ecac.node")

#: committed ops waiting for the digest beyond which the tracker reloads from the store instead
MAX_PENDING_OPS = 262_144
#: cached views per DigestState (a new version drops them all)
MAX_CACHED_VIEWS = 64

T = TypeVar("T")
#: a data op's verdict at its position: ("ALLOWED", None) or ("DENIED", reason)
Verdict = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class DigestUpdate:
    """What one apply changed: the newly applied ops (empty after a reload) and their verdicts."""

    digest: bytes
    ops_count: int
    new_ops: tuple[Op, ...]
    verdicts: Mapping[bytes, Verdict]


def capture_ids(store: IndexedOpStore) -> tuple[list[bytes], list[bytes]]:
    """``(complete ids in topo order, pending ids)``: on the writer's thread only (iterates the index)."""
    index = store.index
    return index.topo_slice(0), index.pending_ids()


class DigestState:
    """A DAG and a replayer over the store's ops (one thread at a time; not thread-safe)."""

    def __init__(self) -> None:
        self.dag = Dag()
        self.replayer = Replayer(max_points=2, auto_every=50_000)
        self.digest: bytes = self.replayer.digest
        self.ops = 0  # complete ops the digest covers
        self.updates = 0
        self.update_ms_total = 0.0
        #: the total order the state was replayed over (never mutated; replaced by each apply)
        self.order: list[Op] = []
        #: bumped by every apply: the key of cached views
        self.version = 0
        #: ``key -> (version, value)``: views of ``DigestTracker.view``
        self.cache: dict[Hashable, tuple[int, Any]] = {}
        #: verdicts of the data ops among the last ``add``'s ops
        self.last_verdicts: dict[bytes, Verdict] = {}

    def load(self, store: IndexedOpStore, complete: Sequence[bytes], pending: Sequence[bytes]) -> None:
        """Start over from the store's ops ``complete`` (topo order) and ``pending`` (captured together)."""
        dag = Dag()
        dag.extend_ordered(_ops_for(store, complete))
        if pending:
            dag.insert_many(_ops_for(store, pending))
        self.dag = dag
        # keep the gate builder (and its credential memo): a reload must not re-verify every VC
        self.replayer = Replayer(max_points=2, auto_every=50_000, gates=self.replayer.gates)
        self._apply()

    def add(self, ops: Sequence[Op]) -> bool:
        """Insert newly stored ops (any order, duplicates ignored); True when the digest changed.

        ``last_verdicts`` then holds the gate's verdict on each of them that is a data op.
        """
        before = len(self.dag)
        self.dag.insert_many(ops)
        if len(self.dag) == before:
            self.last_verdicts = {}
            return False
        self._apply({op.op_id for op in ops})
        return True

    def catch_up(self, store: IndexedOpStore, complete: Sequence[bytes], pending: Sequence[bytes]) -> bool:
        """Insert every op of the captured ids that the DAG lacks (after dropped notifications)."""
        dag = self.dag
        missing = [x for x in complete if x not in dag and not dag.is_pending(x)]
        missing += [x for x in pending if not dag.is_pending(x)]
        return self.add(list(_ops_for(store, missing))) if missing else False

    def _apply(self, watch: set[bytes] | None = None) -> None:
        t0 = time.perf_counter()
        verdicts: dict[bytes, Verdict] = {}
        replayer = self.replayer

        def observe(pos: int, op: Op, d: DataAction, applied: bool) -> None:
            if watch is None or op.op_id not in watch:
                return
            if applied:
                verdicts[op.op_id] = ("ALLOWED", None)
                return
            reason = getattr(replayer.gate, "deny_reason", None)
            why = reason(op.author_pk, d.action, d.tags, pos, op.hlc) if reason is not None else None
            verdicts[op.op_id] = ("DENIED", why)

        _, self.digest = replayer.apply(self.dag, observe if watch else None)
        self.ops = len(self.dag)
        self.order = self.dag.topo_order()
        self.last_verdicts = verdicts
        self.updates += 1
        self.version += 1
        self.update_ms_total += (time.perf_counter() - t0) * 1000

    def cached_view(self, key: Hashable, compute: Callable[[DigestState], T]) -> T:
        """``compute(self)`` cached for this version (the digest thread only, between applies)."""
        hit = self.cache.get(key)
        if hit is not None and hit[0] == self.version:
            value: T = hit[1]
            return value
        value = compute(self)
        if len(self.cache) >= MAX_CACHED_VIEWS:
            self.cache = {k: v for k, v in self.cache.items() if v[0] == self.version}
            if len(self.cache) >= MAX_CACHED_VIEWS:
                self.cache = {}
        self.cache[key] = (self.version, value)
        return value


def _ops_for(store: IndexedOpStore, ids: Sequence[bytes]) -> list[Op]:
    ops_for = getattr(store, "ops_for", None)  # RocksDB: bulk decoding
    if ops_for is not None:
        return list(ops_for(ids))
    out = []
    for x in ids:
        op = store.get_op(x)
        if op is None:  # pragma: no cover - ids come from the index
            raise KeyError(x)
        out.append(op)
    return out


class DigestTracker:
    """Drives ``DigestState`` from trio (see the module docstring). ``attach`` before the writer starts."""

    def __init__(self, writer: AsyncWriter, limiter: trio.CapacityLimiter | None = None) -> None:
        self._aw = writer
        self.writer = writer.writer
        self.limiter = limiter or trio.CapacityLimiter(1)
        self.state = DigestState()
        self.ready = False
        self.reloads = 0
        self._lock = threading.Lock()  # guards the fields below (the writer thread appends)
        self._pending: list[tuple[int, tuple[Op, ...]]] = []
        self._pending_ops = 0
        self._overflow = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()
        self._wake_scheduled = False
        self._published = trio.Event()  # set (and replaced) after every published digest
        #: called in the trio thread after every apply that changed the digest
        self.listeners: list[Callable[[DigestUpdate], None]] = []
        self.writer.subscribe(self._on_commit)

    # ------------------------------------------------------------------ writer thread

    def _on_commit(self, event: CommitEvent) -> None:
        with self._lock:
            if not self._overflow:
                self._pending.append((event.snapshot.seq, event.stored))
                self._pending_ops += len(event.stored)
                if self._pending_ops > MAX_PENDING_OPS:
                    self._pending.clear()
                    self._pending_ops = 0
                    self._overflow = True
            token = self._token
            if token is None or self._wake_scheduled:
                return
            self._wake_scheduled = True
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._woken)

    # ------------------------------------------------------------------ trio

    def _woken(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        self._wake.set()

    @property
    def digest(self) -> bytes:
        return self.state.digest

    @property
    def ops(self) -> int:
        return self.state.ops

    @property
    def pending_ops(self) -> int:
        return self._pending_ops

    async def wait_covering(self, complete: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the digest covers ``complete`` ops; False if it does not yet."""
        with trio.move_on_after(timeout):
            while not (self.ready and self.state.ops >= complete):
                await self._published.wait()
            return True
        return False

    async def view(self, key: Hashable, compute: Callable[[DigestState], T]) -> T:
        """A document computed from the replayed DAG and state, in the digest thread, cached per version.

        ``compute`` gets the ``DigestState`` (``order``, ``replayer.state``, ``digest``, ``dag``)
        and must only read it. Runs under the digest limiter, so never during an apply.
        """
        state = self.state
        hit = state.cache.get(key)
        if hit is not None and hit[0] == state.version:
            value: T = hit[1]
            return value
        return await trio.to_thread.run_sync(state.cached_view, key, compute, limiter=self.limiter)

    def _publish(self, state: DigestState, new_ops: Sequence[Op]) -> None:
        self.writer.publish_digest(state.digest, state.ops)
        self._published.set()
        self._published = trio.Event()
        if not self.listeners:
            return
        update = DigestUpdate(state.digest, state.ops, tuple(new_ops), dict(state.last_verdicts))
        for fn in list(self.listeners):
            try:
                fn(update)
            except Exception:
                log.exception("a digest listener failed (ignored)")

    async def run(self) -> None:
        """Load, then apply commits as they come. Restartable: each run starts from a fresh load."""
        self.ready = False
        self._token = trio.lowlevel.current_trio_token()
        with self._lock:
            self._pending.clear()
            self._pending_ops = 0
            self._overflow = False
        # capture and subscription meet at one sequence number: later commits come as events
        seq, (complete, pending) = await self._aw.call(lambda st: (self.writer.snapshot.seq, capture_ids(st)))
        state = DigestState()
        await trio.to_thread.run_sync(state.load, self.writer.store, complete, pending, limiter=self.limiter)
        self.state = state
        self.ready = True
        self._publish(state, ())
        log.info("state digest %s over %d ops", state.digest.hex()[:16], state.ops)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            with self._lock:
                batch, self._pending, self._pending_ops = self._pending, [], 0
                overflow, self._overflow = self._overflow, False
            ops: list[Op] = []
            if overflow:
                self.reloads += 1
                complete, pending = await self._aw.call(capture_ids)
                changed = await trio.to_thread.run_sync(
                    state.catch_up, self.writer.store, complete, pending, limiter=self.limiter
                )
                state.last_verdicts = {}
            else:
                ops = [op for s, stored in batch if s > seq for op in stored]
                if not ops:
                    continue
                changed = await trio.to_thread.run_sync(state.add, ops, limiter=self.limiter)
            if changed:
                self._publish(state, ops)
