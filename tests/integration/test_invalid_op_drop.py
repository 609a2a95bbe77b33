"""A peer serving a forged op (new payload, old id and signature) is penalised and banned; the
forged op is never stored, and the valid ops still sync (from that peer's valid prefix and an
honest node)."""

from __future__ import annotations

import functools

import pytest
import trio

from ecac.core.opcodec import encode_ops
from ecac.net.procs import wait_converged, wait_for
from ecac.store.memory import MemoryOpStore
from ecac.store.rocks import Store
from ecac.sync.wire import announce_topic

from .conftest import PROJECT, Nodes, spec_dag
from .handpeer import HandPeer, forged

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(90)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def blocking(fn, *args, **kw):  # type: ignore[no-untyped-def]
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


async def test_invalid_op_drop(nodes: Nodes) -> None:
    ops = spec_dag()
    bad = ops[30]
    a = await blocking(nodes.start, "a")
    assert (await blocking(a.append_ops, encode_ops(ops)))["stored"] == 60

    mallory = HandPeer(bytes([9]) * 32, announce_topic(PROJECT), MemoryOpStore(ops))
    mallory.forge[bad.op_id] = forged(bad)
    async with mallory.run():
        b = await blocking(nodes.start, "b", peers=[mallory.host.listen_addrs()[0]])

        def penalised() -> dict | None:
            # the valid prefix is committed again right after the penalty: wait for that commit too
            s = b.status()
            return s if s["counters"]["peers_penalised"] >= 1 and s["counters"]["commits"] >= 1 else None

        sb = await blocking(wait_for, penalised, 20)
        assert mallory.requests, "B never asked the malicious peer"
        # ops 0..29 precede the forged op 30 in the response: that valid prefix is kept, nothing after it
        assert sb["op_count"] == 30
        assert sb["counters"]["commit_rejections"] >= 1
        assert sb["banned"] == [mallory.host.peer_id]
        await trio.sleep(0.5)
        sb = await blocking(b.status)
        assert mallory.host.peer_id not in sb["peers"]
        assert sb["op_count"] == 30  # nothing more from the banned peer

        assert (await blocking(b.add_peer, a.addr))["ok"]
        sa, sb = await blocking(wait_converged, [a, b], 30, 60)
        assert sa["state_digest"] == sb["state_digest"]
        assert sb["op_count"] == 60
        log = b.log_text()
        assert "penalised" in log and bad.op_id.hex() in log

    assert await blocking(b.stop) == 0
    with Store.open(b.db) as st:
        assert st.get_op_bytes(bad.op_id) == bad.cbor  # the genuine op, from A
        st.verify_integrity(verify_sigs=True)
