"""A real node refuses an HLC-regressing op of a strict project at admission (issue 12 item 3):
``/append-ops`` reports it and its descendant as rejected with the reason, the node counts and
logs each refusal in one line, stores the valid ops and keeps running."""

from __future__ import annotations

import functools

import pytest
import trio

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Data, Op, make_op
from ecac.core.opcodec import encode_ops
from ecac.core.profile import HLC_REGRESSION, INVALID_ANCESTOR, genesis_op
from ecac.store.rocks import Store

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]

A = key_pair(3, b"itest-strict-admission/a")


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def blocking(fn, *args, **kw):  # type: ignore[no-untyped-def]
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


def _data(parents: list[Op], ms: int, v: bytes) -> Op:
    return make_op(A, [p.op_id for p in parents], Hlc(ms, 0, 0), Data("mv:o:x", v))


async def test_node_refuses_an_hlc_regression_at_admission(nodes: Nodes) -> None:
    g = genesis_op(A, "itest", [public_key(A)], Hlc(10_000, 0, 0))
    good = _data([g], 20_000, b"1")
    bad = _data([good], 15_000, b"2")  # below its parent
    child = _data([bad], 30_000, b"3")
    after = _data([good], 25_000, b"4")
    b = await blocking(nodes.start, "b")
    r = await blocking(b.append_ops, encode_ops([g, good]))
    assert r["stored"] == 2 and r["ok"]
    r = await blocking(b.append_ops, encode_ops([bad, child, after]))
    assert r["stored"] == 1 and not r["ok"]
    assert [(x["index"], x["op_id"]) for x in r["rejected"]] == [(0, bad.op_id.hex()), (1, child.op_id.hex())]
    assert HLC_REGRESSION in r["rejected"][0]["error"] and INVALID_ANCESTOR in r["rejected"][1]["error"]
    s = await blocking(b.status)
    assert s["op_count"] == 3 and s["counters"]["writer"]["ops_refused"] == 2
    lines = [ln for ln in b.log_text().splitlines() if "admission refused op" in ln]
    assert len(lines) == 2 and bad.op_id.hex() in lines[0] and HLC_REGRESSION in lines[0]
    # the same op again (a peer or a user retrying): the same verdict, deterministically
    r = await blocking(b.append_ops, encode_ops([bad]))
    assert r["stored"] == 0 and HLC_REGRESSION in r["rejected"][0]["error"]
    assert await blocking(b.stop) == 0
    with Store.open(b.db) as st:
        assert st.op_count() == 3 and not st.contains(bad.op_id) and not st.contains(child.op_id)
        st.verify_integrity(verify_sigs=True)
