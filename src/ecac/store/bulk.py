"""Bulk loads: the one place that pauses Python's cyclic garbage collector.

A bulk load (opening a store's index, a replay from the store, a bulk import) creates
hundreds of thousands of long-lived objects that hold no reference cycles: reference
counting frees them, while every automatic collection would only rescan all of them.
``bulk_load()`` disables the collector while at least one bulk load runs, in any thread,
and restores the state it found when the last one ends: a nested or concurrent bulk load
never re-enables the collector under another one that is still running, and a collector
that was already disabled stays disabled.

The collector's switch is process-wide, so its bookkeeping is too (one counter behind a
lock): this is an adapter, and nothing else in the project calls ``gc.disable``/``gc.enable``.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _GcPause:
    """How many bulk loads run, and whether the collector was enabled before the first one."""

    __slots__ = ("_enable_after", "_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._enable_after = False

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._enable_after = gc.isenabled()
                gc.disable()
            self._running += 1

    def exit(self) -> None:
        with self._lock:
            if self._running <= 0:
                raise RuntimeError("bulk_load: exit without a matching enter")
            self._running -= 1
            if self._running == 0 and self._enable_after:
                gc.enable()

    @property
    def running(self) -> int:
        """Bulk loads in progress (for tests and diagnostics)."""
        return self._running


_PAUSE = _GcPause()


@contextmanager
def bulk_load() -> Iterator[None]:
    """Run the body with the cyclic collector paused (refcounted across threads; see the module doc).

    Use it only around a bounded bulk load, never around a yield to a caller that may keep
    a generator suspended: the collector stays off until the last bulk load ends.
    """
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.exit()


def bulk_loads_running() -> int:
    """How many bulk loads are running now, in all threads."""
    return _PAUSE.running
