"""The red-team harness: a real ``ecac node`` under attack, probed for liveness and memory.

For the other red-team helpers (connections, streams, gateway attacks)::

    def test_my_attack(redteam: RedTeam) -> None:
        target = redteam.start_node("target")
        with redteam.attack("slowloris", target) as a:   # starts the /status and RSS probes
            ...                                          # the attack (bounded in count and time)
            a.note(connections=100)                      # extra figures for the report line
        fig = a.figures                                  # probes stopped, figures recorded
        assert redteam.honest_peer_converges(target)     # a second real node dials in and converges
        assert redteam.stop_and_verify(target) == "ok"   # SIGTERM, then `ecac verify-store --db`
        fig.check(status_max_s=1.0, rss_budget_mb=200)   # the issue's bounds, with a readable message

``make redteam`` runs ``tests/redteam -m redteam`` and prints one line per attack from the
figures recorded here (``tests/redteam/conftest.py``)::

    attack=<name> status_max_ms=… status_median_ms=… rss_base_mb=… rss_peak_mb=… rss_after_mb=…
        honest_converged=… verify_store=ok [extra figures]

* ``StatusProbe``: a thread that GETs ``/status`` back to back (every ``interval``) over a fresh
  TCP connection each time and records every latency; a failed or timed-out request counts
  with its full elapsed time (at least the timeout) and as a failure.
* ``RssProbe``: a thread sampling ``VmRSS`` of ``/proc/<pid>/status``; the peak also takes the
  kernel's ``VmHWM`` after resetting it at the start of the attack (``clear_refs`` 5), so a
  spike between two samples is not missed.
* ``raw_request``: one HTTP request with arbitrary bytes to the control port (with the bearer
  token of ``<db>/control.token`` when the node wrote one), for hostile bodies.

Bounded decoding (helper A, gateway): ``ecac.core.opcodec.read_log(body, "request body")`` is
the bounded op-log decoder for ``POST /append-ops``; ``ecac.core.codec.loads`` (every CBOR
decode) checks depth, item counts and the memory the decoded value would take BEFORE
decoding, and raises ``ecac.core.errors.DecodeError`` (→ 400) on hostile input.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ecac.net.procs import NodeProc, start_node, wait_converged

PROJECT = "redteam"
AE_MS = 200
#: figures of every attack of this session, in order (printed by the conftest plugin)
FIGURES: list[Figures] = []
VERIFY_COMMAND = (sys.executable, "-c", "from ecac.cli import main; main()", "verify-store")


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f}"


@dataclass
class Figures:
    """What one attack measured (the report line and the assertions)."""

    attack: str
    status_max_ms: float = 0.0
    status_median_ms: float = 0.0
    status_samples: int = 0
    status_failures: int = 0
    rss_base: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    honest_converged: bool | None = None
    verify_store: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        conv = "-" if self.honest_converged is None else str(self.honest_converged).lower()
        parts = [
            f"attack={self.attack}",
            f"status_max_ms={self.status_max_ms:.0f}",
            f"status_median_ms={self.status_median_ms:.1f}",
            f"status_failures={self.status_failures}",
            f"rss_base_mb={_mb(self.rss_base)}",
            f"rss_peak_mb={_mb(self.rss_peak)}",
            f"rss_after_mb={_mb(self.rss_after)}",
            f"honest_converged={conv}",
            f"verify_store={self.verify_store or '-'}",
        ]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return " ".join(parts)

    def check(self, status_max_s: float = 1.0, rss_budget_mb: float = 200.0) -> None:
        """The issue's bounds: ``/status`` answered within ``status_max_s`` every time, peak RSS
        at most baseline + ``rss_budget_mb``."""
        assert self.status_samples > 0, f"{self.attack}: the /status probe took no sample"
        assert self.status_failures == 0, (
            f"{self.attack}: /status failed {self.status_failures}x: {self.line()}"
        )
        assert self.status_max_ms <= status_max_s * 1000, f"{self.attack}: /status too slow: {self.line()}"
        assert self.rss_peak - self.rss_base <= rss_budget_mb * 1e6, f"{self.attack}: RSS: {self.line()}"


class StatusProbe:
    """GET ``/status`` back to back in a thread; records each latency (see the module docstring)."""

    def __init__(self, control_url: str, interval: float = 0.05, timeout: float = 5.0) -> None:
        u = urlsplit(control_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-probe", daemon=True)

    def once(self) -> float:
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", "/status", headers={"Host": f"127.0.0.1:{self.port}"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failures.append(f"HTTP {resp.status}")
            finally:
                conn.close()
        except OSError as e:
            self.failures.append(f"{type(e).__name__}: {e}")
        dt = time.monotonic() - t0
        self.latencies.append(dt)
        return dt

    def _run(self) -> None:
        while not self._stop.is_set():
            self.once()
            self._stop.wait(self.interval)

    def start(self) -> StatusProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        if not self.latencies:
            self.once()

    @property
    def max_ms(self) -> float:
        return max(self.latencies, default=0.0) * 1000

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0


def read_rss(pid: int, key: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``) of a process in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


class RssProbe:
    """Samples the resident set size of ``pid`` in a thread: baseline, peak, last value."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.base = read_rss(pid)
        self.peak = self.base
        self.last = self.base
        self._hwm_reset = self._reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-probe", daemon=True)

    def _reset_hwm(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def sample(self) -> int:
        try:
            v = read_rss(self.pid)
        except (OSError, RuntimeError):  # the process is gone
            return self.last
        self.last = v
        self.peak = max(self.peak, v)
        return v

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> RssProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()
        if self._hwm_reset:
            with suppress(OSError, RuntimeError):
                self.peak = max(self.peak, read_rss(self.pid, "VmHWM"))


class Attack:
    """The probes running around one attack; ``figures`` is filled when the block exits."""

    def __init__(self, name: str, node: NodeProc, status_interval: float = 0.05) -> None:
        assert node.control_url is not None, "the target needs --control"
        self.node = node
        self.figures = Figures(name)
        self.status = StatusProbe(node.control_url, interval=status_interval)
        self.rss: RssProbe | None = None

    def note(self, **extra: Any) -> None:
        """Extra figures for the report line (``key=value``)."""
        self.figures.extra.update(extra)

    def __enter__(self) -> Attack:
        self.rss = RssProbe(self.node.pid).start()
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()
        assert self.rss is not None
        self.rss.stop()
        f = self.figures
        f.status_max_ms = self.status.max_ms
        f.status_median_ms = self.status.median_ms
        f.status_samples = len(self.status.latencies)
        f.status_failures = len(self.status.failures)
        if self.status.failures:
            f.extra.setdefault("status_first_failure", repr(self.status.failures[0]))
        f.rss_base, f.rss_peak, f.rss_after = self.rss.base, self.rss.peak, self.rss.last

    def settle_rss(self, seconds: float = 2.0) -> int:
        """RSS after waiting up to ``seconds`` for it to stop falling (call after the block)."""
        last = read_rss(self.node.pid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = read_rss(self.node.pid)
            if now >= last:
                break
            last = now
        self.figures.rss_after = last
        return last


class RedTeam:
    """Starts target and honest nodes under ``root``; kills them all at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[NodeProc] = []
        self.attacks: list[Attack] = []

    def start_node(
        self, name: str, peers: Sequence[str] = (), extra_args: Sequence[str] = (), **kw: Any
    ) -> NodeProc:
        n = start_node(
            self.root / name,
            peers=peers,
            project=PROJECT,
            anti_entropy_ms=kw.pop("anti_entropy_ms", AE_MS),
            extra_args=("--heartbeat-ms", "200", *extra_args),
            **kw,
        )
        self.procs.append(n)
        return n

    @contextmanager
    def attack(self, name: str, node: NodeProc, status_interval: float = 0.05) -> Iterator[Attack]:
        a = Attack(name, node, status_interval)
        self.attacks.append(a)
        FIGURES.append(a.figures)
        with a:
            yield a

    def _figures_of(self, node: NodeProc) -> list[Figures]:
        return [a.figures for a in self.attacks if a.node is node]

    def honest_peer_converges(self, target: NodeProc, timeout: float = 60.0, name: str = "honest") -> bool:
        """A fresh real node dials ``target`` and must reach the same ops, heads and digest."""
        honest = self.start_node(name, peers=[target.addr])
        try:
            wait_converged([target, honest], timeout)
            ok = True
        except TimeoutError as e:
            print(f"honest peer {name}: {e}")
            ok = False
        for f in self._figures_of(target):
            f.honest_converged = ok
        honest.stop()
        return ok

    def verify_store(self, db: Path) -> str:
        """``ecac verify-store --db DB``: ``"ok"``, or the exit code and output."""
        r = subprocess.run([*VERIFY_COMMAND, "--db", str(db)], capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return "ok"
        return f"rc={r.returncode}:{(r.stdout + r.stderr).strip()[-300:]}"

    def stop_and_verify(self, node: NodeProc) -> str:
        """Stop ``node`` (SIGTERM, clean exit expected) and run ``verify-store`` on its store."""
        rc = node.stop()
        res = self.verify_store(node.db) if rc == 0 else f"node exit code {rc}"
        for f in self._figures_of(node):
            f.verify_store = res
        return res

    def cleanup(self) -> None:
        for p in self.procs:
            if p.alive:
                p.kill()
            else:
                p._close()
        for p in self.procs:
            print(f"----- log of {p.db.name} (pid {p.pid}, exit {p.proc.returncode}) -----")
            print(p.log_text()[-6000:])


def control_token(node: NodeProc) -> str | None:
    """The node's control token (``<db>/control.token``), if it wrote one."""
    p = node.db / "control.token"
    try:
        return p.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def raw_request(
    node: NodeProc,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP request with arbitrary body bytes; ``(status, body)`` of the answer."""
    assert node.control_url is not None
    u = urlsplit(node.control_url)
    h = {"Host": f"127.0.0.1:{u.port}", "Content-Type": content_type, "Content-Length": str(len(body))}
    tok = control_token(node)
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    h.update(headers or {})
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- a hostile libp2p peer


@dataclass
class StreamOutcome:
    """How the target answered one raw ``/ecac/sync/1`` stream: ``"reset"``, ``"eof"``, ``"timeout"``
    or ``"open-failed: …"``, after ``elapsed`` seconds, with the bytes it sent."""

    outcome: str
    elapsed: float
    received: bytes = b""


class HostilePeer:
    """A libp2p host in the test process (its own trio loop in a thread) that talks to a target
    node with arbitrary bytes: raw sync streams, a custom ``/ecac/sync/1`` server, announces.

    ``serve`` is ``async (stream, request_body) -> None``: it answers a sync request however it
    likes (a flood, garbage). Use as a context manager; ``call(async_fn, *args)`` runs a
    coroutine function on the peer's loop from the test thread.
    """

    def __init__(self, seed: bytes, project: str = PROJECT, serve: Any = None) -> None:
        from nacl.signing import SigningKey

        from ecac.net.host import HostConfig, P2PHost
        from ecac.sync.wire import SYNC_PROTOCOL_ID, announce_topic

        self.sk = SigningKey(seed)
        self.topic = announce_topic(project)
        self.host = P2PHost(seed, config=HostConfig(heartbeat_interval=0.2))
        self.serve = serve
        self.requests: list[bytes] = []
        self.served = 0
        if serve is not None:
            self.host.set_stream_handler(SYNC_PROTOCOL_ID, self._handle)
        self._token: Any = None
        self._ready = threading.Event()
        self._stop: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="hostile-peer", daemon=True)

    async def _handle(self, stream: Any) -> None:
        from ecac.sync.wire import MAX_REQUEST_FRAME, FrameReader

        reader = FrameReader(MAX_REQUEST_FRAME)
        bodies: list[bytes] = []
        while not bodies:
            chunk = await stream.read(65536)
            if not chunk:
                return
            bodies = reader.feed(chunk)
        self.requests.append(bodies[0])
        self.served += 1
        await self.serve(stream, bodies[0])

    def _main(self) -> None:
        import trio

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            await self.host.subscribe(self.topic, lambda m: None)
            async with self.host.run(["/ip4/127.0.0.1/tcp/0"]):
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(main)
        except BaseException as e:  # reported by __enter__ / __exit__
            self._error = e
            self._ready.set()

    def __enter__(self) -> HostilePeer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._token is None:
            raise RuntimeError(f"hostile peer did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        import trio

        if self._token is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    def call(self, fn: Any, *args: Any) -> Any:
        import trio

        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def addr(self) -> str:
        return str(self.host.listen_addrs()[0])

    @property
    def peer_id(self) -> str:
        return str(self.host.peer_id)

    def dial(self, target: NodeProc) -> None:
        self.call(self.host.dial, target.addr)

    def announce(self, heads: Sequence[bytes], watermark: int) -> None:
        """Publish a validly signed announce of ``heads`` (so the target asks this peer for them)."""
        from ecac.sync.wire import Announce, SignedAnnounce, node_id_of

        a = Announce(node_id_of(bytes(self.sk.verify_key)), watermark, tuple(heads), b"\xff\xff")
        data = SignedAnnounce.sign(self.sk, a).encode()
        self.call(self.host.publish, self.topic, data)

    def raw_sync_stream(
        self, target: NodeProc, data: bytes, wait: float = 30.0, close: bool = True
    ) -> StreamOutcome:
        """Open ``/ecac/sync/1`` to ``target``, write ``data`` (half-close if ``close``) and wait up
        to ``wait`` s for the target's answer: a reset, an EOF (after what it sent) or nothing."""
        import trio

        from ecac.net.host import P2PError, StreamResetError
        from ecac.sync.wire import SYNC_PROTOCOL_ID

        async def go() -> StreamOutcome:
            t0 = trio.current_time()
            try:
                stream = await self.host.open_stream(target.peer_id, SYNC_PROTOCOL_ID, timeout=10)
            except P2PError as e:
                return StreamOutcome(f"open-failed: {e}", trio.current_time() - t0)
            got = bytearray()
            outcome = "timeout"
            try:
                with trio.move_on_after(wait):
                    if data:
                        await stream.write(data)
                    if close:
                        await stream.close()
                    while True:
                        chunk = await stream.read(65536)
                        if not chunk:
                            outcome = "eof"
                            break
                        got += chunk
            except StreamResetError:
                outcome = "reset"
            finally:
                with trio.CancelScope(shield=True), suppress(Exception):
                    await stream.reset()
            return StreamOutcome(outcome, trio.current_time() - t0, bytes(got))

        return self.call(go)  # type: ignore[no-any-return]
