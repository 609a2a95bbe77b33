"""Real network conditions (issue 13 item 5): 3 real nodes in network namespaces the harness creates.

``ecac.bench.netns`` makes its own namespaces and veth pairs (a line a—b—c), optionally with
``tc netem delay 100ms loss 1%``, and removes them afterwards. Where the machine does not allow
namespaces, or has no netem qdisc, the test skips with the exact reason, and the same scenarios
run in the simulator with the same delay/loss model (the last test here always runs). The full
30 s partition: ``python -m ecac.bench.netns --partition-s 30`` (docs/performance.md).
"""

from __future__ import annotations

import subprocess

import pytest

from ecac.bench import netns
from ecac.bench.sim import run_sim
from ecac.bench.simnet import netem
from ecac.sync.coordinator import SyncConfig

pytestmark = pytest.mark.timeout(120)

OPS = 30
PARTITION_S = 3.0  # the test's partition; the harness's default is the reference's 30 s
AE_MS = 1000


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(netns.NetnsLab().tag + "-")]


@pytest.mark.integration
def test_partition_and_heal_in_namespaces() -> None:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    r = netns.run_conditions(False, ops=OPS, partition_s=PARTITION_S, anti_entropy_ms=AE_MS)
    assert r["ops"] == 5 * OPS
    assert 0 < r["join_ms"] < 30_000 and 0 < r["heal_ms"] < 30_000
    assert _our_namespaces() == []  # everything the lab made is gone


@pytest.mark.integration
def test_delay_and_loss_in_namespaces() -> None:
    why = netns.netem_unavailable()
    if why is not None:
        pytest.skip(why)
    r = netns.run_conditions(True, ops=OPS, partition_s=PARTITION_S, anti_entropy_ms=AE_MS)
    assert r["netem"] == "delay 100ms loss 1%"
    assert r["join_ms"] >= 200  # two links of 100 ms each way at least
    assert _our_namespaces() == []


def test_the_same_scenarios_in_the_simulator_with_the_delay_and_loss_model() -> None:
    """Always runs: 3 nodes on a line, node timing, 100 ms delay and 1 % loss, a 30 s partition."""
    cfg = SyncConfig(anti_entropy_period=AE_MS / 1000)
    r = run_sim(3, 3 * OPS, seed=5, topology="line", config=cfg, faults=netem(), partition_s=30.0)
    assert r["join_converged"] and r["heal_converged"]
    assert r["delay_ms"] == 100.0 and r["loss"] == 0.01
    assert r["ops_after_heal"] == 3 * OPS + r["partition_writes"]
    assert r["heal_s"] < 30.0
