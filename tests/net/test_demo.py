"""``ecac demo``: its plan of ops (pure) and one real run of three node processes on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecac.core import policy
from ecac.core.dag import Dag
from ecac.core.errors import EcacError
from ecac.core.replay import replay_full
from ecac.net.demo import plan_ops, policy_outcome, writer_key

SUMMARY = re.compile(r"^converged: (\d+) nodes, (\d+) ops, digest ([0-9a-f]{16}), heal→converged (\d+) ms$")
ROW = re.compile(r"^\s+([A-H])\s+(\S+)\s+(\d+)\s+(\d+)\s+([0-9a-f]{16})\s+(\d+)\s*$")


def test_plan_is_deterministic_and_the_revoke_denies_the_partition_writes():
    plan = plan_ops(3, 20)
    again = plan_ops(3, 20)
    assert [op.op_id for op in plan.healed] == [op.op_id for op in again.healed]
    assert len(plan.base) == 7 and len(plan.healed) == 7 + 3 * 20 + 20 + 1 + 20
    side, cut, healed = (replay_full(ops)[1] for ops in (plan.side, plan.cut, plan.healed))
    assert len({side, cut, healed}) == 3
    # the revoke targets B's writer and sorts before B's partition writes in the merged order
    assert plan.revoke.payload.subject_pk == bytes(writer_key(1).verify_key)  # type: ignore[union-attr]
    order = Dag.from_ops(plan.healed).topo_order()
    pos = {op.op_id: i for i, op in enumerate(order)}
    assert all(pos[plan.revoke.op_id] < pos[op.op_id] for op in plan.side_writes)
    out = policy_outcome(plan)
    assert (out.partition_writes, out.denied) == (20, 20)
    assert out.reasons == ((policy.REVOKED_CRED, 20),)
    # without the revoke (the big side alone) B's writes are allowed
    side_verdicts = {op.op_id: v for op, v, _ in policy.explain(Dag.from_ops(plan.side).topo_order())}
    assert {side_verdicts[op.op_id] for op in plan.side_writes} == {policy.ALLOWED}
    assert out.denied_total == 20 and out.allowed_total == 3 * 20 + 20


def test_plan_refuses_a_node_count_it_cannot_name():
    with pytest.raises(EcacError, match="between 2 and 8"):
        plan_ops(9, 1)


def _run_demo(args: list[str], timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-m", "ecac", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_demo_refuses_a_non_empty_workdir(tmp_path: Path):
    (tmp_path / "something").write_text("x")
    r = _run_demo(["--workdir", str(tmp_path)], timeout=30)
    assert r.returncode == 1
    assert "is not empty" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_demo_converges_through_a_partition(tmp_path: Path):
    ops = 30
    r = _run_demo(["--ops", str(ops), "--workdir", str(tmp_path / "w")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stdout.rstrip("\n").splitlines()
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    nodes, total, digest = int(m[1]), int(m[2]), m[3]
    plan = plan_ops(3, ops)
    assert (nodes, total) == (3, len(plan.healed))
    assert digest == replay_full(plan.healed)[1].hex()[:16]
    # the table after the heal: every node reports that digest and every op
    heal = next(i for i, line in enumerate(lines) if line.startswith("5. heal"))
    rows = [ROW.match(line) for line in lines[heal:]]
    rows = [x for x in rows if x]
    assert [x[1] for x in rows] == ["A", "B", "C"]
    assert {x[5] for x in rows} == {digest}
    assert {int(x[3]) for x in rows} == {total}
    # during the partition the digests differed: A = B ≠ C
    part = next(i for i, line in enumerate(lines) if line.startswith("4. partition"))
    prow = [x for x in (ROW.match(line) for line in lines[part:heal]) if x]
    assert [x[1] for x in prow] == ["A", "B", "C"]
    assert prow[0][5] == prow[1][5] != prow[2][5]
    assert prow[2][2] == "none"
    assert "block each other" in lines[part]  # a live partition: the nodes keep running
    # so their counters cover the whole run: C fetched A's and B's ops when linked, nothing while
    # cut off, then B's partition writes
    link = next(i for i, line in enumerate(lines) if line.startswith("3. link"))
    lrow = [x for x in (ROW.match(line) for line in lines[link:part]) if x]
    assert [int(t[6]) for t in (lrow[2], prow[2], rows[2])] == [2 * ops + 7, 2 * ops + 7, 3 * ops + 7]
    # the stores and logs stay in the given workdir
    assert {p.name for p in (tmp_path / "w").iterdir()} >= {"a", "b", "c", "a.log", "b.log", "c.log"}
