"""VerifyPool: the same verdicts as the serial core check, on a bounded set of threads with a lifetime."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from ecac.core.codec import dumps
from ecac.core.errors import DecodeError
from ecac.core.keys import key_pair
from ecac.core.op import REASON_BAD_SIG, REASON_ID_MISMATCH, Op
from ecac.core.replay import decode_and_admit
from ecac.core.sig import SigItem, admit, check_sigs
from ecac.store.verifypool import MAX_WORKERS, VerifyPool
from ecac.testing.workloads import gen_hb_chain


def _items(n: int, bad: set[int]) -> list[SigItem]:
    sk = key_pair(1, b"test/verifypool")
    pk = bytes(sk.verify_key)
    out: list[SigItem] = []
    for i in range(n):
        msg = i.to_bytes(4, "big")
        sig = sk.sign(msg).signature
        out.append((pk, sig, msg + b"!" if i in bad else msg))
    return out


def _recoded(op: Op, **fields: bytes) -> Op:
    """``op`` with ``fields`` replaced and its canonical bytes recomputed (no re-signing)."""
    op = replace(op, **fields)
    return replace(op, cbor=dumps({"header": op.header_obj(), "sig": list(op.sig), "op_id": list(op.op_id)}))


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ecac-verify")]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_verdicts_match_the_serial_check_and_keep_positions(workers: int) -> None:
    bad = {0, 7, 255, 256, 511, 999}
    items = _items(1000, bad)
    want = [i not in bad for i in range(1000)]
    assert check_sigs(items) == want
    with VerifyPool(workers) as pool:
        assert pool.verify(items) == want
        assert pool.submit(items).result() == want
        assert pool.verify(items[:10]) == want[:10]  # small: inline
        assert pool.verify([]) == []


def test_threads_start_on_first_large_batch_and_stop_on_close() -> None:
    before = set(_pool_threads())
    pool = VerifyPool(2)
    pool.verify(_items(10, set()))  # below parallel_min: no thread
    assert set(_pool_threads()) == before
    check = pool.submit(_items(600, {3}))
    started = set(_pool_threads()) - before
    assert 1 <= len(started) <= 2  # bounded by workers
    pool.close()
    assert check.result() == [i != 3 for i in range(600)]  # submitted before close: completes
    assert not any(t.is_alive() for t in started)
    assert pool.closed
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(_items(600, set()))
    with pytest.raises(RuntimeError, match="closed"):
        pool.verify(_items(1, set()))
    pool.close()  # idempotent


def test_worker_count_is_bounded() -> None:
    with pytest.raises(ValueError, match="workers"):
        VerifyPool(0)
    with pytest.raises(ValueError, match="workers"):
        VerifyPool(MAX_WORKERS + 1)
    with pytest.raises(ValueError, match="parallel_min"):
        VerifyPool(2, parallel_min=0)


def test_pipelined_yields_every_batch_in_order() -> None:
    batches = [(k, _items(300 + k, {k})) for k in range(7)]
    with VerifyPool(2) as pool:
        got = list(pool.pipelined(batches, ahead=2))
    assert [k for k, _ in got] == list(range(7))
    for k, oks in got:
        assert oks == [i != k for i in range(300 + k)]
    with pytest.raises(ValueError, match="ahead"):
        list(VerifyPool().pipelined(batches, ahead=0))


def test_pool_verify_plugs_into_the_core() -> None:
    ops = gen_hb_chain(9, 40)
    forged = _recoded(ops[5], sig=bytes(64))
    with VerifyPool(2, parallel_min=1) as pool:
        good, bad = admit([*ops, forged], pool.verify)
    assert good == ops
    assert [(r.op_id, r.reason) for r in bad] == [(ops[5].op_id, REASON_BAD_SIG)]


def test_decode_and_admit_pipelined_equals_the_serial_core() -> None:
    ops = gen_hb_chain(11, 5000)
    blobs = [op.cbor for op in ops]
    blobs[3] = _recoded(ops[3], op_id=bytes(32)).cbor
    blobs[4000] = _recoded(ops[4000], sig=bytes([ops[4000].sig[0] ^ 1]) + ops[4000].sig[1:]).cbor
    want = decode_and_admit(blobs)
    with VerifyPool(2) as pool:
        got = pool.decode_and_admit(blobs)
        assert decode_and_admit(blobs, pool.verify) == want
    assert got == want
    assert len(want[0]) == 4998
    assert [r.reason for r in want[1]] == [REASON_ID_MISMATCH, REASON_BAD_SIG]
    with VerifyPool(2) as pool, pytest.raises(DecodeError, match="op #2"):
        pool.decode_and_admit([blobs[0], blobs[1], b"\x00garbage"])
