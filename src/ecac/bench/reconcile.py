"""Benchmark ``reconcile``: range-based set reconciliation vs today's heads/bloom path, same data.

Setup (untimed): ``--ops`` N shared ops (one hb chain), then ``--diff`` K ops written during a
"partition": ceil(K/2) by a writer only A has, floor(K/2) by a writer only B has, each a chain
forked from the shared head with newer HLCs (what two nodes hold after a partition). Each side
is an in-memory ``OpIndex`` with its ops' bytes and a ``StoreSnapshot`` from ``take_snapshot``
(so the range tree is the one the writer keeps).

Reconciliation: a real ``Reconciler`` session (A initiates) exchanging the real encoded frames
(in-process, no sockets); ``round_trips``, ``reconcile_bytes_a_to_b`` / ``_b_to_a`` count the
frames with their 4-byte length prefixes, ``ids_found`` the ids the session found (either
side's ``need``), ``reconcile_ms`` its wall time. Then each side fetches its ``need`` as the
node does: ``SyncCoordinator.reconciled`` plans the ``/ecac/sync/1`` requests (want-lists of
≤ 256 ids, boundary from the snapshot) and the peer answers with ``plan_response``; every
request frame and every response frame (``OpBytes`` + trailer) is counted (``fetch_bytes``),
and the received ops are added to the requester's index before the next request.
``bytes_total`` = reconciliation + fetch bytes, both ways.

Baseline (``baseline_*``): today's path on the same data: each side's signed announce (heads,
bloom; counted once per side), the other side's coordinator plans its request from it
(``announce_received``), the announcer answers with ``plan_response``; request and response
frames counted the same way, both directions. ``baseline_ae_*``: the path left when announces are
lost (gossip drops them, issue 13 item 6): each side's anti-entropy pull (``want`` empty, the
boundary of heads, the peer's known ids and exponentially spaced samples), both directions.

Goals (issue 13): N = 100k, K = 1: ≤ 4 round trips and ≤ 4 KB; K = 1,000: reconciliation bytes
≤ 2 × 32 B × ids (``goal_reconcile_bytes``), the ops on top. ``random_spread_*`` repeats the
session at the set level (no DAG) with the K differences scattered uniformly among the N keys
instead of after a fork, the worst case for RBSR.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from ecac.bench import BenchParams, scenario
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.core.opindex import OpIndex
from ecac.core.rangefp import RangeTree
from ecac.core.snapshot import StoreSnapshot, take_snapshot
from ecac.sync.coordinator import SyncConfig, SyncCoordinator, local_announce
from ecac.sync.effects import CommitOps, CommitOutcome, SendRequest
from ecac.sync.reconcile import Reconciler
from ecac.sync.syncserve import plan_response
from ecac.sync.wire import FRAME_HEADER, OpBytes, op_frame_size
from ecac.testing.workloads import gen_hb_chain

__all__ = ["Side", "bench_reconcile", "random_spread", "run_reconcile"]


@dataclass
class Side:
    """One node's store for the benchmark: an index, its op bytes, a signing key."""

    name: str
    sk: SigningKey
    index: OpIndex = field(default_factory=OpIndex)
    ops: dict[bytes, Op] = field(default_factory=dict)
    seq: int = 0

    def add(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if op.op_id not in self.ops:
                self.ops[op.op_id] = op
                self.index.add(op.op_id, op.parents, op.sort_key())

    def snapshot(self) -> StoreSnapshot:
        self.seq += 1
        return take_snapshot(self.index, self.seq)


def _fork(seed: int, label: bytes, parent: bytes, n: int, start_ms: int) -> list[Op]:
    sk = key_pair(seed, label)
    out: list[Op] = []
    prev = parent
    for i in range(n):
        op = make_op(sk, (prev,), Hlc(start_ms + i, 0, 7), Data("mv:o:y", label + b"%d" % i))
        out.append(op)
        prev = op.op_id
    return out


def _framed(body_len: int) -> int:
    return FRAME_HEADER + body_len


def _drive(coord: SyncCoordinator, effects: list[Any], server: Side, client: Side) -> tuple[int, int, int]:
    """Carry out the coordinator's effects against ``server`` (requests answered by ``plan_response``,
    commits into ``client``) until none is left: ``(requests, bytes sent, bytes received)``."""
    now = 1.0
    requests = sent = recv = 0
    pending = list(effects)
    while pending:
        e = pending.pop(0)
        if isinstance(e, SendRequest):
            requests += 1
            sent += len(e.frame())
            plan = plan_response(server.index, server.snapshot(), e.request)
            bodies = [OpBytes(server.ops[x].cbor).encode() for x in plan.ids] + [plan.trailer.encode()]
            recv += sum(_framed(len(body)) for body in bodies)
            pending += coord.frames_received(e.request_id, bodies, now)
        elif isinstance(e, CommitOps):
            stored = tuple(op.op_id for op in e.ops if op.op_id not in client.ops)
            client.add(e.ops)
            outcome = CommitOutcome(e.commit_id, stored=stored, duplicates=len(e.ops) - len(stored))
            pending += coord.commit_finished(outcome, client.snapshot(), now)
        if requests > 10_000:
            raise EcacError("bench: the fetch did not finish")
    return requests, sent, recv


def _session(a: RangeTree, b: RangeTree) -> tuple[Reconciler, Reconciler, int, int, int]:
    ra, rb = Reconciler(a), Reconciler(b)
    first = ra.start()
    msg: bytes | None = first
    frames = 1
    a_to_b = _framed(len(first))
    b_to_a = 0
    side, from_a = rb, True
    while msg is not None:
        msg = side.receive(msg)
        from_a = not from_a
        if msg is not None:
            frames += 1
            if from_a:
                a_to_b += _framed(len(msg))
            else:
                b_to_a += _framed(len(msg))
        side = ra if side is rb else rb
    return ra, rb, frames, a_to_b, b_to_a


def random_spread(n: int, k: int, seed: int) -> dict[str, Any]:
    """The same session over sets of keys whose k differences are scattered uniformly (no DAG)."""
    rng = random.Random(seed)
    keys = [(1000 + i, 0, 1, rng.randbytes(32)) for i in range(n + k)]
    diff = set(rng.sample(range(n + k), k))
    a = [x for i, x in enumerate(keys) if i not in diff or i % 2]
    b = [x for i, x in enumerate(keys) if i not in diff or not i % 2]
    ra, rb, frames, ab, ba = _session(RangeTree.from_keys(a), RangeTree.from_keys(b))
    if len(ra.need) + len(rb.need) != k:
        raise EcacError("bench: the random-spread session missed differences")
    return {
        "random_spread_round_trips": (frames + 1) // 2,
        "random_spread_bytes": ab + ba,
        "random_spread_bytes_a_to_b": ab,
        "random_spread_bytes_b_to_a": ba,
        "random_spread_ids_found": len(ra.need) + len(rb.need),
        "random_spread_complete": ra.complete and rb.complete,
    }


def run_reconcile(n: int, k: int, seed: int) -> dict[str, Any]:
    if n < 1:
        raise EcacError("the reconcile scenario needs --ops of at least 1")
    if k < 0:
        raise EcacError("--diff must not be negative")
    shared = gen_hb_chain(seed, n)
    head = shared[-1].op_id
    top = 1000 + n + 10
    only_a = _fork(seed, b"partition-a", head, (k + 1) // 2, top)
    only_b = _fork(seed, b"partition-b", head, k // 2, top)
    a = Side("A", key_pair(seed, b"node-a"))
    b = Side("B", key_pair(seed, b"node-b"))
    a.add(shared + only_a)
    b.add(shared + only_b)
    snap_a, snap_b = a.snapshot(), b.snapshot()
    ids = len(only_a) + len(only_b)

    # --- reconciliation, then the fetch of what each side found it lacks
    t0 = time.perf_counter()
    ra, rb, frames, rec_ab, rec_ba = _session(snap_a.ranges, snap_b.ranges)
    rec_s = time.perf_counter() - t0
    if set(ra.need) != {op.op_id for op in only_b} or set(rb.need) != {op.op_id for op in only_a}:
        raise EcacError("bench: reconciliation did not find exactly the differing ops")
    fa, fb = Side("A'", a.sk), Side("B'", b.sk)
    fa.add(list(a.ops.values()))
    fb.add(list(b.ops.values()))
    fetch = {"requests": 0, "bytes": 0}
    t1 = time.perf_counter()
    for client, server, need in ((fa, fb, ra.need), (fb, fa, rb.need)):
        coord = SyncCoordinator(client.sk, client.index, SyncConfig(), client.snapshot())
        coord.peer_connected(server.name, 0.0)
        effects = coord.reconciled(server.name, need, 0.0)
        reqs, sent, recv = _drive(coord, effects, server, client)
        fetch["requests"] += reqs
        fetch["bytes"] += sent + recv
    fetch_s = time.perf_counter() - t1
    if fa.index.complete_count() != n + ids or fb.index.complete_count() != n + ids:
        raise EcacError("bench: the fetch after reconciliation did not bring both sides to the union")

    # --- baseline: announce (heads + bloom) -> planned request -> response, both ways
    ba, bb = Side("A", a.sk), Side("B", b.sk)
    ba.add(list(a.ops.values()))
    bb.add(list(b.ops.values()))
    base = {"requests": 0, "bytes": 0, "announce": 0}
    t2 = time.perf_counter()
    for client, server in ((bb, ba), (ba, bb)):
        sa = local_announce(server.snapshot(), server.sk)
        base["announce"] += len(sa.encode())
        coord = SyncCoordinator(client.sk, client.index, SyncConfig(), client.snapshot())
        coord.peer_connected(server.name, 0.0)
        effects = coord.announce_received(server.name, sa, None, 0.0)
        reqs, sent, recv = _drive(coord, effects, server, client)
        base["requests"] += reqs
        base["bytes"] += sent + recv
    base_s = time.perf_counter() - t2
    if ba.index.complete_count() != n + ids or bb.index.complete_count() != n + ids:
        raise EcacError("bench: the baseline did not bring both sides to the union")

    # --- baseline when announces are lost: the anti-entropy pull (want = [], boundary), both ways
    ea, eb = Side("A", a.sk), Side("B", b.sk)
    ea.add(list(a.ops.values()))
    eb.add(list(b.ops.values()))
    ae = {"requests": 0, "bytes": 0}
    for client, server in ((eb, ea), (ea, eb)):
        coord = SyncCoordinator(client.sk, client.index, SyncConfig(), client.snapshot())
        coord.peer_connected(server.name, 0.0)
        reqs, sent, recv = _drive(coord, coord.anti_entropy_tick(0.0), server, client)
        ae["requests"] += reqs
        ae["bytes"] += sent + recv
    if ea.index.complete_count() != n + ids or eb.index.complete_count() != n + ids:
        raise EcacError("bench: the anti-entropy baseline did not bring both sides to the union")

    op_bytes = sum(op_frame_size(op.cbor) for op in only_a + only_b)
    rec_bytes = rec_ab + rec_ba
    out: dict[str, Any] = {
        "scenario": "reconcile",
        "ops": n,
        "diff": k,
        "only_a": len(only_a),
        "only_b": len(only_b),
        "seed": seed,
        "round_trips": (frames + 1) // 2,
        "frames": frames,
        "reconcile_bytes": rec_bytes,
        "reconcile_bytes_a_to_b": rec_ab,
        "reconcile_bytes_b_to_a": rec_ba,
        "ids_found": len(ra.need) + len(rb.need),
        "reconcile_ms": round(rec_s * 1000, 1),
        "fetch_requests": fetch["requests"],
        "fetch_bytes": fetch["bytes"],
        "fetch_ms": round(fetch_s * 1000, 1),
        "bytes_total": rec_bytes + fetch["bytes"],
        "op_frame_bytes": op_bytes,
        "goal_reconcile_bytes": 2 * 32 * ids if ids else None,
        "reconcile_bytes_per_id": round(rec_bytes / ids, 1) if ids else None,
        "baseline_bytes_total": base["bytes"] + base["announce"],
        "baseline_announce_bytes": base["announce"],
        "baseline_requests": base["requests"],
        "baseline_ms": round(base_s * 1000, 1),
        "baseline_ae_bytes_total": ae["bytes"],
        "baseline_ae_requests": ae["requests"],
        "complete": ra.complete and rb.complete,
    }
    if k:
        out.update(random_spread(n, k, seed))
    return out


@scenario("reconcile", "--ops shared ops, --diff forked after a partition: set reconciliation vs heads/bloom")
def bench_reconcile(params: BenchParams) -> dict[str, Any]:
    return run_reconcile(params.ops, params.diff, params.seed)


if __name__ == "__main__":  # the set-level session alone, for sizes the DAG setup makes slow
    import json
    import sys

    print(
        json.dumps(
            {
                "ops": int(sys.argv[1]),
                "diff": int(sys.argv[2]),
                **random_spread(int(sys.argv[1]), int(sys.argv[2]), 1),
            }
        )
    )
