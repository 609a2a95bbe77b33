"""Real network conditions for 3 real nodes: Linux network namespaces, veth pairs and ``tc netem``.

:class:`NetnsLab` creates what it uses and nothing else: three namespaces ``ecac<pid>-a|b|c`` and
two veth pairs for the line a—b—c (10.77.1.0/30 and 10.77.2.0/30), optionally ``tc qdisc … netem
delay 100ms loss 1%`` on every veth end; leaving the ``with`` block stops the nodes and deletes
the namespaces, which deletes the veths moved into them (a veth still in the root namespace after
a failed setup is deleted by name). No other interface, route or qdisc is touched.

Each node is a real ``ecac node`` started through ``ecac.net.procs`` from a thread that has
entered the node's namespace (:func:`in_netns`, ``setns(2)`` on the calling thread only), so the
process inherits it; its control API on 127.0.0.1 is reached the same way. The nodes listen on
their veth addresses, port 4001.

Scenarios (:func:`run_conditions`), timed from the nodes' ``/status``:

* ``baseline`` / ``netem``: each node writes ``ops`` ops unlinked, then b dials a and c dials b;
  time until all three report one digest (``join_ms``);
* ``partition``: the b—c link is set down at both ends (a real partition: no packet crosses it),
  both sides write, after ``partition_s`` the link is set up again; time until one digest
  (``heal_ms``).

Where the machine does not allow namespaces (not root / no ``CAP_NET_ADMIN``) or has no netem
qdisc, :func:`unavailable` / :func:`netem_unavailable` give the exact reason; the tests then
skip with it and run the same scenarios in the simulator (``ecac.bench.sim`` with
``ecac.bench.simnet.netem``). ``python -m ecac.bench.netns [--partition-s 30]`` prints the numbers
as one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecac.core.errors import EcacError

CLONE_NEWNET = 0x40000000
PORT = 4001
NAMES = ("a", "b", "c")
LINKS = (("a", "b", 1), ("b", "c", 2))  # the line a—b—c: (left, right, subnet 10.77.<n>.0/30)
NETEM = ("delay", "100ms", "loss", "1%")
POLL_S = 0.02
_lock = threading.Lock()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return subprocess.run([ip, *args], capture_output=True, text=True, timeout=20, check=check)


def _tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tc = shutil.which("tc") or "/usr/sbin/tc"
    return subprocess.run([tc, "-n", ns, *args], capture_output=True, text=True, timeout=20, check=check)


def _err(p: subprocess.CompletedProcess[str]) -> str:
    return (
        (p.stderr or p.stdout).strip().splitlines()[0]
        if (p.stderr or p.stdout).strip()
        else f"exit {p.returncode}"
    )


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can): tries ``ip netns add``."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        return "the `ip` command (iproute2) is not installed"
    probe = f"ecac{os.getpid()}-probe"
    try:
        p = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns add` failed: {e}"
    if p.returncode != 0:
        return f"`ip netns add` is not allowed (needs root / CAP_NET_ADMIN): {_err(p)}"
    _ip("netns", "del", probe, check=False)
    return None


def netem_unavailable() -> str | None:
    """Why ``tc qdisc … netem`` cannot be used (None: it can): tries it on a veth in a probe namespace."""
    why = unavailable()
    if why is not None:
        return why
    if shutil.which("tc") is None and not Path("/usr/sbin/tc").exists():
        return "the `tc` command (iproute2) is not installed"
    probe = f"ecac{os.getpid()}-nprobe"
    _ip("netns", "add", probe)
    try:
        _ip("-n", probe, "link", "add", "enp0", "type", "veth", "peer", "name", "enp1")
        p = _tc(probe, "qdisc", "add", "dev", "enp0", "root", "netem", *NETEM, check=False)
        if p.returncode != 0:
            return (
                f"`tc qdisc add … netem {' '.join(NETEM)}` failed (no sch_netem in this kernel?): {_err(p)}"
            )
        return None
    finally:
        _ip("netns", "del", probe, check=False)


_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``ns`` (sockets and child processes made
    here belong to it); the thread goes back to its own namespace afterwards."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


@dataclass
class NetnsLab:
    """Three namespaces on a line a—b—c with optional netem; a context manager (see the module doc)."""

    netem: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ecac-netns-")))
    tag: str = field(default_factory=lambda: f"ecac{os.getpid() % 100000}")
    procs: dict[str, Any] = field(default_factory=dict)
    _made_ns: list[str] = field(default_factory=list)
    _made_veth: list[str] = field(default_factory=list)

    def namespaces(self) -> list[str]:
        """The namespaces this lab made and has not deleted yet."""
        return list(self._made_ns)

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def addr_of(self, name: str, link: int) -> str:
        left = LINKS[link - 1][0] == name
        return f"10.77.{link}.{1 if left else 2}"

    def addrs(self, name: str) -> list[tuple[int, str]]:
        return [(n, self.addr_of(name, n)) for a, b, n in LINKS if name in (a, b)]

    def veth(self, name: str, link: int) -> str:
        return f"{self.tag[-9:]}{name}{link}"  # ≤ 15 characters (IFNAMSIZ)

    def __enter__(self) -> NetnsLab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        for x in NAMES:
            _ip("netns", "add", self.ns(x))
            self._made_ns.append(self.ns(x))
            _ip("-n", self.ns(x), "link", "set", "lo", "up")
        for a, b, n in LINKS:
            va, vb = self.veth(a, n), self.veth(b, n)
            _ip("link", "add", va, "type", "veth", "peer", "name", vb)
            self._made_veth.append(va)
            for x, v in ((a, va), (b, vb)):
                _ip("link", "set", v, "netns", self.ns(x))
                _ip("-n", self.ns(x), "addr", "add", f"{self.addr_of(x, n)}/30", "dev", v)
                _ip("-n", self.ns(x), "link", "set", v, "up")
                if self.netem:
                    _tc(self.ns(x), "qdisc", "add", "dev", v, "root", "netem", *NETEM)
            self._made_veth.remove(va)  # both ends live in our namespaces now

    def link(self, n: int, up: bool) -> None:
        """Set link ``n`` (1: a—b, 2: b—c) down (a partition) or up, at both ends."""
        a, b, _ = LINKS[n - 1]
        for x in (a, b):
            _ip("-n", self.ns(x), "link", "set", self.veth(x, n), "up" if up else "down")

    def start(self, name: str, anti_entropy_ms: int, heartbeat_ms: int = 500) -> Any:
        """Start node ``name`` inside its namespace, listening on its veth addresses."""
        from ecac.net.procs import start_node

        with _lock, in_netns(self.ns(name)):
            p = start_node(
                self.root / name,
                listen=[f"/ip4/{ip}/tcp/{PORT}" for _, ip in self.addrs(name)],
                project="ecac-netns",
                anti_entropy_ms=anti_entropy_ms,
                extra_args=("--heartbeat-ms", str(heartbeat_ms)),
                log_path=self.root / f"{name}.log",
                startup_timeout=60.0,
            )
        self.procs[name] = p
        return p

    def call(self, name: str, fn: str, *args: Any) -> Any:
        """``NodeProc.<fn>(*args)`` of node ``name``, from inside its namespace (its control API)."""
        with in_netns(self.ns(name)):
            return getattr(self.procs[name], fn)(*args)

    def dial(self, src: str, dst: str, link: int) -> None:
        p = self.procs[dst]
        self.call(src, "add_peer", f"/ip4/{self.addr_of(dst, link)}/tcp/{PORT}/p2p/{p.peer_id}")

    def statuses(self) -> list[dict[str, Any]]:
        return [self.call(x, "status") for x in NAMES]

    def wait_converged(self, ops: int, timeout: float) -> float:
        """Seconds until the three nodes hold ``ops`` complete ops and one digest."""
        from ecac.net.procs import converged

        t0 = time.monotonic()
        while True:
            sts = self.statuses()
            if converged(sts) and sts[0]["complete_count"] == ops:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                seen = [(s["complete_count"], s["state_digest"][:12]) for s in sts]
                raise EcacError(f"the 3 nodes did not converge within {timeout:g} s: {seen}")
            time.sleep(POLL_S)

    def close(self) -> None:
        for p in self.procs.values():
            try:
                p.stop(timeout=10.0)
            except Exception:  # every node must be stopped
                p.kill()
        self.procs.clear()
        for v in self._made_veth:
            _ip("link", "del", v, check=False)
        for ns in self._made_ns:
            _ip("netns", "del", ns, check=False)
        self._made_veth.clear()
        self._made_ns.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def run_conditions(
    netem: bool, ops: int = 100, partition_s: float = 30.0, anti_entropy_ms: int = 5000
) -> dict[str, Any]:
    """One lab: join, then a ``partition_s`` partition of the b—c link and the heal (see the module doc)."""
    with NetnsLab(netem=netem) as lab:
        for x in NAMES:
            lab.start(x, anti_entropy_ms)
        for i, x in enumerate(NAMES):
            lab.call(x, "inject", ops, i + 1)
        lab.dial("b", "a", 1)
        lab.dial("c", "b", 2)
        join_s = lab.wait_converged(3 * ops, timeout=120)
        total = 3 * ops
        lab.link(2, up=False)
        lab.call("b", "inject", ops, 11)
        lab.call("c", "inject", ops, 12)
        time.sleep(partition_s)
        total += 2 * ops
        lab.link(2, up=True)
        heal_s = lab.wait_converged(total, timeout=120 + partition_s)
        sts = lab.statuses()
    return {
        "scenario": "netns",
        "netem": " ".join(NETEM) if netem else None,
        "nodes": 3,
        "topology": "line a-b-c",
        "ops": total,
        "anti_entropy_ms": anti_entropy_ms,
        "join_ms": round(join_s * 1000, 1),
        "partition_s": partition_s,
        "heal_ms": round(heal_s * 1000, 1),
        "digest": sts[0]["state_digest"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--partition-s", type=float, default=30.0)
    ap.add_argument("--ops", type=int, default=100)
    ap.add_argument("--anti-entropy-ms", type=int, default=5000)
    a = ap.parse_args(argv)
    why = unavailable()
    if why is not None:
        raise SystemExit(f"network namespaces unavailable: {why}")
    runs = [run_conditions(False, a.ops, a.partition_s, a.anti_entropy_ms)]
    why = netem_unavailable()
    if why is None:
        runs.append(run_conditions(True, a.ops, a.partition_s, a.anti_entropy_ms))
    else:
        print(f"netem skipped: {why}", file=sys.stderr)
    for r in runs:
        print(json.dumps(r, separators=(",", ":")))


if __name__ == "__main__":
    main()
