"""The op-store interface, the ingest validation shared by every store, and an in-memory store.

``OpStore`` is the interface that sync, the network node and replay type against; the
RocksDB ``ecac.store.rocks.Store`` and ``MemoryOpStore`` both implement it on top of one
``OpIndex``. Both validate ops exactly as store §1.4 says (strict decode, op id
recomputed, signature, canonical bytes), verify each op once at ingest, accept orphans,
and treat a second copy of a stored id as a duplicate (the first copy wins).
"""

from __future__ import annotations

import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ecac.core.audit import AuditSink, IngestedOp
from ecac.core.codec import loads
from ecac.core.errors import DecodeError, StoreError
from ecac.core.hlc import Hlc
from ecac.core.op import REASON_ID_MISMATCH, Op, header_cbor_of, op_id_of
from ecac.core.opcodec import decode_op, decode_op_with_header, op_from_obj
from ecac.core.opindex import OpIndex
from ecac.core.profile import REFERENCE_PROFILE, Profile, admission_code, admit_batch, store_profile
from ecac.core.sig import check_sigs, sig_items
from ecac.core.snapshot import IndexFacts, StoreSnapshot, take_snapshot
from ecac.store.bulk import bulk_load
from ecac.store.verifypool import SigCheck, VerifyPool

OnInvalid = Literal["raise", "skip"]

log = logging.getLogger("ecac.store")


@dataclass(frozen=True, slots=True)
class PutRejection:
    """One refused input of ``put_many``: its position, its embedded id when it decoded, why.

    ``op`` is the decoded op (None when it did not decode) and ``sig_ok`` whether its id and
    signature verified (a non-canonical encoding of a valid op is refused with both good):
    the audit trail logs every decoded input, refused or not (core §14.1). ``reason``: the
    strict admission code (``hlc_regression``, ``invalid_ancestor``, …) when admission refused
    it under the strict profile, else None.
    """

    index: int
    op_id: bytes | None
    message: str
    op: Op | None = field(default=None, compare=False, repr=False)
    sig_ok: bool = field(default=False, compare=False)
    reason: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome of ``put_many``.

    ``stored``: ids newly written, in input order. ``duplicates``: inputs whose id was
    already stored (or repeated within the call). ``rejected``: refused inputs (only with
    ``on_invalid="skip"``). ``completed``: ids that became complete (all ancestors
    present) because of this call, parent-first.
    """

    stored: list[bytes]
    duplicates: int
    rejected: list[PutRejection] = field(default_factory=list)
    completed: list[bytes] = field(default_factory=list)


class PutRejectedError(StoreError):
    """``put`` refused an op; the message is one of store §1.4's."""

    def __init__(self, rejection: PutRejection) -> None:
        self.rejection = rejection
        super().__init__(rejection.message)


@runtime_checkable
class OpStore(Protocol):
    """What sync, the network node and replay need from an op store (store §1.4–§1.8)."""

    def contains(self, op_id: bytes) -> bool: ...
    def get_op_bytes(self, op_id: bytes) -> bytes | None: ...
    def get_op(self, op_id: bytes) -> Op | None: ...
    def load_ops_cbor(self, ids: Iterable[bytes]) -> list[bytes]: ...
    def is_complete(self, op_id: bytes) -> bool: ...
    def gen(self, op_id: bytes) -> int: ...
    def parents(self, op_id: bytes) -> tuple[bytes, ...]: ...
    def heads(self, k: int) -> list[bytes]: ...
    def topo_ids(self) -> list[bytes]: ...
    def iter_topo_ops(self, start: int = 0) -> Iterator[Op]: ...
    def recent_bloom(self, n: int) -> bytes: ...
    def missing_parents(self) -> set[bytes]: ...
    def complete_count(self) -> int: ...
    def op_count(self) -> int: ...
    def put(self, op: bytes | Op) -> bytes: ...
    def put_many(self, items: Sequence[bytes | Op], on_invalid: OnInvalid = "raise") -> PutResult: ...
    def put_stream(
        self, items: Iterable[bytes | Op], batch: int = ..., on_invalid: OnInvalid = "raise"
    ) -> Iterator[PutResult]: ...


