"""Server side of ``/ecac/sync/1``: compute the response set and cut it into write batches.

Given a ``SyncRequest`` (store §2.3.4) the server sends

    S = (ancestors-or-self of the wanted ids that are complete here — or of every
         complete op when ``want`` is empty)
        minus (ancestors-or-self of the boundary ids that are complete here)

parent-first, capped at ``min(max_ops, server cap)``, followed by the trailer ``End``
(all of S sent) or ``More`` (cut by the cap).

**What it reads.** Point facts (``contains``, ``is_complete``, ``parents``, ``gen``,
``key``) come from ``IndexFacts``, the live index: they are monotone, so a walk that
meets an op committed after its snapshot only sees more of the same history. Whole
views come from the ``StoreSnapshot`` the store's writer published: its heads seed an
anti-entropy answer (``want`` empty) and build a requester's boundary. Op bytes are
read through a loader the I/O layer passes in. Nothing here iterates the live index,
touches a store or holds a lock.

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
is never buffered whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ecac.core.errors import StoreError
from ecac.core.snapshot import IndexFacts, StoreSnapshot
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

#: reads the stored canonical bytes of each id, in order (the I/O layer's adapter; may block)
LoadCbor = Callable[[Sequence[bytes]], list[bytes]]

_WANT = 1
_HAVE = 2


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """What one response will carry: ``ids`` (parent-first), the trailer, and walk statistics.

    ``partial``: the walk was seeded with fewer heads than the store has (an anti-entropy
    answer from a store with more than ``SNAPSHOT_HEADS_MAX`` heads), so the trailer is
    ``More`` even when every op of S fitted under the cap.
    """

    ids: tuple[bytes, ...]
    trailer: End | More
    total: int  # |S| before the cap
    visited: int  # ops the paint-down walk popped
    partial: bool = False


def response_set(
    facts: IndexFacts, snapshot: StoreSnapshot, want: Sequence[bytes], boundary: Sequence[bytes]
) -> tuple[list[bytes], int]:
    """S in ``(gen, sort key)`` order, and the number of ops the walk visited.

    With ``want`` empty the walk is seeded with ``snapshot.heads`` (every complete op of
    the snapshot is an ancestor-or-self of one of them, when the snapshot lists them all).
    """
    gen = facts.gen
    parents = facts.parents
    complete = facts.is_complete
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

    seeds: Sequence[bytes] = want if want else snapshot.heads
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
    key = facts.key
    out.sort(key=lambda x: (gen(x), key(x)))
    return out, visited


def plan_response(
    facts: IndexFacts, snapshot: StoreSnapshot, request: SyncRequest, server_max_ops: int = SERVER_MAX_OPS
) -> ResponsePlan:
    """The ids to send for ``request`` and its trailer (``More`` when the cap cut S). Pure, CPU-bound."""
    if server_max_ops < 1:
        raise ValueError("server_max_ops must be at least 1")
    cap = server_max_ops if request.max_ops == 0 else min(request.max_ops, server_max_ops)
    s, visited = response_set(facts, snapshot, request.want, request.boundary)
    partial = not request.want and snapshot.head_count > len(snapshot.heads)
    if len(s) <= cap:
        return ResponsePlan(tuple(s), MORE if partial else END, len(s), visited, partial)
    return ResponsePlan(tuple(s[:cap]), MORE, len(s), visited, partial)


def response_batches(
    plan: ResponsePlan, load_cbor: LoadCbor, batch_ops: int = BATCH_OPS, max_frame: int = MAX_FRAME
) -> Iterator[tuple[bytes, int, int]]:
    """The response's ops as ``(blob, ops, op bytes)`` per batch of at most ``batch_ops`` frames, without
    the trailer (``response_blobs`` appends it; a server under a quota may stop early and send ``More``).

    Loads op bytes lazily, one batch per ``load_cbor`` call (run the iteration in a worker
    thread when the loader reads a disk). An op too large for ``max_frame`` raises
    ``ProtocolError`` (the I/O layer resets the stream); local writes refuse such ops. A
    loader that returns a different number of blobs than ids raises ``StoreError``.
    """
    if batch_ops < 1:
        raise ValueError("batch_ops must be at least 1")
    ids = plan.ids
    for start in range(0, len(ids), batch_ops):
        chunk = ids[start : start + batch_ops]
        blobs = load_cbor(chunk)
        if len(blobs) != len(chunk):
            raise StoreError(f"the op loader returned {len(blobs)} ops for {len(chunk)} ids")
        parts = [encode_frame(OpBytes(data).encode(), max_frame) for data in blobs]
        yield b"".join(parts), len(chunk), sum(len(b) for b in blobs)


def response_blobs(
    plan: ResponsePlan, load_cbor: LoadCbor, batch_ops: int = BATCH_OPS, max_frame: int = MAX_FRAME
) -> Iterator[bytes]:
    """The response as coalesced blobs of at most ``batch_ops`` frames; the last one ends with the trailer.

    See ``response_batches`` (lazy loading, errors).
    """
    trailer = encode_frame(plan.trailer.encode(), max_frame)
    batches = response_batches(plan, load_cbor, batch_ops, max_frame)
    prev: bytes | None = None
    for blob, _, _ in batches:
        if prev is not None:
            yield prev
        prev = blob
    yield trailer if prev is None else prev + trailer


def serve_sync(
    facts: IndexFacts,
    snapshot: StoreSnapshot,
    load_cbor: LoadCbor,
    request_body: bytes,
    *,
    server_max_ops: int = SERVER_MAX_OPS,
    batch_ops: int = BATCH_OPS,
    max_frame: int = MAX_FRAME,
) -> Iterator[bytes]:
    """Decode one request frame body and yield the response blobs (decode errors raise first)."""
    request = SyncRequest.decode(request_body)
    plan = plan_response(facts, snapshot, request, server_max_ops)
    return response_blobs(plan, load_cbor, batch_ops, max_frame)


def serve_fetch_missing(
    facts: IndexFacts, snapshot: StoreSnapshot, load_cbor: LoadCbor, request_body: bytes
) -> bytes:
    """The reference's ``/ecac/fetch/1`` answer: one un-prefixed RpcFrame (first stored id, or End).

    ``snapshot`` is not needed (stored is a point fact); it keeps the servers' signatures alike.
    """
    del snapshot
    fm = FetchMissing.decode(request_body)
    for op_id in fm.want:
        if facts.contains(op_id):
            (data,) = load_cbor((op_id,))
            return OpBytes(data).encode()
    return END.encode()


# --------------------------------------------------------------------------- requester side


def build_boundary(
    snapshot: StoreSnapshot,
    facts: IndexFacts,
    extra: Sequence[bytes] = (),
    max_heads: int = MAX_BOUNDARY_HEADS,
    max_total: int = MAX_BOUNDARY,
) -> tuple[bytes, ...]:
    """The requester's boundary: heads (≤ 128, newest first), ``extra``, then exponentially spaced samples.

    Heads and samples (the ids at ``boundary_positions(complete_count)`` of the order) come
    from the snapshot. The samples let a server that does not know the requester's newest
    ops still find the shared history, so it does not resend everything (store §2.3.4).
    ``extra`` are held ids the requester knows the server would otherwise resend (the
    duplicates of the previous response of a ``More`` chain); only complete ones are used.
    Every id is complete: the snapshot's by construction, ``extra`` by the monotone facts.
    """
    if not 0 <= max_heads <= max_total <= MAX_BOUNDARY:
        raise ValueError(f"need 0 <= max_heads <= max_total <= {MAX_BOUNDARY}")
    out = dict.fromkeys(snapshot.top_heads(max_heads))
    for op_id in extra:
        if len(out) >= max_total:
            break
        if facts.is_complete(op_id):
            out.setdefault(op_id)
    for op_id in snapshot.samples:
        if len(out) >= max_total:
            break
        out.setdefault(op_id)
    return tuple(out)
