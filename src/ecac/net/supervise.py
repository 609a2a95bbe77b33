"""Task supervision for the node: no silently dead nursery, no error swallowed mid-transition.

Every long-lived task of the node (commit worker, timer loop, publisher, reconcile loop,
digest, control server) runs under ``Supervisor.supervise``: an unexpected exception is
logged with its traceback, counted per task (``failures``), and the task is restarted
(after ``on_restart``, which puts the state it shares back into a consistent shape) —
unless the task exceeded its restart budget (``budget`` failures within ``window``
seconds), in which case ``on_fatal`` is called with a one-line reason and the node stops
with a non-zero exit. Short-lived tasks (one per sync request or served stream) run under
``run_once``: counted and reported the same way, never restarted.

Cancellation (``trio.Cancelled``) and ``KeyboardInterrupt`` are not failures: they pass.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("ecac.node")

#: failures of one task tolerated within ``RESTART_WINDOW`` seconds; one more stops the node
RESTART_BUDGET = 5
RESTART_WINDOW = 60.0
#: pause before a restart, so a task that fails at once does not spin
RESTART_DELAY = 0.05


class Supervisor:
    """Failure counters, restart budgets and the fatal path (see the module docstring)."""

    def __init__(
        self,
        on_fatal: Callable[[str], None],
        *,
        budget: int = RESTART_BUDGET,
        window: float = RESTART_WINDOW,
        restart_delay: float = RESTART_DELAY,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if budget < 0 or window <= 0:
            raise ValueError("the restart budget must be >= 0 and its window positive")
        self.failures: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self._on_fatal = on_fatal
        self._budget = budget
        self._window = window
        self._delay = restart_delay
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}
        self.fatal: str | None = None

    def record(self, name: str, exc: BaseException) -> bool:
        """Log ``exc`` (with its traceback) as a failure of ``name`` and count it.

        Returns True while ``name`` is within its restart budget; otherwise calls
        ``on_fatal`` (once) and returns False.
        """
        self.failures[name] += 1
        log.error("task %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
        now = self._clock()
        recent = self._recent.setdefault(name, deque())
        recent.append(now)
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        if len(recent) <= self._budget:
            return True
        reason = (
            f"task {name} failed {len(recent)} times within {self._window:g} s "
            f"(last: {type(exc).__name__}: {_one_line(exc)})"
        )
        if self.fatal is None:
            self.fatal = reason
            self._on_fatal(reason)
        return False

    async def supervise(
        self, name: str, fn: Callable[[], Awaitable[None]], on_restart: Callable[[], None] | None = None
    ) -> None:
        """Run ``fn`` until it returns; restart it after a failure while the budget allows."""
        while True:
            try:
                await fn()
                return
            except Exception as e:
                if not self.record(name, e):
                    return
            self.restarts[name] += 1
            log.warning("restarting task %s", name)
            if on_restart is not None:
                on_restart()
            await trio.sleep(self._delay)

    async def run_once(
        self,
        name: str,
        fn: Callable[[], Awaitable[None]],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run a short-lived task; a failure is recorded (and ``on_failure`` told), never re-raised."""
        try:
            await fn()
        except Exception as e:
            self.record(name, e)
            if on_failure is not None:
                on_failure(e)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"task_failures": {task: n}, "task_restarts": {task: n}}`` for ``/status``."""
        return {
            "task_failures": dict(sorted(self.failures.items())),
            "task_restarts": dict(sorted(self.restarts.items())),
        }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "(no message)"
