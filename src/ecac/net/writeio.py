"""The trio side of the store writer: await its futures without blocking or parking a thread.

``StoreWriter`` (``ecac.store.writer``) hands out ``concurrent.futures.Future``s. The event
loop waits for one with ``wait_future``: the future's done-callback (run on the writer
thread) schedules ``Event.set`` on the loop with ``TrioToken.run_sync_soon``, which never
blocks the writer (unlike ``trio.from_thread.run_sync``, which would make the writer wait
for the loop) and costs no thread per waiter (unlike ``trio.to_thread.run_sync(fut.result)``).

``AsyncWriter`` adds the back-pressure: a ``trio.CapacityLimiter`` with one token per slot
of the writer's queue. A task takes a token before it submits and the writer's
done-callback gives it back, so a trio task never finds the queue full (it waits for a
token instead, without blocking the loop), and the limiter's ``borrowed_tokens`` is the
writer's load as ``/status`` shows it.

The sync mapping also lives here, in the net layer: the store's writer only knows generic
puts (``submit_put`` → ``PutResult`` or ``PutRejectedError``), the sync core only knows
``CommitOps`` / ``CommitOutcome``; ``commit_outcome`` / ``error_outcome`` translate between
them (one mapping, used by ``AsyncWriter.commit`` and by the simulated network's writer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ecac.core.errors import StoreError
from ecac.core.op import Op
from ecac.core.snapshot import StoreSnapshot
from ecac.store.memory import IndexedOpStore, OnInvalid, PutRejectedError, PutResult
from ecac.store.writer import (
    LocalWritten,
    StoreWriter,
    WriterBusyError,
    WriterClosedError,
    WriterFailedError,
    Written,
)
from ecac.sync.effects import CommitOps, CommitOutcome

T = TypeVar("T")


# ------------------------------------------------------------------- CommitOps -> put -> CommitOutcome


@dataclass(frozen=True, slots=True)
class Committed:
    """Result of a synced commit: the outcome for the coordinator and the snapshot after it."""

    outcome: CommitOutcome
    snapshot: StoreSnapshot


def commit_outcome(commit: CommitOps, result: PutResult) -> CommitOutcome:
    """The outcome of a ``CommitOps`` whose validating put succeeded (stored ids and duplicates)."""
    return CommitOutcome(commit.commit_id, tuple(result.stored), result.duplicates)


def error_outcome(commit: CommitOps, e: StoreError) -> CommitOutcome:
    """The outcome of a ``CommitOps`` whose put failed.

    An op the store refuses (``PutRejectedError``) is the sending peer's fault
    (``rejected_index``); any other ``StoreError`` is a local failure (``error`` alone).
    A writer that stopped (``WriterFailedError`` / ``WriterClosedError``) is not a commit
    outcome: it is re-raised (the node stops).
    """
    if isinstance(e, WriterFailedError | WriterClosedError):
        raise e
    if isinstance(e, PutRejectedError):
        return CommitOutcome(commit.commit_id, rejected_index=e.rejection.index, error=str(e))
    return CommitOutcome(commit.commit_id, error=f"store error: {e}")


def apply_commit(store: IndexedOpStore, commit: CommitOps) -> CommitOutcome:
    """Run one ``CommitOps`` through ``store.put_many`` directly (all or nothing). Blocking.

    What the writer thread does for ``AsyncWriter.commit``, without a writer: for the
    simulated network (which runs it on its own writer thread) and unit tests.
    """
    try:
        r = store.put_many(list(commit.ops), on_invalid="raise")
    except StoreError as e:
        return error_outcome(commit, e)
    return commit_outcome(commit, r)


def _call_soon(token: trio.lowlevel.TrioToken, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(trio.RunFinishedError):  # the loop is gone (shutdown): nobody waits
        token.run_sync_soon(fn, *args)


async def wait_future(fut: Future[T]) -> T:
    """The result of ``fut`` (or its exception), awaited without blocking the event loop.

    If the waiting task is cancelled the request still runs to completion on the writer;
    only its result is dropped.
    """
    if not fut.done():
        token = trio.lowlevel.current_trio_token()
        event = trio.Event()
        fut.add_done_callback(lambda _f: _call_soon(token, event.set))
        await event.wait()
    return fut.result()


class AsyncWriter:
    """Awaitable requests to a ``StoreWriter``, bounded by its ``limiter`` (see the module docstring)."""

    def __init__(self, writer: StoreWriter[Any]) -> None:
        self.writer = writer
        self.limiter = trio.CapacityLimiter(writer.queue_max)

    async def _run(self, submit: Callable[[], Future[T]]) -> T:
        borrower = object()
        await self.limiter.acquire_on_behalf_of(borrower)
        token = trio.lowlevel.current_trio_token()
        try:
            while True:
                try:
                    fut = submit()
                    break
                except WriterBusyError:  # a thread outside the loop filled the queue: wait a little
                    await trio.sleep(0.005)
        except BaseException:
            self.limiter.release_on_behalf_of(borrower)
            raise
        fut.add_done_callback(lambda _f: _call_soon(token, self.limiter.release_on_behalf_of, borrower))
        return await wait_future(fut)

    async def commit(self, commit: CommitOps) -> Committed:
        """Store a synced ``CommitOps`` as one validating put; a refusal becomes its outcome.

        ``WriterFailedError`` / ``WriterClosedError`` propagate (the writer stopped).
        """
        try:
            done = await self.put(commit.ops, "raise", source="sync")
        except StoreError as e:
            return Committed(error_outcome(commit, e), self.writer.snapshot)
        return Committed(commit_outcome(commit, done.result), done.snapshot)

    async def put(
        self, items: Sequence[Op | bytes], on_invalid: OnInvalid = "raise", *, source: str = "append"
    ) -> Written:
        return await self._run(lambda: self.writer.submit_put(items, on_invalid, source=source, block=False))

    async def local(
        self, build: Callable[[IndexedOpStore], Sequence[Op]], on_invalid: OnInvalid = "raise"
    ) -> LocalWritten:
        return await self._run(lambda: self.writer.submit_local(build, on_invalid, block=False))

    async def call(self, fn: Callable[[Any], T]) -> T:
        return await self._run(lambda: self.writer.submit_call(fn, block=False))
