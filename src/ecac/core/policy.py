"""Policy: authorization epochs, the deny-wins write gate and read control (core §11).

Who may write is decided from the log alone. A Grant opens an *epoch* for the VC's
subject and role at the Grant's position; a Revoke closes the open epochs of that subject
and role whose scope meets the Revoke's tags at the Revoke's position (its ``at`` is
ignored). A Data op is applied iff its author has an ``editor`` epoch that is open at the
op's position, whose scope meets the resource's tags and whose VC window
``nbf_ms <= physical_ms < exp_ms`` contains the op's HLC.

Pipeline (core §11.1), over the whole order, each step one pass over its policy ops:

    admin_idx = epochs_m4(order)                  # issuer_admin gating (self-signed VCs count)
    tv        = TrustView.build(order, admin_idx) # in-band issuer keys and status lists
    idx       = epochs_with_trustview(order, tv)  # the write gate's epochs

A replayer gets its gates from a ``GateBuilder``: it extends the previous gate over appended
ops that cannot change an earlier verdict (core §8.4) instead of building it again, and its
``VcMemo`` keeps credential verdicts across the builds it does make.

Everything here is pure: no I/O, no clock, and no result depends on dict iteration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress
from operator import attrgetter, is_not
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from ecac.core.hlc import Hlc
from ecac.core.op import (
    Credential,
    Data,
    Genesis,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    KeyGrant,
    Op,
    Revoke,
    StatusListChunk,
)
from ecac.core.profile import detect_profile, has_genesis
from ecac.core.resources import ISSUER_ADMIN, derive_action_and_tags, role_can_write, role_read_tags
from ecac.core.trust import StatusCache, TrustStore, TrustView
from ecac.core.vc import VcMemo, VerifiedClaims, cred_hash, try_verify, verify_vc_file

#: payload kinds that enable the read path's epochs and the TrustView's admin index (core §11.8)
READ_POLICY_KINDS = frozenset({"Grant", "Revoke", "KeyGrant"})

# deny reasons, as the audit trail names them (core §11.6)
DENY_WINS = "deny_wins"
REVOKED_CRED = "revoked_cred"
EXPIRED_CRED = "expired_cred"
OUT_OF_SCOPE = "out_of_scope"
DENY_REASONS = (REVOKED_CRED, EXPIRED_CRED, OUT_OF_SCOPE, DENY_WINS)  # highest priority first

ALLOWED: Final = "ALLOWED"
DENIED: Final = "DENIED"


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


def _empty_map() -> Mapping[Any, Any]:
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

#: ``cred_hash -> verified claims or None``: how an epoch scan looks a VC up
ClaimsOf = Callable[[bytes], "VerifiedClaims | None"]
#: ``(Credential op) -> verified claims or None``; the builders differ only in this
CredentialVerifier = Callable[[Op], "VerifiedClaims | None"]
#: ``(position, op)`` pairs of an order, in position order
Positioned = Iterable[tuple[int, Op]]

_PAYLOAD = attrgetter("payload")
_NOT_DATA = partial(is_not, Data)
_SWITCH_TYPES = frozenset({Grant, Revoke})  # the payload classes of POLICY_SWITCH_KINDS
_RETROACTIVE_TYPES = frozenset({Credential, IssuerKey, IssuerKeyRevoke, StatusListChunk})  # RETROACTIVE_KINDS
_EPOCH_TYPES = frozenset({Grant, Revoke, KeyGrant})
_TRUST_TYPES = frozenset({IssuerKey, IssuerKeyRevoke, StatusListChunk})


def policy_ops(order: Sequence[Op]) -> list[tuple[int, Op]]:
    """``(position, op)`` of every op of ``order`` that is not Data: all the policy pipeline reads.

    The selection runs in C; a log of mostly Data ops then costs the builders a pass over
    its policy ops only.
    """
    return [
        (i, order[i]) for i in compress(range(len(order)), map(_NOT_DATA, map(type, map(_PAYLOAD, order))))
    ]


def credential_token(op: Op) -> bytes:
    """The VC bytes of a Credential op (TypeError for any other payload)."""
    p = op.payload
    if not isinstance(p, Credential):
        raise TypeError(f"expected a Credential op, got {p.NAME}")
    return p.cred_bytes


def verified_claims_map(order: Sequence[Op], verify: CredentialVerifier) -> dict[bytes, VerifiedClaims]:
    """``cred_hash -> claims`` over every Credential op of the order, whatever its position.

    Only credentials some Grant/KeyGrant names are verified (the others cannot matter).
    A failed verification never removes an entry, so with the M4 verifier a VC counts if
    any Credential op carrying it verifies under its own author. (The builders look claims
    up lazily with ``claims_lookup``, which gives the same map.)
    """
    wanted = {op.payload.cred_hash for op in order if isinstance(op.payload, Grant | KeyGrant)}
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


def credentials_by_hash(items: Positioned) -> dict[bytes, list[Op]]:
    """``cred_hash -> the Credential ops carrying that VC``, in order."""
    out: dict[bytes, list[Op]] = {}
    for _, op in items:
        p = op.payload
        if isinstance(p, Credential):
            h = cred_hash(p.cred_bytes)
            ops = out.get(h)
            if ops is None:
                out[h] = [op]
            else:
                ops.append(op)
    return out


def claims_lookup(creds: Mapping[bytes, Sequence[Op]], verify: CredentialVerifier) -> ClaimsOf:
    """``verified_claims_map`` computed on demand: the claims of the first op carrying the VC
    that verifies, None when none does (each hash is verified at most once)."""
    seen: dict[bytes, VerifiedClaims | None] = {}

    def claims_of(h: bytes) -> VerifiedClaims | None:
        if h in seen:
            return seen[h]
        vc = None
        for op in creds.get(h, ()):
            vc = verify(op)
            if vc is not None:
                break
        seen[h] = vc
        return vc

    return claims_of


class EpochScan:
    """The epoch scan of core §11.4 as a state that can go on: ``feed`` ops, ``index`` freezes.

    Grants open epochs (the Grant's author is never checked); Revokes close every open epoch
    of exactly ``(subject, role)`` whose scope meets ``scope_tags`` (``at`` ignored, scopes
    never split, later Grants unaffected); KeyGrants add positionless key epochs. Linear in
    the ops fed; ``index`` copies, so a frozen index never sees later ops.
    """

    __slots__ = ("_claims_of", "_epochs", "_key_epochs", "_open_by_tag")

    def __init__(self, claims_of: ClaimsOf) -> None:
        self._claims_of = claims_of
        self._epochs: dict[tuple[bytes, str], list[Epoch]] = {}
        # open epoch indices per (subject, role) and tag; entries go stale lazily when closed
        self._open_by_tag: dict[tuple[bytes, str], dict[str, list[int]]] = {}
        self._key_epochs: dict[bytes, list[KeyEpoch]] = {}

    def feed(self, items: Positioned) -> bool:
        """Scan ``(position, op)`` pairs that come after everything fed so far; whether any of
        them was a Grant, Revoke or KeyGrant (the only payloads the scan reads)."""
        epochs, open_by_tag, key_epochs, claims_of = (
            self._epochs,
            self._open_by_tag,
            self._key_epochs,
            self._claims_of,
        )
        seen = False
        for pos, op in items:
            p = op.payload
            if isinstance(p, Grant):
                seen = True
                vc = claims_of(p.cred_hash)
                if vc is None or vc.subject_pk != p.subject_pk:
                    continue
                k = (p.subject_pk, vc.role)
                lst = epochs.setdefault(k, [])
                lst.append(Epoch(vc.scope, pos, None, Hlc(vc.nbf_ms, 0, 0), Hlc(vc.exp_ms, 0, 0)))
                by_tag = open_by_tag.setdefault(k, {})
                for tag in vc.scope:
                    by_tag.setdefault(tag, []).append(len(lst) - 1)
            elif isinstance(p, Revoke):
                seen = True
                k = (p.subject_pk, p.role)
                open_tags = open_by_tag.get(k)
                if not open_tags:
                    continue
                lst = epochs[k]
                for tag in set(p.scope_tags):
                    for i in open_tags.pop(tag, ()):
                        e = lst[i]
                        if e.end_pos is None:
                            lst[i] = Epoch(e.scope, e.start_pos, pos, e.not_before, e.not_after)
            elif isinstance(p, KeyGrant):
                seen = True
                vc = claims_of(p.cred_hash)
                if vc is None or vc.subject_pk != p.subject_pk:
                    continue
                key_epochs.setdefault(p.subject_pk, []).append(
                    KeyEpoch(p.tag, p.key_version, Hlc(vc.nbf_ms, 0, 0), Hlc(vc.exp_ms, 0, 0))
                )
        return seen

    def index(self) -> EpochIndex:
        return EpochIndex.from_entries(self._epochs, self._key_epochs)


def build_epochs(order: Sequence[Op], claims: Mapping[bytes, VerifiedClaims]) -> EpochIndex:
    """The shared epoch scan (core §11.4) over ``order`` with a ready claims map."""
    scan = EpochScan(claims.get)
    scan.feed(policy_ops(order))
    return scan.index()


def _memo(memo: VcMemo | None) -> VcMemo:
    return memo if memo is not None else VcMemo()


def _m4_scan(items: Sequence[tuple[int, Op]], creds: Mapping[bytes, Sequence[Op]], memo: VcMemo) -> EpochScan:
    scan = EpochScan(claims_lookup(creds, lambda op: memo.m4(credential_token(op), op.author_pk)))
    scan.feed(items)
    return scan


def _trustview_scan(
    items: Sequence[tuple[int, Op]], creds: Mapping[bytes, Sequence[Op]], tv: TrustView, memo: VcMemo
) -> EpochScan:
    scan = EpochScan(claims_lookup(creds, lambda op: memo.inband(credential_token(op), tv)))
    scan.feed(items)
    return scan


def epochs_m4(order: Sequence[Op], memo: VcMemo | None = None) -> EpochIndex:
    """Epochs from VCs verified under their Credential op's author (core §12.3).

    Used only for ``issuer_admin`` gating inside the TrustView. Anyone can self-issue.
    """
    items = policy_ops(order)
    return _m4_scan(items, credentials_by_hash(items), _memo(memo)).index()


def epochs_with_trustview(order: Sequence[Op], tv: TrustView, memo: VcMemo | None = None) -> EpochIndex:
    """The write gate's epochs: VCs verified against in-band trust (core §12.2)."""
    items = policy_ops(order)
    return _trustview_scan(items, credentials_by_hash(items), tv, _memo(memo)).index()


def epochs_with_files(order: Sequence[Op], trust_store: TrustStore, status_cache: StatusCache) -> EpochIndex:
    """Epochs from VCs verified against ``issuers.toml`` and status files (core §12.4).

    For CLI tools and the store's integrity check; replay never uses file trust.
    """
    items = policy_ops(order)

    def verify(op: Op) -> VerifiedClaims | None:
        return try_verify(lambda: verify_vc_file(credential_token(op), trust_store, status_cache))

    scan = EpochScan(claims_lookup(credentials_by_hash(items), verify))
    scan.feed(items)
    return scan.index()


def has_policy(ops: Iterable[Op]) -> bool:
    """The write gate is on iff the ops include a Grant or Revoke (core §8.2).

    Scanned in C (``map``s over the payloads' types): every replay asks this of the whole order.
    """
    return not _SWITCH_TYPES.isdisjoint(map(type, map(_PAYLOAD, ops)))


def has_read_policy(order: Sequence[Op]) -> bool:
    """TrustView gating and the read path also count KeyGrant (core §11.8, §18.1 item 9)."""
    return any(op.payload.NAME in READ_POLICY_KINDS for op in order)


def trust_view_for(order: Sequence[Op], memo: VcMemo | None = None) -> TrustView:
    """The in-band TrustView of an order, with issuer_admin gating when the log has
    Grant/Revoke/KeyGrant (for replay, ``vc-verify`` and ``trust-dump``)."""
    items = policy_ops(order)
    if not any(type(op.payload) in _EPOCH_TYPES for _, op in items):
        return TrustView.build_from(items, None)
    admin = _m4_scan(items, credentials_by_hash(items), _memo(memo)).index()
    return TrustView.build_from(items, admin)


def build_read_index(order: Sequence[Op], memo: VcMemo | None = None) -> EpochIndex:
    """Epochs for read control: enabled by Grant, Revoke or KeyGrant, else empty."""
    items = policy_ops(order)
    if not any(type(op.payload) in _EPOCH_TYPES for _, op in items):
        return EMPTY_INDEX
    return _GateState(items, _memo(memo)).gate.index  # the write gate's epochs, KeyGrants included


# --------------------------------------------------------------------------- the gate


class Gate(Protocol):
    """What replay asks of a write gate (``WriteGate``, or a test's stand-in)."""

    def permits(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool: ...


class GateSource(Protocol):
    """Where a replayer gets the gate of each order it applies (``GateBuilder``, or a test's)."""

    def gate_for(self, order: Sequence[Op], keep: int = 0) -> Gate | None: ...

    def keeps_verdicts(self, order: Sequence[Op], keep: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class WriteGate:
    """The deny-wins write gate of one replay: the epoch index plus the TrustView it used."""

    index: EpochIndex
    trust_view: TrustView

    def permits(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool:
        return self.index.is_permitted_at_pos(author_pk, action, tags, pos, hlc)

    def deny_reason(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> str:
        return self.index.deny_reason(author_pk, action, tags, pos, hlc)


class _GateState:
    """What a full gate build found, kept so that the gate can be extended (``GateBuilder``)."""

    __slots__ = ("creds", "gate", "m4_of", "named", "scan")

    def __init__(self, items: Sequence[tuple[int, Op]], memo: VcMemo) -> None:
        """The pipeline of core §11.1 over an order's policy ops."""
        self.creds = credentials_by_hash(items)
        self.named = {op.payload.cred_hash for _, op in items if isinstance(op.payload, Grant | KeyGrant)}
        self.m4_of = claims_lookup(self.creds, lambda op: memo.m4(credential_token(op), op.author_pk))
        admin = EpochScan(self.m4_of)
        admin.feed(items)
        tv = TrustView.build_from(items, admin.index())
        self.scan = EpochScan(claims_lookup(self.creds, lambda op: memo.inband(credential_token(op), tv)))
        self.scan.feed(items)
        self.gate = WriteGate(self.scan.index(), tv)

    def harmless(self, new_creds: Sequence[tuple[bytes, Op]]) -> bool:
        """Whether appended Credential ops leave both claims maps as they are for every VC an
        earlier Grant/KeyGrant names: the VC is named by none, or an earlier Credential op
        carries the same bytes (same in-band verdict under the same TrustView) and one of them
        verifies under M4 (the first such op keeps deciding the M4 claims)."""
        return all(
            h not in self.named or (h in self.creds and self.m4_of(h) is not None) for h, _ in new_creds
        )

    def extend(self, items: Sequence[tuple[int, Op]], new_creds: Sequence[tuple[bytes, Op]]) -> None:
        """Continue over appended policy ops (``harmless`` and no trust op among them).

        Their Credentials join the claims lookups first (claims are position-independent),
        then the scan opens and closes epochs at their positions; the TrustView stays."""
        for h, op in new_creds:
            self.creds.setdefault(h, []).append(op)
        for _, op in items:
            p = op.payload
            if isinstance(p, Grant | KeyGrant):
                self.named.add(p.cred_hash)
        if self.scan.feed(items):
            self.gate = WriteGate(self.scan.index(), self.gate.trust_view)


def build_write_gate(order: Sequence[Op], memo: VcMemo | None = None) -> WriteGate | None:
    """The gate for replaying ``order``, or None when the order has no Grant/Revoke
    (then every data op applies). Linear in the log size apart from VC signature checks,
    which ``memo`` (when given) remembers from earlier builds."""
    if not has_policy(order):  # in C, and a policy log has its first Grant early
        return None
    return _GateState(policy_ops(order), _memo(memo)).gate


class GateBuilder:
    """The write gate of one replayer's growing order, and the ``VcMemo`` its builds share.

    ``gate_for(order, keep)`` equals ``build_write_gate(order)``. When the caller passes
    ``keep > 0`` it promises that ``order[:keep]`` is exactly the order of the previous
    call; then, if ``keeps_verdicts(order, keep)``, the previous gate is *extended* over the
    appended ops: epochs open and close at the positions of the ops that open and close
    them, so only new Grant/Revoke/KeyGrant ops are scanned (nothing at all for Data ops).
    Otherwise the gate is built over the whole order, with VC verdicts from the memo.
    Serves one replayer; not thread-safe.

    Reference logs only: a log with a Genesis op raises ``MixedProfileError`` (strict logs
    get their gates from ``ecac.core.strict``; the replayer dispatches).
    """

    __slots__ = ("_k", "_last_id", "_off", "_state", "builds", "extensions", "memo")

    def __init__(self, memo: VcMemo | None = None) -> None:
        self.memo = _memo(memo)
        self._k = -1  # length of the order the state below is for; -1: none
        self._last_id = b""
        self._off = False  # that order has no Grant/Revoke: the gate is None
        self._state: _GateState | None = None
        self.builds = 0
        self.extensions = 0

    def reset(self) -> None:
        """Forget the previous order (the next gate is built in full; the memo stays)."""
        self._k = -1
        self._last_id = b""
        self._off = False
        self._state = None

    def keeps_verdicts(self, order: Sequence[Op], keep: int) -> bool:
        """Whether ``order[keep:]``, appended to the previous call's order, leaves every verdict
        at positions ``< keep`` as it was (so a state computed over that order may be continued).

        Core §8.4 conditions 2 and 3, refined for Credentials with what the previous build
        knows: no trust op (IssuerKey, IssuerKeyRevoke, StatusListChunk) is appended, policy
        is not switched on, and every appended Credential is ``harmless``. A Credential for a
        VC that no earlier Grant names (a new VC with its Grant, the usual case) changes no
        earlier verdict. False unless ``keep`` is the length of the previous call's order.
        """
        return self._suffix(order, keep) is not None

    def gate_for(self, order: Sequence[Op], keep: int = 0) -> WriteGate | None:
        n = len(order)
        suffix = self._suffix(order, keep) if keep > 0 else None
        if suffix is None:
            self._build(order)
        else:
            if suffix[0] and self._state is not None:
                self._state.extend(*suffix)
            self.extensions += 1
        self._k = n
        self._last_id = order[-1].op_id if n else b""
        return None if self._state is None else self._state.gate

    def _suffix(
        self, order: Sequence[Op], keep: int
    ) -> tuple[list[tuple[int, Op]], list[tuple[bytes, Op]]] | None:
        """The policy ops of ``order[keep:]`` and its Credentials by hash, when extending over
        them is exact; else None."""
        k = self._k
        if not (0 < keep == k <= len(order) and order[k - 1].op_id == self._last_id):
            return None
        items = [(pos, op) for pos, op in enumerate(order[k:], k) if type(op.payload) is not Data]
        kinds = {type(op.payload) for _, op in items}
        if not kinds.isdisjoint(_TRUST_TYPES) or Genesis in kinds:  # a Genesis: _build refuses the mix
            return None
        if self._state is None:  # policy off: nothing is judged until a Grant/Revoke arrives
            return (items, []) if self._off and kinds.isdisjoint(_SWITCH_TYPES) else None
        new_creds = [
            (cred_hash(credential_token(op)), op) for _, op in items if type(op.payload) is Credential
        ]
        return (items, new_creds) if self._state.harmless(new_creds) else None

    def _build(self, order: Sequence[Op]) -> None:
        if has_genesis(order):
            detect_profile(order)  # raises MixedProfileError: a reference log never has a Genesis
        self.builds += 1
        self._off = not has_policy(order)
        self._state = None if self._off else _GateState(policy_ops(order), self.memo)


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
