"""The data-key grammar, resource tags and role tables (core §7).

These tables are binding semantics: every replica must derive the same action and tags
from the same key, quirks included (extra segments dropped, only three resource shapes
tagged, ASCII-only digits).
"""

from __future__ import annotations

from dataclasses import dataclass

SET_FIELD = "SetField"
SET_ADD = "SetAdd"
SET_REM = "SetRem"


@dataclass(frozen=True, slots=True)
class DataAction:
    action: str
    obj: str
    field: str
    elem: str | None
    tags: frozenset[str]


def _ascii_digits(s: str) -> bool:
    return all("0" <= c <= "9" for c in s)


_TAGS_OX = frozenset({"hv", "confidential"})
_TAGS_OS = frozenset({"mech"})
_TAGS_PARAM = frozenset({"hv", "mech"})
_NO_TAGS: frozenset[str] = frozenset()


def tags_for(obj: str, field: str) -> frozenset[str]:
    """Resource tags of ``obj.field``; empty for every resource outside the three shapes."""
    if obj == "o" and field == "x":
        return _TAGS_OX
    if obj == "o" and field == "s":
        return _TAGS_OS
    if (
        len(obj) > 1
        and obj[0] == "c"
        and _ascii_digits(obj[1:])
        and field.startswith("param")
        and _ascii_digits(field[5:])
    ):
        return _TAGS_PARAM
    return _NO_TAGS


def derive_action_and_tags(key: str) -> DataAction | None:
    """Parse a Data key: ``mv:obj:field``, ``set+:obj:field:elem``, ``set-:obj:field:elem``."""
    if key.startswith("mv:"):
        seg = key[3:].split(":")
        if len(seg) < 2:
            return None
        return DataAction(SET_FIELD, seg[0], seg[1], None, tags_for(seg[0], seg[1]))
    for prefix, action in (("set+:", SET_ADD), ("set-:", SET_REM)):
        if key.startswith(prefix):
            seg = key[5:].split(":")
            if len(seg) < 3:
                return None
            return DataAction(action, seg[0], seg[1], seg[2], tags_for(seg[0], seg[1]))
    return None


EDITOR = "editor"
ISSUER_ADMIN = "issuer_admin"
_EDITOR_WRITES = frozenset({SET_FIELD, SET_ADD, SET_REM})
_EDITOR_READ_TAGS = frozenset({"hv", "mech", "confidential"})


def role_can_write(role: str, action: str) -> bool:
    """Only ``editor`` writes (all three actions, no required tags); exact string match."""
    return role == EDITOR and action in _EDITOR_WRITES


def role_read_tags(role: str) -> frozenset[str]:
    return _EDITOR_READ_TAGS if role == EDITOR else _NO_TAGS
