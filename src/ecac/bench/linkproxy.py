"""A userspace link emulator: a TCP proxy on 127.0.0.1 with one-way delay, TCP-style loss and cuts.

For machines without ``sch_netem`` (``tc qdisc … netem`` unavailable, see ``ecac.bench.netns``):
real node processes dial each other through one :class:`LinkProxy` per link instead of directly::

    with LinkProxy(target_port=b_port, model=LinkModel(delay_ms=100, loss=0.01, seed=1)) as px:
        a.add_peer(f"/ip4/127.0.0.1/tcp/{px.port}/p2p/{b_peer_id}")
        px.cut()       # partition: every proxied connection is reset, new ones are reset at once
        px.restore()   # connections are accepted and forwarded again

The model (:class:`LinkModel`), per connection and per direction:

* **delay**: every chunk read from one side (one ``recv``, ≤ 64 KiB) is stamped and written to
  the other side ``delay_ms`` later, in order (a FIFO queue per direction: a chunk never
  overtakes the one before it). A new connection first pays the TCP handshake: the dialer's
  bytes are released no earlier than 3 × delay after the accept (SYN, SYN-ACK, then the data),
  the listener's no earlier than 4 × delay, as if the connect itself had crossed the link.
* **loss**: each chunk counts as ``ceil(len / 1448)`` segments and each segment is lost with
  probability ``loss`` (a seeded ``random.Random`` per connection and direction: the decisions
  are the same for the same seed, connection number and chunk sizes); a chunk with a lost segment
  is held ``rto_ms`` more (200 ms, Linux's minimum retransmission timeout), and so is everything
  after it, because TCP delivers in order. That is what ``netem loss 1%`` does to a TCP stream
  that is not bandwidth-bound.
* **cut** (a partition): all proxied connections are closed (a FIN, then an RST: SO_LINGER 0),
  and while cut a new connection is accepted and reset at once (the dialer sees a failed dial
  and backs off, as the node's dialer does for a refused peer). The listening socket stays
  bound, so no other socket can take the port and :meth:`LinkProxy.restore` cannot fail. Under a
  real link-down (``ip link set … down``, the netns harness) the connections instead stall and
  survive; here a node redials after the restore, so a heal includes that reconnect.

The proxy only carries what is dialled through it: a node that dials the peer's real port (libp2p
dials peerstore addresses, which identify fills with the listen addresses) bypasses the link.
:class:`BypassWatch` samples ``/proc/net/tcp`` and reports every such connection.

Limits (docs/performance.md, "Network conditions"; decisions D99): delay and loss apply per chunk
that the proxy reads, not per IP packet, and the proxy's own loopback legs ACK at once, so there is
no congestion window, slow start or retransmission backoff; no bandwidth limit, no jitter, no
reordering, no duplication; a lost SYN (1 s initial RTO) is not modelled; ACKs are not delayed
(the sender's socket buffer never fills because of the delay). Bounded: at most
``max_connections`` proxied connections (more are reset) and ``max_buffer`` bytes queued per
direction (the reader stops reading beyond it, so TCP flow control pushes back on the sender).

A bench/test tool (threads and blocking sockets; ``ecac.core`` and ``ecac.sync`` never import it).
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 65536
MSS = 1448  # TCP payload of a 1500-byte Ethernet frame with timestamps
LINUX_MIN_RTO_MS = 200.0
MAX_CONNECTIONS = 64
MAX_BUFFER = 4 * 2**20


@dataclass(frozen=True, slots=True)
class LinkModel:
    """What the link does to every chunk: ``delay_ms`` one way, TCP loss ``loss`` per segment."""

    delay_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = LINUX_MIN_RTO_MS
    seed: int = 1
    handshake: bool = True  # a new connection pays the TCP handshake's round trip

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.rto_ms < 0:
            raise ValueError("delay_ms and rto_ms must be ≥ 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")

    def rng(self, conn_no: int, direction: str) -> random.Random:
        """The loss RNG of connection ``conn_no`` (0, 1, … in accept order), direction ``up|down``."""
        return random.Random(f"{self.seed}:{conn_no}:{direction}")

    def lost(self, rng: random.Random, size: int) -> bool:
        """Whether a chunk of ``size`` bytes has a lost segment (draws one number per segment)."""
        if self.loss <= 0.0:
            return False
        hit = False
        for _ in range(max(1, math.ceil(size / MSS))):
            hit = rng.random() < self.loss or hit  # always draw every segment: sizes alone fix the stream
        return hit


class _Pipe:
    """One direction of a proxied connection: a reader thread stamps chunks, a writer releases them."""

    def __init__(self, conn: _Conn, src: socket.socket, dst: socket.socket, direction: str, floor: float):
        self.conn, self.src, self.dst, self.direction = conn, src, dst, direction
        self.rng = conn.proxy.model.rng(conn.no, direction)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.floor = floor  # no release before this (the handshake; then the last release: order)
        self.cv = threading.Condition()
        self.done = False

    def start(self) -> None:
        name = f"linkproxy-{self.conn.proxy.port}-{self.conn.no}-{self.direction}"
        threading.Thread(target=self._read, name=name + "-r", daemon=True).start()
        threading.Thread(target=self._write, name=name + "-w", daemon=True).start()

    def stop(self) -> None:
        with self.cv:
            self.done = True
            self.cv.notify_all()

    def _read(self) -> None:
        model, proxy = self.conn.proxy.model, self.conn.proxy
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                self.conn.close()
                return
            now = time.monotonic()
            release = now + model.delay_ms / 1000
            if data and model.lost(self.rng, len(data)):
                release += model.rto_ms / 1000
                proxy.count("lost_chunks")
            with self.cv:
                while self.queued >= MAX_BUFFER and not self.done:
                    self.cv.wait()
                if self.done:
                    return
                self.floor = max(self.floor, release)
                self.queue.append((self.floor, data))
                self.queued += len(data)
                self.cv.notify_all()
            if not data:
                return

    def _write(self) -> None:
        proxy = self.conn.proxy
        while True:
            with self.cv:
                while not self.done and (not self.queue or self.queue[0][0] > time.monotonic()):
                    timeout = self.queue[0][0] - time.monotonic() if self.queue else None
                    self.cv.wait(timeout)
                if self.done:
                    return
                _, data = self.queue.popleft()
                self.queued -= len(data)
                self.cv.notify_all()
            try:
                if not data:  # the source's EOF, in order
                    self.dst.shutdown(socket.SHUT_WR)
                    self.conn.half_closed()
                    return
                self.dst.sendall(data)
            except OSError:
                self.conn.close()
                return
            proxy.count(f"bytes_{self.direction}", len(data))
            proxy.count(f"chunks_{self.direction}")


class _Conn:
    """A proxied connection: ``client`` (accepted) ↔ ``upstream`` (to the target)."""

    def __init__(self, proxy: LinkProxy, no: int, client: socket.socket, upstream: socket.socket):
        self.proxy, self.no, self.client, self.upstream = proxy, no, client, upstream
        self.upstream_port = upstream.getsockname()[1]
        self.client_port = client.getpeername()[1]
        self._lock = threading.Lock()
        self._closed = False
        self._halves = 0
        now, d = time.monotonic(), proxy.model.delay_ms / 1000
        hs = proxy.model.handshake
        self.pipes = (
            _Pipe(self, client, upstream, "up", now + (3 * d if hs else 0.0)),
            _Pipe(self, upstream, client, "down", now + (4 * d if hs else 0.0)),
        )

    def start(self) -> None:
        for p in self.pipes:
            p.start()

    def half_closed(self) -> None:
        with self._lock:
            self._halves += 1
            both = self._halves == 2
        if both:
            self.close(reset=False)

    def close(self, reset: bool = True) -> None:
        """Close both sockets (``reset``: with an RST, as a cut does) and stop both pipes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for p in self.pipes:
            p.stop()
        for s in (self.client, self.upstream):
            _close(s, reset)
        self.proxy._forget(self)


