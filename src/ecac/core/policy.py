"""Policy: authorization epochs, the deny-wins write gate and read control (core §11).

Who may write is decided from the log alone. A Grant opens an *epoch* for the VC's
subject and role at the Grant's position; a Revoke closes the open epochs of that subject
and role whose scope meets the Revoke's tags at the Revoke's position (its ``at`` is
ignored). A Data op is applied iff its author has an ``editor`` epoch that is open at the
op's position, whose scope meets the resource's tags and whose VC window
``nbf_ms <= physical_ms < exp_ms`` contains the op's HLC.

Pipeline (core §11.1), built once per replay over the whole order, each step one pass:

    admin_idx = epochs_m4(order)                  # issuer_admin gating (self-signed VCs count)
    tv        = TrustView.build(order, admin_idx) # in-band issuer keys and status lists
    idx       = epochs_with_trustview(order, tv)  # the write gate's epochs

Everything here is pure: no I/O, no clock, and no result depends on dict iteration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import Literal

from ecac.core.hlc import Hlc
from ecac.core.op import Credential, Data, Grant, KeyGrant, Op, Revoke
from ecac.core.resources import ISSUER_ADMIN, derive_action_and_tags, role_can_write, role_read_tags
from ecac.core.trust import StatusCache, TrustStore, TrustView
from ecac.core.vc import VerifiedClaims, cred_hash, try_verify, verify_vc_file, verify_vc_inband, verify_vc_m4

#: payload kinds that enable the read path's epochs and the TrustView's admin index (core §11.8)
READ_POLICY_KINDS = frozenset({"Grant", "Revoke", "KeyGrant"})

# deny reasons, as the audit trail names them (core §11.6)
DENY_WINS = "deny_wins"
REVOKED_CRED = "revoked_cred"
EXPIRED_CRED = "expired_cred"
OUT_OF_SCOPE = "out_of_scope"
DENY_REASONS = (REVOKED_CRED, EXPIRED_CRED, OUT_OF_SCOPE, DENY_WINS)  # highest priority first

ALLOWED = "ALLOWED"
DENIED = "DENIED"


# --------------------------------------------------------------------------- epochs


@dataclass(frozen=True, slots=True)
class Epoch:
    """A window in which a subject holds a role: positions ``[start_pos, end_pos)`` and
    HLCs ``[not_before, not_after)``; None means unbounded."""

    scope: frozenset[str]
    start_pos: int
    end_pos: int | None = None
    not_before: Hlc | None = None
    not_after: Hlc | None = None

    def in_pos(self, pos: int) -> bool:
        return self.start_pos <= pos and (self.end_pos is None or pos < self.end_pos)

    def in_time(self, hlc: Hlc) -> bool:
        return (self.not_before is None or hlc >= self.not_before) and (
            self.not_after is None or hlc < self.not_after
        )

    def live(self, pos: int, hlc: Hlc) -> bool:
        """Position and HLC windows, no scope (the role-liveness test of core §11.7)."""
        return self.in_pos(pos) and self.in_time(hlc)


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """A KeyGrant: read access to ``(tag, key_version)`` during the VC window; positionless."""

    tag: str
    key_version: int
    not_before: Hlc | None
    not_after: Hlc | None

    def in_time(self, hlc: Hlc) -> bool:
        return (self.not_before is None or hlc >= self.not_before) and (
            self.not_after is None or hlc < self.not_after
        )


def _empty_map() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EpochIndex:
    """Epochs grouped by ``(subject_pk, role)``, plus KeyGrant epochs per subject.

    ``epochs[subject][role]`` lists epochs in the position order of their Grants;
    ``by_role`` (derived) lists every epoch of a role, so "is anyone issuer_admin here?"
    does not scan all subjects.
    """

    epochs: Mapping[bytes, Mapping[str, tuple[Epoch, ...]]] = field(default_factory=_empty_map)
    key_epochs: Mapping[bytes, tuple[KeyEpoch, ...]] = field(default_factory=_empty_map)
    by_role: Mapping[str, tuple[Epoch, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_role: dict[str, list[Epoch]] = {}
        for roles in self.epochs.values():
            for role, eps in roles.items():
                by_role.setdefault(role, []).extend(eps)
        object.__setattr__(self, "by_role", MappingProxyType({r: tuple(e) for r, e in by_role.items()}))

    @classmethod
    def from_entries(
        cls,
        entries: Mapping[tuple[bytes, str], Sequence[Epoch]],
        key_epochs: Mapping[bytes, Sequence[KeyEpoch]] | None = None,
    ) -> EpochIndex:
        """Hand-build an index (tests, tools) from ``{(subject, role): [Epoch, ...]}``."""
        nested: dict[bytes, dict[str, tuple[Epoch, ...]]] = {}
        for (subject, role), eps in entries.items():
            nested.setdefault(subject, {})[role] = tuple(eps)
        keys = {s: tuple(k) for s, k in (key_epochs or {}).items()}
        return cls(
            MappingProxyType({s: MappingProxyType(r) for s, r in nested.items()}), MappingProxyType(keys)
        )

    def roles_of(self, subject: bytes) -> Mapping[str, tuple[Epoch, ...]]:
        return self.epochs.get(subject, _EMPTY_ROLES)

    # ----------------------------------------------------------- role liveness (§11.7)

    def subject_has_role_at(self, subject: bytes, role: str, pos: int, hlc: Hlc) -> bool:
        """Some epoch of ``(subject, role)`` is live at ``(pos, hlc)``; scope ignored."""
        return any(e.live(pos, hlc) for e in self.roles_of(subject).get(role, ()))

    def role_active_at(self, role: str, pos: int, hlc: Hlc) -> bool:
        """Some subject holds ``role`` live at ``(pos, hlc)``; scope ignored."""
        return any(e.live(pos, hlc) for roles in self.epochs.values() for e in roles.get(role, ()))

    # ----------------------------------------------------------- write gate (§11.5, §11.6)

    def is_permitted_at_pos(
        self, author: bytes, action: str, resource_tags: frozenset[str], pos: int, hlc: Hlc
    ) -> bool:
        """Deny-wins: allowed only inside a live epoch of a role that may do ``action``,
        whose scope meets the resource's tags."""
        for role, eps in self.roles_of(author).items():
            if not role_can_write(role, action):
                continue
            for e in eps:
                if e.in_pos(pos) and e.in_time(hlc) and not e.scope.isdisjoint(resource_tags):
                    return True
        return False

    def deny_reason(
        self, author: bytes, action: str, resource_tags: frozenset[str], pos: int, hlc: Hlc
    ) -> str:
        """Why a denied write was denied: ``revoked_cred`` > ``expired_cred`` >
        ``out_of_scope`` > ``deny_wins`` (core §11.6). Audit only; never decides state."""
        revoked = expired = out_of_scope = False
        for role, eps in self.roles_of(author).items():
            if not role_can_write(role, action):
                continue
            for e in eps:
                in_pos = e.in_pos(pos)
                after_epoch = e.end_pos is not None and pos >= e.end_pos
                in_time = e.in_time(hlc)
                after_expiry = e.not_after is not None and hlc >= e.not_after
                inter = not e.scope.isdisjoint(resource_tags)
                revoked |= inter and after_epoch
                expired |= inter and in_pos and after_expiry
                out_of_scope |= in_pos and in_time and not inter
        if revoked:
            return REVOKED_CRED
        if expired:
            return EXPIRED_CRED
        if out_of_scope:
            return OUT_OF_SCOPE
        return DENY_WINS

    # ----------------------------------------------------------- read control (§11.8)

    def can_read_tag_version(self, subject: bytes, tag: str, key_version: int, pos: int, hlc: Hlc) -> bool:
        """A live epoch of a role that reads ``tag`` with ``tag`` in scope, and a KeyGrant for
        ``(tag, key_version)`` whose VC window contains ``hlc`` (purely time-based)."""
        has_epoch = any(
            e.live(pos, hlc) and tag in e.scope
            for role, eps in self.roles_of(subject).items()
            if tag in role_read_tags(role)
            for e in eps
        )
        if not has_epoch:
            return False
        return any(
            k.tag == tag and k.key_version == key_version and k.in_time(hlc)
            for k in self.key_epochs.get(subject, ())
        )


