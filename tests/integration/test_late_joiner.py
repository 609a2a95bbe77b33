"""A peer joining a quiet node gets its ops at once, although the node's (unchanged) announce was
already published and gossip drops re-publications of the same bytes for 120 s."""

from __future__ import annotations

import time

import pytest

from ecac.net.procs import wait_converged

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SLOW_AE = 60_000  # anti-entropy far beyond the test: only the join itself can trigger the sync


def test_second_joiner_syncs_without_waiting_for_anti_entropy(nodes: Nodes) -> None:
    a = nodes.start("a", anti_entropy_ms=SLOW_AE)
    assert a.inject(50, seed=4)["stored"] == 50
    b = nodes.start("b", peers=[a.addr], anti_entropy_ms=SLOW_AE)
    wait_converged([a, b], timeout=15, min_ops=50)
    assert a.status()["counters"]["announces_published"] >= 1
    assert b.stop() == 0

    t0 = time.monotonic()
    c = nodes.start("c", peers=[a.addr], anti_entropy_ms=SLOW_AE)
    sa, sc = wait_converged([a, c], timeout=15, min_ops=50)
    assert time.monotonic() - t0 < 15
    assert sc["state_digest"] == sa["state_digest"] and sc["counters"]["ops_fetched"] == 50
