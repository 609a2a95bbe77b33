"""Policy: authorization epochs and the deny-wins write gate (core §11).

STUB until the policy work lands: ``build_write_gate`` returns None for logs without
Grant/Revoke (the allow-all path) and refuses logs that have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ecac.hlc import Hlc
from ecac.op import POLICY_SWITCH_KINDS, Op


class WriteGate(Protocol):
    def permits(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool: ...

    def deny_reason(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> str: ...


def has_policy(order: Sequence[Op]) -> bool:
    return any(op.payload.NAME in POLICY_SWITCH_KINDS for op in order)


def build_write_gate(order: Sequence[Op]) -> WriteGate | None:
    if not has_policy(order):
        return None
    raise NotImplementedError("policy gate not implemented yet")
