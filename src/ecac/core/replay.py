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

For the live state the gate source may accept more: a Credential whose VC no earlier
Grant/KeyGrant names (a new VC arriving with its Grant) cannot change an earlier verdict
either (``policy.GateBuilder.keeps_verdicts``). Otherwise it restarts from the newest
saved ``ResumePoint`` that satisfies all three, or from the empty state.

Policy is a plug-in: ``apply_over_order`` calls ``ecac.core.policy.build_write_gate(order)``,
which returns None when the order has no Grant/Revoke (allow-all); a ``Replayer`` asks its
gate source (``policy.GateBuilder``), which extends the previous gate when the live state is
continued and remembers verified credentials across applies. A strict log (rooted in its
Genesis op, ``ecac.core.profile``) gets the strict gate instead (``ecac.core.strict``:
``build_gate`` for ``apply_over_order``, ``StrictGates`` for a replayer), under which a Revoke
is a retroactive input too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import blake3

from ecac.core import policy, sig, strict
from ecac.core.codec import b2l, dumps, loads, struct_fields, to_bytes, to_u64
from ecac.core.dag import Dag
from ecac.core.errors import DecodeError, InvalidOpError
from ecac.core.op import (
    POLICY_SWITCH_KINDS,
    RETROACTIVE_KINDS,
    Data,
    Op,
)
from ecac.core.profile import is_strict_order
from ecac.core.resources import SET_ADD, SET_FIELD, DataAction, derive_action_and_tags
from ecac.core.sig import Rejection, Verify, check_sigs
from ecac.core.state import State
from ecac.core.vc import VcMemo

#: called for every Data op with a data key: (pos, op, action, applied)
Observer = Callable[[int, Op, DataAction, bool], None]


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
    if start is None:
        start = min(state.processed_count, len(order))
    return apply_gated(dag, state, order, start, strict.build_gate(order, dag=dag), observer)


def apply_gated(
    dag: Dag,
    state: State,
    order: Sequence[Op],
    start: int,
    gate: policy.Gate | None,
    observer: Observer | None = None,
) -> bytes:
    """``apply_over_order`` with the write gate of ``order`` given (None: allow-all)."""
    n = len(order)
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
        try:
            d = actions[key]
        except KeyError:
            d = actions[key] = derive_action_and_tags(key)
        if d is None:
            continue
        if gate is not None and not gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc):
            if observer is not None:
                observer(pos, op, d, False)
            continue
        act = d.action
        if act == SET_FIELD:
            mv_field(d.obj, d.field).apply_put(op.op_id, pl.value, hb)
        else:
            elem: str = d.elem  # type: ignore[assignment]  # set keys always have an element
            if act == SET_ADD:
                set_field(d.obj, d.field).add(elem, op.op_id, pl.value)
            else:
                set_field(d.obj, d.field).remove_with_hb(elem, op.op_id, hb)
        if observer is not None:
            observer(pos, op, d, True)
    state.processed_count = n
    return state.digest()


def replay_full(
    source: Dag | Iterable[Op], observer: Observer | None = None, verify: Verify = check_sigs
) -> tuple[State, bytes]:
    """New empty state, apply the whole order: ``(state, digest)``.

    Ops given as an iterable are verified first (core §4.4; signatures by ``verify``): a
    failing op raises InvalidOpError and nothing is replayed.
    """
    dag = source if isinstance(source, Dag) else dag_of_verified(source, verify)
    state = State()
    digest = apply_over_order(dag, state, observer=observer)
    return state, digest


def dag_of_verified(ops: Iterable[Op], verify: Verify = check_sigs) -> Dag:
    """A DAG of ops that must all verify; the first failing op raises InvalidOpError."""
    dag = Dag()
    bad = dag.admit_and_insert(ops, verify)
    if bad:
        raise InvalidOpError(bad[0].op_id, bad[0].reason)
    return dag


# ---------------------------------------------------------------------- admission from bytes


def decode_and_admit(blobs: Sequence[bytes], verify: Verify = check_sigs) -> tuple[list[Op], list[Rejection]]:
    """Strictly decode canonical op bytes and verify them (op_id and signature), in input order.

    ``ecac.core.sig.decode_and_admit``: one ``verify`` call per chunk (serial by default;
    ``VerifyPool.decode_and_admit`` overlaps the checks with decoding). A blob that does not
    decode raises DecodeError naming its index; ops that fail verification come back as
    rejections (id mismatches first, then bad signatures).
    """
    return sig.decode_and_admit(blobs, verify)


