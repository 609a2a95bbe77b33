"""The ``/ecac/refused/1`` notice: why a strict node refuses to serve a peer (docs/protocol.md, "Hello").

``/ecac/sync/1`` and ``/ecac/reconcile/1`` have no error frame (Rust reference peers speak them
byte-exact), so a strict node resets the stream of a peer whose subject holds no live role. It
then also tells that peer why, once per peer, what and reason, on a stream of its own: one
length-prefixed frame with one ``RefusalNotice`` ``{v, what, reason, subject_pk}``. ``what`` is
what is refused (``sync``, ``reconcile`` or ``announces``), ``reason`` the liveness code
(``ecac.core.liveness.NOT_LIVE_REASONS``: ``no_grant``, ``revoked``, …), ``subject_pk`` the subject
the server judged (the one the receiver proved in its hello). The notice is sent only to a peer
whose hello was verified, on that peer's authenticated connection, so it needs no signature.

Pure: ``make_notice`` builds one (``ValueError`` for an unknown what or reason), ``verify_notice``
decodes strictly and checks it against the subject the receiver speaks for; shape errors raise
``DecodeError``, a well-formed notice that breaks a rule ``ProtocolError``. ``not_live_text`` is
the one wording of "subject … holds no live role (reason)" for the server's and requester's logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ecac.core.codec import Bytes32, Serde, U32Int, serde
from ecac.core.errors import ProtocolError
from ecac.core.liveness import NOT_LIVE_REASONS
from ecac.sync.wire import decode_message

__all__ = [
    "MAX_REFUSAL_FRAME",
    "REFUSAL_REASONS",
    "REFUSAL_VERSION",
    "REFUSED_PROTOCOL_ID",
    "REFUSED_WHAT",
    "RefusalNotice",
    "make_notice",
    "not_live_text",
    "verify_notice",
]

REFUSED_PROTOCOL_ID: Final = "/ecac/refused/1"
REFUSAL_VERSION: Final = 1
#: the largest notice body accepted (a canonical notice is 74 to 120 bytes)
MAX_REFUSAL_FRAME: Final = 512
#: what a strict node refuses a peer: its sync streams, its reconcile streams, the announces it sends
REFUSED_WHAT: Final = ("sync", "reconcile", "announces")
#: the reasons a notice may carry: exactly the liveness codes
REFUSAL_REASONS: Final = NOT_LIVE_REASONS


@serde
@dataclass(frozen=True, slots=True)
class RefusalNotice(Serde):
    """``{v, what, reason, subject_pk}``: see the module docstring."""

    v: U32Int
    what: str
    reason: str
    subject_pk: Bytes32

    def describe(self) -> str:
        """``subject <pk> holds no live role (<reason>)``, as the server logged it."""
        return not_live_text(self.subject_pk, self.reason)


def not_live_text(subject_pk: bytes, reason: str) -> str:
    """The words of a refusal for log lines: ``subject <hex> holds no live role (<reason>)``."""
    return f"subject {bytes(subject_pk).hex()} holds no live role ({reason})"


def _check(what: str, reason: str) -> str | None:
    if what not in REFUSED_WHAT:
        return f"what {what!r} is not one of {', '.join(REFUSED_WHAT)}"
    if reason not in REFUSAL_REASONS:
        return f"reason {reason!r} is not one of {', '.join(REFUSAL_REASONS)}"
    return None


def make_notice(what: str, reason: str, subject_pk: bytes) -> RefusalNotice:
    """The notice for refusing ``what`` to the peer that proved ``subject_pk``, for ``reason``."""
    why = _check(what, reason)
    if why is not None:
        raise ValueError(f"refusal notice: {why}")
    if len(subject_pk) != 32:
        raise ValueError("refusal notice: a subject key is 32 bytes")
    return RefusalNotice(REFUSAL_VERSION, what, reason, bytes(subject_pk))


def verify_notice(data: bytes, subject_pk: bytes) -> RefusalNotice:
    """A received notice body, decoded strictly, for a receiver that speaks for ``subject_pk``.

    Refused (``DecodeError`` / ``ProtocolError``, the message says which rule): more than
    ``MAX_REFUSAL_FRAME`` bytes, not exactly the canonical CBOR of a ``RefusalNotice``, another
    version, an unknown ``what`` or ``reason``, and a subject other than ours (the server judged
    someone else: a confused or lying peer).
    """
    n = decode_message(RefusalNotice, data, MAX_REFUSAL_FRAME, "refusal notice")
    if n.v != REFUSAL_VERSION:
        raise ProtocolError(f"refusal notice: version {n.v} is not {REFUSAL_VERSION}")
    why = _check(n.what, n.reason)
    if why is not None:
        raise ProtocolError(f"refusal notice: {why}")
    if n.subject_pk != bytes(subject_pk):
        raise ProtocolError(
            f"refusal notice: it judges subject {n.subject_pk.hex()}, "
            f"this node speaks for {bytes(subject_pk).hex()}"
        )
    return n