_EMPTY_ROLES: Mapping[str, tuple[Epoch, ...]] = MappingProxyType({})
EMPTY_INDEX = EpochIndex()


# --------------------------------------------------------------------------- building

#: ``(Credential op) -> verified claims or None``; the builders differ only in this
CredentialVerifier = Callable[[Op], "VerifiedClaims | None"]


def _referenced_hashes(order: Sequence[Op]) -> set[bytes]:
    return {op.payload.cred_hash for op in order if isinstance(op.payload, Grant | KeyGrant)}


def verified_claims_map(order: Sequence[Op], verify: CredentialVerifier) -> dict[bytes, VerifiedClaims]:
    """``cred_hash -> claims`` over every Credential op of the order, whatever its position.

    Only credentials some Grant/KeyGrant names are verified (the others cannot matter).
    A failed verification never removes an entry, so with the M4 verifier a VC counts if
    any Credential op carrying it verifies under its own author.
    """
    wanted = _referenced_hashes(order)
    claims: dict[bytes, VerifiedClaims] = {}
    for op in order:
        p = op.payload
        if not isinstance(p, Credential):
            continue
        h = cred_hash(p.cred_bytes)
        if h not in wanted or h in claims:
            continue
        vc = verify(op)
        if vc is not None:
            claims[h] = vc
    return claims