def _close(s: socket.socket, reset: bool, wake: bool = True) -> None:
    """Close ``s`` (``reset``: with an RST, SO_LINGER 0). With ``wake`` a shutdown comes first, which
    wakes the pipe threads blocked in ``recv``/``send`` on it (a ``close`` from another thread does
    not); the peer then sees a FIN before the RST. A socket no thread uses gets the RST alone."""
    try:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if wake:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class LinkProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards each connection to ``target_host:target_port``
    through a :class:`LinkModel`; :meth:`cut` / :meth:`restore` partition the link (module doc)."""

    def __init__(
        self,
        target_port: int,
        model: LinkModel | None = None,
        *,
        target_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.target = (target_host, target_port)
        self.model = model or LinkModel()
        self.max_connections = max_connections
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", listen_port))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._cut = False
        self._stopped = False
        self._next_no = 0
        #: local ports of every upstream socket the proxy opened (who connected to the target via us)
        self.upstream_ports: set[int] = set()
        self.counters: dict[str, int] = {
            "accepted": 0,
            "refused": 0,
            "reset_by_cut": 0,
            "upstream_failed": 0,
            "lost_chunks": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "chunks_up": 0,
            "chunks_down": 0,
        }
        self.last_accept: float | None = None  # time.monotonic() of the last forwarded connection
        self._thread = threading.Thread(target=self._accept_loop, name=f"linkproxy-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counters, "open": len(self._conns), "cut": self._cut}

    def cut(self) -> None:
        """Partition: reset every proxied connection; new ones are reset until :meth:`restore`."""
        with self._lock:
            self._cut = True
            conns = list(self._conns)
            self.counters["reset_by_cut"] += len(conns)
        for c in conns:
            c.close(reset=True)

    def restore(self) -> None:
        """End the partition: new connections are forwarded again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop listening and close every connection."""
        with self._lock:
            self._stopped = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        for c in conns:
            c.close(reset=True)
        self._thread.join(5.0)

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                stopped = self._stopped
                refuse = self._cut or len(self._conns) >= self.max_connections
                if refuse and not stopped:
                    self.counters["refused"] += 1
            if stopped or refuse:
                _close(client, reset=True, wake=False)
                if stopped:
                    return
                continue
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                upstream.bind(("127.0.0.1", 0))  # the port is known (and recorded) before the connect
                with self._lock:
                    self.upstream_ports.add(upstream.getsockname()[1])
                upstream.settimeout(5.0)
                upstream.connect(self.target)
            except OSError:
                self.count("upstream_failed")
                _close(client, reset=True)
                upstream.close()
                continue
            try:
                for s in (client, upstream):
                    s.settimeout(None)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Conn(self, self._next_no, client, upstream)
            except OSError:  # the dialer is already gone
                _close(client, reset=True)
                _close(upstream, reset=True)
                continue
            with self._lock:
                late_cut = self._cut or self._stopped  # cut while we connected upstream
                if late_cut:
                    self.counters["refused"] += 1
                else:
                    self._next_no += 1
                    self._conns.add(conn)
                    self.counters["accepted"] += 1
                    self.last_accept = time.monotonic()
            if late_cut:
                _close(client, reset=True)
                _close(upstream, reset=True)
                continue
            conn.start()


# --------------------------------------------------------------------------- who is connected to whom


def established_tcp() -> list[tuple[int, int]]:
    """``(local port, remote port)`` of every established IPv4 TCP connection on 127.0.0.1 (``/proc``)."""
    out: list[tuple[int, int]] = []
    try:
        lines = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return out
    loopback = "0100007F"
    for line in lines:
        f = line.split()
        if len(f) < 4 or f[3] != "01":  # 01: ESTABLISHED
            continue
        (lip, lport), (rip, rport) = (x.split(":") for x in f[1:3])
        if lip == loopback and rip == loopback:
            out.append((int(lport, 16), int(rport, 16)))
    return out


def direct_connections(
    node_ports: set[int], proxy_ports: set[int], conns: list[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """Established connections (``conns``, default :func:`established_tcp`) to a node's listen port
    that did not come from a proxy's upstream socket (``proxy_ports``): a node that dialled another
    one directly, bypassing the link."""
    return [
        (lp, rp)
        for lp, rp in (established_tcp() if conns is None else conns)
        if (rp in node_ports and lp not in proxy_ports) or (lp in node_ports and rp not in proxy_ports)
    ]


class BypassWatch:
    """Samples :func:`direct_connections` every ``interval`` s in a thread while running (a context
    manager): ``seen`` holds every direct connection observed, as ``(node port, other port)``.
    ``proxies`` are read live, so connections a proxy opens later are recognised."""

    def __init__(self, node_ports: set[int], proxies: list[LinkProxy], interval: float = 0.01) -> None:
        self.node_ports, self.proxies, self.interval = node_ports, proxies, interval
        self.seen: dict[tuple[int, int], float] = {}  # -> time.monotonic() it was first seen
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linkproxy-bypass-watch", daemon=True)

    def __enter__(self) -> BypassWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()

    def sample(self) -> None:
        conns = established_tcp()  # first: a proxy records an upstream port before it connects
        via: set[int] = set()
        for px in self.proxies:
            with px._lock:
                via |= px.upstream_ports
        for lp, rp in direct_connections(self.node_ports, via, conns):
            self.seen.setdefault((lp, rp) if lp in self.node_ports else (rp, lp), time.monotonic())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
