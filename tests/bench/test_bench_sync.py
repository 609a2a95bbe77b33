"""``ecac bench --scenario sync``: real nodes sync N ops; numbers are printed, digests are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecac.bench import BenchParams, load_all
from ecac.bench.sync import bench_sync, parse_ss
from ecac.core.replay import replay_full
from ecac.sync.wire import op_frame_size
from ecac.testing.workloads import gen_hb_chain

REQUIRED_KEYS = {
    "scenario",
    "nodes",
    "ops",
    "seed",
    "converge_ms",
    "ops_per_s",
    "ingest_ms",
    "sync_vs_ingest",
    "bytes_on_wire",
    "messages",
    "state_digest",
}
SS_SAMPLE = """\
0      0      127.0.0.1:40458 127.0.0.1:44013
\t bbr wscale:10,10 rto:208 bytes_sent:3747 bytes_acked:3748 bytes_received:4053 segs_out:69
0      0      127.0.0.1:44013 127.0.0.1:40458
\t bbr wscale:10,10 rto:204 bytes_sent:4053 bytes_acked:4053 bytes_received:3747 segs_out:74
0      0      [::1]:9000 [::1]:51000
\t cubic bytes_sent:10 bytes_received:20
"""


def test_sync_scenario_is_registered():
    assert "sync" in load_all()


def test_parse_ss_counts_each_connection_once_from_its_accepting_side():
    assert parse_ss(SS_SAMPLE, {44013}) == (4053 + 3747, 1)
    assert parse_ss(SS_SAMPLE, {44013, 9000}) == (4053 + 3747 + 30, 2)
    assert parse_ss(SS_SAMPLE, {1234}) == (0, 0)


def _check(result: dict, nodes: int, ops: int, seed: int) -> None:
    assert result.keys() >= REQUIRED_KEYS
    assert (result["scenario"], result["nodes"], result["ops"], result["seed"]) == ("sync", nodes, ops, seed)
    want = replay_full(gen_hb_chain(seed, ops))[1].hex()
    assert result["state_digest"] == want
    assert result["node_digests"] == [want] * nodes
    # every empty node fetched each op exactly once into its store
    assert result["ops_fetched"] == ops * (nodes - 1)
    assert result["converge_ms"] > 0 and result["ingest_ms"] > 0 and result["ops_per_s"] > 0
    assert result["messages"] >= ops * (nodes - 1) + result["requests"]
    # the nodes count their own bytes: every op crossed once per receiver (no duplicates)
    assert result["wire_bytes_source"] == "node counters"
    frames = sum(op_frame_size(op.cbor) for op in gen_hb_chain(seed, ops)) * (nodes - 1)
    assert frames <= result["sync_bytes"] < 1.2 * frames
    assert result["bytes_on_wire"] == result["sync_bytes"] + result["gossip_bytes"]
    assert result["gossip_bytes"] > 0
    assert result["tcp_bytes"] is None or result["tcp_bytes"] > result["sync_bytes"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_nodes_via_the_cli_and_three_in_a_line_agree_on_the_replay_digest():
    args = ["bench", "--scenario", "sync", "--nodes", "2", "--ops", "300", "--seed", "7", "--json"]
    r = subprocess.run(
        [sys.executable, "-m", "ecac", *args],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    two = json.loads(r.stdout.strip().splitlines()[-1])
    _check(two, 2, 300, 7)
    assert two["topology"] == "line A—B"
    three = bench_sync(BenchParams("sync", 300, 7, nodes=3))
    _check(three, 3, 300, 7)
    assert three["topology"] == "line A—B—C"
    # the digest is a function of the ops only: the same across runs and topologies
    assert three["state_digest"] == two["state_digest"]