# --------------------------------------------------------------------------- validation


def _decode_for_put(data: bytes) -> tuple[Op, bytes, bool]:
    """Decode put input: ``(op, header_cbor, canonical)``; DecodeError as ``decode Op CBOR: …``.

    Canonical input (the normal case) takes one strict decode that also yields the header
    bytes to hash. Anything else is decoded again leniently, so that §1.4's checks still
    run in its order (an invalid signature is reported before non-canonical bytes).
    """
    try:
        op, header = decode_op_with_header(data)
        return op, header, True
    except DecodeError:
        pass
    try:
        op = op_from_obj(loads(data, "op"))
    except DecodeError as e:
        raise DecodeError(f"decode Op CBOR: {e}") from None
    return op, op.header_bytes(), False


_CHUNK = 512
#: ``put_stream``'s default batch: one synced write per this many ops
STREAM_BATCH = 1024


def _check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', not {on_invalid!r}")


def validate_ops(
    items: Sequence[bytes | Op],
    stored_bytes: Callable[[bytes], bytes | None] = lambda _i: None,
    pool: VerifyPool | None = None,
) -> tuple[list[tuple[int, Op, bool]], list[PutRejection]]:
    """Validate put input per store §1.4; each op is verified once.

    Returns ``(ok, rejected)``. ``ok`` holds ``(index, op, known)`` for every input that
    passed, in input order; ``known`` is true when the store already holds exactly these
    bytes, in which case the op was not re-verified (the stored copy was verified at
    ingest and identical bytes get the identical verdict). An ``Op`` from ``ecac.core.op`` (made
    or strictly decoded) is not decoded again: its ``cbor`` is the canonical encoding of its
    fields by construction, and its id is checked over the header cut from those bytes.

    Decoding (Python, holds the GIL) of one chunk overlaps signature checks of the
    previous chunk (libsodium without the GIL, on ``pool``'s threads; without a pool, inline).
    """
    ok: list[tuple[int, Op, bool]] = []
    rejected: list[PutRejection] = []
    prev: _Decoded | None = None
    for lo in range(0, len(items), _CHUNK):
        cur = _decode_chunk(items[lo : lo + _CHUNK], lo, stored_bytes, pool)  # while prev's signatures verify
        if prev is not None:
            prev.verdicts(ok, rejected)
        prev = cur
    if prev is not None:
        prev.verdicts(ok, rejected)
    ok.sort(key=lambda t: t[0])
    rejected.sort(key=lambda r: r.index)
    return ok, rejected


@dataclass(slots=True)
class _Decoded:
    """A chunk of put input after decoding and the id checks; its signatures are being verified.

    ``ok``/``rejected`` hold the verdicts known already; ``pending`` the ``(index, op,
    canonical)`` entries whose signature verdicts ``sigs`` (on the verify threads) will give.
    """

    ok: list[tuple[int, Op, bool]]
    rejected: list[PutRejection]
    pending: list[tuple[int, Op, bool]]
    sigs: SigCheck | None

    def verdicts(self, ok: list[tuple[int, Op, bool]], rejected: list[PutRejection]) -> None:
        """Wait for the signature checks and add every verdict to ``ok`` / ``rejected``."""
        ok += self.ok
        rejected += self.rejected
        if self.sigs is None:
            return
        for (i, op, canonical), sig_good in zip(self.pending, self.sigs.result(), strict=True):
            if not sig_good:
                rejected.append(PutRejection(i, op.op_id, f"invalid signature for op {op.op_id.hex()}", op))
            elif not canonical:
                msg = f"non-canonical op encoding for {op.op_id.hex()}"
                rejected.append(PutRejection(i, op.op_id, msg, op, sig_ok=True))
            else:
                ok.append((i, op, False))


