"""Attacks on connection slots and yamux flow control (issue 10 items 1, 2, 6), against real nodes.

The hostile peers run in this process (py-libp2p, hand-written yamux frames, raw TCP). Each
attack asserts that the target answers ``/status`` within 1 s throughout, that its RSS stays
below baseline + 200 MB, that an honest node dialling in afterwards converges and that
``verify-store`` passes on its store. The full attacks are marked ``redteam`` (``make
redteam``); the ``_fast`` variants (smaller counts) run in ``make test``.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from ecac.net.host import DialError, HostConfig, P2PError, P2PHost
from ecac.net.procs import NodeProc
from ecac.sync.wire import SYNC_PROTOCOL_ID, SyncRequest

from .harness import RedTeam, read_rss

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MIB = 1 << 20
LOCAL = ["/ip4/127.0.0.1/tcp/0"]
HEADER = struct.Struct("!BBHII")  # yamux: version, type, flags, stream id, length
CHUNK = b"\0" * (64 * 1024 - 12)
WINDOW = 256 * 1024  # yamux's initial receive window
#: the source address of the raw-TCP stallers: a loopback address of its own, so the per-IP
#: limits hit the attacker, not the honest node on 127.0.0.1
STALLER_IP = "127.0.0.2"


async def bounded(seconds: float, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``fn(*args)`` with a deadline: an attack never outlives its test (TooSlowError)."""
    with trio.fail_after(seconds):
        return await fn(*args)


def hostile_config() -> HostConfig:
    return HostConfig(heartbeat_interval=0.2)


def conn_counters(node: NodeProc) -> dict[str, int]:
    return dict(node.status()["counters"]["conn"])


def seeded_target(redteam: RedTeam) -> NodeProc:
    target = redteam.start_node("target")
    target.inject(200, seed=7)
    return target


async def honest_sync(target: NodeProc) -> int:
    """An honest in-process peer dials in and completes one sync request: the response size."""
    h = P2PHost(bytes([99]) * 32, config=hostile_config())
    async with h.run(LOCAL):
        with trio.fail_after(20):
            while True:
                try:
                    await h.dial(target.addr, timeout=5)
                    break
                except DialError:
                    await trio.sleep(0.5)  # like the node's own dial backoff
            stream = await h.open_stream(target.peer_id, SYNC_PROTOCOL_ID)
            await stream.write(SyncRequest().frame())
            await stream.close()
            got = 0
            while chunk := await stream.read(1 << 16):
                got += len(chunk)
            return got


def finish(redteam: RedTeam, target: NodeProc, a: Any, full: bool) -> None:
    """The issue's checks after an attack: the full ones (a second real node converges,
    verify-store) for ``make redteam``, a cheaper honest check for the fast variants."""
    if full:
        assert redteam.honest_peer_converges(target)
        assert redteam.stop_and_verify(target) == "ok"
    else:
        got = trio.run(bounded, 30.0, honest_sync, target)
        a.figures.honest_converged = got > 1000  # 200 ops came back
        assert a.figures.honest_converged, got
        assert target.stop() == 0
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


# ---- connection churn ----------------------------------------------------------------------


async def churn(addr: str, cycles: int) -> tuple[int, int]:
    """One identity connecting (TCP + Noise + yamux) and disconnecting, one connection at a time."""
    evil = P2PHost(bytes([66]) * 32, config=hostile_config())
    ok = refused = 0
    async with evil.run(LOCAL):
        for _ in range(cycles):
            try:
                peer = await evil.dial(addr, timeout=5)
                ok += 1
                await evil.disconnect(peer)
            except DialError:
                refused += 1
    return ok, refused


async def fresh_identities(addr: str, count: int) -> int:
    """``count`` new identities, each connecting once (sequentially); the number that got in."""
    ok = 0
    for i in range(count):
        h = P2PHost(i.to_bytes(4, "big") + b"fresh" * 5 + b"\x01" * 3, config=hostile_config())
        async with h.run(LOCAL):
            try:
                await h.dial(addr, timeout=5)
                ok += 1
            except DialError:
                pass
    return ok


def run_churn(redteam: RedTeam, name: str, cycles: int, fresh: int, full: bool) -> None:
    target = seeded_target(redteam)
    with redteam.attack(name, target) as a:
        t0 = time.monotonic()
        ok, refused = trio.run(bounded, 150.0, churn, target.addr, cycles)
        got_in = trio.run(bounded, 60.0, fresh_identities, target.addr, fresh)
        c = conn_counters(target)
        a.note(
            cycles=cycles,
            churner_in=ok,
            churner_refused=refused,
            fresh_in=f"{got_in}/{fresh}",
            refused_ip_rate=c["refused_ip_rate"],
            refused_peer_rate=c["refused_peer_rate"],
            secs=f"{time.monotonic() - t0:.1f}",
        )
    assert ok + refused == cycles
    assert got_in == fresh, a.figures.line()  # new identities get in after the churn
    finish(redteam, target, a, full)


@pytest.mark.redteam
def test_connection_churn(redteam: RedTeam) -> None:
    run_churn(redteam, "conn_churn", cycles=500, fresh=100, full=True)


def test_connection_churn_fast(redteam: RedTeam) -> None:
    run_churn(redteam, "conn_churn_fast", cycles=60, fresh=5, full=False)


# ---- yamux window overrun --------------------------------------------------------------------


