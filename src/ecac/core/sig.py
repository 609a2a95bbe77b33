"""Op verification: op id and Ed25519 signature checks, and admission of verified ops.

Signatures go through ``ecac._native.verify_batch`` (libsodium's strict check, core §4.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import nacl._sodium
import nacl.bindings  # initialises libsodium (sodium_init) before ecac._native uses it

from ecac import _native
from ecac.core.errors import InvalidOpError
from ecac.core.op import REASON_BAD_SIG, REASON_ID_MISMATCH, Op, op_id_of

_native.use_sodium(nacl._sodium.__file__)  # batch verification calls the libsodium PyNaCl loaded


def sig_ok(public_key: bytes, sig: bytes, message: bytes) -> bool:
    """Ed25519 (libsodium, strict) over ``message``; any malformed key or signature is False.

    The one signature check of the project (op ids, announce digests, VC signing inputs):
    ``check_sigs`` of one triple.
    """
    return check_sigs(((public_key, sig, message),))[0]


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


_POOL: ThreadPoolExecutor | None = None
_PARALLEL_MIN = 256


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ecac-verify")
    return _POOL


def check_sigs(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify many ``(public_key, sig, message)`` triples; a malformed key or signature is False.

    ``ecac._native.verify_batch`` calls libsodium's strict verify (the check PyNaCl's
    ``crypto_sign_open`` makes) with the GIL released for a whole chunk, so large batches
    run on two threads at full speed even while another thread runs Python.
    """
    return submit_sigs(items).result()


class SigCheck:
    """Signature verdicts being computed on the verify threads (``submit_sigs``)."""

    __slots__ = ("_now", "_parts")

    def __init__(self, now: list[bool] | None, parts: list[Future[list[bool]]]) -> None:
        self._now = now
        self._parts = parts

    def result(self) -> list[bool]:
        """The verdicts, in input order (waits for the threads)."""
        if self._now is not None:
            return self._now
        out: list[bool] = []
        for part in self._parts:
            out.extend(part.result())
        return out


def submit_sigs(items: Sequence[tuple[bytes, bytes, bytes]]) -> SigCheck:
    """Start ``check_sigs`` on the two verify threads and return at once (small batches: inline).

    A bulk import decodes its next batch meanwhile. Each thread gets one chunk, so it needs
    the GIL only at the two ends of it, however busy the decoding thread keeps the GIL.
    """
    triples = [t if type(t) is tuple else tuple(t) for t in items]
    n = len(triples)
    if n < _PARALLEL_MIN:
        return SigCheck(_native.verify_batch(triples), [])
    step = -(-n // 2)
    parts = [_pool().submit(_native.verify_batch, triples[i : i + step]) for i in range(0, n, step)]
    return SigCheck(None, parts)


def check_ops(ops: Sequence[Op]) -> list[str | None]:
    """``check_op`` for many ops; ids are recomputed here, signatures checked in parallel."""
    reasons: list[str | None] = [None] * len(ops)
    pending: list[int] = []
    for i, op in enumerate(ops):
        if op.computed_id() != op.op_id:
            reasons[i] = REASON_ID_MISMATCH
        else:
            pending.append(i)
    oks = check_sigs([(ops[i].author_pk, ops[i].sig, ops[i].op_id) for i in pending])
    for i, ok in zip(pending, oks, strict=True):
        if not ok:
            reasons[i] = REASON_BAD_SIG
    return reasons


@dataclass(frozen=True, slots=True)
class Rejection:
    op_id: bytes
    reason: str

    def __str__(self) -> str:
        return f"rejected op {self.op_id.hex()}: {self.reason}"


def admit(ops: Sequence[Op]) -> tuple[list[Op], list[Rejection]]:
    """Split ops into those that verify and rejections naming the op (core §4.4)."""
    good: list[Op] = []
    bad: list[Rejection] = []
    for op, reason in zip(ops, check_ops(ops), strict=True):
        if reason is None:
            good.append(op)
        else:
            bad.append(Rejection(op.op_id, reason))
    return good, bad
