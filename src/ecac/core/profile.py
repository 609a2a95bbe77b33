"""A project's security profile, read from its log: ``reference`` (no genesis) or ``strict``.

A strict project is declared by one signed ``Genesis`` op (``ecac init --profile strict``):
the unique root of its DAG, so every other op descends from it. A reference log has no
Genesis op at all and stays byte-identical to the reference implementation's. Anything else
mixes the two (a Genesis next to other roots, two Genesis ops, a Genesis with parents) and is
refused with ``MixedProfileError`` rather than guessed at: which genesis wins must never be
decided by HLCs an attacker chooses. ``admission_error`` is the per-op check entry points run
against the profile they already know (docs/security.md, "Strict profile").

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from typing import Final, Literal

from nacl.signing import SigningKey

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.op import Genesis, Op, make_op

REFERENCE: Final = "reference"
STRICT: Final = "strict"
PROFILES = (REFERENCE, STRICT)

ProfileName = Literal["reference", "strict"]

_PAYLOAD = attrgetter("payload")
_PARENTS = attrgetter("parents")


class MixedProfileError(EcacError):
    """A log (or an op offered to one) mixes the reference and strict profiles, or two projects."""


@dataclass(frozen=True, slots=True)
class Profile:
    """``reference``, or ``strict`` with the project's genesis op (its id, name and admins)."""

    name: ProfileName
    genesis_id: bytes | None = None
    project: str | None = None
    admins: tuple[bytes, ...] = ()

    @property
    def strict(self) -> bool:
        return self.name == STRICT

    @classmethod
    def of_genesis(cls, op: Op) -> Profile:
        """The strict profile declared by a Genesis op (MixedProfileError for any other op)."""
        g = op.payload
        if not isinstance(g, Genesis):
            raise MixedProfileError(f"op {op.op_id.hex()} is a {g.NAME}, not a Genesis op")
        if g.profile != STRICT:
            raise MixedProfileError(f"genesis {op.op_id.hex()} declares unknown profile {g.profile!r}")
        if op.parents:
            raise MixedProfileError(f"genesis {op.op_id.hex()} has parents; a genesis must be the root")
        if not g.admins:
            raise MixedProfileError(f"genesis {op.op_id.hex()} names no admin")
        return cls(STRICT, op.op_id, g.project, g.admins)

    def to_obj(self) -> dict[str, object]:
        return {
            "profile": self.name,
            "genesis": None if self.genesis_id is None else self.genesis_id.hex(),
            "project": self.project,
            "admins": [a.hex() for a in self.admins],
        }


REFERENCE_PROFILE = Profile(REFERENCE)


def genesis_op(sk: SigningKey, project: str, admins: Sequence[bytes], hlc: Hlc | None = None) -> Op:
    """The signed Genesis op of a new strict project (admins sorted, duplicates dropped)."""
    if not admins:
        raise EcacError("a strict project needs at least one admin key")
    if any(len(a) != 32 for a in admins):
        raise EcacError("admin keys must be 32-byte Ed25519 public keys")
    return make_op(
        sk, (), hlc if hlc is not None else Hlc(), Genesis(STRICT, project, tuple(sorted(set(admins))))
    )


def has_genesis(ops: Sequence[Op]) -> bool:
    """Whether any op is a Genesis (scanned in C: ``map``s over the payloads' types)."""
    return Genesis in set(map(type, map(_PAYLOAD, ops)))


def detect_profile(order: Sequence[Op]) -> Profile:
    """The profile of a log given in total order (or any order with the genesis first when strict).

    No Genesis op: reference. A Genesis op at position 0 that is the only root and the only
    Genesis: strict. Anything else raises MixedProfileError naming the offending op.
    """
    if not order or type(order[0].payload) is not Genesis:
        if order and has_genesis(order):
            g = next(op for op in order if type(op.payload) is Genesis)
            raise MixedProfileError(
                f"log mixes profiles: genesis {g.op_id.hex()} is not the root of the log "
                f"(op {order[0].op_id.hex()} sorts before it); a strict project's ops must all descend "
                "from its genesis, and a reference project has none"
            )
        return REFERENCE_PROFILE
    profile = Profile.of_genesis(order[0])
    rest = islice(order, 1, None)
    if all(map(_PARENTS, rest)) and list(map(type, map(_PAYLOAD, order))).count(Genesis) == 1:
        return profile  # the common case, checked in C
    for op in order[1:]:
        if not op.parents:
            raise MixedProfileError(
                f"log mixes profiles: op {op.op_id.hex()} does not descend from genesis "
                f"{order[0].op_id.hex()} (it is a second root)"
            )
        if type(op.payload) is Genesis:
            raise MixedProfileError(
                f"log mixes projects: a second genesis {op.op_id.hex()} besides {order[0].op_id.hex()}"
            )
    return profile


def is_strict_order(order: Sequence[Op]) -> bool:
    """O(1): whether a (well-formed) log is strict, i.e. starts with its Genesis op."""
    return bool(order) and type(order[0].payload) is Genesis


HLC_REGRESSION: Final = "hlc_regression"


def admission_error(profile: Profile, op: Op, parents: Sequence[Op]) -> str | None:
    """Why ``op`` must not enter a project of ``profile`` (None: admit it), from the op and its parents.

    Reference: a Genesis or AdminAppoint op is refused (mixing). Strict: a root other than the
    project's genesis, any other Genesis, and an op whose HLC is below a parent's
    (``hlc_regression``) are refused. Deterministic: a function of the op and its parents only.
    The strict gate applies the same rules at replay (``ecac.core.strict``), so a replica that
    admitted such an op anyway computes the same verdicts.
    """
    kind = op.payload.NAME
    if not profile.strict:
        if kind in ("Genesis", "AdminAppoint"):
            return (
                f"a {kind} op belongs to a strict project; this is a reference project (profiles never mix)"
            )
        return None
    if kind == "Genesis":
        if op.op_id == profile.genesis_id:
            return None
        return f"a second genesis: this project's genesis is {(profile.genesis_id or b'').hex()}"
    if not op.parents:
        return f"op does not descend from this project's genesis {(profile.genesis_id or b'').hex()}"
    for p in parents:
        if p.hlc > op.hlc:
            return f"{HLC_REGRESSION}: HLC below that of parent {p.op_id.hex()}"
    return None
