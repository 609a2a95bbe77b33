"""Supervisor: failures logged and counted, restarts after on_restart, the budget, cancellation passes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from ecac.net.supervise import Supervisor


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_failing_task_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    fatal: list[str] = []
    calls: list[str] = []

    async def main() -> None:
        sup = Supervisor(fatal.append)
        attempts = 0

        async def task() -> None:
            nonlocal attempts
            attempts += 1
            calls.append(f"run {attempts}")
            if attempts <= 2:
                raise KeyError(f"boom {attempts}")

        await sup.supervise("worker", task, lambda: calls.append("reset"))
        assert (sup.failures["worker"], sup.restarts["worker"]) == (2, 2)
        assert sup.as_dict() == {"task_failures": {"worker": 2}, "task_restarts": {"worker": 2}}

    with caplog.at_level(logging.ERROR, "ecac.node"):
        run(main)
    assert calls == ["run 1", "reset", "run 2", "reset", "run 3"]
    assert fatal == []
    failures = [r for r in caplog.records if r.getMessage().startswith("task worker failed")]
    assert len(failures) == 2 and all(r.exc_info is not None for r in failures)  # with the traceback


def test_past_the_budget_the_node_is_told_to_stop_with_one_line() -> None:
    fatal: list[str] = []

    async def main() -> None:
        sup = Supervisor(fatal.append, budget=3, window=60.0)

        async def task() -> None:
            raise RuntimeError("disk on fire\nsecond line")

        await sup.supervise("timer", task)  # returns once the budget is spent
        assert sup.failures["timer"] == 4 and sup.restarts["timer"] == 3

    run(main)
    assert fatal == ["task timer failed 4 times within 60 s (last: RuntimeError: disk on fire)"]


def test_failures_outside_the_window_do_not_count() -> None:
    fatal: list[str] = []

    async def main() -> None:
        sup = Supervisor(fatal.append, budget=1, window=10.0, restart_delay=11.0)
        n = 0

        async def task() -> None:
            nonlocal n
            n += 1
            if n <= 5:
                raise ValueError(n)

        await sup.supervise("slow", task)
        assert sup.failures["slow"] == 5

    run(main)
    assert fatal == []


def test_cancellation_is_not_a_failure_and_run_once_never_raises() -> None:
    fatal: list[str] = []
    seen: list[BaseException] = []

    async def main() -> None:
        sup = Supervisor(fatal.append)
        with trio.move_on_after(1):
            await sup.supervise("forever", trio.sleep_forever)

        async def bad() -> None:
            raise OSError("gone")

        await sup.run_once("request", bad, seen.append)
        assert sup.failures == {"request": 1} and sup.restarts == {}

    run(main)
    assert [type(e) for e in seen] == [OSError] and fatal == []
