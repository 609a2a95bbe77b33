"""Deterministic demo ops for ``inject-demo-ops`` (offline into a store, or live through a node).

One generator serves both paths so that the same store state and seed always yield the
same ops. Pure: the caller passes the parents and the largest HLC it has seen; no clock.

Layout of an injection of ``count`` ops with ``seed``:

* author key ``key_pair(seed, b"demo")``; HLC node id ``seed mod 2^32``;
* op 0 has the current ``heads(16)`` as parents; op i > 0 has op i−1 as its only parent
  (a chain, so a batch arrives at peers as one parent-first run);
* HLCs: starting from ``Hlc(max_physical_seen, 0, node)``, each op takes
  ``tick_local(max_physical_seen + 1)``, i.e. ``{max+1, 0}``, ``{max+1, 1}``, … — later
  than every op already stored, with no wall clock;
* payload ``Data("mv:c<seed % 8>:param<i % 4>", b"demo-<seed>-<i>")``: multi-value
  registers, four fields per controller object, so the state stays small and every op
  is applied (no policy involved while the store has no Grant/Revoke).
"""

from __future__ import annotations

from collections.abc import Sequence

from ecac.core.errors import EcacError
from ecac.core.hlc import U32_MAX, U64_MAX, Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.store.memory import OpStore
from ecac.sync.wire import ANNOUNCE_HEADS, MAX_FRAME, op_frame_size

#: the most ops one injection may create (one atomic store batch)
MAX_DEMO_OPS = 1_000_000
DEMO_LABEL = b"demo"


def check_demo_args(count: int, seed: int) -> None:
    """Refuse counts and seeds the generator cannot use (``EcacError`` with the limit)."""
    if type(count) is not int or not 1 <= count <= MAX_DEMO_OPS:
        raise EcacError(f"count must be an integer between 1 and {MAX_DEMO_OPS}")
    if type(seed) is not int or not 0 <= seed <= U64_MAX:
        raise EcacError("seed must be an integer between 0 and 2^64-1")


def demo_ops(parents: Sequence[bytes], max_physical_seen: int, count: int, seed: int) -> list[Op]:
    """``count`` signed, chained demo ops (see the module docstring)."""
    check_demo_args(count, seed)
    if max_physical_seen >= U64_MAX:
        raise EcacError("the store holds an op with the largest possible HLC; cannot order new ops after it")
    sk = key_pair(seed, DEMO_LABEL)
    now = max_physical_seen + 1
    hlc = Hlc(max_physical_seen, 0, seed & U32_MAX)
    prev: tuple[bytes, ...] = tuple(parents)
    out: list[Op] = []
    for i in range(count):
        hlc = hlc.tick_local(now)
        op = make_op(sk, prev, hlc, Data(f"mv:c{seed % 8}:param{i % 4}", f"demo-{seed}-{i}".encode()))
        check_frame(op)
        out.append(op)
        prev = (op.op_id,)
    return out


def check_frame(op: Op, max_frame: int = MAX_FRAME) -> None:
    """Refuse an op whose ``OpBytes`` frame would exceed ``max_frame`` (it could never propagate)."""
    size = op_frame_size(op.cbor)
    if size > max_frame:
        raise EcacError(
            f"op {op.op_id.hex()} would need a {size}-byte frame, over the {max_frame}-byte MAX_FRAME"
        )


def max_physical_ms(store: OpStore) -> int:
    """The largest HLC ``physical_ms`` among the store's ops (0 for an empty store). O(ops)."""
    index = getattr(store, "index", None)
    if index is not None:
        key = index.key
        ids = list(store.topo_ids()) + list(index.pending_ids())
        return max((key(x)[0] for x in ids), default=0)
    best = 0
    for op in store.iter_topo_ops():
        best = max(best, op.hlc.physical_ms)
    return best


def demo_ops_for(store: OpStore, count: int, seed: int) -> list[Op]:
    """Demo ops continuing ``store``: parents ``heads(16)``, HLCs after every stored op."""
    check_demo_args(count, seed)
    return demo_ops(store.heads(ANNOUNCE_HEADS), max_physical_ms(store), count, seed)