def _decode_chunk(
    items: Sequence[bytes | Op],
    base: int,
    stored_bytes: Callable[[bytes], bytes | None],
    pool: VerifyPool | None,
) -> _Decoded:
    """Decode ``items`` (input indexes from ``base``), check ids, and submit their signature checks."""
    out = _Decoded([], [], [], None)
    for i, item in enumerate(items, base):
        if isinstance(item, Op) and item.cbor:
            # already decoded (or made) by ecac.core.op: its cbor is the canonical encoding of its
            # fields, so only the id and the signature remain to check (no second decode)
            op, data, header, canonical = item, item.cbor, header_cbor_of(item), True
        else:
            data = item.cbor if isinstance(item, Op) else bytes(item)
            try:
                op, header, canonical = _decode_for_put(data)
            except DecodeError as e:
                out.rejected.append(PutRejection(i, None, str(e)))
                continue
        prev = stored_bytes(op.op_id)
        if prev is not None and prev == data:
            out.ok.append((i, op, True))
        elif op_id_of(header) != op.op_id:
            out.rejected.append(PutRejection(i, op.op_id, REASON_ID_MISMATCH, op))
        else:
            out.pending.append((i, op, canonical))
    if out.pending:
        triples = sig_items(op for _, op, _ in out.pending)
        out.sigs = pool.submit(triples) if pool is not None else SigCheck(check_sigs(triples))
    return out


# --------------------------------------------------------------------------- shared base


