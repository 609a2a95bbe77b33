"""Helpers for integration tests: real ``ecac node`` processes on 127.0.0.1 with ephemeral ports.

``nodes`` is a factory fixture: ``nodes.start("a", peers=[…])`` starts a node whose store is
``<tmp>/a`` (the same name reuses the same store, e.g. after a kill) and control API on an
ephemeral loopback port. Every process is killed at teardown, and the logs of all nodes are
printed there (pytest shows them when the test failed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.net.procs import NodeProc, start_node

#: anti-entropy period of test nodes (store §2.3.7: tests use 100-200 ms)
AE_MS = 200
PROJECT = "itest"


class Nodes:
    """Starts nodes under one tmp dir and remembers every process for teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[NodeProc] = []

    def db(self, name: str) -> Path:
        return self.root / name

    def start(
        self,
        name: str,
        peers: Sequence[str] = (),
        anti_entropy_ms: int = AE_MS,
        extra_args: Sequence[str] = (),
        **kw: Any,
    ) -> NodeProc:
        n = start_node(
            self.db(name),
            peers=peers,
            project=PROJECT,
            anti_entropy_ms=anti_entropy_ms,
            extra_args=("--heartbeat-ms", "200", *extra_args),
            **kw,
        )
        self.procs.append(n)
        return n

    def cleanup(self) -> None:
        for p in self.procs:
            if p.alive:
                p.kill()
            else:
                p._close()
        for p in self.procs:
            text = p.log_text()
            print(f"----- log of {p.db.name} (pid {p.pid}, exit {p.proc.returncode}) -----")
            print(text[-6000:])


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    try:
        yield n
    finally:
        n.cleanup()


def spec_dag(n: int = 60, seed: int = 5) -> list[Op]:
    """The DAG of store §2.3.10: one author, op i has parents [i-1] ([i-1, i-2] when i%5==0,
    [i-1, i-3] when i%7==0), HLC {10000+i, 0, i%4}, ``mv:obj{i%3}:field{i%2}`` = ``val{i}``."""
    sk = key_pair(seed, b"itest-author")
    ops: list[Op] = []
    for i in range(n):
        if i == 0:
            parents: list[bytes] = []
        elif i % 5 == 0:
            parents = [ops[i - 1].op_id, ops[i - 2].op_id]
        elif i % 7 == 0:
            parents = [ops[i - 1].op_id, ops[i - 3].op_id]
        else:
            parents = [ops[i - 1].op_id]
        ops.append(
            make_op(
                sk,
                parents,
                Hlc(10_000 + i, 0, i % 4),
                Data(f"mv:obj{i % 3}:field{i % 2}", f"val{i}".encode()),
            )
        )
    return ops