def build_epochs(order: Sequence[Op], claims: Mapping[bytes, VerifiedClaims]) -> EpochIndex:
    """The shared epoch scan (core §11.4), linear in the log size.

    Grants open epochs (the Grant's author is never checked); Revokes close every open
    epoch of exactly ``(subject, role)`` whose scope meets ``scope_tags`` (``at`` ignored,
    scopes never split, later Grants unaffected); KeyGrants add positionless key epochs.
    """
    epochs: dict[tuple[bytes, str], list[Epoch]] = {}
    # open epoch positions per (subject, role) and tag; entries go stale lazily when closed
    open_by_tag: dict[tuple[bytes, str], dict[str, list[int]]] = {}
    key_epochs: dict[bytes, list[KeyEpoch]] = {}
    for pos, op in enumerate(order):
        p = op.payload
        if isinstance(p, Grant):
            vc = claims.get(p.cred_hash)
            if vc is None or vc.subject_pk != p.subject_pk:
                continue
            k = (p.subject_pk, vc.role)
            lst = epochs.setdefault(k, [])
            lst.append(Epoch(vc.scope, pos, None, Hlc(vc.nbf_ms, 0, 0), Hlc(vc.exp_ms, 0, 0)))
            by_tag = open_by_tag.setdefault(k, {})
            for tag in vc.scope:
                by_tag.setdefault(tag, []).append(len(lst) - 1)
        elif isinstance(p, Revoke):
            k = (p.subject_pk, p.role)
            by_tag = open_by_tag.get(k)
            if not by_tag:
                continue
            lst = epochs[k]
            for tag in set(p.scope_tags):
                for i in by_tag.pop(tag, ()):
                    if lst[i].end_pos is None:
                        e = lst[i]
                        lst[i] = Epoch(e.scope, e.start_pos, pos, e.not_before, e.not_after)
        elif isinstance(p, KeyGrant):
            vc = claims.get(p.cred_hash)
            if vc is None or vc.subject_pk != p.subject_pk:
                continue
            key_epochs.setdefault(p.subject_pk, []).append(
                KeyEpoch(p.tag, p.key_version, Hlc(vc.nbf_ms, 0, 0), Hlc(vc.exp_ms, 0, 0))
            )
    return EpochIndex.from_entries(epochs, key_epochs)


def _cached(verify: Callable[[Op], VerifiedClaims | None], key: Callable[[Op], object]) -> CredentialVerifier:
    cache: dict[object, VerifiedClaims | None] = {}

    def run(op: Op) -> VerifiedClaims | None:
        k = key(op)
        if k not in cache:
            cache[k] = verify(op)
        return cache[k]

    return run


def epochs_m4(order: Sequence[Op]) -> EpochIndex:
    """Epochs from VCs verified under their Credential op's author (core §12.3).

    Used only for ``issuer_admin`` gating inside the TrustView. Anyone can self-issue.
    """
    verify = _cached(
        lambda op: try_verify(lambda: verify_vc_m4(op.payload.cred_bytes, op.author_pk)),
        lambda op: (op.payload.cred_bytes, op.author_pk),
    )
    return build_epochs(order, verified_claims_map(order, verify))


def epochs_with_trustview(order: Sequence[Op], tv: TrustView) -> EpochIndex:
    """The write gate's epochs: VCs verified against in-band trust (core §12.2)."""
    verify = _cached(
        lambda op: try_verify(lambda: verify_vc_inband(op.payload.cred_bytes, tv)),
        lambda op: op.payload.cred_bytes,
    )
    return build_epochs(order, verified_claims_map(order, verify))


def epochs_with_files(order: Sequence[Op], trust_store: TrustStore, status_cache: StatusCache) -> EpochIndex:
    """Epochs from VCs verified against ``issuers.toml`` and status files (core §12.4).

    For CLI tools and the store's integrity check; replay never uses file trust.
    """
    verify = _cached(
        lambda op: try_verify(lambda: verify_vc_file(op.payload.cred_bytes, trust_store, status_cache)),
        lambda op: op.payload.cred_bytes,
    )
    return build_epochs(order, verified_claims_map(order, verify))


