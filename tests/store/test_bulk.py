"""bulk_load(): the collector is off while any bulk load runs, in any thread, and restored after the last."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ecac.store.bulk import bulk_load, bulk_loads_running


@pytest.fixture(autouse=True)
def _gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    assert bulk_loads_running() == 0
    if was:
        gc.enable()
    else:
        gc.disable()


def test_disables_the_collector_inside_and_restores_it_after():
    with bulk_load():
        assert not gc.isenabled()
        assert bulk_loads_running() == 1
    assert gc.isenabled()
    assert bulk_loads_running() == 0


def test_nested_bulk_loads_keep_it_off_until_the_outermost_ends():
    with bulk_load():
        with bulk_load():
            assert bulk_loads_running() == 2
        assert not gc.isenabled()  # the inner one must not re-enable it under the outer one
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()
    with bulk_load():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_exception_still_restores_the_collector():
    with pytest.raises(ValueError, match="boom"), bulk_load():
        raise ValueError("boom")
    assert gc.isenabled()
    assert bulk_loads_running() == 0


def test_works_as_a_decorator():
    @bulk_load()
    def load() -> bool:
        return gc.isenabled()

    assert load() is False
    assert gc.isenabled()


@pytest.mark.parametrize("first_to_end", ["a", "b"])
def test_two_threads_with_overlapping_bulk_loads(first_to_end: str):
    """A starts, B starts, one of them ends (still off: the other runs), the other ends (on)."""
    entered = {"a": threading.Event(), "b": threading.Event()}
    may_end = {"a": threading.Event(), "b": threading.Event()}
    inside: dict[str, bool] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            with bulk_load():
                entered[name].set()
                assert may_end[name].wait(30)
                inside[name] = gc.isenabled()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = {name: threading.Thread(target=run, args=(name,)) for name in ("a", "b")}
    for name in ("a", "b"):
        threads[name].start()
        assert entered[name].wait(30)
    assert bulk_loads_running() == 2
    last = "b" if first_to_end == "a" else "a"
    may_end[first_to_end].set()
    threads[first_to_end].join(30)
    assert not threads[first_to_end].is_alive()
    assert not gc.isenabled(), f"{first_to_end}'s end re-enabled the collector while {last} still loads"
    assert bulk_loads_running() == 1
    may_end[last].set()
    threads[last].join(30)
    assert not threads[last].is_alive()
    assert not errors, errors
    assert inside == {"a": False, "b": False}
    assert gc.isenabled()


def test_many_threads_hammering_leave_the_count_balanced():
    start = threading.Barrier(8)

    def run() -> None:
        start.wait()
        for _ in range(2000):
            with bulk_load():
                assert not gc.isenabled()

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert bulk_loads_running() == 0
    assert gc.isenabled()
