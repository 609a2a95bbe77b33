"""Helpers for the js-libp2p interop tests: the JS peer process (``interop/js/peer.mjs``) and its npm deps.

``JsPeer`` runs ``node interop/js/peer.mjs …``; every stdout line is one JSON event, timestamped on
arrival (``time.monotonic()``) by a reader thread, and ``wait`` polls them. Commands go to its
stdin as JSON lines; closing stdin stops it. Its stderr goes to ``<tmp>/<name>.log``.

The npm packages (``interop/js/package-lock.json``, exact versions) are installed by
``make interop-deps`` (a prerequisite of ``make test``); ``js_deps`` installs them itself under a
file lock when they are missing (pytest-xdist workers share one install), and fails with what to
install when Node or npm is missing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "interop" / "js"
PEER_JS = JS_DIR / "peer.mjs"
NPM_MARKER = JS_DIR / "node_modules" / ".package-lock.json"  # written by npm ci / npm install
NPM_CI = ("npm", "ci", "--prefix", str(JS_DIR), "--ignore-scripts", "--no-audit", "--no-fund")

Event = dict[str, Any]


def _deps_current() -> bool:
    lock = JS_DIR / "package-lock.json"
    return NPM_MARKER.is_file() and NPM_MARKER.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="session")
def js_deps() -> Path:
    """The Node binary, with ``interop/js``'s pinned packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the js-libp2p interop test needs Node.js >= 20 and npm on PATH "
            "(Debian: apt-get install nodejs npm), then `make interop-deps`"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < 20:
        pytest.fail(f"the js-libp2p interop test needs Node.js >= 20, found {version.strip()}")
    if not _deps_current():
        # one install for all pytest-xdist workers
        with open(Path(tempfile.gettempdir()) / "ecac-interop-npm-ci.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _deps_current():
                r = subprocess.run(NPM_CI, capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    pytest.fail(f"`{' '.join(NPM_CI)}` failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return Path(node)


class JsPeer:
    """One ``peer.mjs`` process (one or more js-libp2p nodes) and the events it printed."""

    def __init__(self, node: Path, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [str(node), str(PEER_JS), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=JS_DIR,
            env={**os.environ, **(env or {})},
        )
        self.events: list[tuple[float, Event]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            t = time.monotonic()
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = {"event": "garbage", "line": raw.decode(errors="replace")}
            with self._cond:
                self.events.append((t, ev))
                self._cond.notify_all()
        with self._cond:
            self.events.append((time.monotonic(), {"event": "exited"}))
            self._cond.notify_all()

    def find(self, pred: Callable[[Event], bool]) -> list[tuple[float, Event]]:
        with self._cond:
            return [(t, e) for t, e in self.events if pred(e)]

    def wait(self, pred: Callable[[Event], bool], timeout: float, what: str, count: int = 1) -> list[Event]:
        """The first ``count`` events matching ``pred``; fails with the events so far after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for _, e in self.events if pred(e)]
                if len(hits) >= count:
                    return hits[:count]
                fatal = [e for _, e in self.events if e.get("event") in ("fatal", "exited")]
                left = deadline - time.monotonic()
                if fatal or left <= 0:
                    tail = [e for _, e in self.events][-30:]
                    raise AssertionError(
                        f"JS peer: {what}: {len(hits)}/{count} within {timeout:g} s; "
                        f"last events {tail}; log {self.log_text()[-3000:]}"
                    )
                self._cond.wait(min(left, 0.1))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def ready(self, timeout: float = 20.0) -> list[Event]:
        """The ``listening`` events of its nodes (addresses, PeerIds), once all started."""
        ready = self.wait(lambda e: e["event"] == "ready", timeout, "start")[0]
        return self.wait(lambda e: e["event"] == "listening", 1, "listening", count=ready["nodes"])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # EOF: the peer stops its nodes and exits
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def js_peers(js_deps: Path, tmp_path: Path) -> Iterator[Callable[..., JsPeer]]:
    """Factory: ``js_peers("name", "--dial", addr, …)`` starts a JS peer; all are stopped at teardown."""
    started: list[JsPeer] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> JsPeer:
        p = JsPeer(js_deps, args, tmp_path / f"{name}.js.log", env)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()
