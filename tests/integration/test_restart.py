"""SIGKILL a node mid-sync; restarted on the same store it keeps its PeerId and converges."""

from __future__ import annotations

import os
import stat
import time

import pytest

from ecac.net.procs import wait_converged
from ecac.store.rocks import Store

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOTAL = 6000


def test_restart(nodes: Nodes) -> None:
    a = nodes.start("a")
    assert a.inject(TOTAL, seed=21)["stored"] == TOTAL
    # small responses (More chains) so that the sync takes a while and can be interrupted
    b = nodes.start("b", peers=[a.addr], extra_args=("--request-max-ops", "300"))
    peer_id = b.peer_id
    deadline = time.monotonic() + 30
    seen = 0
    while time.monotonic() < deadline:
        seen = b.status()["op_count"]
        if seen > 0:
            break
        time.sleep(0.005)
    b.kill()
    assert 0 < seen < TOTAL, f"B held {seen} ops when killed: not mid-sync"

    key = nodes.db("b") / "node_key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and key.stat().st_size == 32

    with Store.open(nodes.db("b")) as st:  # the kill released the RocksDB lock
        kept = st.op_count()
        assert st.pending_count() == 0
    assert seen <= kept < TOTAL  # what was committed before the kill survived it

    b2 = nodes.start("b", peers=[a.addr])
    assert b2.peer_id == peer_id  # identity from <db>/node_key
    sa, sb = wait_converged([a, b2], timeout=60, min_ops=TOTAL)
    assert sb["op_count"] == TOTAL and sb["state_digest"] == sa["state_digest"]
    assert sb["counters"]["ops_fetched"] == TOTAL - kept  # only the missing ops came again
    assert b2.stop() == 0