async def overrun(target: NodeProc, total: int, after_reset: list[int]) -> dict[str, Any]:
    """Send ``total`` bytes past the receive window of ``/ecac/sync/1`` streams the node no longer
    reads (a request, then DATA frames written by hand, ignoring the window). When the node
    closes the connection (GO_AWAY), reconnect and go on. ``after_reset`` gets the node's RSS
    while the first reset stream's connection is still open."""
    evil = P2PHost(bytes([77]) * 32, config=hostile_config())
    sent = resets = connections = failures = overran = 0
    async with evil.run(LOCAL):
        while sent < total:
            try:
                await evil.dial(target.addr, timeout=5)
                stream = await evil.open_stream(target.peer_id, SYNC_PROTOCOL_ID)
                await stream.write(SyncRequest().frame())
            except P2PError as e:
                failures += 1  # rate-limited: come back later (bounded: the node may be dead)
                assert failures < 100 and target.alive, f"cannot reach the target any more: {e}"
                await trio.sleep(0.2)
                continue
            connections += 1
            muxed: Any = stream._raw.muxed_stream  # type: ignore[attr-defined]
            conn = muxed.conn
            frame = HEADER.pack(0, 0, 0, muxed.stream_id, len(CHUNK)) + CHUNK
            mine = 0
            while sent < total and not conn.event_shutting_down.is_set():
                try:
                    await conn._write_frame(frame)
                except Exception:
                    break
                sent += len(CHUNK)
                mine += len(CHUNK)
                if muxed.reset_received and not after_reset:
                    await trio.sleep(0.5)  # the node reset the stream: its memory must be back now
                    after_reset.append(read_rss(target.pid))
            if mine > WINDOW + len(CHUNK):  # past the window: the node must reset the stream
                with trio.move_on_after(5):
                    while not (muxed.reset_received or conn.event_shutting_down.is_set()):
                        await trio.sleep(0.05)
                overran += 1
                resets += int(muxed.reset_received)
            await evil.disconnect(target.peer_id)
    return {"sent_mib": sent // MIB, "connections": connections, "overran": overran, "streams_reset": resets}


def run_overrun(redteam: RedTeam, name: str, total: int, full: bool) -> None:
    target = seeded_target(redteam)
    after_reset: list[int] = []
    with redteam.attack(name, target) as a:
        figures = trio.run(bounded, 120.0, overrun, target, total, after_reset)
        c = conn_counters(target)
        a.note(**figures, window_overruns=c["window_overruns"], goaways=c["goaways_sent"])
    a.settle_rss()
    base = a.figures.rss_base
    assert after_reset, "the node never reset the overrunning stream"
    a.note(rss_after_reset_mb=f"{after_reset[0] / 1e6:.0f}")
    assert figures["streams_reset"] == figures["overran"] >= 1
    assert c["window_overruns"] >= 1 and c["buffered_bytes"] == 0
    assert after_reset[0] - base < 40e6, a.figures.line()  # back near baseline, connection still up
    assert a.figures.rss_after - base < 40e6, a.figures.line()
    finish(redteam, target, a, full)


@pytest.mark.redteam
def test_yamux_window_overrun(redteam: RedTeam) -> None:
    run_overrun(redteam, "yamux_overrun", total=256 * MIB, full=True)


def test_yamux_window_overrun_fast(redteam: RedTeam) -> None:
    run_overrun(redteam, "yamux_overrun_fast", total=32 * MIB, full=False)


# ---- handshake stallers ----------------------------------------------------------------------


async def stallers(port: int, count: int, seconds: float, opened: list[int]) -> None:
    """``count`` TCP connections from ``STALLER_IP`` that never answer the handshake; each one
    the node closes is re-opened 0.2 s later, for ``seconds``."""

    async def one() -> None:
        while True:
            try:
                sock = trio.socket.socket()
                await sock.bind((STALLER_IP, 0))
                await sock.connect(("127.0.0.1", port))
            except OSError:
                await trio.sleep(0.2)
                continue
            opened[0] += 1
            async with trio.SocketStream(sock) as s:
                try:
                    while await s.receive_some(4096):  # the node's multistream hello: ignored
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await trio.sleep(0.2)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)


def in_thread(fn: Callable[[], Awaitable[None]]) -> threading.Thread:
    t = threading.Thread(target=trio.run, args=(fn,), name="attack", daemon=True)
    t.start()
    return t


def run_stallers(redteam: RedTeam, name: str, count: int, seconds: float, full: bool) -> None:
    target = seeded_target(redteam)
    port = int(target.addr.split("/tcp/")[1].split("/")[0])
    opened = [0]
    with redteam.attack(name, target) as a:
        attack = in_thread(lambda: stallers(port, count, seconds, opened))
        time.sleep(1.0)
        if full:  # a second real node dials in and converges while the stallers are at it
            during = redteam.honest_peer_converges(target, timeout=seconds + 30, name="honest-during")
        else:
            during = trio.run(bounded, 30.0, honest_sync, target) > 1000
        attack.join(seconds + 30)
        c = conn_counters(target)
        a.note(
            stallers=count,
            tcp_opened=opened[0],
            honest_during=during,
            pending_evicted=c["pending_evicted"],
            refused_pending_full=c["refused_pending_full"],
            refused_ip_rate=c["refused_ip_rate"],
            handshake_timeouts=c["handshake_timeouts"],
        )
    assert not attack.is_alive()
    assert opened[0] >= count, f"the stallers could not connect from {STALLER_IP}"
    assert during, a.figures.line()  # an honest node from another address got in meanwhile
    time.sleep(0.5)
    assert conn_counters(target)["pending_handshakes"] == 0
    finish(redteam, target, a, full)


@pytest.mark.redteam
def test_handshake_stallers(redteam: RedTeam) -> None:
    run_stallers(redteam, "handshake_stallers", count=300, seconds=20.0, full=True)


def test_handshake_stallers_fast(redteam: RedTeam) -> None:
    run_stallers(redteam, "handshake_stallers_fast", count=64, seconds=4.0, full=False)
