"""Replay: from a DAG to the materialised state and its digest (core §8).

``replay_full`` applies every op of the total order to an empty state. ``Replayer``
continues from an earlier result and is guaranteed to give exactly the full-replay
result (core §8.4, a deliberate difference from the reference): a saved state computed
over order ``P`` (``k = len(P)``) is only continued when, for the current order ``N``,

1. ``N[:k] == P`` (checked by list identity for the live state, by ``blake3`` of the
   concatenated op ids for stored resume points),
2. ``N[k:]`` holds no position-independent policy input (Credential, IssuerKey,
   IssuerKeyRevoke, StatusListChunk), and
3. ``N[k:]`` holds no Grant/Revoke when ``P`` had none (that would switch policy on).

Otherwise it restarts from the newest saved ``ResumePoint`` that satisfies all three,
or from the empty state.

Policy is a plug-in: ``ecac.core.policy.build_write_gate(order)`` is called once per apply and
returns None when the order has no Grant/Revoke (allow-all).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import blake3

from ecac.core import policy
from ecac.core.codec import b2l, dumps, loads, struct_fields, to_bytes, to_u64
from ecac.core.dag import Dag
from ecac.core.errors import DecodeError, InvalidOpError
from ecac.core.op import (
    POLICY_SWITCH_KINDS,
    REASON_BAD_SIG,
    REASON_ID_MISMATCH,
    RETROACTIVE_KINDS,
    Data,
    Op,
    op_id_of,
)
from ecac.core.opcodec import decode_op_with_header
from ecac.core.resources import SET_ADD, SET_FIELD, DataAction, derive_action_and_tags
from ecac.core.sig import Rejection, SigCheck, submit_sigs
from ecac.core.state import State

#: called for every Data op with a data key: (pos, op, action, applied)
Observer = Callable[[int, Op, DataAction, bool], None]

_MISS = object()


# ---------------------------------------------------------------------- full replay (core §8.1-8.2)


def apply_over_order(
    dag: Dag,
    state: State,
    order: Sequence[Op] | None = None,
    start: int | None = None,
    observer: Observer | None = None,
) -> bytes:
    """Apply ``order[start:]`` (default: from ``state.processed_count``) to ``state``; return the digest.

    This is the raw step of core §8.2: it does not check that resuming is valid (that is
    ``Replayer``'s job). ``hb`` is evaluated over the whole DAG; the write gate is built
    from the whole order. ``state.processed_count`` becomes ``len(order)``.
    """
    if order is None:
        order = dag.topo_order()
    n = len(order)
    if start is None:
        start = min(state.processed_count, n)
    gate = policy.build_write_gate(order)
    hb = dag.hb
    actions: dict[str, DataAction | None] = {}
    mv_field = state.mv_field
    set_field = state.set_field
    for pos in range(start, n):
        op = order[pos]
        pl = op.payload
        if type(pl) is not Data:
            continue
        key = pl.key
        d = actions.get(key, _MISS)
        if d is _MISS:
            d = actions[key] = derive_action_and_tags(key)
        if d is None:
            continue
        if gate is not None and not gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc):  # type: ignore[union-attr]
            if observer is not None:
                observer(pos, op, d, False)  # type: ignore[arg-type]
            continue
        act = d.action  # type: ignore[union-attr]
        if act == SET_FIELD:
            mv_field(d.obj, d.field).apply_put(op.op_id, pl.value, hb)  # type: ignore[union-attr]
        elif act == SET_ADD:
            set_field(d.obj, d.field).add(d.elem, op.op_id, pl.value)  # type: ignore[union-attr,arg-type]
        else:
            set_field(d.obj, d.field).remove_with_hb(d.elem, op.op_id, hb)  # type: ignore[union-attr,arg-type]
        if observer is not None:
            observer(pos, op, d, True)  # type: ignore[arg-type]
    state.processed_count = n
    return state.digest()


def replay_full(source: Dag | Iterable[Op], observer: Observer | None = None) -> tuple[State, bytes]:
    """New empty state, apply the whole order: ``(state, digest)``.

    Ops given as an iterable are verified first (core §4.4): a failing op raises
    InvalidOpError and nothing is replayed.
    """
    dag = source if isinstance(source, Dag) else dag_of_verified(source)
    state = State()
    digest = apply_over_order(dag, state, observer=observer)
    return state, digest


def dag_of_verified(ops: Iterable[Op]) -> Dag:
    """A DAG of ops that must all verify; the first failing op raises InvalidOpError."""
    dag = Dag()
    bad = dag.admit_and_insert(ops)
    if bad:
        raise InvalidOpError(bad[0].op_id, bad[0].reason)
    return dag


# ---------------------------------------------------------------------- admission from bytes


def decode_and_admit(blobs: Sequence[bytes]) -> tuple[list[Op], list[Rejection]]:
    """Strictly decode canonical op bytes and verify them (op_id and signature), in input order.

    Chunk by chunk: the signatures of one chunk are checked on the verify threads
    (``submit_sigs``, libsodium without the GIL) while the next chunk is decoded. A blob
    that does not decode raises DecodeError naming its index; ops that fail verification
    come back as rejections (id mismatches first, then bad signatures).
    """
    ops: list[Op] = []
    checks: list[tuple[list[Op], SigCheck]] = []
    bad: list[Rejection] = []
    for lo in range(0, len(blobs), _ADMIT_CHUNK):
        chunk: list[Op] = []
        for i in range(lo, min(lo + _ADMIT_CHUNK, len(blobs))):
            try:
                op, header_cbor = decode_op_with_header(blobs[i])
            except DecodeError as e:
                raise DecodeError(f"op #{i}: {e}") from None
            if op_id_of(header_cbor) != op.op_id:
                bad.append(Rejection(op.op_id, REASON_ID_MISMATCH))
            else:
                chunk.append(op)
        checks.append((chunk, submit_sigs([(op.author_pk, op.sig, op.op_id) for op in chunk])))
    forged: list[Rejection] = []
    for chunk, check in checks:
        oks = check.result()
        if all(oks):
            ops += chunk
            continue
        ops += [op for op, ok in zip(chunk, oks, strict=True) if ok]
        forged += [Rejection(op.op_id, REASON_BAD_SIG) for op, ok in zip(chunk, oks, strict=True) if not ok]
    return ops, bad + forged


#: ops decoded per signature batch in ``decode_and_admit``
_ADMIT_CHUNK = 2048


# ---------------------------------------------------------------------- incremental replay (core §8.4)


_OP_ID = attrgetter("op_id")  # joins of many ids run in C


def order_hash(order: Sequence[Op], k: int | None = None) -> bytes:
    """``blake3`` of the concatenated op ids of ``order[:k]`` (the resume record's prefix check)."""
    ops = order if k is None else order[:k]
    return blake3.blake3(b"".join(map(_OP_ID, ops))).digest()


def suffix_keeps_verdicts(suffix: Iterable[Op], prefix_has_policy: bool) -> bool:
    """Conditions 2 and 3 of core §8.4: nothing in ``suffix`` can change an earlier verdict."""
    for op in suffix:
        kind = op.payload.NAME
        if kind in RETROACTIVE_KINDS:
            return False
        if not prefix_has_policy and kind in POLICY_SWITCH_KINDS:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """A saved replay result that may be continued (core §8.4, store §1.9).

    ``k`` ops were processed, ``order_hash`` = blake3 of their concatenated ids in order,
    ``has_policy`` = whether they contain a Grant or Revoke, ``state_cbor`` = the state
    snapshot (core §10.3) and ``digest`` its state digest.
    """

    k: int
    order_hash: bytes
    has_policy: bool
    state_cbor: bytes
    digest: bytes

    @classmethod
    def capture(cls, state: State, order: Sequence[Op]) -> ResumePoint:
        """The resume point of ``state`` after a replay over exactly ``order``."""
        if state.processed_count != len(order):
            raise ValueError("state was not computed over this order")
        has = policy.has_policy(order)
        return cls(len(order), order_hash(order), has, state.snapshot_cbor(), state.digest())

    def valid_for(self, order: Sequence[Op], ids: bytes | None = None) -> bool:
        """All three conditions of core §8.4 against the current ``order``.

        ``ids`` may be the precomputed concatenation of the order's op ids (to check many
        points without joining them again).
        """
        k = self.k
        if k > len(order):
            return False
        h = order_hash(order, k) if ids is None else blake3.blake3(memoryview(ids)[: 32 * k]).digest()
        if h != self.order_hash:
            return False
        return suffix_keeps_verdicts(order[k:], self.has_policy)

    def restore(self) -> State:
        """The saved state; DecodeError if it does not match its count or digest."""
        st = State.from_snapshot_cbor(self.state_cbor)
        if st.processed_count != self.k:
            raise DecodeError(
                f"resume point: state has processed_count {st.processed_count}, expected {self.k}"
            )
        if st.digest() != self.digest:
            raise DecodeError("resume point: state digest mismatch")
        return st

    def to_bytes(self) -> bytes:
        """CBOR ``{"k", "order_hash", "has_policy", "state_cbor", "digest"}``, byte fields as int arrays."""
        return dumps(
            {
                "k": self.k,
                "order_hash": b2l(self.order_hash),
                "has_policy": self.has_policy,
                "state_cbor": b2l(self.state_cbor),
                "digest": b2l(self.digest),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumePoint:
        obj = loads(data, "resume point")
        k, oh, hp, sc, dg = struct_fields(
            obj, ("k", "order_hash", "has_policy", "state_cbor", "digest"), "resume point"
        )
        if type(hp) is not bool:
            raise DecodeError("resume point.has_policy: expected a boolean")
        return cls(
            to_u64(k, "resume point.k"),
            to_bytes(oh, "resume point.order_hash", 32),
            hp,
            to_bytes(sc, "resume point.state_cbor"),
            to_bytes(dg, "resume point.digest", 32),
        )


class Replayer:
    """Incremental replay whose result always equals ``replay_full`` of the same DAG.

    Keeps the live state with the order it was computed over, plus up to ``max_points``
    saved ``ResumePoint``s to fall back to when the live state cannot be continued. With
    ``auto_every > 0`` a point is saved whenever that many ops were processed since the
    last one. ``apply`` mutates the live state in place.
    """

    __slots__ = (
        "_live_dag",
        "_live_hash",
        "_live_k",
        "_live_order",
        "_live_policy",
        "_since_point",
        "auto_every",
        "digest",
        "last_start",
        "max_points",
        "points",
        "state",
    )

    def __init__(self, *, max_points: int = 8, auto_every: int = 0) -> None:
        self.state = State()
        self.digest = self.state.digest()
        self.points: list[ResumePoint] = []
        self.max_points = max_points
        self.auto_every = auto_every
        self.last_start = 0
        self._live_order: Sequence[Op] | None = []
        self._live_dag: weakref.ref[Dag] | None = None
        self._live_hash: bytes | None = None
        self._live_k = 0
        self._live_policy = False
        self._since_point = 0

    @classmethod
    def from_point(cls, point: ResumePoint, *, max_points: int = 8, auto_every: int = 0) -> Replayer:
        """Continue from a stored point (e.g. a store checkpoint with its resume record)."""
        r = cls(max_points=max_points, auto_every=auto_every)
        r.add_point(point)
        r.state = point.restore()
        r.digest = point.digest
        r._live_order = None
        r._live_hash = point.order_hash
        r._live_k = point.k
        r._live_policy = point.has_policy
        return r

    def add_point(self, point: ResumePoint) -> None:
        """Remember a point to fall back to (kept sorted by ``k``; the oldest are dropped)."""
        pts = [p for p in self.points if p.k != point.k] + [point]
        pts.sort(key=lambda p: p.k)
        self.points = pts[-self.max_points :] if self.max_points > 0 else []

    def save_point(self) -> ResumePoint:
        """Snapshot the live state as a resume point (call only after ``apply``)."""
        if self._live_order is None:
            raise ValueError("the live state was restored from a point; apply first")
        p = ResumePoint.capture(self.state, self._live_order)
        self.add_point(p)
        self._since_point = 0
        return p

    def _live_start(self, dag: Dag, order: Sequence[Op]) -> int | None:
        k = self._live_k
        if k > len(order):
            return None
        if self._live_order is not None:
            live = self._live_order
            if order is live:
                pass
            elif self._live_dag is not None and self._live_dag() is dag:
                # same (grown) DAG: the old order is a subsequence of the new one (Dag.topo_order)
                if k and order[k - 1] is not live[k - 1]:
                    return None
            elif order[:k] != live:
                return None
        elif order_hash(order, k) != self._live_hash:
            return None
        if not suffix_keeps_verdicts(order[k:], self._live_policy):
            return None
        return k

    def apply(self, dag: Dag, observer: Observer | None = None) -> tuple[State, bytes]:
        """Bring the state up to ``dag``'s current order; returns ``(state, digest)``."""
        order = dag.topo_order()
        start = self._live_start(dag, order)
        if start is None:
            ids = b"".join(map(_OP_ID, order)) if self.points else b""
            point = next((p for p in reversed(self.points) if p.valid_for(order, ids)), None)
            if point is None:
                self.state = State()
                start = 0
            else:
                self.state = point.restore()
                start = point.k
            self._live_policy = point.has_policy if point is not None else False
        self.digest = apply_over_order(dag, self.state, order, start, observer)
        self._live_policy = self._live_policy or policy.has_policy(order[start:])
        self._live_order = order
        self._live_dag = weakref.ref(dag)
        self._live_hash = None
        self._since_point += len(order) - start
        self._live_k = len(order)
        self.last_start = start
        if self.auto_every > 0 and self._since_point >= self.auto_every:
            self.save_point()
        return self.state, self.digest