class IndexedOpStore(ABC):
    """Put/validation and every index-backed query; subclasses supply storage.

    Subclasses implement ``_read_bytes(id)`` and ``_write(ops)`` (one atomic write of
    all newly accepted ops, which must be durable before it returns). Validation runs
    outside the lock; the duplicate filter, the write and the index update run under
    it, so concurrent callers never write one id twice.

    In a running node one thread writes (``ecac.store.writer.StoreWriter``) and every other
    reader uses its published snapshots and ``facts``; the whole-index queries here
    (``heads``, ``topo_ids``, ``snapshot``, ...) are for single-threaded users (CLI, tests)
    and for the writer's own thread.
    """

    def __init__(self) -> None:
        self._index = OpIndex()
        self._lock = threading.RLock()
        #: verifies the signatures of puts (and of store replays that re-check them); closed with the store
        self.verify_pool = VerifyPool()
        #: where puts log an ``IngestedOp`` per decoded input (core §14.1); None: no auditing
        self.audit: AuditSink | None = None
        self._profile: Profile | None = None  # cached once the store holds ops (it never changes then)
        #: ops refused by admission (``profile.admit_batch``) since the store was opened
        self.admission_refused = 0

    # -- storage hooks
    @abstractmethod
    def _read_bytes(self, op_id: bytes) -> bytes | None:
        """The stored canonical bytes of ``op_id`` (None if absent)."""

    @abstractmethod
    def _write(self, ops: Sequence[Op]) -> None:
        """Persist ``ops`` in one atomic write, durable on return."""

    # -- reads
    @property
    def index(self) -> OpIndex:
        """The in-memory index (read-only use: do not ``add`` to it directly)."""
        return self._index

    @property
    def facts(self) -> IndexFacts:
        """Monotone point queries over the index (``IndexFacts``): safe from any thread."""
        return self._index

    def snapshot(self, seq: int = 0) -> StoreSnapshot:
        """The store's current ``StoreSnapshot`` (single-threaded use, or the writer's thread)."""
        with self._lock:
            return take_snapshot(self._index, seq)

    def contains(self, op_id: bytes) -> bool:
        return self._index.contains(op_id)

    def get_op_bytes(self, op_id: bytes) -> bytes | None:
        return self._read_bytes(op_id) if self._index.contains(op_id) else None

    def get_op(self, op_id: bytes) -> Op | None:
        data = self.get_op_bytes(op_id)
        return None if data is None else decode_op(data)

    def load_ops_cbor(self, ids: Iterable[bytes]) -> list[bytes]:
        """Stored bytes for each id, in the order given; ``missing op <hex>`` otherwise."""
        out: list[bytes] = []
        for op_id in ids:
            data = self.get_op_bytes(op_id)
            if data is None:
                raise StoreError(f"missing op {op_id.hex()}")
            out.append(data)
        return out

    def iter_topo_ops(self, start: int = 0) -> Iterator[Op]:
        """Complete ops from topo position ``start`` on, decoded strictly, streamed."""
        with self._lock:
            ids = self._index.topo_slice(start)
        for op_id in ids:
            op = self.get_op(op_id)
            if op is None:
                raise StoreError(f"missing op {op_id.hex()}")
            yield op

    def is_complete(self, op_id: bytes) -> bool:
        return self._index.is_complete(op_id)

    def gen(self, op_id: bytes) -> int:
        return self._index.gen(op_id)

    def parents(self, op_id: bytes) -> tuple[bytes, ...]:
        return self._index.parents(op_id)

    def heads(self, k: int) -> list[bytes]:
        with self._lock:
            return self._index.heads(k)

    def topo_ids(self) -> list[bytes]:
        with self._lock:
            return self._index.topo_ids()

    def recent_bloom(self, n: int) -> bytes:
        with self._lock:
            return self._index.recent_bloom(n)

    def missing_parents(self) -> set[bytes]:
        with self._lock:
            return self._index.missing_parents()

    def complete_count(self) -> int:
        return self._index.complete_count()

    def op_count(self) -> int:
        return len(self._index)

    def pending_count(self) -> int:
        """Stored ops that still lack an ancestor."""
        return len(self._index) - self._index.complete_count()

    # -- writes
    def put(self, op: bytes | Op) -> bytes:
        """Validate and store one op (store §1.4); returns its id, also for a duplicate."""
        ok, rejected = validate_ops([op], self._stored_bytes, self.verify_pool)
        self._store_validated(ok, rejected, "raise")
        return ok[0][1].op_id

    def put_many(self, items: Sequence[bytes | Op], on_invalid: OnInvalid = "raise") -> PutResult:
        """Validate every item, then write all accepted new ops in ONE atomic batch.

        ``on_invalid="raise"``: the first refused item raises ``PutRejectedError`` and
        nothing is written. ``"skip"``: refused items are reported in ``rejected``.
        """
        _check_on_invalid(on_invalid)
        ok, rejected = validate_ops(items, self._stored_bytes, self.verify_pool)
        return self._store_validated(ok, rejected, on_invalid)

    def put_stream(
        self, items: Iterable[bytes | Op], batch: int = STREAM_BATCH, on_invalid: OnInvalid = "raise"
    ) -> Iterator[PutResult]:
        """``put_many`` over consecutive batches of ``items``, pipelined: yields each batch's result.

        For bulk import. Each batch is one atomic, durable write, as with ``put_many``; the
        signatures of the next batch are verified (libsodium threads) while this one is
        decoded, written and indexed (Python), so both cores stay busy. Rejection indexes
        count from the start of ``items``. With ``"raise"``, the first batch holding a
        refused item raises ``PutRejectedError`` and is not written; the batches before it
        were.
        """
        _check_on_invalid(on_invalid)
        if batch <= 0:
            raise ValueError(f"batch must be positive, not {batch}")
        it = iter(items)
        base = 0
        prev: _Decoded | None = None
        while True:
            part = list(itertools.islice(it, batch))
            with bulk_load():  # a bulk import: the decoded ops are long-lived
                cur = _decode_chunk(part, base, self._stored_bytes, self.verify_pool) if part else None
            base += len(part)
            if prev is not None:
                ok: list[tuple[int, Op, bool]] = []
                rejected: list[PutRejection] = []
                prev.verdicts(ok, rejected)
                yield self._store_validated(ok, rejected, on_invalid)
            if cur is None:
                return
            prev = cur

    def _store_validated(
        self, ok: list[tuple[int, Op, bool]], rejected: list[PutRejection], on_invalid: OnInvalid
    ) -> PutResult:
        """Audit, admit (``profile.admit_batch``), then write the accepted new ops of one validated
        batch atomically (or raise for the first refused input, whatever refused it)."""
        self._audit_ingested(ok, rejected)
        new: list[tuple[int, Op]] = []
        seen: set[bytes] = set()
        dups = 0
        with self._lock:
            for i, op, _ in ok:
                if op.op_id in seen or self._index.contains(op.op_id):
                    dups += 1
                else:
                    seen.add(op.op_id)
                    new.append((i, op))
            if rejected and on_invalid == "raise":  # only what comes before the first refusal matters
                new = [(i, op) for i, op in new if i < rejected[0].index]
            refused = self._admit(new)
            if refused:
                rejected = sorted([*rejected, *refused], key=lambda r: r.index)
                gone = {r.index for r in refused}
                new = [(i, op) for i, op in new if i not in gone]
            if rejected and on_invalid == "raise":
                raise PutRejectedError(rejected[0])
            ops = [op for _, op in new]
            completed = self._commit(ops) if ops else []
        return PutResult([op.op_id for op in ops], dups, rejected, completed)

    # -- admission (docs/security.md §2: a strict store refuses what strict replay would void)
    @property
    def profile(self) -> Profile | None:
        """The store's security profile, read from the first op of its order (None while empty)."""
        if self._profile is None and len(self._index):
            first = self._index.topo_slice(0, 1)
            self._profile = store_profile(self.get_op(first[0]) if first else None) or REFERENCE_PROFILE
        return self._profile

    def _stored_hlc(self, op_id: bytes) -> Hlc | None:
        if not self._index.contains(op_id):
            return None
        k = self._index.key(op_id)
        return Hlc(k[0], k[1], k[2])

    def _admit(self, new: list[tuple[int, Op]]) -> list[PutRejection]:
        """The admission refusals among ``new`` (input index, op); counted and logged, one line each.

        The caller holds ``_lock``. An empty store takes its profile from the batch; ``profile``
        reads it back from the stored ops afterwards.
        """
        if not new:
            return []
        verdict = admit_batch(self.profile, [op for _, op in new], self._stored_hlc)
        out = []
        for j, why in verdict.refused:
            i, op = new[j]
            msg = f"refused op {op.op_id.hex()}: {why}"
            out.append(PutRejection(i, op.op_id, msg, op, sig_ok=True, reason=admission_code(why)))
            log.warning("admission refused op %s (%s): %s", op.op_id.hex(), op.payload.NAME, why)
        self.admission_refused += len(out)
        return out

    def _audit_ingested(self, ok: list[tuple[int, Op, bool]], rejected: list[PutRejection]) -> None:
        """Log an ``IngestedOp`` for every decoded input, in input order, before any rejection."""
        if self.audit is None:
            return
        seen = [(i, IngestedOp.of(op, True)) for i, op, _ in ok]
        seen += [(r.index, IngestedOp.of(r.op, r.sig_ok)) for r in rejected if r.op is not None]
        seen.sort(key=lambda t: t[0])
        self.audit.append_many([e for _, e in seen])

    def _stored_bytes(self, op_id: bytes) -> bytes | None:
        return self._read_bytes(op_id) if self._index.contains(op_id) else None

    def _commit(self, ops: Sequence[Op]) -> list[bytes]:
        """Write ``ops`` (all new) and index them; the caller holds ``_lock``."""
        self._write(ops)
        completed: list[bytes] = []
        for op in ops:
            completed.extend(self._index.add(op.op_id, op.parents, op.sort_key()))
        return completed


class MemoryOpStore(IndexedOpStore):
    """An op store held in memory: for unit/property tests and network simulations."""

    def __init__(self, ops: Iterable[bytes | Op] = ()) -> None:
        super().__init__()
        self._ops: dict[bytes, Op] = {}
        items = list(ops)
        if items:
            self.put_many(items)

    def _read_bytes(self, op_id: bytes) -> bytes | None:
        op = self._ops.get(op_id)
        return None if op is None else op.cbor

    def get_op(self, op_id: bytes) -> Op | None:
        return self._ops.get(op_id)

    def _write(self, ops: Sequence[Op]) -> None:
        for op in ops:
            self._ops[op.op_id] = op
