"""The one writer: a dedicated thread that owns every mutation of a store and its ``OpIndex``.

A running node has many readers (the sync coordinator, serving, announces, the gateway,
``status``) and several sources of writes (synced ops, local writes, bulk appends,
checkpoints). Instead of locking the index for every reader, all writes go through one
thread, ``ecac-writer``, which runs requests one at a time from a bounded FIFO queue:

* the index changes only on that thread, so ``take_snapshot`` (which iterates it) runs
  there too, after each commit that stored ops, and the new immutable ``StoreSnapshot``
  is published by one reference assignment: readers take ``writer.snapshot`` and never
  lock anything;
* point facts (``contains``, ``is_complete``, ``parents``, ``gen``, ``key``) are read from
  the live index as ``IndexFacts`` (monotone, one dict lookup each: safe under the GIL);
* the synced RocksDB write (the fsync) happens on this thread only, so nobody but the
  writer ever waits for one.

Callers get a ``concurrent.futures.Future`` per request. A thread may block on it; an
event loop must not (``ecac.net.writeio`` awaits it without parking a thread). When the
queue is full, ``submit`` blocks (or raises ``WriterBusyError`` with ``block=False``):
that is the back-pressure on writers.

Failure policy. A request that raises gets its exception and the writer goes on, as long
as the store is consistent: the index did not change during the failed request (a put is
one atomic batch, written before the index is updated) and writes keep succeeding. A
failure that leaves the store unusable (the index changed but the request failed, the
store was closed, ``FATAL_WRITE_FAILURES`` write failures in a row) stops the writer:
the request and every queued one fail with ``WriterFailedError``, later submits raise it,
and ``on_fatal`` is called once with a one-line reason (the node exits non-zero).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ecac.core.errors import StoreError
from ecac.core.op import Op
from ecac.core.snapshot import IndexFacts, StoreSnapshot, take_snapshot
from ecac.core.state import State
from ecac.store.memory import IndexedOpStore, OnInvalid, PutRejectedError, PutResult

log = logging.getLogger("ecac.writer")

WRITER_THREAD_NAME = "ecac-writer"
#: requests waiting for the writer; a full queue blocks (or refuses) ``submit``
DEFAULT_QUEUE_MAX = 64
#: consecutive failed store writes after which the store counts as unusable
FATAL_WRITE_FAILURES = 3

S = TypeVar("S", bound=IndexedOpStore)
T = TypeVar("T")


class WriterBusyError(StoreError):
    """``submit(block=False)`` found the writer's queue full (back-pressure: retry later)."""


class WriterClosedError(StoreError):
    """The writer was stopped; no more requests are accepted."""


class WriterFailedError(StoreError):
    """The store became unusable; the writer stopped (the message says why)."""


class _Unusable(Exception):
    """Raised inside a request when the store must not be written any more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- results and events


@dataclass(frozen=True, slots=True)
class CommitEvent:
    """Published after every commit that stored ops: the snapshot after it and what it stored.

    ``stored`` are the newly stored ops in input order (parents before children when the
    input was parent-first); ``source`` names the request kind (``sync``, ``local``,
    ``append``).
    """

    snapshot: StoreSnapshot
    stored: tuple[Op, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Written:
    """Result of a put: the store's ``PutResult`` and the snapshot right after the put."""

    result: PutResult
    snapshot: StoreSnapshot


@dataclass(frozen=True, slots=True)
class LocalWritten:
    """Result of a local write: the ops the builder made, the ``PutResult``, the snapshot after."""

    ops: tuple[Op, ...]
    result: PutResult
    snapshot: StoreSnapshot


@dataclass(slots=True)
class WriterStats:
    """What the writer did (read from any thread; plain ints, written by the writer only)."""

    requests: int = 0
    commits: int = 0  # requests that stored at least one op
    ops_stored: int = 0
    failures: int = 0  # requests that raised
    ops_refused: int = 0  # ops the store's admission refused (``IndexedOpStore.admission_refused``)
    checkpoints: int = 0
    busy_ms: float = 0.0
    max_request_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "commits": self.commits,
            "ops_stored": self.ops_stored,
            "failures": self.failures,
            "ops_refused": self.ops_refused,
            "checkpoints": self.checkpoints,
            "busy_ms": round(self.busy_ms, 1),
            "max_request_ms": round(self.max_request_ms, 1),
        }


# --------------------------------------------------------------------------- the writer


@dataclass(slots=True)
class _Job:
    kind: str
    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


