"""Replay from the store: the DAG from stored rows, resume from a checkpoint's resume record.

Reads the store through its snapshot of the index; never writes ops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import blake3

from ecac import _native
from ecac.core.dag import Dag
from ecac.core.errors import DecodeError, StoreError
from ecac.core.op import Data, Op
from ecac.core.order import first_difference
from ecac.core.replay import Replayer, ResumePoint, replay_full, suffix_keeps_verdicts
from ecac.core.sig import SigItem, check_sigs, sig_items
from ecac.core.state import State
from ecac.store.bulk import bulk_load
from ecac.store.memory import IndexedOpStore, OpStore

#: the eight column families, in the reference's order (store §1.2)
from ecac.store.rocks import Store
from ecac.store.rows import ResumeRecord
from ecac.store.verifypool import SigCheck, VerifyPool

# --------------------------------------------------------------------------- replay from the store


def load_dag(store: OpStore, verify_sigs: bool = False, pool: VerifyPool | None = None) -> Dag:
    """A DAG of the store's complete ops, streamed in the store's topo order.

    The store's index already computed the deterministic order, so the ops are appended
    with ``Dag.extend_ordered`` (no second topological sort). With ``verify_sigs`` that order
    is not trusted: a RocksDB store recomputes it from its ``edges`` rows first
    (``Store.verify_order``), any other store's ops are inserted (the DAG orders them
    itself) and the two orders compared; a mismatch is a StoreError naming the first
    differing position. Signatures were verified at
    ingest and are not checked again unless ``verify_sigs``; then each chunk's signatures
    are checked on the threads of ``pool`` (default: the store's) while the next chunk is
    decoded, and a failure is a StoreError. With ``verify_sigs`` the store's decoder also
    recomputes every op id (``Store.replay_ops(checked=True)``), so a signature is only ever
    checked over a true id.
    """
    dag = Dag()
    pending: list[tuple[list[Op], SigCheck]] = []
    if pool is None and isinstance(store, IndexedOpStore):
        pool = store.verify_pool

    def submit(items: list[SigItem]) -> SigCheck:
        return pool.submit(items) if pool is not None else SigCheck(check_sigs(items))

    def checked(ops: Iterator[Op]) -> Iterator[Op]:
        chunk: list[Op] = []
        for op in ops:
            chunk.append(op)
            if len(chunk) >= _VERIFY_CHUNK:
                pending.append((chunk, submit(sig_items(chunk))))
                chunk = []
                if len(pending) > 1:
                    _sigs_ok(*pending.pop(0))
            yield op
        if chunk:
            pending.append((chunk, submit(sig_items(chunk))))

    with bulk_load():  # hundreds of thousands of long-lived objects: collections would only rescan them
        if isinstance(store, Store):
            if verify_sigs:
                store.verify_order()
            ops = store.replay_ops(checked=verify_sigs)
            dag.extend_ordered(checked(ops) if verify_sigs else ops)
        elif verify_sigs:
            dag.insert_many(checked(store.iter_topo_ops()))
            _same_order(store.topo_ids(), dag.topo_ids())
        else:
            dag.extend_ordered(store.iter_topo_ops())
        for entry in pending:
            _sigs_ok(*entry)
    return dag


def _same_order(stored: list[bytes], computed: list[bytes]) -> None:
    i = first_difference(stored, computed)
    if i is not None:
        got = stored[i].hex() if i < len(stored) else "nothing"
        exp = computed[i].hex() if i < len(computed) else "nothing"
        raise StoreError(f"order mismatch at position {i}: the store has {got}, its ops give {exp}")


_VERIFY_CHUNK = 2048


def _sigs_ok(ops: list[Op], fut: SigCheck) -> None:
    for op, good in zip(ops, fut.result(), strict=True):
        if not good:
            raise StoreError(f"invalid signature for op {op.op_id.hex()}")


@dataclass(frozen=True, slots=True)
class StoreReplay:
    """Result of a replay from the store: state, digest, and where it started.

    ``start`` is the number of ops taken from a checkpoint (0 for a full replay) and
    ``checkpoint_id`` that checkpoint, or None.
    """

    state: State
    digest: bytes
    start: int
    checkpoint_id: int | None


#: payload of prefix ops that a resumed replay never reads (Data ops before the checkpoint)
_UNREAD = Data("", b"")


def replay_store(store: Store, from_checkpoint: bool = False, verify_sigs: bool = False) -> StoreReplay:
    """Replay the store's complete ops; the result always equals a full replay.

    With ``from_checkpoint``, continue from the newest checkpoint whose resume record
    satisfies core §8.4's three conditions against the current order (prefix hash, no
    retroactive kind after it, no policy switch after a policy-free prefix); otherwise,
    and for checkpoints without a record, replay in full.

    The cyclic garbage collector is paused meanwhile: the DAG's objects hold no cycles
    and are freed by reference counting when the replay ends, while each collection
    would rescan every one of them (and the store's index).
    """
    with bulk_load():
        if from_checkpoint:
            res = _resume(store, verify_sigs)
            if res is not None:
                return res
        state, digest = replay_full(load_dag(store, verify_sigs))
        return StoreReplay(state, digest, 0, None)


def _resume(store: Store, verify_sigs: bool) -> StoreReplay | None:
    cands = store.resume_candidates()
    if not cands:
        return None
    ids = store.topo_ids()
    n = len(ids)
    joined = b"".join(ids)
    tail: list[Op] = []  # decoded ops of positions [n - len(tail), n)
    chosen: tuple[int, ResumeRecord] | None = None
    for cid, rec in cands:
        k = rec.k
        if k > n or blake3.blake3(memoryview(joined)[: 32 * k]).digest() != rec.order_hash:
            continue
        have = n - len(tail)
        if k < have:
            tail[:0] = list(store.ops_for(ids[k:have]))
        if suffix_keeps_verdicts(tail[k - (n - len(tail)) :], rec.has_policy):
            chosen = (cid, rec)
            break
    if chosen is None:
        return None
    cid, rec = chosen
    k = rec.k
    suffix = tail[k - (n - len(tail)) :]
    if verify_sigs:
        dag = load_dag(store, verify_sigs=True)
    else:
        dag = _resume_dag(store, ids[:k], set(rec.non_data), suffix)
    blob = store.checkpoint_blob(cid)
    point = ResumePoint(k, rec.order_hash, rec.has_policy, blob.state_cbor, blob.state_digest)
    try:
        r = Replayer.from_point(point, max_points=1)
    except DecodeError:
        raise StoreError("checkpoint digest mismatch") from None
    state, digest = r.apply(dag)
    if r.last_start != k:  # cannot happen after the checks above; never trust a skeleton prefix
        return None
    return StoreReplay(state, digest, k, cid)


def _resume_dag(store: Store, prefix: list[bytes], non_data: set[bytes], suffix: Sequence[Op]) -> Dag:
    """A DAG whose prefix Data ops carry only their header fields (never read when resuming)."""
    try:
        ops = _native.skeletons(prefix, store._edges, _UNREAD, b"", b"")
    except KeyError as e:
        raise StoreError(f"missing op {e.args[0].hex()}") from None
    listed = [i for i, op_id in enumerate(prefix) if op_id in non_data]
    for i, op in zip(listed, store.ops_for([prefix[i] for i in listed]), strict=True):
        ops[i] = op
    ops.extend(suffix)
    dag = Dag()
    with bulk_load():
        dag.extend_ordered(ops)
    return dag


def replay_from_store(
    store: Store, from_checkpoint: bool = False, verify_sigs: bool = False
) -> tuple[State, bytes]:
    """``(state, digest)`` of ``replay_store`` (the ``replay-from-store`` command)."""
    res = replay_store(store, from_checkpoint, verify_sigs)
    return res.state, res.digest
