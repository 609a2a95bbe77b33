"""The audit trail's records and chain (core §14, store §1.13). Pure: no I/O, no clock, no randomness.

An audit log is a hash chain of signed entries. Entry ``seq`` (from 1) holds
``(seq, ts_monotonic, prev_hash, node_id, event)``; its hash is
``blake3(b"ECAC_AUDIT_V1" + cbor(entry))`` and ``prev_hash`` of the next entry, and the
node signs that hash with Ed25519. The wire record is the entry's fields plus
``signature`` in one indefinite-length CBOR map (``bf … ff``); segment files frame records
as ``u32 BE length ‖ record``. File handling (segments, index, rotation, tail repair) is
``ecac.store.auditlog``; this module builds, decodes and verifies records and replays with
auditing.

Decoding is strict, like every other decoder of stored bytes in ``ecac``: a record must be
exactly the canonical encoding of the entry it decodes to, so every changed byte is
detected (as a decode failure, a chain break or a bad signature). The entry hash is always
recomputed from the canonical re-encoding of the decoded entry (core §14.2).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Protocol, TypeAlias

import blake3
from nacl.signing import SigningKey

from ecac.core import policy, strict
from ecac.core.codec import (
    ByteArray,
    Bytes32,
    Flatten,
    Serde,
    TypeCodec,
    U32Int,
    U64Int,
    serde,
    variant,
)
from ecac.core.dag import Dag
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.profile import ADMISSION_CODES
from ecac.core.replay import apply_gated
from ecac.core.resources import DataAction
from ecac.core.sig import Verify, check_sigs
from ecac.core.state import State

AUDIT_DOMAIN = b"ECAC_AUDIT_V1"
ZERO_HASH = bytes(32)
SIG_LEN = 64

#: the reason of every AppliedOp
AUTHORIZED = "authorized"
#: SkippedOp reasons (core §14.1); the last four are ``ecac.core.policy``'s deny reasons, same strings
DENY_WINS = policy.DENY_WINS
INVALID_SIG = "invalid_sig"
BAD_PARENT = "bad_parent"
REVOKED_CRED = policy.REVOKED_CRED
EXPIRED_CRED = policy.EXPIRED_CRED
OUT_OF_SCOPE = policy.OUT_OF_SCOPE
REFERENCE_SKIP_REASONS = frozenset(
    {DENY_WINS, INVALID_SIG, BAD_PARENT, REVOKED_CRED, EXPIRED_CRED, OUT_OF_SCOPE}
)
#: under the strict profile (never in a reference log, so reference records are unchanged): the
#: strict gate's deny reasons, and the admission codes ``op-append-audited`` logs for refused ops
STRICT_SKIP_REASONS = frozenset(strict.STRICT_REASONS) | ADMISSION_CODES
SKIP_REASONS = REFERENCE_SKIP_REASONS | STRICT_SKIP_REASONS


# --------------------------------------------------------------------------- errors


class AuditError(EcacError):
    """The audit log cannot be read, written or trusted (files, index, keys, locking)."""


class AuditChainError(AuditError):
    """Verification of the chain failed; the subclass says how, the message where and what to do."""


class SeqGap(AuditChainError):
    def __init__(self, expected: int, found: int, where: str) -> None:
        self.expected, self.found, self.where = expected, found, where
        super().__init__(
            f"audit chain broken at {where}: expected seq {expected}, found {found} "
            "(records were removed, duplicated or reordered)"
        )


class BadNodeId(AuditChainError):
    def __init__(self, seq: int, expected: bytes, found: bytes, where: str) -> None:
        self.seq, self.expected, self.found, self.where = seq, expected, found, where
        super().__init__(
            f"audit record seq {seq} at {where} has node_id {found.hex()}, but node_id.bin says "
            f"{expected.hex()} (written by another node, or altered)"
        )


class PrevHash(AuditChainError):
    def __init__(self, seq: int, expected: bytes, found: bytes, where: str) -> None:
        self.seq, self.expected, self.found, self.where = seq, expected, found, where
        super().__init__(
            f"audit record seq {seq} at {where}: prev_hash {found.hex()} is not the hash of the entry "
            f"before it ({expected.hex()}); an earlier record was altered or replaced"
        )


class BadSig(AuditChainError):
    def __init__(self, seq: int, where: str) -> None:
        self.seq, self.where = seq, where
        super().__init__(
            f"audit record seq {seq} at {where}: the signature does not verify with node_pk.bin "
            "(the record was altered, or signed by another key)"
        )


class Truncated(AuditChainError):
    """A record that does not decode (including a signature of the wrong length) or is cut short."""

    def __init__(self, where: str, detail: str) -> None:
        self.where, self.detail = where, detail
        super().__init__(f"unreadable audit record at {where}: {detail}")


class HeadMismatch(AuditChainError):
    def __init__(self, expected: bytes, found: bytes) -> None:
        self.expected, self.found = expected, found
        super().__init__(
            f"audit head mismatch: expected {expected.hex()}, the log ends at {found.hex()} "
            "(records at the end were removed, added or rewritten)"
        )


# --------------------------------------------------------------------------- events (core §14.1)
# Variants of the externally tagged ``AuditEvent`` enum (``ecac.core.codec``), decoded with
# ``deny_unknown_fields``: a map with exactly its fields (docs/decisions.md D40).


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class IngestedOp(Serde):
    """A store put saw this op (logged before any rejection); ``verified_sig`` = id and signature ok."""

    NAME: ClassVar[str] = "IngestedOp"
    op_id: Bytes32
    author_pk: Bytes32
    parents: tuple[Bytes32, ...]
    verified_sig: bool

    @classmethod
    def of(cls, op: Op, verified_sig: bool) -> IngestedOp:
        return cls(op.op_id, op.author_pk, tuple(op.parents), verified_sig)


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class AppliedOp(Serde):
    """Replay applied the Data op at ``topo_idx`` (0-based position in the total order)."""

    NAME: ClassVar[str] = "AppliedOp"
    op_id: Bytes32
    topo_idx: U64Int
    reason: str = AUTHORIZED

    def __post_init__(self) -> None:
        if self.reason != AUTHORIZED:
            raise ValueError(f"reason: expected {AUTHORIZED!r}, got {self.reason!r}")


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class SkippedOp(Serde):
    """Replay skipped the Data op at ``topo_idx``; ``reason`` is one of ``SKIP_REASONS``."""

    NAME: ClassVar[str] = "SkippedOp"
    op_id: Bytes32
    topo_idx: U64Int
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"reason: {self.reason!r} is not one of {', '.join(sorted(SKIP_REASONS))}")


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class ViewEvent(Serde):
    """A read of ``obj.field`` (defined by the format; nothing in ecac or the reference emits it)."""

    NAME: ClassVar[str] = "ViewEvent"
    viewer_node: Bytes32
    obj: str
    field: str
    projection_hash: Bytes32


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class Checkpoint(Serde):
    """A state digest after ``topo_idx`` processed ops (end of an audited replay, or a store checkpoint)."""

    NAME: ClassVar[str] = "Checkpoint"
    checkpoint_id: U64Int
    topo_idx: U64Int
    state_digest: Bytes32


@variant(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class SyncEvent(Serde):
    """A sync round with a peer (defined by the format; not emitted yet)."""

    NAME: ClassVar[str] = "SyncEvent"
    peer_id: Bytes32
    fetched: U32Int
    duplicates: U32Int


AuditEvent: TypeAlias = IngestedOp | AppliedOp | SkippedOp | ViewEvent | Checkpoint | SyncEvent
EVENT_TYPES: dict[str, type[AuditEvent]] = {
    t.NAME: t for t in (IngestedOp, AppliedOp, SkippedOp, ViewEvent, Checkpoint, SyncEvent)
}
_EVENT: TypeCodec[AuditEvent] = TypeCodec(AuditEvent, "event")


def event_obj(event: AuditEvent) -> dict[str, Any]:
    """The externally tagged object ``{name: {fields…}}``: CBOR-ready, and the JSON of audit-export."""
    return event.to_obj()  # type: ignore[no-any-return]


def decode_event(obj: Any, what: str = "event") -> AuditEvent:
    """An ``AuditEvent`` from its decoded CBOR object; DecodeError names what is wrong."""
    return _EVENT.from_obj(obj, what)


# --------------------------------------------------------------------------- entries and records (core §14.2)


@serde(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class AuditEntry(Serde):
    """``EntryToSign``: what the node signs (via its hash)."""

    seq: U64Int
    ts_monotonic: U64Int
    prev_hash: Bytes32
    node_id: Bytes32
    event: AuditEvent

    def preimage(self) -> bytes:
        """``cbor(EntryToSign)``: a definite map of the five fields in this order."""
        return self.encode()

    def entry_hash(self) -> bytes:
        return entry_hash_of(self.preimage())


def entry_hash_of(preimage: bytes) -> bytes:
    """``blake3(b"ECAC_AUDIT_V1" ‖ cbor(EntryToSign))``."""
    return blake3.blake3(AUDIT_DOMAIN + preimage).digest()


@serde(deny_unknown_fields=True)
@dataclass(frozen=True, slots=True)
class AuditRecord(Serde):
    """A signed entry as stored: ``entry`` plus the 64-byte Ed25519 signature of its hash.

    The wire record is the reference's ``#[serde(flatten)]`` of the entry next to ``signature``,
    which serde_cbor writes as one indefinite-length map (``bf … ff``, core §14.2); ``encode``
    gives exactly that, and ``decode`` accepts only it.
    """

    entry: Annotated[AuditEntry, Flatten]
    signature: Annotated[bytes, ByteArray(SIG_LEN)]

    @property
    def seq(self) -> int:
        return self.entry.seq

    def entry_hash(self) -> bytes:
        return self.entry.entry_hash()


def sign_entry(entry: AuditEntry, sk: SigningKey) -> tuple[AuditRecord, bytes, bytes]:
    """``(record, entry_hash, wire bytes)``: Ed25519 (deterministic) over the entry hash."""
    h = entry.entry_hash()
    rec = AuditRecord(entry, sk.sign(h).signature)
    return rec, h, rec.encode()


def decode_record(data: bytes) -> AuditRecord:
    """Strictly decode one wire record; DecodeError says what is wrong.

    The record must be a map of exactly the six fields with the right types, and its bytes
    must be the canonical encoding of what it decodes to (indefinite map, field order,
    shortest integers, byte fields as arrays of ints); the error names the first difference.
    """
    return AuditRecord.decode(data)


# --------------------------------------------------------------------------- segment framing (store §1.13)

FrameTail: TypeAlias = Literal["", "stray", "torn"]


@dataclass(frozen=True, slots=True)
class Frames:
    """The complete frames of a segment file and what follows the last one.

    ``records``: ``(offset of the length prefix, record bytes)``. ``end``: offset just after
    the last complete frame. ``tail``: ``""`` (the file ends there), ``"stray"`` (1–3
    bytes: a partial length prefix) or ``"torn"`` (a length prefix whose record is cut
    short; ``want`` is its declared length).
    """

    records: list[tuple[int, bytes]]
    end: int
    tail: FrameTail = ""
    want: int = 0


def frame(wire: bytes) -> bytes:
    """``u32 BE length ‖ record``."""
    if len(wire) > 0xFFFFFFFF:
        raise AuditError(f"audit record of {len(wire)} bytes is too large for a u32 length prefix")
    return len(wire).to_bytes(4, "big") + wire


def split_frames(data: bytes) -> Frames:
    """Cut a segment file's bytes into length-prefixed records (no decoding)."""
    out: list[tuple[int, bytes]] = []
    n = len(data)
    pos = 0
    mv = memoryview(data)
    while pos < n:
        if n - pos < 4:
            return Frames(out, pos, "stray")
        length = int.from_bytes(mv[pos : pos + 4], "big")
        if pos + 4 + length > n:
            return Frames(out, pos, "torn", length)
        out.append((pos, bytes(mv[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return Frames(out, pos)


#: every record starts with the indefinite map and its first key (``bf 63 "seq"``)
_RECORD_HEAD = AuditRecord.__serde__.prefix()


def tail_is_one_append(data: bytes, frames: Frames) -> bool:
    """Whether the bytes after the last complete frame can be one append cut short by a crash.

    A damaged length prefix in the middle of a segment also makes the file "end mid-record",
    but then further records follow it; cutting the file there would delete them. So a tail
    only counts as torn when no second record header (``bf 63 "seq"``) starts inside it.
    """
    return data.find(_RECORD_HEAD, frames.end + 5) == -1


# --------------------------------------------------------------------------- building a chain


class ChainBuilder:
    """The writer's state machine, without files: next seq, prev_hash and ts counter.

    ``make`` signs the next record without changing state; ``advance`` commits it once it
    is durable, so a failed write never skips a seq. ``ts_monotonic`` restarts at 1 for
    every builder (store §1.13: it is not verified and not monotonic across restarts).
    """

    __slots__ = ("node_id", "prev_hash", "seq", "sk", "ts")

    def __init__(self, sk: SigningKey, node_id: bytes, seq: int = 0, prev_hash: bytes = ZERO_HASH) -> None:
        if len(node_id) != 32 or len(prev_hash) != 32:
            raise ValueError("node_id and prev_hash must be 32 bytes")
        self.sk = sk
        self.node_id = bytes(node_id)
        self.seq = seq
        self.prev_hash = bytes(prev_hash)
        self.ts = 0

    def make(self, event: AuditEvent) -> tuple[AuditRecord, bytes, bytes]:
        """``(record, entry_hash, wire bytes)`` of the next entry."""
        entry = AuditEntry(self.seq + 1, self.ts + 1, self.prev_hash, self.node_id, event)
        return sign_entry(entry, self.sk)

    def advance(self, record: AuditRecord, entry_hash: bytes) -> None:
        self.seq = record.entry.seq
        self.ts = record.entry.ts_monotonic
        self.prev_hash = entry_hash

    def state(self) -> tuple[int, int, bytes]:
        """``(seq, ts, prev_hash)``, to ``restore`` when records made since were not written."""
        return (self.seq, self.ts, self.prev_hash)

    def restore(self, state: tuple[int, int, bytes]) -> None:
        self.seq, self.ts, self.prev_hash = state


# --------------------------------------------------------------------------- verifying a chain


class ChainVerifier:
    """Checks records one by one, in order (store §1.13), over any number of segments.

    Per record: ``seq`` is the expected one (``SeqGap``), ``node_id`` is the log's
    (``BadNodeId``), ``prev_hash`` chains from 32 zero bytes (``PrevHash``), and the
    signature verifies over the recomputed entry hash with the node's key (``BadSig``).
    Signatures are checked in batches by ``verify`` (default ``sig.check_sigs``, serial;
    adapters pass ``VerifyPool.verify``); before any structural error is raised the pending
    batch is checked, so the error reported is always the first failing record's.
    """

    BATCH = 1024

    def __init__(self, node_id: bytes, node_pk: bytes, verify: Verify = check_sigs) -> None:
        self.node_id = bytes(node_id)
        self.node_pk = bytes(node_pk)
        self._verify = verify
        self.count = 0
        self.head = ZERO_HASH
        self._pending: list[tuple[int, str, bytes, bytes]] = []  # (seq, where, hash, sig)

    @property
    def next_seq(self) -> int:
        return self.count + 1

    def feed(self, record: AuditRecord, where: str) -> None:
        e = record.entry
        if e.seq != self.next_seq:
            self.fail(SeqGap(self.next_seq, e.seq, where))
        if e.node_id != self.node_id:
            self.fail(BadNodeId(e.seq, self.node_id, e.node_id, where))
        if e.prev_hash != self.head:
            self.fail(PrevHash(e.seq, self.head, e.prev_hash, where))
        h = e.entry_hash()
        self._pending.append((e.seq, where, h, record.signature))
        self.count += 1
        self.head = h
        if len(self._pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Check the pending signatures; BadSig for the first that fails."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        oks = self._verify([(self.node_pk, sig, h) for _, _, h, sig in pending])
        for (seq, where, _, _), ok in zip(pending, oks, strict=True):
            if not ok:
                raise BadSig(seq, where)

    def fail(self, error: AuditChainError) -> NoReturn:
        """Raise ``error`` unless an earlier record's signature fails (then that is the error)."""
        self.flush()
        raise error

    def finish(self, expected_head: bytes | None = None) -> bytes:
        """Check what is pending; with ``expected_head``, compare the final hash. Returns the head."""
        self.flush()
        if expected_head is not None and expected_head != self.head:
            raise HeadMismatch(expected_head, self.head)
        return self.head


def verify_chain(
    records: Iterable[AuditRecord],
    node_id: bytes,
    node_pk: bytes,
    expected_head: bytes | None = None,
    verify: Verify = check_sigs,
) -> bytes:
    """Verify decoded records as one chain from seq 1; returns the head (32 zero bytes when empty)."""
    v = ChainVerifier(node_id, node_pk, verify)
    for i, rec in enumerate(records):
        v.feed(rec, f"record #{i + 1}")
    return v.finish(expected_head)


# --------------------------------------------------------------------------- sinks


class AuditSink(Protocol):
    """Where audit events go: ``append`` returns the event's seq (1, 2, …); ``append_many``
    appends several at once (a file sink syncs once per batch)."""

    def append(self, event: AuditEvent) -> int: ...

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]: ...


@dataclass
class MemorySink:
    """Collects events in memory (tests, and ``audit-verify-full``'s replay hook)."""

    events: list[AuditEvent] = field(default_factory=list)

    def append(self, event: AuditEvent) -> int:
        self.events.append(event)
        return len(self.events)

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        return [self.append(e) for e in events]


# --------------------------------------------------------------------------- replay with auditing


def replay_audited(dag: Dag, sink: AuditSink) -> tuple[State, bytes]:
    """Full replay of ``dag`` that reports every decision to ``sink`` (core §8.2, §14.1).

    Events, in position order: ``AppliedOp{op_id, topo_idx = position, "authorized"}`` for
    every applied Data op, ``SkippedOp{op_id, topo_idx, reason}`` for every Data op the
    write gate denies, then one ``Checkpoint{checkpoint_id = topo_idx = processed_count,
    state_digest}``. Non-Data ops and Data keys outside the grammar get no event. The state
    and digest are exactly those of ``replay_full``.

    Reasons are those of the gate replay uses (``strict.build_gate``: one gate decides and
    explains). Reference logs: the deny reasons of ``ecac.core.policy`` (core §11.6), which
    already use the audit strings: RevokedCred → ``revoked_cred``, ExpiredCred →
    ``expired_cred``, OutOfScope → ``out_of_scope``, GenericDeny → ``deny_wins`` (no epochs,
    before nbf, a grant after the op, a VC voided by a status list or an issuer-key revocation,
    or an unverifiable credential). Strict logs: the strict gate's reasons
    (``concurrent_with_revoke``, ``revoked_cred``, ``untrusted_issuer``, ``self_issued_vc``,
    ``no_grant_in_past``, ``hlc_regression``, ``invalid_ancestor``, …; ``strict.STRICT_REASONS``).
    ``invalid_sig`` and ``bad_parent`` are never emitted here: every op in a DAG was verified
    at admission (core §4.4) and a topological order never puts a parent after its child;
    ``op-append-audited`` uses ``invalid_sig`` for ops the store refuses (the admission code
    for a strict store's refusals).
    """
    order = dag.topo_order()
    gate = strict.build_gate(order, dag=dag)

    def observe(pos: int, op: Op, d: DataAction, permitted: bool) -> None:
        if permitted:
            sink.append(AppliedOp(op.op_id, pos, AUTHORIZED))
            return
        reason = DENY_WINS if gate is None else gate.deny_reason(op.author_pk, d.action, d.tags, pos, op.hlc)
        sink.append(SkippedOp(op.op_id, pos, reason))

    state = State()
    digest = apply_gated(dag, state, order, 0, gate, observe)
    n = state.processed_count
    sink.append(Checkpoint(n, n, digest))
    return state, digest


# --------------------------------------------------------------------------- comparing decisions

#: ``("Applied" | "Skipped", op_id, topo_idx, reason)``
Decision: TypeAlias = tuple[str, bytes, int, str]


def decision_of(event: AuditEvent) -> Decision | None:
    """The replay decision an event records, or None for other events."""
    if isinstance(event, AppliedOp):
        return ("Applied", event.op_id, event.topo_idx, event.reason)
    if isinstance(event, SkippedOp):
        return ("Skipped", event.op_id, event.topo_idx, event.reason)
    return None


def decisions(events: Iterable[AuditEvent]) -> list[Decision]:
    """The sorted decisions among ``events`` (what ``audit-verify-full`` compares)."""
    return sorted(d for d in map(decision_of, events) if d is not None)


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where two sorted decision lists first differ (index, or None past the end) and their reason counts."""

    index: int
    replayed: Decision | None
    recorded: Decision | None
    replayed_counts: dict[str, int]
    recorded_counts: dict[str, int]

    def lines(self) -> list[str]:
        """Human-readable report for stderr."""

        def show(d: Decision | None) -> str:
            return "(none)" if d is None else f"{d[0]} {d[1].hex()} topo_idx={d[2]} reason={d[3]}"

        def counts(c: dict[str, int]) -> str:
            return " ".join(f"{k}={v}" for k, v in sorted(c.items())) or "(none)"

        return [
            f"first difference at sorted entry {self.index}:",
            f"  replay: {show(self.replayed)}",
            f"  audit:  {show(self.recorded)}",
            f"replay reasons: {counts(self.replayed_counts)}",
            f"audit reasons:  {counts(self.recorded_counts)}",
        ]


def compare_decisions(replayed: Sequence[Decision], recorded: Sequence[Decision]) -> Divergence | None:
    """None when the sorted lists are equal, else the first difference."""
    a, b = sorted(replayed), sorted(recorded)
    if a == b:
        return None
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return Divergence(
        i,
        a[i] if i < len(a) else None,
        b[i] if i < len(b) else None,
        dict(Counter(d[3] for d in a)),
        dict(Counter(d[3] for d in b)),
    )


# --------------------------------------------------------------------------- JSON views (store §3.3)

_JSON: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def event_json(event: AuditEvent) -> str:
    """The event as compact JSON, byte arrays as int arrays (serde_json's form)."""
    return _JSON(event_obj(event))


def export_line(record: AuditRecord) -> str:
    """One ``audit-export`` JSONL object (keys in the reference's order, not sorted)."""
    e = record.entry
    return _JSON(
        {
            "seq": e.seq,
            "ts_monotonic": e.ts_monotonic,
            "prev_hash_hex": e.prev_hash.hex(),
            "node_id_hex": e.node_id.hex(),
            "event": event_obj(e.event),
            "signature_hex": record.signature.hex(),
        }
    )


def cat_line(record: AuditRecord) -> str:
    """One ``audit-cat`` line: seq, ts_monotonic, prev_hash, node_id (hex), event, signature (hex)."""
    e = record.entry
    return _JSON(
        {
            "seq": e.seq,
            "ts_monotonic": e.ts_monotonic,
            "prev_hash": e.prev_hash.hex(),
            "node_id": e.node_id.hex(),
            "event": event_obj(e.event),
            "signature": record.signature.hex(),
        }
    )
