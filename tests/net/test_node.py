"""In-process nodes on 127.0.0.1: the failure policy with injected failures, serve limits, /status.

Two real nodes (libp2p, trio) in one test process sync over loopback while a coordinator
method, a store write or a task is made to fail; the node must count the failure, restart
from a consistent snapshot and still converge, or stop with ``NodeFailure`` when the store
became unusable or a task ran out of restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from ecac.core.errors import StoreError
from ecac.core.op import Op
from ecac.core.replay import replay_full
from ecac.net.counters import NodeCounters
from ecac.net.node import Node, NodeFailure, NodeOptions
from ecac.net.serve import SyncServer
from ecac.store.memory import MemoryOpStore
from ecac.sync.coordinator import SyncConfig
from ecac.testing.workloads import gen_concurrent

pytestmark = pytest.mark.anyio

N_OPS = 300


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def options(tmp_path: Path, name: str) -> NodeOptions:
    return NodeOptions(
        db=tmp_path / name,
        listen=("/ip4/127.0.0.1/tcp/0",),
        project="node-test",
        anti_entropy_ms=200,
        heartbeat_interval=0.2,
        sync_overrides={"request_max_ops": 100},
    )


@asynccontextmanager
async def running(
    nursery: trio.Nursery, tmp_path: Path, name: str, ops: Sequence[Op] = (), seed: int = 1
) -> AsyncIterator[Node]:
    node = Node(options(tmp_path, name), MemoryOpStore(ops), bytes([seed]) * 32)
    ready = trio.Event()
    nursery.start_soon(lambda: node.run(lambda _n: ready.set(), stop_on_signals=False))
    with trio.fail_after(20):
        await ready.wait()
    yield node


async def wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def synced(node: Node, n: int) -> bool:
    s = node.writer.snapshot
    return s.complete_count == n and s.digest_ops == n


async def test_a_coordinator_that_raises_once_is_restarted_and_sync_completes(tmp_path: Path) -> None:
    ops = gen_concurrent(3, N_OPS, 3)
    async with (
        trio.open_nursery() as nursery,
        running(nursery, tmp_path, "a", ops, 1) as a,
        running(nursery, tmp_path, "b", (), 2) as b,
    ):
        real = b.coord.decoded_received
        calls = {"n": 0}

        def flaky(*args: Any, **kw: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("injected coordinator bug")
            return real(*args, **kw)

        b.coord.decoded_received = flaky  # type: ignore[method-assign]
        broken = b.coord
        await b.dial_now(a.listen_addrs[0])
        await wait_until(lambda: synced(b, N_OPS))
        assert b.coord is not broken  # replaced, not used on
        st = b.status()
        assert st["counters"]["task_failures"] == {"coordinator": 1}
        assert st["counters"]["task_restarts"] == {"coordinator": 1}
        assert st["counters"]["coordinator_restarts"] == 1
        assert st["state_digest"] == a.status()["state_digest"] == replay_full(ops)[1].hex()
        assert b.coord.check_invariants() == []
        nursery.cancel_scope.cancel()


async def test_a_failed_store_write_fails_the_commit_locally_and_the_sync_retries(tmp_path: Path) -> None:
    ops = gen_concurrent(4, N_OPS, 2)
    async with (
        trio.open_nursery() as nursery,
        running(nursery, tmp_path, "a", ops, 1) as a,
        running(nursery, tmp_path, "b", (), 2) as b,
    ):
        store = b.store
        real = store._write
        calls = {"n": 0}

        def flaky(batch: Sequence[Op]) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise StoreError("injected write failure")
            real(batch)

        store._write = flaky  # type: ignore[method-assign]
        await b.dial_now(a.listen_addrs[0])
        await wait_until(lambda: synced(b, N_OPS))
        st = b.status()
        assert st["counters"]["commit_rejections"] == 1  # the outcome told the coordinator
        assert st["counters"]["writer"]["failures"] == 1  # the failed put; the node made it an outcome
        assert st["counters"]["task_failures"] == {} and b.writer.failure is None
        nursery.cancel_scope.cancel()


async def test_a_task_that_fails_is_restarted_with_a_rebuilt_coordinator(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery, running(nursery, tmp_path, "a", (), 1) as a:
        real = a.coord.next_wakeup
        calls = {"n": 0}

        def flaky() -> float | None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected timer bug")
            return real()

        a.coord.next_wakeup = flaky  # type: ignore[method-assign]
        await wait_until(lambda: a.status()["counters"]["task_restarts"].get("timer") == 1)
        assert a.status()["counters"]["task_failures"] == {"timer": 1}
        await wait_until(lambda: calls["n"] == 1 and a.coord.next_wakeup is not flaky)
        nursery.cancel_scope.cancel()


async def test_an_unusable_store_stops_the_node_with_node_failure(tmp_path: Path) -> None:
    ops = gen_concurrent(5, N_OPS, 2)
    failures: list[NodeFailure] = []
    async with trio.open_nursery() as nursery, running(nursery, tmp_path, "a", ops, 1) as a:
        b = Node(options(tmp_path, "b"), MemoryOpStore(), bytes([2]) * 32)
        real = b.store._commit

        def half(batch: Sequence[Op]) -> list[bytes]:
            real(batch[:1])
            raise RuntimeError("crash between index updates")

        b.store._commit = half  # type: ignore[method-assign]
        ready = trio.Event()

        async def run_b() -> None:
            try:
                await b.run(lambda _n: ready.set(), stop_on_signals=False)
            except NodeFailure as e:
                failures.append(e)

        nursery.start_soon(run_b)
        await ready.wait()
        await b.dial_now(a.listen_addrs[0])
        await wait_until(lambda: bool(failures))
        nursery.cancel_scope.cancel()
    assert str(failures[0]).startswith("node stopped: store writer: the store index changed during a failed")
    assert b.writer.failure is not None


async def test_a_coordinator_failing_on_every_call_exhausts_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ecac.sync.coordinator as coordinator

    def broken(self: Any, now: float) -> list[Any]:
        raise RuntimeError("always")

    monkeypatch.setattr(coordinator.SyncCoordinator, "timer", broken)  # every replacement too
    monkeypatch.setattr(coordinator.SyncCoordinator, "next_wakeup", lambda self: 0.0)
    node = Node(options(tmp_path, "a"), MemoryOpStore(), bytes([1]) * 32)
    with trio.fail_after(30), pytest.raises(NodeFailure, match=r"failed 6 times within 60 s \(last: Runtime"):
        await node.run(stop_on_signals=False)
    assert max(node.supervisor.failures.values()) == 6


# --------------------------------------------------------------------------- serving limits, status


class FakeStream:
    def __init__(self, peer: str) -> None:
        self.peer_id = peer
        self.resets = 0

    async def reset(self) -> None:
        self.resets += 1


async def test_serves_beyond_the_per_peer_limit_are_reset_and_counted() -> None:
    counters = NodeCounters()
    store = MemoryOpStore()
    cfg = SyncConfig(max_serves_per_peer=2)
    server = SyncServer(cfg, store.facts, store.snapshot, store.load_ops_cbor, counters, lambda _p: False)
    server.active["P"] = 2  # two serves of P running
    extra = FakeStream("P")
    await server.handle(extra)
    assert extra.resets == 1 and counters.serves_refused == 1
    assert server.active["P"] == 2  # the refused stream took no slot


async def test_status_reads_only_the_snapshot_and_counters(tmp_path: Path) -> None:
    ops = gen_concurrent(6, 40, 2)
    node = Node(options(tmp_path, "a"), MemoryOpStore(ops), bytes([1]) * 32)

    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("status must not call the store")

    names = ("heads", "op_count", "complete_count", "pending_count", "topo_ids", "recent_bloom", "snapshot")
    for name in names:
        setattr(node.store, name, forbidden)
    node.store._lock = SimpleNamespace()  # type: ignore[assignment]  # any lock use fails
    st = node.status()
    assert (st["op_count"], st["complete_count"], st["pending_ops"]) == (40, 40, 0)
    assert st["heads"] == [h.hex() for h in node.writer.snapshot.top_heads(8)] and len(st["heads"]) == 2
    assert st["counters"]["writer_queue_depth"] == 0 and st["counters"]["serves_refused"] == 0
    assert set(st["counters"]["limiters"]) == {"writer", "serve", "decode", "digest"}
    assert st["counters"]["task_failures"] == {} and st["digest_ready"] is False
