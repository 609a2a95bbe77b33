"""Network CLI: inject-demo-ops (offline), status --node and node errors, exit codes 0/1/2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ecac.core.replay import replay_full
from ecac.store.memory import MemoryOpStore
from ecac.store.rocks import Store
from ecac.testing.demo_ops import demo_ops_for

ECAC = [sys.executable, "-c", "from ecac.cli import main; main()"]


def ecac(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ECAC, *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inject_offline_twice(tmp_path: Path) -> None:
    db = tmp_path / "db"
    first = ecac("inject-demo-ops", "--db", str(db), "--count", "40", "--seed", "2")
    assert first.returncode == 0, first.stderr
    second = ecac("inject-demo-ops", "--db", str(db), "--count", "10", "--seed", "5")
    assert second.returncode == 0, second.stderr
    mem = MemoryOpStore()
    ops = demo_ops_for(mem, 40, 2)
    mem.put_many(ops)
    more = demo_ops_for(mem, 10, 5)
    lines = second.stdout.splitlines()
    assert lines == [
        f"injected 10 ops ({more[0].op_id.hex()} … {more[-1].op_id.hex()})",
        "op_count=50",
        f"digest={replay_full(ops + more)[1].hex()}",
    ]
    with Store.open(db) as st:
        assert st.heads(16) == [more[-1].op_id]


@pytest.mark.parametrize(
    "args",
    [
        ["inject-demo-ops", "--count", "1", "--seed", "1"],
        ["inject-demo-ops", "--db", "x", "--node", "http://127.0.0.1:1", "--count", "1", "--seed", "1"],
        ["inject-demo-ops", "--db", "x", "--count", "0", "--seed", "1"],
        ["status"],
        ["node", "--db", "x", "--project", "p"],
        ["node", "--db", "x", "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "a/b"],
        ["node", "--db", "x", "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "p", "--log-level", "LOUD"],
        [
            "node",
            "--db",
            "x",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--project",
            "p",
            "--peer",
            "/ip4/1.2.3.4/tcp/1",
        ],
        [
            "node",
            "--db",
            "x",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--project",
            "p",
            "--peer",
            "/nope/p2p/12D3Koo",
        ],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    r = subprocess.run([*ECAC, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "x").exists()


def test_unreachable_node_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["status", "--node", url],
        ["inject-demo-ops", "--node", url, "--count", "1", "--seed", "1"],
    ):
        r = ecac(*args)
        assert r.returncode == 1
        assert r.stderr.startswith(f"Error: cannot reach node at {url}: ")


def test_node_refuses_non_loopback_control(tmp_path: Path) -> None:
    r = ecac(
        "node", "--db", str(tmp_path / "db"), "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "p",
        "--control", "0.0.0.0:0",
    )  # fmt: skip
    assert r.returncode == 1
    assert "only listens on loopback" in r.stderr
    assert r.stdout == ""


def test_node_bad_key_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"short")
    r = ecac(
        "node", "--db", str(tmp_path / "db"), "--listen", "/ip4/127.0.0.1/tcp/0", "--project", "p",
        "--key-file", str(key),
    )  # fmt: skip
    assert r.returncode == 1
    assert f"Error: node key {key} must hold 32 raw bytes or 64 hex characters" in r.stderr


@pytest.mark.parametrize(
    ("cmd", "option"), [("node", "--anti-entropy-ms"), ("inject-demo-ops", "--node"), ("status", "--node")]
)
def test_help(cmd: str, option: str) -> None:
    r = ecac(cmd, "--help")
    assert r.returncode == 0
    assert option in r.stdout
