"""``ecac.bench.linkproxy``: the userspace link (delay, TCP-style loss, cut) on 127.0.0.1, and the mesh
bench's real nodes dialling each other through it (``--link-delay-ms``, ``--link-loss``, ``--partition-s``).

Timing is asserted with lower bounds only (the proxy may be late on a busy machine, never early).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ecac.bench.linkproxy import LinkModel, LinkProxy, direct_connections, established_tcp
from ecac.cli.bench_cmds import bench_cmd

HOST = "127.0.0.1"


class Echo:
    """A TCP echo server on 127.0.0.1 (one thread per connection)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=10.0)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _round_trip(s: socket.socket, payload: bytes) -> float:
    t = time.monotonic()
    s.sendall(payload)
    assert _recv_exactly(s, len(payload)) == payload
    return time.monotonic() - t


def _refused(port: int) -> bool:
    """A connection to ``port`` is reset by the proxy: during the connect itself (the reset can
    beat the client's connect() returning, on a loaded machine) or at the first read."""
    try:
        s = _connect(port)
    except ConnectionResetError:
        return True
    with s:
        return _closed_by_peer(s)


def _closed_by_peer(s: socket.socket) -> bool:
    """True once the peer closed or reset ``s`` (blocks up to the socket's timeout)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bytes_arrive_intact_and_in_order_under_delay_and_loss(echo: Echo) -> None:
    rng = random.Random(3)
    data = rng.randbytes(1_500_000)
    with LinkProxy(echo.port, LinkModel(delay_ms=5, loss=0.05, seed=9)) as px, _connect(px.port) as s:
        got = bytearray()

        def reader() -> None:
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        pos = 0
        while pos < len(data):  # writes of varied sizes, so the proxy sees varied chunks
            step = rng.choice((1, 100, 1448, 5000, 70_000))
            s.sendall(data[pos : pos + step])
            pos += step
        t.join(60)
        assert bytes(got) == data
        st = px.stats()
        assert st["bytes_up"] == st["bytes_down"] == len(data)
        assert st["lost_chunks"] > 0  # the loss model was exercised


def test_the_delay_is_applied_each_way_and_to_the_handshake(echo: Echo) -> None:
    with LinkProxy(echo.port, LinkModel(delay_ms=100)) as px, _connect(px.port) as s:
        first = _round_trip(s, b"hello")  # the TCP handshake's round trip first, then the data's
        assert first >= 0.39
        assert _round_trip(s, b"again") >= 0.19
    with LinkProxy(echo.port, LinkModel(delay_ms=100, handshake=False)) as px, _connect(px.port) as s:
        assert _round_trip(s, b"x" * 10_000) >= 0.19


def test_loss_decisions_are_deterministic_for_a_seed() -> None:
    sizes = [random.Random(1).choice((10, 1448, 1449, 20_000, 65536)) for _ in range(2000)]
    model = LinkModel(loss=0.05, seed=42)

    def decisions(m: LinkModel, conn: int, direction: str) -> list[bool]:
        rng = m.rng(conn, direction)
        return [m.lost(rng, n) for n in sizes]

    a = decisions(model, 0, "up")
    assert a == decisions(LinkModel(loss=0.05, seed=42, delay_ms=7), 0, "up")  # the delay plays no part
    assert a != decisions(LinkModel(loss=0.05, seed=43), 0, "up")
    assert a != decisions(model, 1, "up") and a != decisions(model, 0, "down")
    assert 0 < sum(a) < len(a)
    assert not any(decisions(LinkModel(loss=0.0), 0, "up"))
    # more segments, more chances to lose one: a 64 KiB chunk (46 segments) far more often than 10 bytes
    rng = model.rng(5, "up")
    small = sum(model.lost(rng, 10) for _ in range(2000))
    big = sum(model.lost(rng, 65536) for _ in range(2000))
    assert big > 5 * small


def test_a_lost_chunk_holds_the_stream_one_rto(echo: Echo) -> None:
    model = LinkModel(delay_ms=10, loss=0.9, rto_ms=200, seed=5, handshake=False)
    up, down = model.lost(model.rng(0, "up"), 4), model.lost(model.rng(0, "down"), 4)
    assert up or down  # 0.9 per segment: with this seed at least one of the two is lost
    with LinkProxy(echo.port, model) as px, _connect(px.port) as s:
        elapsed = _round_trip(s, b"ping")
        assert px.stats()["lost_chunks"] == int(up) + int(down)
    assert elapsed >= 0.019 + 0.199 * (int(up) + int(down))


def test_cut_resets_connections_and_refuses_new_ones_restore_accepts_again(echo: Echo) -> None:
    with LinkProxy(echo.port, LinkModel(delay_ms=1)) as px:
        with _connect(px.port) as s:
            _round_trip(s, b"before")
            px.cut()
            assert px.is_cut
            assert _closed_by_peer(s)
        assert px.stats()["reset_by_cut"] == 1
        assert _refused(px.port)  # the kernel accepts, the proxy resets at once
        assert px.stats()["refused"] >= 1 and px.stats()["accepted"] == 1
        deadline = time.monotonic() + 10
        while px.connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert px.connections() == 0
        px.restore()
        with _connect(px.port) as s:
            assert _round_trip(s, b"after") > 0
        assert px.stats()["accepted"] == 2


def test_connections_past_the_limit_are_reset(echo: Echo) -> None:
    with LinkProxy(echo.port, max_connections=1) as px, _connect(px.port) as a:
        _round_trip(a, b"one")
        assert _refused(px.port)
        _round_trip(a, b"still here")
        assert px.stats()["refused"] == 1


def test_direct_connections_tells_proxied_from_direct(echo: Echo) -> None:
    with LinkProxy(echo.port) as px, _connect(px.port) as via:
        _round_trip(via, b"x")
        assert (via.getsockname()[1], px.port) in established_tcp()
        assert direct_connections({echo.port}, px.upstream_ports) == []
        with _connect(echo.port) as direct:
            _round_trip(direct, b"y")
            found = direct_connections({echo.port}, px.upstream_ports)
            assert (direct.getsockname()[1], echo.port) in found


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_three_real_nodes_through_proxies_converge_and_heal_a_partition() -> None:
    args = ["--scenario", "mesh", "--nodes", "3", "--topology", "line", "--ops", "30"]
    args += ["--link-delay-ms", "50", "--link-loss", "0.01", "--partition-s", "3", "--json"]
    out = CliRunner().invoke(bench_cmd, args)
    assert out.exit_code == 0, out.output[-3000:]
    r = json.loads(out.output.strip().splitlines()[-1])
    assert r["link_proxy"] is True and r["link_delay_ms"] == 50 and r["link_loss"] == 0.01
    # every inter-node connection of the join went through a proxy: /proc/net/tcp sampled every 10 ms
    # showed no connection to a node's listen port from anything but a proxy, and each node's
    # /status peers are its line neighbours
    assert r["direct_connections_join"] == 0 and r["peers_are_neighbours"] is True
    assert r["proxy_connections"] >= 2
    assert r["converged"] is True and r["converge_ms"] >= 150  # a handshake and data over 50 ms links
    assert r["partition_link"] == "1-2" and r["partition_resets"] >= 1
    assert r["partition_isolated"] is True  # neither side saw the other's writes during the cut
    assert r["heal_converged"] is True and r["heal_ms"] > 0  # ... and after the restore all of them
    assert r["reconnect_ms"] is not None  # the heal came back through the restored proxy
    assert r["join_ops"] == 30 and r["partition_ops"] == 20 and r["ops"] == 50
    assert r["node_digests"] == [r["state_digest"]]  # one digest on every /status, = the replay's
