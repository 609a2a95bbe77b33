"""Errors a user can act on (issue 11 item 6): one ``Error:`` line, exit 1, no traceback.

A busy ``--control`` port, a ``--listen`` that is not ``/ip4/…/tcp/PORT`` or has a bad port,
``--node`` pointed at a libp2p port or at nothing, ``--db`` of a directory that is not a store
(refused before RocksDB writes there, by the CLI and by ``ecac node`` alike), ``--db`` and
``ECAC_DB`` the same on every store command, and ``bench``'s progress bar on a terminal only.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from rich.console import Console

from cli.clirun import ENV_VARS, Ecac, Run
from ecac.cli import cli

ECAC = [sys.executable, "-c", "from ecac.cli import main; main()"]


def subprocess_ecac(*args: str, timeout: float = 60) -> Run:
    env = {k: v for k, v in __import__("os").environ.items() if k not in ENV_VARS}
    r = subprocess.run([*ECAC, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return Run(r.returncode, r.stdout, r.stderr)


def one_error(r: Run, *needles: str) -> str:
    """Exit 1, exactly one stderr line ``Error: …`` with every needle, no traceback."""
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err, r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def usage_error(r: Run, needle: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert "Traceback" not in r.err and needle in r.err, r.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def not_a_store(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    return d


def untouched(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


@pytest.fixture(scope="module")
def libp2p_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The TCP port of a real node's libp2p listener (the node has no control API)."""
    from ecac.net.procs import start_node

    node = start_node(tmp_path_factory.mktemp("p2p") / "db", control=None)
    try:
        yield int(node.addr.split("/tcp/")[1].split("/")[0])
    finally:
        node.stop()


# --------------------------------------------------------------------------- ecac node


def test_busy_control_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess_ecac(
            "node", "--db", str(tmp_path / "db"), "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "p",
            "--control", f"127.0.0.1:{port}",
        )  # fmt: skip
    one_error(r, f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize(
    ("listen", "needle"),
    [
        ("127.0.0.1:4001", "is not a /ip4/ADDRESS/tcp/PORT multiaddr"),
        ("/ip4/127.0.0.1/udp/4001", "TCP is the only transport"),
        ("/ip4/127.0.0.1/tcp", "is not a /ip4/ADDRESS/tcp/PORT multiaddr"),
        ("/ip4/127.0.0.1/tcp/4001/p2p/x", "is not a /ip4/ADDRESS/tcp/PORT multiaddr"),
        ("/ip4/127.0.0.1/tcp/99999", "port '99999' is not a number in 0-65535"),
        ("/ip4/127.0.0.1/tcp/http", "port 'http' is not a number in 0-65535"),
        ("/ip4/300.1.1.1/tcp/1", "'300.1.1.1' is not an IP address"),
        ("/ip4/::1/tcp/1", "'::1' is not an IPv4 address"),
    ],
)
def test_bad_listen_is_refused_before_anything_starts(
    ecac: Ecac, tmp_path: Path, listen: str, needle: str
) -> None:
    db = tmp_path / "db"
    r = ecac("node", "--db", str(db), "--listen", listen, "--project", "p")
    one_error(r, needle)
    assert not db.exists()  # refused before the store was opened


def test_node_refuses_a_db_that_is_not_a_store(tmp_path: Path) -> None:
    d = not_a_store(tmp_path)
    r = subprocess_ecac("node", "--db", str(d), "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "p")
    one_error(r, f"--db {d} is not an ecac store", "notes.txt")
    untouched(d)


# --------------------------------------------------------------------------- --node


def test_status_node_at_a_libp2p_port(ecac: Ecac, libp2p_port: int) -> None:
    url = f"http://127.0.0.1:{libp2p_port}"
    one_error(ecac("status", "--node", url), f"{url} does not speak HTTP", "libp2p port", "--control")
    one_error(ecac("get", "--node", url), "does not speak HTTP")


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("get",),
        ("access",),
        ("explain",),
        ("ops",),
        ("peers",),
        ("inject-demo-ops", "--count", "1", "--seed", "1"),
    ],
)
def test_unreachable_node(ecac: Ecac, args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    one_error(ecac(*args, "--node", url), f"cannot reach node at {url}: connection refused", "ecac node")


def test_unreachable_node_from_the_environment(ecac: Ecac, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ECAC_NODE", url)
    one_error(ecac("ops"), f"cannot reach node at {url}")
    monkeypatch.setenv("ECAC_DB", "somewhere")  # a flag beats the other's variable; two variables do not
    usage_error(ecac("ops"), "both ECAC_DB and ECAC_NODE are set")
    one_error(ecac("ops", "--node", url), f"cannot reach node at {url}")


def test_bad_node_urls(ecac: Ecac) -> None:
    one_error(ecac("get", "--node", "https://127.0.0.1:1"), "must be http://HOST:PORT")
    one_error(ecac("status", "--node", "127.0.0.1"), "must be http://HOST:PORT")


def test_exactly_one_target(ecac: Ecac, tmp_path: Path) -> None:
    usage_error(
        ecac("get", "--db", "x", "--node", "http://127.0.0.1:1"), "give --db DIR or --node URL, not both"
    )
    usage_error(ecac("access"), "give --db DIR or --node URL (or set ECAC_DB or ECAC_NODE)")
    usage_error(ecac("peers"), "give --node URL")
    usage_error(ecac("explain", "--db", "x", "--token-file", "t"), "--token-file goes with --node URL")
    usage_error(ecac("write", "o", "x", "v", "--db", "x", "--node", "http://127.0.0.1:1"), "not both")
    usage_error(ecac("write", "data", "o", "x", "v", "--node", "http://127.0.0.1:1"), "--node is not for it")


def test_missing_token_file(ecac: Ecac, tmp_path: Path) -> None:
    r = ecac("ops", "--node", "http://127.0.0.1:1", "--token-file", str(tmp_path / "nope"))
    one_error(r, "token file", "does not exist")


# --------------------------------------------------------------------------- --db


STORE_COMMANDS: list[tuple[str, ...]] = [
    ("status",),
    ("replay-from-store",),
    ("checkpoint-create",),
    ("checkpoint-list",),
    ("checkpoint-load", "1"),
    ("verify-store",),
    ("op-append", "empty.cbor"),
    ("inject-demo-ops", "--count", "1", "--seed", "1"),
    ("get",),
    ("access",),
    ("explain",),
    ("ops",),
    ("trust-dump",),
    ("audit-record",),
]


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: a[0])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_db_refuses_a_directory_that_is_not_a_store(
    ecac: Ecac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], how: str
) -> None:
    d = not_a_store(tmp_path)
    (tmp_path / "empty.cbor").write_bytes(b"\x80")  # ecac runs in tmp_path
    if how == "flag":
        r = ecac(*args, "--db", str(d))
    else:
        monkeypatch.setenv("ECAC_DB", str(d))
        r = ecac(*args)
    one_error(r, f"--db {d} is not an ecac store", "notes.txt")
    untouched(d)


