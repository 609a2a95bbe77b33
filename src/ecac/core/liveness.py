"""Which subjects hold a live role at a strict replica's frontier: the peers a strict node serves.

Access-controlled sync (docs/security.md): under the strict profile a node serves ops and
accepts announces only from peers whose proven subject (``ecac.sync.hello``) is live here. The
notion of a live grant is the strict gate's (``ecac.core.strict``), read at the frontier, i.e.
for an op that would have every op of the log in its causal past:

* an **admin** (genesis admin, or appointed by a counting ``AdminAppoint``) is always live;
* a subject with a **counting** Grant (its VC verifies against the admins' trust view, names the
  subject, is not self-issued) that **no counting Revoke kills** is live, unless the VC window
  ended at or before the newest HLC of the log (``frontier_ms``: a pure function of the op set,
  never the wall clock);
* anyone else is not: ``revoked`` (every counting grant is killed by a counting revoke),
  ``expired_cred``, the reason its grants do not count (``untrusted_issuer``, ``self_issued_vc``),
  or ``no_grant``.

``live_subjects`` reads one gate once (per published state); ``subject_is_live`` is the O(1)
lookup per request; ``NOT_LIVE_REASONS`` lists every reason it gives (the codes a strict node's
refusal notice, ``ecac.sync.refusal``, carries). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final

from ecac.core.op import Op
from ecac.core.strict import EXPIRED_CRED, SELF_ISSUED, UNTRUSTED_ISSUER, StrictGate

__all__ = [
    "NOT_LIVE_REASONS",
    "NOT_LOADED",
    "NO_GRANT",
    "REVOKED",
    "LiveSubjects",
    "live_subjects",
    "newest_ms",
    "subject_is_live",
]

REVOKED: Final = "revoked"
NO_GRANT: Final = "no_grant"
#: before the replica's state is known, only the genesis admins are live
NOT_LOADED: Final = "state_not_loaded"
#: every reason ``subject_is_live`` gives: a subject's grants are all killed or expired, do not count
#: (the strict gate's reasons for an uncounted Grant), there are none, or the state is not loaded yet
NOT_LIVE_REASONS: Final = (NO_GRANT, REVOKED, EXPIRED_CRED, UNTRUSTED_ISSUER, SELF_ISSUED, NOT_LOADED)

_MS = attrgetter("hlc.physical_ms")


@dataclass(frozen=True, slots=True)
class LiveSubjects:
    """The live subjects of one replayed state: admins, subjects with their live roles, and why
    the other subjects named by grants or revokes are not live."""

    admins: frozenset[bytes]
    roles: Mapping[bytes, tuple[str, ...]] = field(default_factory=dict)
    not_live: Mapping[bytes, str] = field(default_factory=dict)
    frontier_ms: int = 0
    ops: int = 0  # ops of the state it was computed from (-1: only the genesis admins are known)

    @classmethod
    def admins_only(cls, admins: Sequence[bytes]) -> LiveSubjects:
        """Before the state is loaded: the genesis admins (from the store's profile) only."""
        return cls(frozenset(admins), ops=-1)


def newest_ms(order: Sequence[Op]) -> int:
    """The newest HLC physical time of a log (0 when empty): the frontier's time."""
    return max(map(_MS, order), default=0)


def live_subjects(gate: StrictGate, frontier_ms: int, ops: int = 0) -> LiveSubjects:
    """The live subjects at the frontier of the order ``gate`` was built over (module docstring)."""
    st = gate.state
    admins = frozenset(st.admins) | frozenset(st.appointed)
    roles: dict[bytes, tuple[str, ...]] = {}
    not_live: dict[bytes, str] = {}
    for subject, grants in st.grants.items():
        unkilled = [g for g in grants if g.op_id not in st.kills]
        live = sorted({g.role for g in unkilled if g.exp_ms > frontier_ms})
        if live:
            roles[subject] = tuple(live)
        else:
            not_live[subject] = EXPIRED_CRED if unkilled else REVOKED
    for subject, uncounted in st.uncounted.items():
        if subject not in roles and subject not in not_live and uncounted:
            not_live[subject] = uncounted[-1][1]
    return LiveSubjects(admins, roles, not_live, frontier_ms, ops)


def subject_is_live(live: LiveSubjects, subject_pk: bytes) -> str | None:
    """None when ``subject_pk`` is live (an admin, or a live grant); else why not."""
    if subject_pk in live.admins or subject_pk in live.roles:
        return None
    if live.ops < 0:
        return NOT_LOADED
    return live.not_live.get(subject_pk, NO_GRANT)
