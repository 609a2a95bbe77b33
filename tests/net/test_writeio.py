"""The trio side of the writer: futures awaited without blocking the loop, the writer limiter."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import trio
import trio.testing

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.net.writeio import AsyncWriter, wait_future
from ecac.store.memory import MemoryOpStore
from ecac.store.writer import StoreWriter


def ops(n: int, seed: int = 1) -> list[Op]:
    sk = key_pair(seed, b"writeio")
    out: list[Op] = []
    for i in range(n):
        out.append(make_op(sk, [out[-1].op_id] if out else [], Hlc(10 + i, 0, 1), Data("mv:o:x", b"%d" % i)))
    return out


def test_wait_future_lets_the_loop_run_while_a_thread_works() -> None:
    async def main() -> None:
        fut: Future[int] = Future()
        gate = threading.Event()
        ticks = 0

        def worker() -> None:
            gate.wait()
            fut.set_result(42)

        threading.Thread(target=worker, daemon=True).start()
        async with trio.open_nursery() as nursery:

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    if ticks == 5:
                        gate.set()  # only now may the result come: the loop kept running
                    await trio.sleep(0)

            nursery.start_soon(ticker)
            assert await wait_future(fut) == 42
            nursery.cancel_scope.cancel()
        assert ticks >= 5

    trio.run(main)


def test_wait_future_raises_the_thread_side_exception() -> None:
    async def main() -> None:
        fut: Future[int] = Future()
        threading.Thread(target=lambda: fut.set_exception(ValueError("no")), daemon=True).start()
        try:
            await wait_future(fut)
        except ValueError as e:
            assert str(e) == "no"
        else:
            raise AssertionError("expected ValueError")

    trio.run(main)


def test_async_writer_bounds_requests_by_the_queue_and_releases_tokens() -> None:
    writer = StoreWriter(MemoryOpStore(), queue_max=2).start()
    aw = AsyncWriter(writer)
    gate = threading.Event()
    running = threading.Event()
    chain = ops(6)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(aw.call, lambda _st: (running.set(), gate.wait()))
            await trio.to_thread.run_sync(running.wait)  # the writer runs it (off its queue)
            for i in range(3):
                nursery.start_soon(aw.put, chain[2 * i : 2 * i + 2])
            await trio.testing.wait_all_tasks_blocked()
            # 2 tokens: the held call and one put; the other puts wait for a token, not on the queue
            assert aw.limiter.borrowed_tokens == 2 and aw.limiter.statistics().tasks_waiting == 2
            assert writer.queue_depth == 1
            gate.set()
        assert aw.limiter.borrowed_tokens == 0
        assert writer.snapshot.complete_count == 6

    try:
        trio.run(main)
    finally:
        gate.set()
        writer.stop()


def test_a_cancelled_waiter_leaves_the_request_running_and_its_token_is_returned() -> None:
    writer = StoreWriter(MemoryOpStore(), queue_max=1).start()
    aw = AsyncWriter(writer)
    gate = threading.Event()

    async def main() -> None:
        with trio.move_on_after(0.05):
            await aw.call(lambda _st: gate.wait())
        assert aw.limiter.borrowed_tokens == 1  # still running on the writer
        gate.set()
        done = await aw.put(ops(1))  # gets the token back once the held call finished
        assert done.snapshot.op_count == 1 and aw.limiter.borrowed_tokens == 0

    try:
        trio.run(main)
    finally:
        gate.set()
        writer.stop()
