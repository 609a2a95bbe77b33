"""``ecac bench --scenario mesh``: real nodes in a topology converge; the JSON line has its fields."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ecac.bench import load_all
from ecac.bench.mesh import split_ops, topology_edges
from ecac.cli.bench_cmds import bench_cmd


def _connected(n: int, edges: list[tuple[int, int]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        x = todo.pop()
        for i, j in edges:
            for a, b in ((i, j), (j, i)):
                if a == x and b not in seen:
                    seen.add(b)
                    todo.append(b)
    return len(seen) == n


def test_mesh_scenario_is_registered() -> None:
    assert "mesh" in load_all()


@pytest.mark.parametrize("kind", ["line", "star", "random"])
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_topologies_are_connected_and_deterministic(kind: str, n: int) -> None:
    edges = topology_edges(kind, n, seed=7)
    assert _connected(n, edges)
    assert all(0 <= i < j < n for i, j in edges) and len(set(edges)) == len(edges)
    assert edges == topology_edges(kind, n, seed=7)
    expected = {"line": n - 1, "star": n - 1}.get(kind)
    assert expected is None or len(edges) == expected


def test_split_ops_gives_every_node_its_own_chain() -> None:
    parts = split_ops(1, 11, 3)
    assert [len(p) for p in parts] == [4, 4, 3]
    assert len({op.author_pk for p in parts for op in p}) == 3


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_mesh_bench_three_nodes_converge_and_report() -> None:
    args = ["--scenario", "mesh", "--nodes", "3", "--topology", "star", "--ops", "30", "--json"]
    out = CliRunner().invoke(bench_cmd, args)
    assert out.exit_code == 0, out.output[-3000:]
    result = json.loads(out.output.strip().splitlines()[-1])
    assert result["converged"] is True
    assert result["nodes"] == 3 and result["topology"] == "star" and result["ops"] == 30
    assert result["converge_ms"] > 0
    assert result["bytes_per_op_per_node"] > 0
    assert result["op_copies_needed"] == 60
    assert result["ops_fetched"] >= 60  # every node got the 20 ops it lacked
    assert len(result["node_digests"]) == 1 and result["node_digests"][0] == result["state_digest"]
