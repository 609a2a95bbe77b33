"""The two CRDTs of the state: multi-value register and observed-remove set (core §9).

Both take a happens-before predicate ``hb(a, b)`` ("op a is a strict ancestor of op b")
instead of vector clocks: tags are op ids and causality comes from the DAG. Internal
dicts are unordered; every output that matters (projection, JSON, snapshot) sorts, so no
result depends on insertion order.

Each CRDT caches its rendered JSON body (``json_body``) and drops the cache on mutation,
so exporting a large state after a small change only re-renders the touched fields.
"""

from __future__ import annotations

from collections.abc import Callable

import blake3

Hb = Callable[[bytes, bytes], bool]


def projection_key(value: bytes) -> tuple[bytes, bytes]:
    """Sort key of projections: ``(blake3(v), v)``; the smallest value is the projection."""
    return (blake3.blake3(value).digest(), value)


def sorted_by_projection(values: set[bytes] | list[bytes]) -> list[bytes]:
    """Distinct values sorted by ``(blake3(v), v)``."""
    return sorted(set(values), key=projection_key)


class MVReg:
    """Multi-value register: the writes that no later write has causally overwritten."""

    __slots__ = ("_json", "winners")

    def __init__(self, winners: dict[bytes, bytes] | None = None) -> None:
        self.winners: dict[bytes, bytes] = {} if winners is None else winners
        self._json: str | None = None

    def apply_put(self, tag: bytes, value: bytes, hb: Hb) -> None:
        """Drop every winner that happens-before ``tag``, then record ``tag``'s value."""
        w = self.winners
        if w:
            dead = [t for t in w if hb(t, tag)]
            for t in dead:
                del w[t]
        w[tag] = value
        self._json = None

    def values(self) -> list[bytes]:
        """Distinct winner values, sorted bytewise."""
        return sorted(set(self.winners.values()))

    def sorted_values(self) -> list[bytes]:
        """Distinct winner values in projection order (the state JSON's ``winners``)."""
        return sorted_by_projection(list(self.winners.values()))

    def project(self) -> bytes | None:
        """The value with the smallest ``(blake3(v), v)``, or None without winners."""
        if not self.winners:
            return None
        return min(set(self.winners.values()), key=projection_key)

    def winners_with_tags(self) -> list[tuple[bytes, bytes]]:
        """``(op_id, value)`` pairs in op_id byte order (read path, core §11.8)."""
        return sorted(self.winners.items())

    def json_body(self) -> str:
        """``"project":…,"type":"mv","winners":[…]}`` (the field object after its name, core §10.1)."""
        if self._json is None:
            vals = self.sorted_values()
            proj = f'"{vals[0].hex()}"' if vals else "null"
            winners = ",".join(f'"{v.hex()}"' for v in vals)
            self._json = f'"project":{proj},"type":"mv","winners":[{winners}]}}'
        return self._json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MVReg) and self.winners == other.winners

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MVReg({len(self.winners)} winners)"


class OrElem:
    """One OR-set element: its add tags with values, and the tombstoned add tags."""

    __slots__ = ("adds", "tombstones")

    def __init__(self, adds: dict[bytes, bytes] | None = None, tombstones: set[bytes] | None = None) -> None:
        self.adds: dict[bytes, bytes] = {} if adds is None else adds
        self.tombstones: set[bytes] = set() if tombstones is None else tombstones

    def active_values(self) -> list[bytes]:
        ts = self.tombstones
        return [v for t, v in self.adds.items() if t not in ts]

    def is_present(self) -> bool:
        ts = self.tombstones
        return any(t not in ts for t in self.adds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrElem) and self.adds == other.adds and self.tombstones == other.tombstones

    __hash__ = None  # type: ignore[assignment]


class ORSet:
    """Observed-remove set: a remove tombstones exactly the adds it causally observed."""

    __slots__ = ("_json", "elems")

    def __init__(self, elems: dict[str, OrElem] | None = None) -> None:
        self.elems: dict[str, OrElem] = {} if elems is None else elems
        self._json: str | None = None

    def add(self, elem: str, tag: bytes, value: bytes) -> None:
        e = self.elems.get(elem)
        if e is None:
            e = self.elems[elem] = OrElem()
        e.adds[tag] = value
        self._json = None

    def remove_with_hb(self, elem: str, rem_id: bytes, hb: Hb) -> None:
        """Tombstone every add tag of ``elem`` that happens-before ``rem_id``; concurrent adds survive."""
        e = self.elems.get(elem)
        if e is None:
            return
        ts = e.tombstones
        for t in e.adds:
            if t not in ts and hb(t, rem_id):
                ts.add(t)
        self._json = None

    def contains(self, elem: str) -> bool:
        e = self.elems.get(elem)
        return e is not None and e.is_present()

    def project_value(self, elem: str) -> bytes | None:
        """Min over the active values by ``(blake3(v), v)``; None if the element is absent."""
        e = self.elems.get(elem)
        if e is None:
            return None
        vals = e.active_values()
        if not vals:
            return None
        return min(set(vals), key=projection_key)

    def iter_present(self) -> list[tuple[str, bytes]]:
        """Present elements in key order, each with its projected value."""
        out = []
        for k in sorted(self.elems):
            vals = self.elems[k].active_values()
            if vals:
                out.append((k, min(set(vals), key=projection_key)))
        return out

    def json_body(self, json_str: Callable[[str], str]) -> str:
        """The ``elems`` array of the field object (core §10.1); ``json_str`` escapes element keys."""
        if self._json is None:
            parts = [f'{{"key":{json_str(k)},"value":"{v.hex()}"}}' for k, v in self.iter_present()]
            self._json = "[" + ",".join(parts) + "]"
        return self._json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ORSet) and self.elems == other.elems

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet({len(self.elems)} elems)"