# ---------------------------------------------------------------------- incremental replay (core §8.4)


_OP_ID = attrgetter("op_id")  # joins of many ids run in C


def order_hash(order: Sequence[Op], k: int | None = None) -> bytes:
    """``blake3`` of the concatenated op ids of ``order[:k]`` (the resume record's prefix check)."""
    ops = order if k is None else order[:k]
    return blake3.blake3(b"".join(map(_OP_ID, ops))).digest()


def suffix_keeps_verdicts(
    suffix: Iterable[Op], prefix_has_policy: bool, strict_profile: bool = False
) -> bool:
    """Conditions 2 and 3 of core §8.4: nothing in ``suffix`` can change an earlier verdict.

    Under the strict profile a Revoke (causal deny-wins) and a Genesis also can
    (``strict.STRICT_RETROACTIVE_KINDS``)."""
    retroactive = strict.STRICT_RETROACTIVE_KINDS if strict_profile else RETROACTIVE_KINDS
    for op in suffix:
        kind = op.payload.NAME
        if kind in retroactive:
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
        return suffix_keeps_verdicts(order[k:], self.has_policy, is_strict_order(order))

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

    Write gates come from ``gates`` (default: a new ``policy.GateBuilder`` with its own
    ``VcMemo``) for reference logs and from ``strict_gates`` (sharing that memo) for strict
    ones: when the live state is continued the previous gate is extended over the new ops, so
    a write that only appends Data costs no policy work; a rebuilt gate takes the verdicts of
    credentials seen before from the memo. Either way the gate equals ``strict.build_gate(order)``
    (``policy.build_write_gate(order)`` for a reference log).
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
        "gate",
        "gates",
        "last_start",
        "max_points",
        "points",
        "state",
        "strict_gates",
    )

    def __init__(
        self, *, max_points: int = 8, auto_every: int = 0, gates: policy.GateSource | None = None
    ) -> None:
        self.state = State()
        self.digest = self.state.digest()
        self.points: list[ResumePoint] = []
        self.max_points = max_points
        self.auto_every = auto_every
        self.gates: policy.GateSource = policy.GateBuilder() if gates is None else gates
        #: the gates of strict logs (rooted in their Genesis op); ``gates`` serves reference logs
        memo = getattr(self.gates, "memo", None)
        self.strict_gates = strict.StrictGates(memo if isinstance(memo, VcMemo) else VcMemo())
        #: the write gate of the last apply (None: allow-all)
        self.gate: policy.Gate | None = None
        self.last_start = 0
        self._live_order: Sequence[Op] | None = []
        self._live_dag: weakref.ref[Dag] | None = None
        self._live_hash: bytes | None = None
        self._live_k = 0
        self._live_policy = False
        self._since_point = 0

    @classmethod
    def from_point(
        cls,
        point: ResumePoint,
        *,
        max_points: int = 8,
        auto_every: int = 0,
        gates: policy.GateSource | None = None,
    ) -> Replayer:
        """Continue from a stored point (e.g. a store checkpoint with its resume record)."""
        r = cls(max_points=max_points, auto_every=auto_every, gates=gates)
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
        if suffix_keeps_verdicts(order[k:], self._live_policy, is_strict_order(order)):
            return k
        # the gate source knows the live order's VCs: a new VC with its Grant changes nothing earlier
        gates = self.strict_gates if is_strict_order(order) else self.gates
        if self._live_order is not None and gates.keeps_verdicts(order, k):
            return k
        return None

    def apply(self, dag: Dag, observer: Observer | None = None) -> tuple[State, bytes]:
        """Bring the state up to ``dag``'s current order; returns ``(state, digest)``.

        If anything raises, the live state is dropped (the next apply starts from a saved
        point or from empty), so a half-applied state is never continued.
        """
        order = dag.topo_order()
        start = self._live_start(dag, order)
        # the gate source's previous order is the live order; restored points have none
        keep = start if start is not None and self._live_order is not None else 0
        try:
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
            if is_strict_order(order):
                self.gate = self.strict_gates.gate_for(order, keep, dag)
            else:
                self.gate = self.gates.gate_for(order, keep)
            self.digest = apply_gated(dag, self.state, order, start, self.gate, observer)
        except BaseException:
            self._drop_live()
            raise
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

    def _drop_live(self) -> None:
        self.gate = None
        self.state = State()
        self.digest = self.state.digest()
        self._live_order = []
        self._live_dag = None
        self._live_hash = None
        self._live_k = 0
        self._live_policy = False
        self._since_point = 0
