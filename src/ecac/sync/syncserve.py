"""Server side of ``/ecac/sync/1``: compute the response set and cut it into write batches.

Given a ``SyncRequest`` (store §2.3.4) the server sends

    S = (ancestors-or-self of the wanted ids that are complete here — or of every
         complete op when ``want`` is empty)
        minus (ancestors-or-self of the boundary ids that are complete here)

parent-first, capped at ``min(max_ops, server cap)``, followed by the trailer ``End``
(all of S sent) or ``More`` (cut by the cap).

**Order.** S is sent sorted by ``(gen, hlc sort key)`` where ``gen = 1 + max(gen(parents))``
(0 for roots) and the sort key is core §6's ``(physical_ms, logical, node_id, op_id)``.
A parent's gen is strictly smaller than its child's, so the order is parent-first and
every prefix of it is closed under "parent in S". Unlike topo positions, gens never
change when new ops arrive, so the walk below needs no global order.

**Paint-down walk.** A max-heap on ``(gen, id)`` is seeded with the wanted ids (colour
*want*) and the complete boundary ids (colour *have*). Popping the highest entry decides
that op: all its descendants in the walk have larger gens and were popped already, so
its colour is final. A *have* op is excluded and paints its parents *have*; a
*want*-only op joins S and paints its parents *want*. The walk stops as soon as no
*want*-only entry is left. Its cost is proportional to the ops it visits (S plus the
*have* region above S's lowest op), not to the store, which is what makes a
boundary close to the heads cheap. Memory is O(visited).

Batches: at most ``BATCH_OPS`` (512) frames per blob; the I/O layer writes each blob
with one stream write and waits for it (transport back-pressure), so a large response
is never buffered whole. Pure: reads the store, no I/O of its own, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ecac.store.memory import OpStore
from ecac.sync.wire import (
    END,
    MAX_BOUNDARY,
    MAX_BOUNDARY_HEADS,
    MAX_FRAME,
    MORE,
    End,
    FetchMissing,
    More,
    OpBytes,
    SyncRequest,
    encode_frame,
)

#: the server's cap on ops per response (store §2.3.9)
SERVER_MAX_OPS = 65_536
#: ops per coalesced stream write and per commit batch (store §2.3.9)
BATCH_OPS = 512

_WANT = 1
_HAVE = 2

SortKey = tuple[int, int, int, bytes]


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """What one response will carry: ``ids`` (parent-first), the trailer, and walk statistics."""

    ids: tuple[bytes, ...]
    trailer: End | More
    total: int  # |S| before the cap
    visited: int  # ops the paint-down walk popped


def _key_fn(store: OpStore):
    """The store's sort-key lookup: the index's when it has one, else via the decoded op."""
    index = getattr(store, "index", None)
    key = getattr(index, "key", None)
    if key is not None:
        return key

    def from_op(op_id: bytes) -> SortKey:
        op = store.get_op(op_id)
        if op is None:  # pragma: no cover - the walk only visits complete ops
            raise KeyError(op_id)
        return op.sort_key()

    return from_op


def response_set(store: OpStore, want: Sequence[bytes], boundary: Sequence[bytes]) -> tuple[list[bytes], int]:
    """S in ``(gen, sort key)`` order, and the number of ops the walk visited."""
    gen = store.gen
    parents = store.parents
    complete = store.is_complete
    colour: dict[bytes, int] = {}
    heap: list[tuple[int, bytes]] = []
    want_only = 0

    def paint(x: bytes, c: int) -> None:
        nonlocal want_only
        old = colour.get(x)
        if old is None:
            colour[x] = c
            heapq.heappush(heap, (-gen(x), x))
            if c == _WANT:
                want_only += 1
        elif old | c != old:
            colour[x] = old | c
            if old == _WANT:
                want_only -= 1

    seeds: Iterable[bytes] = want if want else store.heads(max(1, store.complete_count()))
    for x in seeds:
        if complete(x):
            paint(x, _WANT)
    for x in boundary:
        if complete(x):
            paint(x, _HAVE)
    out: list[bytes] = []
    visited = 0
    while want_only:
        _, x = heapq.heappop(heap)
        visited += 1
        c = colour[x]
        if c == _WANT:
            want_only -= 1
            out.append(x)
        for p in parents(x):
            paint(p, c)
    key = _key_fn(store)
    out.sort(key=lambda x: (gen(x), key(x)))
    return out, visited


def plan_response(store: OpStore, request: SyncRequest, server_max_ops: int = SERVER_MAX_OPS) -> ResponsePlan:
    """The ids to send for ``request`` and its trailer (``More`` when the cap cut S)."""
    if server_max_ops < 1:
        raise ValueError("server_max_ops must be at least 1")
    cap = server_max_ops if request.max_ops == 0 else min(request.max_ops, server_max_ops)
    s, visited = response_set(store, request.want, request.boundary)
    if len(s) <= cap:
        return ResponsePlan(tuple(s), END, len(s), visited)
    return ResponsePlan(tuple(s[:cap]), MORE, len(s), visited)


def response_blobs(
    store: OpStore, plan: ResponsePlan, batch_ops: int = BATCH_OPS, max_frame: int = MAX_FRAME
) -> Iterator[bytes]:
    """The response as coalesced blobs of at most ``batch_ops`` frames; the last one ends with the trailer.

    Reads op bytes lazily, one batch at a time. An op too large for ``max_frame`` raises
    ``ProtocolError`` (the I/O layer resets the stream); local writes refuse such ops.
    """
    if batch_ops < 1:
        raise ValueError("batch_ops must be at least 1")
    ids = plan.ids
    trailer = encode_frame(plan.trailer.encode(), max_frame)
    if not ids:
        yield trailer
        return
    for start in range(0, len(ids), batch_ops):
        chunk = ids[start : start + batch_ops]
        parts = [encode_frame(OpBytes(data).encode(), max_frame) for data in store.load_ops_cbor(chunk)]
        if start + batch_ops >= len(ids):
            parts.append(trailer)
        yield b"".join(parts)


def serve_sync(
    store: OpStore,
    request_body: bytes,
    *,
    server_max_ops: int = SERVER_MAX_OPS,
    batch_ops: int = BATCH_OPS,
    max_frame: int = MAX_FRAME,
) -> Iterator[bytes]:
    """Decode one request frame body and yield the response blobs (decode errors raise first)."""
    request = SyncRequest.decode(request_body)
    plan = plan_response(store, request, server_max_ops)
    return response_blobs(store, plan, batch_ops, max_frame)


def serve_fetch_missing(store: OpStore, request_body: bytes) -> bytes:
    """The reference's ``/ecac/fetch/1`` answer: one un-prefixed RpcFrame (first held id, or End)."""
    fm = FetchMissing.decode(request_body)
    for op_id in fm.want:
        data = store.get_op_bytes(op_id)
        if data is not None:
            return OpBytes(data).encode()
    return END.encode()


