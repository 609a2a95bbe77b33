"""A project's security profile, read from its log: ``reference`` (no genesis) or ``strict``.

A strict project is declared by one signed ``Genesis`` op (``ecac init --profile strict``):
the unique root of its DAG, so every other op descends from it. A reference log has no
Genesis op at all and stays byte-identical to the reference implementation's. Anything else
mixes the two (a Genesis next to other roots, two Genesis ops, a Genesis with parents) and is
refused with ``MixedProfileError`` rather than guessed at: which genesis wins must never be
decided by HLCs an attacker chooses. ``admission_error`` is the per-op check, and
``admit_batch`` the batch form every store put runs against the store's profile
(``store_profile``: read from the first op of its order; docs/security.md §2, "Void ops").

Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from typing import Final, Literal

from nacl.signing import SigningKey

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.op import AdminAppoint, Genesis, Op, SealedKeyRotate, make_op

REFERENCE: Final = "reference"
STRICT: Final = "strict"
PROFILES = (REFERENCE, STRICT)

ProfileName = Literal["reference", "strict"]

_PAYLOAD = attrgetter("payload")
_PARENTS = attrgetter("parents")
_STRICT_ONLY = frozenset({Genesis, AdminAppoint, SealedKeyRotate})


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
INVALID_ANCESTOR: Final = "invalid_ancestor"
SECOND_GENESIS: Final = "second_genesis"
MISSING_PARENT: Final = "missing_parent"
FOREIGN_ROOT: Final = "foreign_root"
#: the codes a strict refusal's reason starts with (``<code>: <why>``), also audit SkippedOp reasons
ADMISSION_CODES: Final = frozenset(
    {HLC_REGRESSION, INVALID_ANCESTOR, SECOND_GENESIS, MISSING_PARENT, FOREIGN_ROOT}
)

#: a parent named by an op offered for admission: its id, and its HLC (None: not stored)
ParentHlc = tuple[bytes, Hlc | None]


def admission_error(profile: Profile, op: Op, parents: Sequence[ParentHlc]) -> str | None:
    """Why ``op`` must not enter a project of ``profile`` (None: admit it), from the op and its parents.

    ``parents`` gives, for each parent id of ``op``, that parent's HLC (None when the store does
    not hold it). A strict refusal reads ``<code>: <why>`` (``admission_code``). Reference: a
    Genesis, AdminAppoint or SealedKeyRotate op is refused (mixing); everything else is admitted as before
    (orphans too). Strict: a root other than the project's genesis, any
    other Genesis, an op whose HLC is below a parent's (``hlc_regression``), and an op whose
    parent is not stored (``missing_parent``: a strict store holds no orphans, so an op whose
    ancestor was refused can never enter) are refused. Deterministic: a function of the op and
    its parents only. The strict gate applies the same rules at replay (``ecac.core.strict``),
    so a replica that admitted such an op anyway computes the same verdicts.
    """
    kind = op.payload.NAME
    if not profile.strict:
        if type(op.payload) in _STRICT_ONLY:
            return (
                f"a {kind} op belongs to a strict project; this is a reference project (profiles never mix)"
            )
        return None
    if kind == "Genesis":
        if op.op_id == profile.genesis_id:
            return None
        genesis = (profile.genesis_id or b"").hex()
        return f"{SECOND_GENESIS}: a second genesis; this project's genesis is {genesis}"
    if not op.parents:
        return (
            f"{FOREIGN_ROOT}: op does not descend from this project's genesis "
            f"{(profile.genesis_id or b'').hex()}"
        )
    for pid, h in parents:
        if h is None:
            return (
                f"{MISSING_PARENT}: parent {pid.hex()} is not stored "
                "(a strict project admits an op only after its parents)"
            )
        if h > op.hlc:
            return f"{HLC_REGRESSION}: HLC below that of parent {pid.hex()}"
    return None


def admission_code(reason: str) -> str | None:
    """The code a refusal reason starts with (``hlc_regression``, …), None for a reference refusal."""
    code = reason.split(":", 1)[0]
    return code if code in ADMISSION_CODES else None


def store_profile(root: Op | None) -> Profile | None:
    """The profile of a store from the first op of its total order (None: the store is empty).

    A store is strict when that op is a valid Genesis (admission keeps every later op its
    descendant), reference otherwise.
    """
    if root is None:
        return None
    if type(root.payload) is Genesis:
        try:
            return Profile.of_genesis(root)
        except MixedProfileError:
            return REFERENCE_PROFILE
    return REFERENCE_PROFILE


@dataclass(frozen=True, slots=True)
class Admission:
    """What admission decided for one batch: the store's profile after it (None: still empty) and
    the refused inputs as ``(index, reason)``, ascending."""

    profile: Profile | None
    refused: tuple[tuple[int, str], ...] = ()


def _batch_profile(ops: Sequence[Op]) -> Profile | None:
    """The profile an empty store takes from its first batch: the first valid Genesis's, else reference."""
    if not ops:
        return None
    for op in ops:
        if type(op.payload) is Genesis:
            try:
                return Profile.of_genesis(op)
            except MixedProfileError:
                continue
    return REFERENCE_PROFILE


