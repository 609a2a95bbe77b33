"""The README's "Access control in five minutes" runs as written, with real node processes.

The test takes the fenced block after the ``<!-- walkthrough`` marker out of README.md, swaps
its four ports for free ones, runs it with bash in an empty directory (``ecac`` from this
interpreter's bin directory first on PATH) and checks what the README says it shows: the
write on node 1 visible on node 2, the writes after the revoke denied with ``revoked_cred`` on
both nodes, ``explain`` saying so, and the dashboard URL. So README and test cannot drift.

The script stops its nodes itself (``trap … EXIT``); the test also kills the script's whole
process group (it runs in a new session) whatever happens, so no node outlives a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- walkthrough"
#: the ports the README uses: node 1 and 2 libp2p, node 1 and 2 control
README_PORTS = ("4101", "4102", "8801", "8802")
#: the commands an operator runs in the walkthrough (issue 11 item 8: only these)
OPERATOR_COMMANDS = {
    "key new",
    "node",
    "issuer publish",
    "vc issue",
    "grant",
    "write",
    "get",
    "revoke",
    "access",
    "explain",
}
TIMEOUT_S = 120


def walkthrough_block(text: str) -> str:
    """The first ```sh block after the marker comment."""
    at = text.find(MARKER)
    assert at >= 0, f"README.md has no {MARKER!r} marker before the walkthrough block"
    m = re.compile(r"^```sh\n(.*?)^```", re.S | re.M).search(text, at)
    assert m is not None, "no ```sh block after the walkthrough marker"
    return m.group(1)


def ecac_commands(script: str) -> set[str]:
    """The subcommands the script runs (``ecac key new`` -> ``key new``)."""
    found = set()
    for m in re.finditer(r"\becac ([a-z-]+)(?: ([a-z-]+))?", script):
        name, sub = m.group(1), m.group(2)
        found.add(f"{name} {sub}" if name in ("key", "issuer", "vc", "status-list") else name)
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def with_ports(script: str, ports: list[int]) -> str:
    for old, new in zip(README_PORTS, ports, strict=True):
        script, n = re.subn(rf"\b{old}\b", str(new), script)
        assert n > 0, f"port {old} is not in the walkthrough"
    return script


def test_walkthrough_block_uses_only_the_operator_commands() -> None:
    script = walkthrough_block(README.read_text(encoding="utf-8"))
    assert ecac_commands(script) == OPERATOR_COMMANDS
    with_ports(script, [1, 2, 3, 4])  # every README port is there to be replaced
    assert "trap " in script  # the script stops its own nodes


@pytest.fixture
def session() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started here; each runs in its own session, whose group is killed at teardown."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the script and any node it left behind
            p.wait()


def test_readme_walkthrough_runs(tmp_path: Path, session: list[subprocess.Popen[str]]) -> None:
    ports = free_ports(4)
    script = tmp_path / "walkthrough.sh"
    script.write_text(with_ports(walkthrough_block(README.read_text(encoding="utf-8")), ports))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECAC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    session.append(proc)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"walkthrough still running after {TIMEOUT_S} s\nstdout:\n{out}\nstderr:\n{err}")
    wall = time.monotonic() - t0
    print(f"README walkthrough: {wall:.1f} s wall")
    logs = "".join(f"\n--- {p.name} ---\n{p.read_text()[-3000:]}" for p in sorted(work.glob("n?.*")))
    context = f"\nstdout:\n{out}\nstderr:\n{err}\nnode output:{logs}"
    assert proc.returncode == 0, context
    assert "timed out:" not in err, context

    lines = out.splitlines()
    # step 1: two public keys (the issuer's printed, the user's captured)
    assert re.fullmatch(r"[0-9a-f]{64}", lines[0]), context
    # step 4: the write is allowed on node 1, and both nodes show the value
    assert re.search(r"^[0-9a-f]{64} Data mv:o:x ALLOWED$", out, re.M), context
    assert lines.count("hello") == 2, context
    # step 5: node 2 lists the user's editor epoch as revoked
    assert re.search(r"^\s+revoked\s+scope \{hv\}", out, re.M), context
    # step 6: the user's writes after the revoke are denied on node 1 and on node 2
    denied = [line for line in err.splitlines() if line.startswith("Error: write denied (revoked_cred)")]
    assert len(denied) == 2, context
    assert denied[0].endswith("nothing was stored") and denied[1].endswith("stored anyway (--store-denied)")
    # step 7: node 1's explain has the write stored through node 2, denied, and the Revoke that closed it
    assert re.search(r"^[0-9a-f]{64} mv:o:x DENIED revoked_cred$", out, re.M), context
    assert re.search(r"closed at position \d+ by revoke [0-9a-f]{64}", out), context
    # step 8: the dashboard URL of node 1, token in the fragment
    assert re.search(rf"^http://127\.0\.0\.1:{ports[2]}/#token=[0-9a-f]{{64}}$", out, re.M), context
    # the script's trap stops both nodes: soon nothing of its process group is left
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the walkthrough's nodes outlived it (its trap did not stop them)")
