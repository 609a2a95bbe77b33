"""Start and stop real ``ecac node`` processes from Python (integration tests, benches, demos).

::

    a = start_node(tmp / "a", control="127.0.0.1:0", anti_entropy_ms=200)
    b = start_node(tmp / "b", peers=[a.addr], control="127.0.0.1:0")
    wait_converged([a, b], timeout=20)
    a.stop()            # SIGTERM, waits for a clean exit (SIGKILL after the timeout)
    b.kill()            # SIGKILL

Each node writes its stderr log to ``<db>.log`` (or ``log_path``) and stops by itself when this
process exits (its stdin is a pipe from us; EOF stops it). ``start_node`` returns once
the node printed its ``listening …`` (and ``control …``) lines, so ``.addr`` and
``.control_url`` are real bound addresses even with port 0.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ecac.net.client import TOKEN_FILE_NAME, GatewayClient

T = TypeVar("T")

NODE_COMMAND = (sys.executable, "-c", "from ecac.cli import main; main()", "node")


class NodeStartError(RuntimeError):
    """The node process exited or stayed silent before printing its listen address."""


@dataclass
class NodeProc:
    """A running ``ecac node`` process and its addresses."""

    proc: subprocess.Popen[bytes]
    db: Path
    addr: str
    control_url: str | None
    log_path: Path
    args: tuple[str, ...]
    _log_file: Any = field(default=None, repr=False)
    #: the gateway token the node wrote to ``<db>/control.token`` at start (None without --control)
    token: str | None = field(default=None, repr=False)

    @property
    def peer_id(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self, timeout: float = 30.0) -> GatewayClient:
        """A gateway client that sends this node's token."""
        if self.control_url is None:
            raise RuntimeError("node was started without --control")
        return GatewayClient(self.control_url, token=self.token, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return self.client().status()

    def inject(self, count: int, seed: int) -> dict[str, Any]:
        return self.client(timeout=300.0).inject(count, seed)

    def append_ops(self, log_bytes: bytes) -> dict[str, Any]:
        return self.client(timeout=300.0).append_ops(log_bytes)

    def add_peer(self, multiaddr: str) -> dict[str, Any]:
        return self.client().add_peer(multiaddr)

    def block_peer(self, peer_id: str, seconds: float) -> dict[str, Any]:
        """Partition: exchange nothing with ``peer_id`` for ``seconds`` (0 lifts the block)."""
        return self.client().block_peer(peer_id, seconds)

    def rss_bytes(self) -> int:
        """Resident set size of the node process (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit code; SIGKILL if it does not exit in ``timeout``."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed or closed by the node)."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def node_args(
    db: Path,
    *,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    peers: Iterable[str] = (),
    project: str = "ecac-test",
    control: str | None = "127.0.0.1:0",
    anti_entropy_ms: int = 5000,
    log_level: str = "INFO",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``ecac node`` argument list for these settings."""
    args = ["--db", str(db), "--project", project, "--anti-entropy-ms", str(anti_entropy_ms)]
    args += ["--exit-on-stdin-eof"]
    args += ["--log-level", log_level]
    for a in listen:
        args += ["--listen", a]
    for p in peers:
        args += ["--peer", p]
    if control is not None:
        args += ["--control", control]
    return args + list(extra_args)


def start_node(
    db: str | os.PathLike[str],
    listen: Sequence[str] | str = ("/ip4/127.0.0.1/tcp/0",),
    peers: Iterable[str] = (),
    project: str = "ecac-test",
    control: str | None = "127.0.0.1:0",
    anti_entropy_ms: int = 5000,
    *,
    log_level: str = "INFO",
    log_path: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> NodeProc:
    """Start ``ecac node`` and wait for its ``listening`` (and ``control``) lines."""
    dbp = Path(db)
    if isinstance(listen, str):
        listen = (listen,)
    args = node_args(
        dbp,
        listen=listen,
        peers=peers,
        project=project,
        control=control,
        anti_entropy_ms=anti_entropy_ms,
        log_level=log_level,
        extra_args=extra_args,
    )
    logp = Path(log_path) if log_path is not None else dbp.with_name(dbp.name + ".log")
    logp.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(logp, "ab")  # noqa: SIM115 - closed by NodeProc
    proc = subprocess.Popen(
        [*NODE_COMMAND, *args],
        stdin=subprocess.PIPE,  # never written: its EOF tells the node that we are gone
        stdout=subprocess.PIPE,
        stderr=log_file,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    wanted = 2 if control is not None else 1
    got: list[str] = []
    deadline = time.monotonic() + startup_timeout
    try:
        while len(got) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NodeStartError(f"node did not start within {startup_timeout:g} s")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(5)
                raise NodeStartError(f"node exited with code {proc.returncode} before listening")
            got.append(line)
    except NodeStartError as e:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
        tail = logp.read_text(errors="replace")[-3000:]
        raise NodeStartError(f"{e}; stdout {got!r}; log tail:\n{tail}") from None
    if not got[0].startswith("listening "):
        proc.kill()
        raise NodeStartError(f"unexpected first line {got[0]!r}")
    addr = got[0].split(" ", 1)[1]
    url = got[1].split(" ", 1)[1] if wanted == 2 else None
    token = (dbp / TOKEN_FILE_NAME).read_text(encoding="ascii").strip() if url is not None else None
    return NodeProc(proc, dbp, addr, url, logp, tuple(args), log_file, token)


def wait_for(pred: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)
        last = pred()
    return last


def converged(statuses: Sequence[dict[str, Any]]) -> bool:
    """Same complete ops, heads and an up-to-date, equal state digest on every node."""
    first = statuses[0]
    for s in statuses:
        if s["digest_ops"] != s["complete_count"] or not s["digest_ready"]:
            return False
        if s["op_count"] != s["complete_count"]:
            return False
        for k in ("complete_count", "heads", "state_digest"):
            if s[k] != first[k]:
                return False
    return True


def wait_converged(
    nodes: Sequence[NodeProc], timeout: float, min_ops: int = 0, interval: float = 0.05
) -> list[dict[str, Any]]:
    """Poll ``/status`` of every node until ``converged`` (and ≥ ``min_ops`` complete ops)."""
    last: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal last
        last = [n.status() for n in nodes]
        return converged(last) and last[0]["complete_count"] >= min_ops

    try:
        wait_for(check, timeout, interval, "convergence")
    except TimeoutError:
        summary = [
            (s["peer_id"][-6:], s["op_count"], s["complete_count"], s["digest_ops"], s["state_digest"][:12])
            for s in last
        ]
        raise TimeoutError(f"nodes did not converge within {timeout:g} s: {summary}") from None
    return last
