"""The verify pool: batch Ed25519 on a few threads, for the adapters that verify in bulk.

The core verifies serially (``ecac.core.sig.check_sigs``). ``ecac._native.verify_batch``
releases the GIL for a whole batch, so a few threads verify at full speed while another
thread runs Python (decoding the next batch of a bulk import or replay). A ``VerifyPool``
owns those threads: a bounded number, started on first use, stopped by ``close()`` (or by
leaving its ``with`` block). There is no process-wide pool: the store put paths, replay from
the store, the CLI and the benchmarks each own or are given one.

* ``pool.verify`` is a ``ecac.core.sig.Verify``: pass it to the core's ``check_ops``,
  ``admit``, ``Dag.admit_and_insert``, ``decode_and_admit``, ``verify_chain``, ...
* ``pool.submit(items)`` starts the checks and returns a ``SigCheck`` at once, to overlap
  them with other work; ``pool.pipelined`` and ``pool.decode_and_admit`` do that for a
  stream of batches.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ecac import _native
from ecac.core.op import Op
from ecac.core.sig import ADMIT_CHUNK, Rejection, SigItem, admit_verdicts, decoded_chunks, sig_items

T = TypeVar("T")

#: the most threads one pool may start
MAX_WORKERS = 32
#: batches smaller than this are verified inline (a thread hop costs more than it saves)
PARALLEL_MIN = 256


class SigCheck:
    """Signature verdicts of one ``VerifyPool.submit``, being computed on the pool's threads."""

    __slots__ = ("_now", "_parts")

    def __init__(self, now: list[bool] | None, parts: Sequence[Future[list[bool]]] = ()) -> None:
        self._now = now
        self._parts = tuple(parts)

    def result(self) -> list[bool]:
        """The verdicts, in input order (waits for the threads)."""
        if self._now is None:
            out: list[bool] = []
            for part in self._parts:
                out.extend(part.result())
            self._now, self._parts = out, ()
        return self._now


class VerifyPool:
    """Up to ``workers`` threads that run ``ecac._native.verify_batch``; see the module doc.

    A batch of at least ``parallel_min`` triples is split into one part per worker; smaller
    ones are verified inline by the caller. After ``close()``, ``submit`` and ``verify``
    raise RuntimeError; checks submitted before it still complete.
    """

    def __init__(self, workers: int = 2, *, parallel_min: int = PARALLEL_MIN) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, not {workers}")
        if parallel_min < 1:
            raise ValueError(f"parallel_min must be positive, not {parallel_min}")
        self.workers = workers
        self.parallel_min = parallel_min
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # -- lifetime
    def __enter__(self) -> VerifyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads once the checks already submitted are done (idempotent)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifyPool is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="ecac-verify"
                )
            return self._executor

    # -- verification
    def submit(self, items: Sequence[SigItem]) -> SigCheck:
        """Start verifying ``items`` and return at once (a small batch is verified inline, now).

        Each worker gets one contiguous part, so it needs the GIL only at the two ends of it,
        however busy another thread keeps the GIL.
        """
        n = len(items)
        if n < self.parallel_min:
            if self._closed:
                raise RuntimeError("VerifyPool is closed")
            return SigCheck(_native.verify_batch(items))
        pool = self._pool()
        step = -(-n // self.workers)
        return SigCheck(
            None, [pool.submit(_native.verify_batch, items[i : i + step]) for i in range(0, n, step)]
        )

    def verify(self, items: Sequence[SigItem]) -> list[bool]:
        """The verdicts for ``items``, in order, computed on the threads: an ``ecac.core.sig.Verify``."""
        return self.submit(items).result()

    def pipelined(
        self, batches: Iterable[tuple[T, Sequence[SigItem]]], ahead: int = 2
    ) -> Iterator[tuple[T, list[bool]]]:
        """``(tag, verdicts)`` per ``(tag, items)`` batch, in order, while later batches are produced.

        Up to ``ahead`` batches are being verified while the caller's iterator produces the
        next one on this thread (decoding, say): both run at once.
        """
        if ahead < 1:
            raise ValueError(f"ahead must be positive, not {ahead}")
        flying: deque[tuple[T, SigCheck]] = deque()
        for tag, items in batches:
            flying.append((tag, self.submit(items)))
            if len(flying) > ahead:
                done, check = flying.popleft()
                yield done, check.result()
        while flying:
            done, check = flying.popleft()
            yield done, check.result()

    def decode_and_admit(self, blobs: Sequence[bytes]) -> tuple[list[Op], list[Rejection]]:
        """``ecac.core.sig.decode_and_admit`` with each chunk's signatures verified on the threads
        while the next chunk is decoded: the same result, both cores busy."""
        batches = (((ops, bad), sig_items(ops)) for ops, bad in decoded_chunks(blobs))
        # every decoded op is kept for the result anyway, so every chunk may be in flight: the
        # decoding thread never waits for the verify threads until the end
        every = max(1, -(-len(blobs) // ADMIT_CHUNK))
        return admit_verdicts((ops, bad, oks) for (ops, bad), oks in self.pipelined(batches, ahead=every))