class StoreWriter(Generic[S]):
    """The store's one writer thread (see the module docstring). ``start()``, submit, ``stop()``.

    ``subscribe(fn)`` registers a callback run on the writer thread after each commit
    that stored ops, with its ``CommitEvent``; it must not block (hand the event over to
    another thread or event loop). ``on_fatal(reason)`` is called once, on the writer
    thread, when the store became unusable.
    """

    def __init__(
        self,
        store: S,
        *,
        queue_max: int = DEFAULT_QUEUE_MAX,
        on_fatal: Callable[[str], None] | None = None,
        name: str = WRITER_THREAD_NAME,
    ) -> None:
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        self.store = store
        self.queue_max = queue_max
        self.stats = WriterStats()
        self._name = name
        self._on_fatal = on_fatal
        self._q: queue.Queue[_Job | object] = queue.Queue(queue_max)
        self._subscribers: list[Callable[[CommitEvent], None]] = []
        self._pub_lock = threading.Lock()  # held only to combine a snapshot with the latest digest
        self._seq = 0
        self._snapshot = store.snapshot(0)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failure: str | None = None
        self._write_failures = 0
        self._busy = False

    # ------------------------------------------------------------------ reading (any thread, no lock)

    @property
    def snapshot(self) -> StoreSnapshot:
        """The latest published snapshot (an immutable value)."""
        return self._snapshot

    @property
    def facts(self) -> IndexFacts:
        """Monotone point queries over the live index (safe from any thread)."""
        return self.store.index

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not counting the one running)."""
        return self._q.qsize()

    @property
    def busy(self) -> bool:
        """Whether a request is running right now."""
        return self._busy

    @property
    def failure(self) -> str | None:
        """Why the writer stopped for good, or None while it is usable."""
        return self._failure

    # ------------------------------------------------------------------ lifecycle

    def subscribe(self, fn: Callable[[CommitEvent], None]) -> None:
        """Call ``fn`` on the writer thread after each commit that stored ops (register before ``start``)."""
        self._subscribers.append(fn)

    def start(self) -> StoreWriter[S]:
        if self._thread is not None:
            raise RuntimeError("the writer is already started")
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued requests, then stop the thread (idempotent). Later submits raise."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._q.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> StoreWriter[S]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests (not from the writer thread)

    def submit_put(
        self,
        items: Sequence[Op | bytes],
        on_invalid: OnInvalid = "raise",
        *,
        source: str = "append",
        block: bool = True,
    ) -> Future[Written]:
        """Validate, admit and store ``items`` in one atomic batch (``put_many``).

        Admission (the store's security profile, ``profile.admit_batch``) refuses like validation
        does. With ``on_invalid="raise"`` an op the store refuses fails the future with
        ``PutRejectedError`` (nothing written; ``rejection.index`` names the op); any other
        ``StoreError`` is a failed write (counted towards ``FATAL_WRITE_FAILURES``). What a
        refusal means (e.g. a peer's protocol violation) is the caller's business: the sync
        mapping ``CommitOps`` → put → ``CommitOutcome`` lives in ``ecac.net.writeio``.
        """
        batch = list(items)

        def run() -> Written:
            result = self.store.put_many(batch, on_invalid=on_invalid)
            ops = [x for x in batch if isinstance(x, Op)]
            stored = _stored_ops(ops, result.stored) if len(ops) == len(batch) else self._read_ops(result)
            return Written(result, self._published(stored, source))

        return self._submit(source, run, block)

    def submit_local(
        self,
        build: Callable[[S], Sequence[Op]],
        on_invalid: OnInvalid = "raise",
        *,
        block: bool = True,
    ) -> Future[LocalWritten]:
        """Run ``build(store)`` on the writer thread, then store its ops.

        The builder sees the store exactly as the put will (``heads`` read there are the
        heads the new ops extend: no other write can come between). It may read the store
        freely but must not write to it.
        """

        def run() -> LocalWritten:
            ops = tuple(build(self.store))
            result = self.store.put_many(list(ops), on_invalid=on_invalid)
            return LocalWritten(ops, result, self._published(_stored_ops(ops, result.stored), "local"))

        return self._submit("local", run, block)

    def submit_checkpoint(
        self, state: State, topo_idx: int, order: Sequence[Op] | None = None, *, block: bool = True
    ) -> Future[int]:
        """Checkpoint ``state`` (RocksDB only: ``Store.checkpoint_create``); the future gives its id."""
        create = getattr(self.store, "checkpoint_create", None)
        if create is None:
            raise TypeError(f"{type(self.store).__name__} has no checkpoints")

        def run() -> int:
            cid: int = create(state, topo_idx, order)
            self.stats.checkpoints += 1
            return cid

        return self._submit("checkpoint", run, block)

    def submit_call(self, fn: Callable[[S], T], *, block: bool = True) -> Future[T]:
        """Run ``fn(store)`` on the writer thread, between writes: for reads that need a consistent
        view of the whole index (e.g. capturing the order at one sequence number). ``fn`` must
        not write ops."""
        return self._submit("call", lambda: fn(self.store), block)

    def _submit(self, kind: str, run: Callable[[], T], block: bool) -> Future[T]:
        if self._failure is not None:
            raise WriterFailedError(self._failure)
        if self._closed:
            raise WriterClosedError("the store writer is stopped")
        if threading.current_thread() is self._thread:
            raise RuntimeError("a writer request cannot wait for another request (deadlock)")
        job = _Job(kind, run)
        try:
            self._q.put(job, block=block)
        except queue.Full:
            raise WriterBusyError(f"the store writer's queue is full ({self.queue_max} requests)") from None
        return job.future

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            assert isinstance(item, _Job)
            if self._failure is not None:
                item.future.set_exception(WriterFailedError(self._failure))
                continue
            if not item.future.set_running_or_notify_cancel():
                continue
            self._run_job(item)

    def _run_job(self, job: _Job) -> None:
        index = self.store.index
        ops_before = len(index)
        self._busy = True
        t0 = time.perf_counter()
        try:
            result = job.run()
        except BaseException as e:
            self.stats.failures += 1
            reason = e.reason if isinstance(e, _Unusable) else self._unusable(e, ops_before)
            if reason is None and isinstance(e, StoreError) and not isinstance(e, PutRejectedError):
                reason = self._write_failed(str(e))
            if reason is not None:
                self._fail(reason)
                job.future.set_exception(WriterFailedError(reason))
            else:
                log.debug("writer request %s failed: %s", job.kind, e)
                job.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        else:
            job.future.set_result(result)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            self.stats.requests += 1
            self.stats.busy_ms += ms
            self.stats.max_request_ms = max(self.stats.max_request_ms, ms)
            self.stats.ops_refused = self.store.admission_refused
            self._busy = False

    def _unusable(self, e: BaseException, ops_before: int) -> str | None:
        """Why the store is unusable after ``e``, or None when it is still consistent."""
        if not isinstance(e, Exception):
            return f"the store writer was interrupted: {type(e).__name__}"
        if len(self.store.index) != ops_before:
            return (
                f"the store index changed during a failed write ({type(e).__name__}: {e}); "
                "restart the node to reload it from the store"
            )
        if getattr(self.store, "_db", True) is None:
            return "the store was closed under the writer"
        return None

    def _write_failed(self, message: str) -> str | None:
        """Count a failed store write; the reason to stop when too many failed in a row."""
        self._write_failures += 1
        if self._write_failures >= FATAL_WRITE_FAILURES:
            return f"the store refused {self._write_failures} writes in a row (last: {message})"
        return None

    def _fail(self, reason: str) -> None:
        if self._failure is not None:
            return
        self._failure = reason
        log.error("store writer stopped: %s", reason)
        while True:  # fail what is queued; later submits raise
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(WriterFailedError(reason))
            elif item is _STOP:
                self._q.put_nowait(_STOP)
                break
        if self._on_fatal is not None:
            try:
                self._on_fatal(reason)
            except Exception:
                log.exception("the writer's on_fatal callback failed")

    # ------------------------------------------------------------------ publishing (writer thread)

    def _published(self, stored: Sequence[Op], source: str) -> StoreSnapshot:
        """After a successful put: publish a new snapshot when ops were stored, notify; return it."""
        if not stored:
            return self._snapshot
        self._write_failures = 0
        self.stats.commits += 1
        self.stats.ops_stored += len(stored)
        self._seq += 1
        snap = take_snapshot(self.store.index, self._seq)
        with self._pub_lock:  # carry over the newest digest (the digest task may publish meanwhile)
            prev = self._snapshot
            if prev.digest is not None:
                snap = snap.with_digest(prev.digest, prev.digest_ops)
            self._snapshot = snap
        event = CommitEvent(snap, tuple(stored), source)
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:
                log.exception("a commit subscriber failed (ignored)")
        return snap

    def publish_digest(self, digest: bytes, digest_ops: int) -> StoreSnapshot:
        """Attach a state digest over the first ``digest_ops`` complete ops to the latest snapshot.

        Any thread (the digest task calls it). A digest over fewer ops than the published
        one is ignored (digests only move forward).
        """
        with self._pub_lock:
            cur = self._snapshot
            if cur.digest is None or digest_ops >= cur.digest_ops:
                cur = self._snapshot = cur.with_digest(digest, digest_ops)
            return cur

    def _read_ops(self, result: PutResult) -> list[Op]:
        """The stored ops of a put whose input was bytes (decoded back from the store)."""
        out = []
        for op_id in result.stored:
            op = self.store.get_op(op_id)
            if op is None:  # pragma: no cover - just written
                raise StoreError(f"missing op {op_id.hex()} right after writing it")
            out.append(op)
        return out


def _stored_ops(ops: Sequence[Op], stored: Sequence[bytes]) -> list[Op]:
    """The ops of ``ops`` whose ids are in ``stored``, in input order (first copy of each)."""
    if not stored:
        return []
    want = set(stored)
    out = []
    for op in ops:
        if op.op_id in want:
            want.discard(op.op_id)
            out.append(op)
    return out