def test_db_root_is_refused(ecac: Ecac) -> None:
    one_error(ecac("get", "--db", "/"), "--db / is not an ecac store")
    assert not Path("/CURRENT").exists()


def test_every_db_option_reads_ecac_db() -> None:
    """Structure: every command's ``--db`` is dbopt's option (``-d`` too, env ``ECAC_DB``)."""
    seen = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix}{name} ")
                continue
            for p in cmd.params:
                if isinstance(p, click.Option) and "--db" in p.opts:
                    seen.append(f"{prefix}{name}")
                    assert p.envvar == "ECAC_DB", f"{prefix}{name}"
                    assert "-d" in p.opts, f"{prefix}{name}"

    cli.load_all()  # type: ignore[attr-defined]  # the group loads command modules lazily
    walk(cli, "")
    assert {"node", "status", "op-append", "get", "write", "issuer publish", "audit-verify-full"} <= set(seen)


# --------------------------------------------------------------------------- bench


def test_bench_progress_only_on_a_terminal(ecac: Ecac, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecac.cli import bench_cmds

    plain = ecac("bench", "--scenario", "hb-chain", "--ops", "50", "--json")
    assert plain.code == 0, plain.err
    assert plain.err == ""  # no terminal: no progress output at all
    doc = json.loads(plain.out.splitlines()[-1])

    term = io.StringIO()
    monkeypatch.setattr(
        bench_cmds, "stderr_console", lambda: Console(file=term, force_terminal=True, width=100)
    )
    r = ecac("bench", "--scenario", "hb-chain", "--ops", "50", "--json")
    assert r.code == 0, r.err
    assert "bench hb-chain: 50 ops" in term.getvalue()
    assert json.loads(r.out.splitlines()[-1]).keys() == doc.keys()  # stdout unchanged in shape