def has_policy(ops: Iterable[Op]) -> bool:
    """The write gate is on iff the ops include a Grant or Revoke (core §8.2).

    Scanned in C (``map``s over the payloads' types): every replay asks this of the whole order.
    """
    return not _SWITCH_TYPES.isdisjoint(map(type, map(_PAYLOAD, ops)))


_PAYLOAD = attrgetter("payload")
_SWITCH_TYPES = frozenset({Grant, Revoke})  # the payload classes of POLICY_SWITCH_KINDS


def has_read_policy(order: Sequence[Op]) -> bool:
    """TrustView gating and the read path also count KeyGrant (core §11.8, §18.1 item 9)."""
    return any(op.payload.NAME in READ_POLICY_KINDS for op in order)


def trust_view_for(order: Sequence[Op]) -> TrustView:
    """The in-band TrustView of an order, with issuer_admin gating when the log has
    Grant/Revoke/KeyGrant (for replay, ``vc-verify`` and ``trust-dump``)."""
    return TrustView.build(order, epochs_m4(order) if has_read_policy(order) else None)


def build_read_index(order: Sequence[Op]) -> EpochIndex:
    """Epochs for read control: enabled by Grant, Revoke or KeyGrant, else empty."""
    if not has_read_policy(order):
        return EMPTY_INDEX
    return epochs_with_trustview(order, trust_view_for(order))


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True, slots=True)
class WriteGate:
    """The deny-wins write gate of one replay: the epoch index plus the TrustView it used."""

    index: EpochIndex
    trust_view: TrustView

    def permits(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool:
        return self.index.is_permitted_at_pos(author_pk, action, tags, pos, hlc)

    def deny_reason(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> str:
        return self.index.deny_reason(author_pk, action, tags, pos, hlc)


def build_write_gate(order: Sequence[Op]) -> WriteGate | None:
    """The gate for replaying ``order``, or None when the order has no Grant/Revoke
    (then every data op applies). Linear in the log size apart from VC signature checks."""
    if not has_policy(order):
        return None
    tv = TrustView.build(order, epochs_m4(order))
    return WriteGate(epochs_with_trustview(order, tv), tv)


# --------------------------------------------------------------------------- explanation

Decision = tuple[Op, Literal["ALLOWED", "DENIED"], "str | None"]


def explain(order: Sequence[Op]) -> list[Decision]:
    """Per data op of ``order`` (keys outside the grammar are skipped, as replay ignores
    them): whether the gate allows it and, if not, the deny reason."""
    gate = build_write_gate(order)
    out: list[Decision] = []
    for pos, op in enumerate(order):
        p = op.payload
        if not isinstance(p, Data):
            continue
        d = derive_action_and_tags(p.key)
        if d is None:
            continue
        if gate is None or gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc):
            out.append((op, ALLOWED, None))
        else:
            out.append((op, DENIED, gate.deny_reason(op.author_pk, d.action, d.tags, pos, op.hlc)))
    return out


# --------------------------------------------------------------------------- spec-named helpers (§11.5–§11.8)


def is_permitted_at_pos(
    idx: EpochIndex, author: bytes, action: str, resource_tags: frozenset[str], pos: int, hlc: Hlc
) -> bool:
    return idx.is_permitted_at_pos(author, action, resource_tags, pos, hlc)


def deny_reason(
    idx: EpochIndex, author: bytes, action: str, resource_tags: frozenset[str], pos: int, hlc: Hlc
) -> str:
    return idx.deny_reason(author, action, resource_tags, pos, hlc)


def can_read_tag_version(
    idx: EpochIndex, subject: bytes, tag: str, key_version: int, pos: int, hlc: Hlc
) -> bool:
    return idx.can_read_tag_version(subject, tag, key_version, pos, hlc)


def subject_has_role_at(idx: EpochIndex, subject: bytes, role: str, pos: int, hlc: Hlc) -> bool:
    return idx.subject_has_role_at(subject, role, pos, hlc)


def role_active_at(idx: EpochIndex, role: str, pos: int, hlc: Hlc) -> bool:
    return idx.role_active_at(role, pos, hlc)


def author_is_issuer_admin_at(idx: EpochIndex, author: bytes, pos: int, hlc: Hlc) -> bool:
    return idx.subject_has_role_at(author, ISSUER_ADMIN, pos, hlc)


def issuer_admin_mode_active(idx: EpochIndex, pos: int, hlc: Hlc) -> bool:
    return idx.role_active_at(ISSUER_ADMIN, pos, hlc)
