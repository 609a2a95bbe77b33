"""Op verification: op id and Ed25519 signature checks, and admission of verified ops.

Signatures go through ``ecac._native.verify_batch`` (libsodium's strict check, core §4.2),
serially on the calling thread. Every function that checks many signatures takes a
``verify`` callable (default ``check_sigs``): adapters pass a parallel one
(``ecac.store.verifypool.VerifyPool.verify``), so no thread ever starts in the core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ecac import _native
from ecac.core.errors import DecodeError, InvalidOpError
from ecac.core.op import REASON_BAD_SIG, REASON_ID_MISMATCH, Op, op_id_of
from ecac.core.opcodec import decode_op_with_header

#: ``(public_key, signature, message)``
SigItem: TypeAlias = tuple[bytes, bytes, bytes]
#: verdicts for many signatures, in input order (``check_sigs``, or an adapter's parallel one)
Verify: TypeAlias = Callable[[Sequence[SigItem]], list[bool]]


def check_sigs(items: Sequence[SigItem]) -> list[bool]:
    """Verify many ``(public_key, sig, message)`` triples on this thread; malformed ones are False.

    ``ecac._native.verify_batch`` calls libsodium's strict verify (the check PyNaCl's
    ``crypto_sign_open`` makes) with the GIL released for the whole batch.
    """
    return _native.verify_batch(items)


def sig_ok(public_key: bytes, sig: bytes, message: bytes) -> bool:
    """Ed25519 (libsodium, strict) over ``message``; any malformed key or signature is False.

    The one signature check of the project (op ids, announce digests, VC signing inputs):
    ``check_sigs`` of one triple.
    """
    return _native.verify_batch(((public_key, sig, message),))[0]


def sig_items(ops: Iterable[Op]) -> list[SigItem]:
    """The ``(author_pk, sig, op_id)`` triple of each op: what its signature covers."""
    return [(op.author_pk, op.sig, op.op_id) for op in ops]


def check_op(op: Op, header_cbor: bytes | None = None) -> str | None:
    """Why ``op`` fails verification, or None when it verifies (core §4.2)."""
    hb = header_cbor if header_cbor is not None else op.header_bytes()
    if op_id_of(hb) != op.op_id:
        return REASON_ID_MISMATCH
    if not sig_ok(op.author_pk, op.sig, op.op_id):
        return REASON_BAD_SIG
    return None


def verify_op(op: Op) -> None:
    """Raise ``InvalidOpError`` naming the op when it does not verify."""
    reason = check_op(op)
    if reason is not None:
        raise InvalidOpError(op.op_id, reason)


def check_ops(ops: Sequence[Op], verify: Verify = check_sigs) -> list[str | None]:
    """``check_op`` for many ops: ids recomputed here, the signatures of the rest in one ``verify`` call."""
    reasons: list[str | None] = [None] * len(ops)
    pending: list[int] = []
    for i, op in enumerate(ops):
        if op.computed_id() != op.op_id:
            reasons[i] = REASON_ID_MISMATCH
        else:
            pending.append(i)
    oks = verify(sig_items(ops[i] for i in pending))
    for i, ok in zip(pending, oks, strict=True):
        if not ok:
            reasons[i] = REASON_BAD_SIG
    return reasons


@dataclass(frozen=True, slots=True)
class Rejection:
    """An op that failed verification, and why (``REASON_ID_MISMATCH`` or ``REASON_BAD_SIG``)."""

    op_id: bytes
    reason: str

    def __str__(self) -> str:
        return f"rejected op {self.op_id.hex()}: {self.reason}"


def admit(ops: Sequence[Op], verify: Verify = check_sigs) -> tuple[list[Op], list[Rejection]]:
    """Split ops into those that verify and rejections naming the op (core §4.4)."""
    good: list[Op] = []
    bad: list[Rejection] = []
    for op, reason in zip(ops, check_ops(ops, verify), strict=True):
        if reason is None:
            good.append(op)
        else:
            bad.append(Rejection(op.op_id, reason))
    return good, bad


# --------------------------------------------------------------------------- admission from bytes

#: ops decoded per signature batch of ``decoded_chunks``
ADMIT_CHUNK = 2048


def decoded_chunks(
    blobs: Sequence[bytes], chunk: int = ADMIT_CHUNK
) -> Iterator[tuple[list[Op], list[Rejection]]]:
    """Strictly decode canonical op bytes, ``chunk`` at a time, with every op id recomputed.

    Yields ``(ops, rejections)`` per chunk: the ops whose id matches, in input order, whose
    signatures are the caller's to check, and an ``REASON_ID_MISMATCH`` rejection per op
    whose id does not. Lazy, so that a caller can verify one chunk's signatures on other
    threads while the next is decoded (``VerifyPool.decode_and_admit``). A blob that does not
    decode raises DecodeError naming its index.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    for lo in range(0, len(blobs), chunk):
        ops: list[Op] = []
        bad: list[Rejection] = []
        for i in range(lo, min(lo + chunk, len(blobs))):
            try:
                op, header_cbor = decode_op_with_header(blobs[i])
            except DecodeError as e:
                raise DecodeError(f"op #{i}: {e}") from None
            if op_id_of(header_cbor) != op.op_id:
                bad.append(Rejection(op.op_id, REASON_ID_MISMATCH))
            else:
                ops.append(op)
        yield ops, bad


def admit_verdicts(
    chunks: Iterable[tuple[list[Op], list[Rejection], list[bool]]],
) -> tuple[list[Op], list[Rejection]]:
    """Join ``decoded_chunks`` with their signature verdicts: ``(admitted ops, rejections)``.

    Admitted ops keep input order; rejections list the id mismatches first, then the bad
    signatures (each group in input order).
    """
    ops: list[Op] = []
    mismatched: list[Rejection] = []
    forged: list[Rejection] = []
    for chunk, bad, oks in chunks:
        mismatched += bad
        if all(oks):
            ops += chunk
            continue
        for op, ok in zip(chunk, oks, strict=True):
            if ok:
                ops.append(op)
            else:
                forged.append(Rejection(op.op_id, REASON_BAD_SIG))
    return ops, mismatched + forged


def decode_and_admit(blobs: Sequence[bytes], verify: Verify = check_sigs) -> tuple[list[Op], list[Rejection]]:
    """Strictly decode canonical op bytes and verify them (op id and signature), in input order.

    One ``verify`` call per chunk of ``decoded_chunks``; ``admit_verdicts`` gives the order of
    the result. A blob that does not decode raises DecodeError naming its index.
    """
    return admit_verdicts((ops, bad, verify(sig_items(ops))) for ops, bad in decoded_chunks(blobs))