# --------------------------------------------------------------------------- requester side


def boundary_positions(n: int) -> list[int]:
    """Topo positions sampled for a boundary: n−2, n−3, n−5, n−9, …, n−1−2^i (≥ 0)."""
    out: list[int] = []
    step = 1
    while n - 1 - step >= 0:
        out.append(n - 1 - step)
        step *= 2
    return out


def build_boundary(
    store: OpStore,
    extra: Sequence[bytes] = (),
    max_heads: int = MAX_BOUNDARY_HEADS,
    max_total: int = MAX_BOUNDARY,
) -> tuple[bytes, ...]:
    """The requester's boundary: heads (≤ 128, newest first), ``extra``, then exponentially spaced samples.

    The samples let a server that does not know the requester's newest ops still find
    the shared history, so it does not resend everything (store §2.3.4). ``extra`` are
    held ids the requester knows the server would otherwise resend (the duplicates of
    the previous response of a ``More`` chain); only complete ones are used.
    """
    if max_heads > max_total:
        raise ValueError("max_heads must not exceed max_total")
    out = dict.fromkeys(store.heads(max_heads))
    for op_id in extra:
        if len(out) >= max_total:
            break
        if store.is_complete(op_id):
            out.setdefault(op_id)
    n = store.complete_count()
    positions = boundary_positions(n)
    if positions and len(out) < max_total:
        for op_id in _topo_at(store, positions):
            if len(out) >= max_total:
                break
            out.setdefault(op_id)
    return tuple(out)


def _topo_at(store: OpStore, positions: Sequence[int]) -> list[bytes]:
    index = getattr(store, "index", None)
    topo_slice = getattr(index, "topo_slice", None)
    if topo_slice is not None:
        return [topo_slice(p, p + 1)[0] for p in positions]
    ids = store.topo_ids()
    return [ids[p] for p in positions]