def admit_batch(
    profile: Profile | None, ops: Sequence[Op], stored_hlc: Callable[[bytes], Hlc | None]
) -> Admission:
    """Admission of a batch of new ops (``admission_error`` per op) into a store of ``profile``.

    ``profile`` None: the store is empty, and the batch decides (a valid Genesis in it makes the
    store strict, otherwise it is reference). ``stored_hlc(id)`` is the HLC of a stored op, None
    when it is not stored. Under strict an op's parents may also come earlier or later in the
    same batch: ops are decided parents first, and a child of a refused op is refused
    (``invalid_ancestor``). A reference batch without Genesis or AdminAppoint costs one scan of
    the payload types (in C).
    """
    prof = profile if profile is not None else _batch_profile(ops)
    if prof is None:
        return Admission(None)
    if not prof.strict:
        if not _STRICT_ONLY.intersection(map(type, map(_PAYLOAD, ops))):
            return Admission(prof)
        refused = tuple(
            (i, why) for i, op in enumerate(ops) if (why := admission_error(prof, op, ())) is not None
        )
        return Admission(prof, refused)
    return Admission(prof, _admit_strict(prof, ops, stored_hlc))


def _admit_strict(
    prof: Profile, ops: Sequence[Op], stored_hlc: Callable[[bytes], Hlc | None]
) -> tuple[tuple[int, str], ...]:
    """Decide the ops of a strict batch, parents first."""
    where = {op.op_id: i for i, op in enumerate(ops)}
    admitted: dict[bytes, Hlc] = {}
    refused: dict[int, str] = {}
    for i in _parents_first(ops, where):
        op = ops[i]
        bad = next((pid for pid in op.parents if where.get(pid, -1) in refused), None)
        if bad is not None:
            refused[i] = f"{INVALID_ANCESTOR}: parent {bad.hex()} was refused"
            continue
        got = admitted.get
        why = admission_error(prof, op, [(pid, got(pid) or stored_hlc(pid)) for pid in op.parents])
        if why is None:
            admitted[op.op_id] = op.hlc
        else:
            refused[i] = why
    return tuple(sorted(refused.items()))


def _parents_first(ops: Sequence[Op], where: dict[bytes, int]) -> Sequence[int]:
    """Input positions with every op after its parents inside the batch: the input order when it
    already is (sync responses and ``op-append`` are), else Kahn's order (ties by input position)."""
    get = where.get
    if all(get(pid, -1) < i for i, op in enumerate(ops) for pid in op.parents):
        return range(len(ops))
    waiting = [0] * len(ops)  # parents inside the batch not placed yet
    children: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for pid in set(op.parents):
            j = get(pid)
            if j is not None:
                waiting[i] += 1
                children.setdefault(j, []).append(i)
    ready = [i for i in range(len(ops)) if waiting[i] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for c in children.get(i, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    placed = set(out)  # never short for hashed ops (no cycles); the rest then lacks a parent
    out.extend(i for i in range(len(ops)) if i not in placed)
    return out
