"""Exceptions of ecac.

Every error a user can trigger is an ``EcacError`` subclass with a message that says
what is wrong and with which input, so the CLI can print it and exit 1 without a
traceback. Programming errors stay ordinary Python exceptions.
"""

from __future__ import annotations


class EcacError(Exception):
    """Base class of every error ecac reports to a user."""


class DecodeError(EcacError):
    """Bytes are not a valid encoding of the expected value (bad CBOR, wrong shape, range)."""


class InvalidOpError(EcacError):
    """An op decoded but failed verification (op_id mismatch or bad signature)."""

    def __init__(self, op_id: bytes, reason: str) -> None:
        self.op_id = op_id
        self.reason = reason
        super().__init__(f"rejected op {op_id.hex()}: {reason}")


class VcError(EcacError):
    """A verifiable credential failed verification; ``kind`` is the reference's variant name."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}({detail})" if detail else kind)


class StoreError(EcacError):
    """The on-disk store is unusable, locked, corrupt, or refused a write."""


class ProtocolError(EcacError):
    """A peer sent something that violates the wire protocol (framing, order, validity)."""
