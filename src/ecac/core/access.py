"""What an operator asks of a log: the decoded state, who has access, why each write was
allowed or denied, the recent ops, and what a new op would do before it is stored.

Every answer is a frozen dataclass with ``to_obj()`` (plain JSON values, deterministic key
order) and ``to_json()`` (one compact line), so ``ecac get/access/explain/ops`` print the same
documents over a local store (``--db``) that a node's gateway serves over HTTP. Built only on
the public functions of ``ecac.core.policy``, ``trust``, ``vc``, ``state`` and ``dag``; the
verdicts are those of ``policy.explain`` (the replay's gate), never recomputed differently.

Pure: no I/O, no clock (a caller that wants "live/expired" passes ``now_ms``), and no result
depends on dict iteration order (everything is sorted or in log order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ecac.core import policy, strict
from ecac.core.crdt import MVReg, ORSet
from ecac.core.dag import Dag
from ecac.core.enc import try_decode_enc
from ecac.core.errors import EcacError, VcError
from ecac.core.hlc import Hlc
from ecac.core.op import (
    AdminAppoint,
    Credential,
    Data,
    Genesis,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    Op,
    Revoke,
    SealedKeyRotate,
    StatusListChunk,
)
from ecac.core.policy import Epoch, EpochIndex, WriteGate
from ecac.core.profile import is_strict_order
from ecac.core.resources import ISSUER_ADMIN, DataAction, derive_action_and_tags, role_can_write
from ecac.core.state import State
from ecac.core.trust import StatusList, TrustView
from ecac.core.vc import BAD_SIG, REVOKED, UNKNOWN_ISSUER, cred_hash, parse_compact, verify_vc_inband

#: ``ecac ops`` and ``GET /api/ops``: the most recent ops shown by default (store §3.5)
DEFAULT_OPS_LIMIT: Final = 50

EpochStatus = Literal["open", "live", "not_yet", "expired", "revoked"]


class NotFoundError(EcacError):
    """An object, field or op the caller named is not in the log (the gateway's 404)."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _hlc_obj(h: Hlc) -> dict[str, int]:
    return {"physical_ms": h.physical_ms, "logical": h.logical, "node_id": h.node_id}


def _hexes(items: Iterable[bytes]) -> list[str]:
    return [bytes(b).hex() for b in items]


# --------------------------------------------------------------------------- the decoded state


@dataclass(frozen=True, slots=True)
class ValueView:
    """One stored value as a person reads it: UTF-8 text, an encrypted envelope, or binary."""

    kind: Literal["text", "binary", "encrypted"]
    raw: bytes
    text: str | None = None
    tag: str | None = None
    key_version: int | None = None

    def to_obj(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"kind": "text", "text": self.text}
        if self.kind == "encrypted":
            return {
                "kind": "encrypted",
                "tag": self.tag,
                "key_version": self.key_version,
                "hex": self.raw.hex(),
            }
        return {"kind": "binary", "hex": self.raw.hex()}


def value_view(value: bytes, *, detect_encrypted: bool = True) -> ValueView:
    """Classify ``value``: EncV1 (core §15; only MV values are ever encrypted), valid UTF-8, else binary."""
    if detect_encrypted:
        enc = try_decode_enc(value)
        if enc is not None:
            return ValueView("encrypted", bytes(value), tag=enc.tag, key_version=enc.key_version)
    try:
        return ValueView("text", bytes(value), text=bytes(value).decode("utf-8"))
    except UnicodeDecodeError:
        return ValueView("binary", bytes(value))


@dataclass(frozen=True, slots=True)
class FieldView:
    """A field: an MV register's distinct winning values (projection first, core §9.1), or a
    set's present elements in key order, each with its projected value."""

    obj: str
    field: str
    type: Literal["mv", "set"]
    values: tuple[ValueView, ...] = ()
    elements: tuple[tuple[str, ValueView], ...] = ()

    def to_obj(self) -> dict[str, Any]:
        if self.type == "mv":
            return {"type": "mv", "values": [v.to_obj() for v in self.values]}
        return {"type": "set", "elements": [{"elem": e, "value": v.to_obj()} for e, v in self.elements]}

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def field_view(obj: str, name: str, f: MVReg | ORSet) -> FieldView:
    if isinstance(f, MVReg):
        return FieldView(obj, name, "mv", values=tuple(value_view(v) for v in f.sorted_values()))
    elems = tuple((k, value_view(v, detect_encrypted=False)) for k, v in f.iter_present())
    return FieldView(obj, name, "set", elements=elems)


@dataclass(frozen=True, slots=True)
class StateView:
    """The whole decoded state (fields sorted by object, then field), its digest and op count.

    ``to_obj()`` is ``{"digest", "processed_count", "objects": {obj: {field: FieldView}}}``;
    ``object_obj``/``field_obj`` give the parts ``get OBJ`` and ``get OBJ FIELD`` print.
    """

    fields: tuple[FieldView, ...]
    digest: bytes
    processed_count: int

    def objects(self) -> dict[str, dict[str, FieldView]]:
        out: dict[str, dict[str, FieldView]] = {}
        for f in self.fields:
            out.setdefault(f.obj, {})[f.field] = f
        return out

    def object_obj(self, obj: str) -> dict[str, Any]:
        fields = self.objects().get(obj)
        if fields is None:
            raise NotFoundError(f"Object '{obj}' not found")
        return {name: f.to_obj() for name, f in fields.items()}

    def field_obj(self, obj: str, field: str) -> dict[str, Any]:
        fields = self.objects().get(obj)
        if fields is None:
            raise NotFoundError(f"Object '{obj}' not found")
        f = fields.get(field)
        if f is None:
            raise NotFoundError(f"Field '{obj}.{field}' not found")
        return f.to_obj()

    def to_obj(self) -> dict[str, Any]:
        return {
            "digest": self.digest.hex(),
            "processed_count": self.processed_count,
            "objects": {
                obj: {name: f.to_obj() for name, f in fields.items()}
                for obj, fields in self.objects().items()
            },
        }

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def state_view(state: State, digest: bytes) -> StateView:
    """The decoded view of a replayed ``state`` (``digest`` is its state digest)."""
    fields = tuple(
        field_view(obj, name, state.objects[obj][name])
        for obj in sorted(state.objects)
        for name in sorted(state.objects[obj])
    )
    return StateView(fields, bytes(digest), state.processed_count)


def _lossy(value: bytes) -> str:
    return bytes(value).decode("utf-8", "replace")


def api_field_value(f: MVReg | ORSet) -> Any:
    """``V`` of ``GET /api/state`` (store §3.5): one winner → its lossy UTF-8 text, several →
    ``{"concurrent_values": [...]}`` in ``values()`` order; a set → its present values."""
    if isinstance(f, MVReg):
        vals = f.values()
        if len(vals) == 1:
            return _lossy(vals[0])
        return {"concurrent_values": [_lossy(v) for v in vals]}
    return [_lossy(v) for _, v in f.iter_present()]


def api_state(state: State, digest: bytes) -> dict[str, Any]:
    """The ``GET /api/state`` document: ``{"objects": {obj: {field: V}}, "digest": hex}``."""
    objects = {
        obj: {name: api_field_value(state.objects[obj][name]) for name in sorted(state.objects[obj])}
        for obj in sorted(state.objects)
    }
    return {"objects": objects, "digest": bytes(digest).hex()}


# --------------------------------------------------------------------------- ops (store §3.5 OpView)


def _payload_view(op: Op) -> tuple[str, dict[str, Any]]:
    p = op.payload
    if isinstance(p, Data):
        return "Data", {"key": p.key, "value": _lossy(p.value)}
    if isinstance(p, Grant):
        return "Grant", {"subject_pk": p.subject_pk.hex(), "cred_hash": p.cred_hash.hex()}
    if isinstance(p, Revoke):
        return "Revoke", {
            "subject_pk": p.subject_pk.hex(),
            "role": p.role,
            "scope_tags": list(p.scope_tags),
            "at": _hlc_obj(p.at),
        }
    if isinstance(p, Credential):
        return "Credential", {"cred_id": p.cred_id, "format": "Jwt", "bytes_len": len(p.cred_bytes)}
    if isinstance(p, IssuerKey):
        return "IssuerKey", {
            "issuer_id": p.issuer_id,
            "key_id": p.key_id,
            "algo": p.algo,
            "pubkey": p.pubkey.hex(),
            "valid_from_ms": p.valid_from_ms,
            "valid_until_ms": p.valid_until_ms,
        }
    # strict-only kinds (never in a reference log, so the reference mapping above is unchanged)
    if isinstance(p, Genesis):
        return "Genesis", {"profile": p.profile, "project": p.project, "admins": _hexes(p.admins)}
    if isinstance(p, AdminAppoint):
        return "AdminAppoint", {"admin_pk": p.admin_pk.hex()}
    if isinstance(p, SealedKeyRotate):
        return "SealedKeyRotate", {
            "tag": p.tag,
            "new_version": p.new_version,
            "readers": [b.reader_pk.hex() for b in p.boxes],
        }
    return "Other", {}


@dataclass(frozen=True, slots=True)
class OpView:
    """One op as ``GET /api/ops`` shows it (store §3.5): kinds without a mapping are ``Other``."""

    op: Op

    def to_obj(self) -> dict[str, Any]:
        kind, payload = _payload_view(self.op)
        return {
            "op_id": self.op.op_id.hex(),
            "author": self.op.author_pk.hex(),
            "hlc_ms": self.op.hlc.physical_ms,
            "hlc_logical": self.op.hlc.logical,
            "parents": _hexes(self.op.parents),
            "payload_type": kind,
            "payload": payload,
        }

    def to_json(self) -> str:
        return _dumps(self.to_obj())


@dataclass(frozen=True, slots=True)
class OpsView:
    """The last ops of the total order, most recent first, and the log's length."""

    ops: tuple[OpView, ...]
    total: int

    def to_obj(self) -> dict[str, Any]:
        return {"ops": [v.to_obj() for v in self.ops], "total": self.total}

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def ops_view(order: Sequence[Op], limit: int = DEFAULT_OPS_LIMIT) -> OpsView:
    """The last ``limit`` ops of ``order``, most recent first (``ops[i]`` is at position ``total-1-i``)."""
    n = len(order)
    tail = order[max(0, n - max(0, limit)) :]
    return OpsView(tuple(OpView(op) for op in reversed(tail)), n)


# --------------------------------------------------------------------------- why grants do nothing


def _epoch_starts(index: EpochIndex) -> set[int]:
    return {e.start_pos for roles in index.epochs.values() for eps in roles.values() for e in eps}


def _unverified_claim(token: bytes, name: str) -> Any:
    try:
        payload = parse_compact(token).payload
    except VcError:
        return None
    return payload.get(name) if isinstance(payload, dict) else None


def _vc_problem(token: bytes, tv: TrustView, e: VcError, published: frozenset[str]) -> str:
    """Why a VC fails in-band verification, in words an operator can act on; ``published`` are
    the issuer ids some IssuerKey op of the log names (counted or not)."""
    iss = _unverified_claim(token, "iss")
    nbf = _unverified_claim(token, "nbf")
    if e.kind == UNKNOWN_ISSUER:
        keys = tv.issuers.get(e.detail, {})
        if not keys and e.detail in published:
            return (
                f"the IssuerKey ops of '{e.detail}' are ignored: an issuer_admin was live and their "
                "author is not one"
            )
        if not keys:
            return f"issuer '{e.detail}' has no published key in this log"
        spans = ", ".join(
            f"{kid} active from {rec.activated_at_ms}"
            + ("" if rec.revoked_at_ms is None else f" until its revocation at {rec.revoked_at_ms}")
            for kid, rec in sorted(keys.items())
        )
        return f"issuer '{e.detail}' has no key active at the VC's nbf ({nbf} ms): {spans}"
    if e.kind == REVOKED:
        return f"the VC is revoked by {e.detail}"
    if e.kind == BAD_SIG:
        return f"the VC's signature does not verify with the key of issuer '{iss}' ({e.detail})"
    return f"the VC does not verify: {e}"


def _grant_problems(order: Sequence[Op], gate: WriteGate | None) -> dict[int, str]:
    """``position -> why`` for every Grant of ``order`` that opens no write-gate epoch."""
    grants = [(pos, op) for pos, op in enumerate(order) if isinstance(op.payload, Grant)]
    if not grants or gate is None:
        return {}
    opened = _epoch_starts(gate.index)
    tokens: dict[bytes, bytes] = {}
    issuers: set[str] = set()
    for op in order:
        p = op.payload
        if isinstance(p, Credential):
            tokens.setdefault(cred_hash(p.cred_bytes), p.cred_bytes)
        elif isinstance(p, IssuerKey):
            issuers.add(p.issuer_id)
    published = frozenset(issuers)
    verdicts: dict[bytes, str | None] = {}
    out: dict[int, str] = {}
    for pos, op in grants:
        if pos in opened:
            continue
        g = op.payload
        assert isinstance(g, Grant)
        token = tokens.get(g.cred_hash)
        if token is None:
            out[pos] = f"its credential (cred_hash {g.cred_hash.hex()}) is not in the log"
            continue
        if g.cred_hash not in verdicts:
            try:
                claims = verify_vc_inband(token, gate.trust_view)
            except VcError as e:
                verdicts[g.cred_hash] = _vc_problem(token, gate.trust_view, e, published)
            else:
                verdicts[g.cred_hash] = None
                if claims.subject_pk != g.subject_pk:
                    verdicts[g.cred_hash] = f"the VC's subject is {claims.subject_pk.hex()}, not the Grant's"
        out[pos] = verdicts[g.cred_hash] or "it opens no epoch"
    return out


# --------------------------------------------------------------------------- who has access


def _epoch_status(e: Epoch, now_ms: int | None) -> EpochStatus:
    if e.end_pos is not None:
        return "revoked"
    if now_ms is None:
        return "open"
    if e.not_before is not None and now_ms < e.not_before.physical_ms:
        return "not_yet"
    if e.not_after is not None and now_ms >= e.not_after.physical_ms:
        return "expired"
    return "live"


@dataclass(frozen=True, slots=True)
class EpochView:
    """An epoch of a (subject, role): opened by ``grant_op_id`` at ``start_pos``, closed by
    ``revoke_op_id`` at ``end_pos`` (None: open), VC window ``[nbf_ms, exp_ms)``."""

    scope: tuple[str, ...]
    start_pos: int
    end_pos: int | None
    nbf_ms: int | None
    exp_ms: int | None
    grant_op_id: bytes
    revoke_op_id: bytes | None
    cred_hash: bytes | None
    status: EpochStatus

    def to_obj(self) -> dict[str, Any]:
        return {
            "scope": list(self.scope),
            "start_pos": self.start_pos,
            "end_pos": self.end_pos,
            "nbf_ms": self.nbf_ms,
            "exp_ms": self.exp_ms,
            "grant_op_id": self.grant_op_id.hex(),
            "revoke_op_id": None if self.revoke_op_id is None else self.revoke_op_id.hex(),
            "cred_hash": None if self.cred_hash is None else self.cred_hash.hex(),
            "status": self.status,
        }


def _epoch_view(order: Sequence[Op], e: Epoch, now_ms: int | None) -> EpochView:
    g = order[e.start_pos]
    ch = g.payload.cred_hash if isinstance(g.payload, Grant) else None
    return EpochView(
        tuple(sorted(e.scope)),
        e.start_pos,
        e.end_pos,
        None if e.not_before is None else e.not_before.physical_ms,
        None if e.not_after is None else e.not_after.physical_ms,
        g.op_id,
        None if e.end_pos is None else order[e.end_pos].op_id,
        ch,
        _epoch_status(e, now_ms),
    )


@dataclass(frozen=True, slots=True)
class SubjectAccess:
    """A subject's epochs for one role, in the order of their Grants."""

    subject_pk: bytes
    role: str
    epochs: tuple[EpochView, ...]

    def to_obj(self) -> dict[str, Any]:
        return {
            "subject_pk": self.subject_pk.hex(),
            "role": self.role,
            "epochs": [e.to_obj() for e in self.epochs],
        }


def _subjects(
    order: Sequence[Op], index: EpochIndex, now_ms: int | None, role: str | None = None
) -> tuple[SubjectAccess, ...]:
    out: list[SubjectAccess] = []
    for subject in sorted(index.epochs):
        roles = index.epochs[subject]
        for r in sorted(roles):
            if role is None or r == role:
                out.append(SubjectAccess(subject, r, tuple(_epoch_view(order, e, now_ms) for e in roles[r])))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GrantProblem:
    """A Grant in the log that opens no epoch, and why."""

    grant_op_id: bytes
    pos: int
    subject_pk: bytes
    cred_hash: bytes
    problem: str

    def to_obj(self) -> dict[str, Any]:
        return {
            "grant_op_id": self.grant_op_id.hex(),
            "pos": self.pos,
            "subject_pk": self.subject_pk.hex(),
            "cred_hash": self.cred_hash.hex(),
            "problem": self.problem,
        }


@dataclass(frozen=True, slots=True)
class KeyView:
    """A published issuer key (core §11.3): active at t iff activated_at <= t < valid_until,
    and before revoked_at when revoked."""

    key_id: str
    algo: str
    pubkey: bytes
    valid_from_ms: int
    valid_until_ms: int
    activated_at_ms: int
    revoked_at_ms: int | None

    def to_obj(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algo": self.algo,
            "pubkey": self.pubkey.hex(),
            "valid_from_ms": self.valid_from_ms,
            "valid_until_ms": self.valid_until_ms,
            "activated_at_ms": self.activated_at_ms,
            "revoked_at_ms": self.revoked_at_ms,
        }


@dataclass(frozen=True, slots=True)
class IssuerView:
    issuer_id: str
    keys: tuple[KeyView, ...]

    def to_obj(self) -> dict[str, Any]:
        return {"issuer_id": self.issuer_id, "keys": [k.to_obj() for k in self.keys]}


def status_list_indices(sl: StatusList) -> tuple[int, ...]:
    """Every index ``sl.is_revoked`` answers True for, ascending (chunk 0's length per chunk)."""
    if not sl.chunks or not sl.chunks[0]:
        return ()
    per_chunk = len(sl.chunks[0])
    out: list[int] = []
    for ci, chunk in enumerate(sl.chunks):
        for bi in range(min(len(chunk), per_chunk)):
            b = chunk[bi]
            if b:
                base = ci * per_chunk * 8 + bi * 8
                out.extend(base + bit for bit in range(8) if b >> bit & 1)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class StatusListView:
    """The winning version of a status list and the indices it revokes."""

    list_id: str
    issuer_id: str
    version: int
    revoked: tuple[int, ...]

    def to_obj(self) -> dict[str, Any]:
        return {
            "list_id": self.list_id,
            "issuer_id": self.issuer_id,
            "version": self.version,
            "revoked": list(self.revoked),
        }


@dataclass(frozen=True, slots=True)
class AccessReport:
    """Who may do what according to the log.

    ``subjects``: every (subject, role) with write-gate epochs (VCs verified in-band).
    ``trust_admins``: issuer_admin epochs of the trust gating (self-signed VCs count, core
    §12.3); while one is live, only its holders' trust ops count. ``ineffective_grants``:
    Grants that open nothing, with the reason. ``policy_active`` is False while the log
    has no Grant or Revoke: then every write is applied.
    """

    policy_active: bool
    now_ms: int | None
    subjects: tuple[SubjectAccess, ...]
    trust_admins: tuple[SubjectAccess, ...]
    ineffective_grants: tuple[GrantProblem, ...]
    issuers: tuple[IssuerView, ...]
    status_lists: tuple[StatusListView, ...]

    def status_list(self, list_id: str) -> StatusListView | None:
        return next((s for s in self.status_lists if s.list_id == list_id), None)

    def to_obj(self) -> dict[str, Any]:
        return {
            "policy_active": self.policy_active,
            "now_ms": self.now_ms,
            "subjects": [s.to_obj() for s in self.subjects],
            "trust_admins": [s.to_obj() for s in self.trust_admins],
            "ineffective_grants": [g.to_obj() for g in self.ineffective_grants],
            "issuers": [i.to_obj() for i in self.issuers],
            "status_lists": [s.to_obj() for s in self.status_lists],
        }

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def _issuers(tv: TrustView) -> tuple[IssuerView, ...]:
    return tuple(
        IssuerView(
            iss,
            tuple(
                KeyView(
                    kid,
                    r.algo,
                    r.pubkey,
                    r.valid_from_ms,
                    r.valid_until_ms,
                    r.activated_at_ms,
                    r.revoked_at_ms,
                )
                for kid, r in sorted(tv.issuers[iss].items())
            ),
        )
        for iss in sorted(tv.issuers)
    )


def _status_lists(tv: TrustView) -> tuple[StatusListView, ...]:
    return tuple(
        StatusListView(sl.list_id, sl.issuer_id, sl.version, status_list_indices(sl))
        for sl in (tv.status_lists[k] for k in sorted(tv.status_lists))
    )


def access_report(order: Sequence[Op], now_ms: int | None = None) -> AccessReport:
    """The access report of a log in total order; ``now_ms`` classifies epochs live/expired/not_yet.

    A strict log gets the strict gate's view (``_strict_access_report``)."""
    if is_strict_order(order):
        return _strict_access_report(order, now_ms)
    gate = policy.build_write_gate(order)
    tv = gate.trust_view if gate is not None else policy.trust_view_for(order)
    subjects = () if gate is None else _subjects(order, gate.index, now_ms)
    admins = _subjects(order, policy.epochs_m4(order), now_ms, ISSUER_ADMIN)
    problems = tuple(
        GrantProblem(order[pos].op_id, pos, g.subject_pk, g.cred_hash, why)
        for pos, why in sorted(_grant_problems(order, gate).items())
        if isinstance(g := order[pos].payload, Grant)
    )
    return AccessReport(gate is not None, now_ms, subjects, admins, problems, _issuers(tv), _status_lists(tv))


#: strict: why a Grant does not count, in words (the reason code leads)
_STRICT_GRANT_TEXT: Final = {
    strict.UNTRUSTED_ISSUER: "its VC verifies against no issuer key published by an admin of the project, "
    "or names another subject",
    strict.SELF_ISSUED: "its VC is signed with the subject's own key (self-issued: no role)",
}


def _strict_epoch(
    order: Sequence[Op], gate: strict.StrictGate, g: strict.StrictGrant, now_ms: int | None
) -> EpochView:
    """A counting grant as an epoch: from its position to the first counting Revoke that kills it.

    Under strict a killed grant permits no new op (one with the Revoke in its past is
    ``revoked_cred``, one without it ``concurrent_with_revoke``), hence ``revoked``.
    """
    kill = gate.state.kills.get(g.op_id)
    end_pos = None if kill is None else kill.first_pos
    rid = None
    if end_pos is not None and end_pos < len(order):
        rid = order[end_pos].op_id
    status: EpochStatus
    if end_pos is not None:
        status = "revoked"
    elif now_ms is None:
        status = "open"
    elif now_ms < g.nbf_ms:
        status = "not_yet"
    elif now_ms >= g.exp_ms:
        status = "expired"
    else:
        status = "live"
    return EpochView(
        tuple(sorted(g.scope)), g.pos, end_pos, g.nbf_ms, g.exp_ms, g.op_id, rid, g.cred_hash, status
    )


def _strict_admins(order: Sequence[Op], gate: strict.StrictGate) -> tuple[SubjectAccess, ...]:
    """The project's admins (role ``admin``): the genesis admins (epoch opened by the genesis),
    then each counting appointment (opened by its AdminAppoint op), by key."""
    positions = {op.op_id: pos for pos, op in enumerate(order)}
    opened: dict[bytes, list[bytes]] = {pk: [order[0].op_id] for pk in gate.profile.admins}
    for pk, ids in gate.state.appointed.items():
        opened.setdefault(pk, []).extend(ids)

    def epoch(op_id: bytes) -> EpochView:
        return EpochView((), positions[op_id], None, None, None, op_id, None, None, "open")

    return tuple(
        SubjectAccess(pk, "admin", tuple(epoch(i) for i in sorted(ids, key=positions.__getitem__)))
        for pk, ids in sorted(opened.items())
    )


def _strict_grant_problems(order: Sequence[Op], gate: strict.StrictGate) -> tuple[GrantProblem, ...]:
    """Every Grant of a strict log that does not count, with the strict gate's reason first."""
    counting = {g.op_id for gs in gate.state.grants.values() for g in gs}
    why_at = {pos: why for items in gate.state.uncounted.values() for pos, why in items}
    carried = {cred_hash(op.payload.cred_bytes) for op in order if isinstance(op.payload, Credential)}
    out = []
    for pos, op in enumerate(order):
        g = op.payload
        if not isinstance(g, Grant) or op.op_id in counting:
            continue
        void = gate.void_reason(op.op_id)
        if void is not None:
            text = (
                f"{void}: the grant is void (it or an ancestor has an HLC below a parent's, or is a genesis)"
            )
        elif g.cred_hash not in carried:
            text = (
                f"{strict.UNTRUSTED_ISSUER}: its credential (cred_hash {g.cred_hash.hex()}) is not in the log"
            )
        else:
            why = why_at.get(pos, strict.UNTRUSTED_ISSUER)
            text = f"{why}: {_STRICT_GRANT_TEXT.get(why, 'the grant does not count')}"
        out.append(GrantProblem(op.op_id, pos, g.subject_pk, g.cred_hash, text))
    return tuple(out)


def _strict_access_report(order: Sequence[Op], now_ms: int | None) -> AccessReport:
    """``access_report`` of a strict log, from the strict gate (``ecac.core.strict``): the counting
    grants per (subject, role) as epochs (closed by the first counting Revoke that kills them),
    the admins as ``trust_admins`` (role ``admin``), the grants that do not count with the strict
    reason, and the TrustView built from admins' trust ops only. Policy is always on (deny by
    default)."""
    gate = strict.build_strict_gate(order)
    by_role: dict[tuple[bytes, str], list[EpochView]] = {}
    for subject in sorted(gate.state.grants):
        for g in gate.counting_grants(subject):
            by_role.setdefault((subject, g.role), []).append(_strict_epoch(order, gate, g, now_ms))
    subjects = tuple(SubjectAccess(s, r, tuple(eps)) for (s, r), eps in sorted(by_role.items()))
    tv = gate.trust_view
    return AccessReport(
        True,
        now_ms,
        subjects,
        _strict_admins(order, gate),
        _strict_grant_problems(order, gate),
        _issuers(tv),
        _status_lists(tv),
    )


# --------------------------------------------------------------------------- why each write was decided


@dataclass(frozen=True, slots=True)
class DecisionView:
    """The gate's verdict on one data op at its position, with the reason and the why in words."""

    pos: int
    op_id: bytes
    author: bytes
    key: str
    action: str
    obj: str
    field: str
    elem: str | None
    tags: tuple[str, ...]
    hlc: Hlc
    verdict: Literal["ALLOWED", "DENIED"]
    reason: str | None
    detail: str

    def to_obj(self) -> dict[str, Any]:
        return {
            "pos": self.pos,
            "op_id": self.op_id.hex(),
            "author": self.author.hex(),
            "key": self.key,
            "action": self.action,
            "obj": self.obj,
            "field": self.field,
            "elem": self.elem,
            "tags": list(self.tags),
            "hlc": _hlc_obj(self.hlc),
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail,
        }

    def to_json(self) -> str:
        return _dumps(self.to_obj())


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every data op's decision in log order; ``policy_active`` False means allow-all."""

    policy_active: bool
    decisions: tuple[DecisionView, ...]

    def find(self, op_id_hex: str) -> DecisionView:
        """The decision of the data op whose id is (or uniquely starts with) ``op_id_hex``."""
        want = op_id_hex.strip().lower()
        if len(want) < 4 or any(c not in "0123456789abcdef" for c in want):
            raise EcacError(f"op id {op_id_hex!r}: expected hex (at least 4 characters of the op id)")
        hits = [d for d in self.decisions if d.op_id.hex().startswith(want)]
        if not hits:
            raise NotFoundError(f"no data op with id {want} in the log")
        if len(hits) > 1:
            raise EcacError(f"op id prefix {want} is ambiguous ({len(hits)} data ops); give more characters")
        return hits[0]

    def to_obj(self) -> dict[str, Any]:
        return {"policy_active": self.policy_active, "decisions": [d.to_obj() for d in self.decisions]}

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def _tags_text(tags: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(tags)) + "}"


def _writing_epochs(index: EpochIndex, author: bytes, action: str) -> list[tuple[str, Epoch]]:
    roles = index.roles_of(author)
    return [(r, e) for r in sorted(roles) if role_can_write(r, action) for e in roles[r]]


def _window(e: Epoch) -> str:
    nbf = "-" if e.not_before is None else str(e.not_before.physical_ms)
    exp = "-" if e.not_after is None else str(e.not_after.physical_ms)
    return f"[{nbf}, {exp}) ms"


def _decision_detail(
    order: Sequence[Op],
    gate: WriteGate | None,
    problems: Mapping[int, str],
    pos: int,
    op: Op,
    d: DataAction,
    reason: str | None,
) -> str:
    """The why of one verdict, from the epochs the gate used."""
    res = f"{d.obj}.{d.field}"
    if gate is None:
        return "policy is off (the log has no Grant or Revoke), so every write is applied"
    eps = _writing_epochs(gate.index, op.author_pk, d.action)
    t = op.hlc.physical_ms
    if reason is None:
        for role, e in eps:
            if e.in_pos(pos) and e.in_time(op.hlc) and not e.scope.isdisjoint(d.tags):
                return (
                    f"{role} epoch opened by grant {order[e.start_pos].op_id.hex()} "
                    f"at position {e.start_pos} (scope {_tags_text(e.scope)}, VC window {_window(e)}) "
                    f"covers {res} {_tags_text(d.tags)}"
                )
        return "allowed by the write gate"
    if reason == policy.REVOKED_CRED:
        for role, e in eps:
            if e.end_pos is not None and pos >= e.end_pos and not e.scope.isdisjoint(d.tags):
                return (
                    f"the author's {role} epoch (scope {_tags_text(e.scope)}) opened at position "
                    f"{e.start_pos} was closed at position {e.end_pos} by revoke "
                    f"{order[e.end_pos].op_id.hex()}; this op is at position {pos}"
                )
    if reason == policy.EXPIRED_CRED:
        for role, e in eps:
            if e.in_pos(pos) and e.not_after is not None and op.hlc >= e.not_after:
                return (
                    f"the credential behind the author's {role} epoch expired at "
                    f"{e.not_after.physical_ms} ms; this op's time is {t} ms"
                )
    if reason == policy.OUT_OF_SCOPE:
        if not d.tags:
            return (
                f"{res} has no resource tags, so no scope covers it "
                "(under policy only o.x, o.s and c<digits>.param<digits> can be written)"
            )
        scopes = sorted({tag for _, e in eps if e.in_pos(pos) and e.in_time(op.hlc) for tag in e.scope})
        return f"the author's live scope {_tags_text(scopes)} does not cover {res} {_tags_text(d.tags)}"
    # deny_wins: no epoch applies at all
    if not eps:
        mine = [
            f"grant {order[p].op_id.hex()} opens no epoch: {why}"
            for p, why in sorted(problems.items())
            if isinstance(g := order[p].payload, Grant) and g.subject_pk == op.author_pk
        ]
        if mine:
            return "; ".join(mine)
        return "the author holds no role that may write (no Grant for this key in the log)"
    if not d.tags:
        return f"{res} has no resource tags, so no scope covers it"
    later = [e for _, e in eps if e.start_pos > pos]
    if later and all(e.start_pos > pos for _, e in eps):
        return (
            f"the author's grant comes at position {min(e.start_pos for e in later)}, after this op at "
            f"position {pos} (grants are not retroactive)"
        )
    early = [e for _, e in eps if e.in_pos(pos) and e.not_before is not None and op.hlc < e.not_before]
    if early:
        return f"this op's time {t} ms is before the credential's nbf {early[0].not_before.physical_ms} ms"  # type: ignore[union-attr]
    return f"no live epoch of the author covers {res} {_tags_text(d.tags)} at position {pos}"


def _decision(
    order: Sequence[Op],
    gate: WriteGate | None,
    problems: Mapping[int, str],
    pos: int,
    op: Op,
    verdict: Literal["ALLOWED", "DENIED"],
    reason: str | None,
) -> DecisionView:
    p = op.payload
    assert isinstance(p, Data)
    d = derive_action_and_tags(p.key)
    assert d is not None  # policy.explain skips keys outside the grammar
    return DecisionView(
        pos,
        op.op_id,
        op.author_pk,
        p.key,
        d.action,
        d.obj,
        d.field,
        d.elem,
        tuple(sorted(d.tags)),
        op.hlc,
        verdict,
        reason,
        _decision_detail(order, gate, problems, pos, op, d, reason),
    )


def explain_order(order: Sequence[Op]) -> Explanation:
    """Every data op's verdict (``policy.explain``, the replay's gate) with its reason and why."""
    if is_strict_order(order):
        return _strict_explanation(order)
    gate = policy.build_write_gate(order)
    problems = _grant_problems(order, gate)
    positions = {op.op_id: pos for pos, op in enumerate(order)}
    out = tuple(
        _decision(order, gate, problems, positions[op.op_id], op, verdict, reason)
        for op, verdict, reason in policy.explain(order)
    )
    return Explanation(gate is not None, out)


def _strict_decision(gate: strict.StrictGate, pos: int, op: Op) -> DecisionView | None:
    """The strict gate's decision on the data op at ``pos`` (None: not a data key)."""
    p = op.payload
    d = derive_action_and_tags(p.key) if isinstance(p, Data) else None
    if d is None:
        return None
    ok = gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc)
    reason = None if ok else gate.deny_reason(op.author_pk, d.action, d.tags, pos, op.hlc)
    return DecisionView(
        pos,
        op.op_id,
        op.author_pk,
        p.key,  # type: ignore[union-attr]
        d.action,
        d.obj,
        d.field,
        d.elem,
        tuple(sorted(d.tags)),
        op.hlc,
        "ALLOWED" if ok else "DENIED",
        reason,
        gate.detail(pos, d.action, d.tags, reason),
    )


def _strict_explanation(order: Sequence[Op]) -> Explanation:
    """``explain_order`` of a strict log: the strict gate's verdicts and reasons (``ecac.core.strict``)."""
    gate = strict.build_strict_gate(order)
    out = (_strict_decision(gate, pos, op) for pos, op in enumerate(order) if type(op.payload) is Data)
    return Explanation(True, tuple(d for d in out if d is not None))


# --------------------------------------------------------------------------- what a new op would do


@dataclass(frozen=True, slots=True)
class Effect:
    """What one new op does to the log: ``effective`` False means it would change nothing
    (or, for a data op, be denied); ``detail`` says what or why."""

    op_id: bytes
    kind: str
    effective: bool
    detail: str
    decision: DecisionView | None = None

    def to_obj(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id.hex(),
            "kind": self.kind,
            "effective": self.effective,
            "detail": self.detail,
            "decision": None if self.decision is None else self.decision.to_obj(),
        }


@dataclass(frozen=True, slots=True)
class Preview:
    """The effects of new ops on a log, computed before they are stored."""

    effects: tuple[Effect, ...]

    @property
    def ok(self) -> bool:
        return all(e.effective for e in self.effects)

    @property
    def denied(self) -> tuple[DecisionView, ...]:
        return tuple(
            e.decision for e in self.effects if e.decision is not None and e.decision.verdict == "DENIED"
        )

    def first_problem(self) -> Effect | None:
        return next((e for e in self.effects if not e.effective), None)

    def storable(self, *, force: bool, store_denied: bool = False) -> bool:
        """The one rule for storing previewed ops (``--db`` and the gateway alike): when every op has
        its effect, or with ``force`` when no write is denied, or with ``store_denied`` too."""
        return self.ok or (force and (store_denied or not self.denied))

    def to_obj(self) -> dict[str, Any]:
        return {"ok": self.ok, "effects": [e.to_obj() for e in self.effects]}

    def to_json(self) -> str:
        return _dumps(self.to_obj())


def _same_key(rec: Any, p: IssuerKey) -> bool:
    return bool(
        rec.algo == p.algo
        and rec.pubkey == p.pubkey
        and rec.valid_from_ms == p.valid_from_ms
        and rec.valid_until_ms == p.valid_until_ms
    )


def _gated_out(order: Sequence[Op], pos: int, op: Op) -> bool:
    """Whether a trust op at ``pos`` is ignored because an issuer_admin is live and its author is not one."""
    if not policy.has_read_policy(order):
        return False
    admin = policy.epochs_m4(order)
    return admin.role_active_at(ISSUER_ADMIN, pos, op.hlc) and not admin.subject_has_role_at(
        op.author_pk, ISSUER_ADMIN, pos, op.hlc
    )


_GATED_TEXT = "ignored: an issuer_admin is live at its position and its author is not one"


def _trust_effect(
    before: TrustView, after: TrustView, order: Sequence[Op], pos: int, op: Op
) -> tuple[bool, str]:
    p = op.payload
    if isinstance(p, IssuerKey):
        rec = after.key(p.issuer_id, p.key_id)
        name = f"{p.issuer_id}/{p.key_id}"
        if rec is not None and _same_key(rec, p):
            if before.key(p.issuer_id, p.key_id) is not None:
                return True, f"issuer key {name} is already published with this key (no change)"
            return True, f"publishes issuer key {name}, active from {rec.activated_at_ms} ms"
        if rec is not None:
            return (
                False,
                f"issuer key {name} is already published with another key (first wins); use another key id",
            )
        if _gated_out(order, pos, op):
            return False, _GATED_TEXT
        return False, f"issuer key {name} does not take effect"
    assert isinstance(p, StatusListChunk)
    sl = after.status_lists.get(p.list_id)
    if sl is not None and sl.version == p.version and sl.issuer_id == p.issuer_id:
        return True, f"status list {p.list_id} is now version {p.version} by {p.issuer_id}"
    if _gated_out(order, pos, op):
        return False, _GATED_TEXT
    if sl is not None:
        return False, f"status list {p.list_id} version {sl.version} by {sl.issuer_id} wins over this chunk"
    return False, f"status list {p.list_id} version {p.version} is not complete"


def _strict_effect(gate: strict.StrictGate, pos: int, op: Op) -> tuple[bool, str]:
    """Whether a new non-data op takes effect under the strict profile, and what it does."""
    st = gate.state
    p = op.payload
    if isinstance(p, IssuerKey | IssuerKeyRevoke | StatusListChunk | AdminAppoint):
        if not gate.is_admin(op.author_pk, op.op_id):
            return False, f"strict: only the project's admins may publish {p.NAME} (the signer is not one)"
        return True, f"strict: {p.NAME} by a project admin"
    if isinstance(p, Grant):
        if any(g.op_id == op.op_id for g in gate.counting_grants(p.subject_pk)):
            return (
                True,
                f"strict: grants {p.subject_pk.hex()} (counts for ops that have it in their causal past)",
            )
        why = next((w for q, w in st.uncounted.get(p.subject_pk, ()) if q == pos), strict.UNTRUSTED_ISSUER)
        return False, f"strict: the grant does not count ({why})"
    if isinstance(p, Revoke):
        if op.op_id in st.killers:
            return (
                True,
                f"strict: revokes {p.role} of {p.subject_pk.hex()} (denies its ops the signer has not seen)",
            )
        return False, (
            "strict: the revoke closes nothing (no counting grant it meets, or the signer is neither "
            "an admin, the subject nor the credential's issuer)"
        )
    return True, f"stores a {p.NAME} op"


def _strict_preview(
    order: Sequence[Op], dag: Dag, new_ops: Sequence[Op], fresh: set[bytes], positions: Mapping[bytes, int]
) -> Preview:
    """``preview`` of a strict log: the strict gate's verdicts and effects."""
    gate = strict.build_strict_gate(order, dag=dag)
    effects = []
    for op in new_ops:
        kind = op.payload.NAME
        pos = positions.get(op.op_id)
        if op.op_id not in fresh:
            effects.append(Effect(op.op_id, kind, False, "this op is already in the log"))
            continue
        if pos is None:
            effects.append(Effect(op.op_id, kind, False, "its parents are not all in the log"))
            continue
        void = gate.void_reason(op.op_id)
        p = op.payload
        if void is not None:
            effects.append(Effect(op.op_id, kind, False, f"strict: refused ({void})"))
            continue
        if not isinstance(p, Data):
            ok, text = _strict_effect(gate, pos, op)
            effects.append(Effect(op.op_id, kind, ok, text))
            continue
        dv = _strict_decision(gate, pos, op)
        if dv is None:
            effects.append(
                Effect(op.op_id, kind, False, f"{p.key!r} is not a data key (mv:, set+: or set-:)")
            )
            continue
        text = "ALLOWED" if dv.reason is None else f"DENIED {dv.reason}"
        effects.append(Effect(op.op_id, kind, dv.reason is None, f"{text}: {dv.detail}", dv))
    return Preview(tuple(effects))


def preview(log: Sequence[Op], new_ops: Sequence[Op]) -> Preview:
    """What ``new_ops`` would do if appended to ``log`` (its ops in total order, as a store or
    ``Dag.topo_order`` gives them): each data op's gate verdict at the position it would take,
    whether a Grant opens an epoch, a Revoke closes one, an issuer key or status list takes
    effect. Verdicts hold for this log; ops that arrive later (a Revoke from a peer) can
    change them, exactly as in replay.
    """
    dag = Dag()
    dag.extend_ordered(list(log))
    fresh = {op.op_id for op in new_ops if dag.insert(op)}
    order = dag.topo_order()
    positions = {op.op_id: pos for pos, op in enumerate(order)}
    if is_strict_order(order):
        return _strict_preview(order, dag, new_ops, fresh, positions)
    gate = policy.build_write_gate(order)
    tv_after = gate.trust_view if gate is not None else policy.trust_view_for(order)
    needs_before = any(isinstance(op.payload, IssuerKey | StatusListChunk) for op in new_ops)
    tv_before = policy.trust_view_for(log) if needs_before else tv_after
    problems = _grant_problems(order, gate)
    decided = (
        {op.op_id: (v, r) for op, v, r in policy.explain(order)}
        if any(isinstance(op.payload, Data) for op in new_ops)
        else {}
    )
    effects = []
    for op in new_ops:
        kind = op.payload.NAME
        if op.op_id not in fresh:
            effects.append(Effect(op.op_id, kind, False, "this op is already in the log"))
            continue
        pos = positions.get(op.op_id)
        if pos is None:
            effects.append(Effect(op.op_id, kind, False, "its parents are not all in the log"))
            continue
        p = op.payload
        if isinstance(p, Data):
            if op.op_id not in decided:
                effects.append(
                    Effect(op.op_id, kind, False, f"{p.key!r} is not a data key (mv:, set+: or set-:)")
                )
                continue
            verdict, reason = decided[op.op_id]
            dv = _decision(order, gate, problems, pos, op, verdict, reason)
            text = "ALLOWED" if reason is None else f"DENIED {reason}"
            effects.append(Effect(op.op_id, kind, reason is None, f"{text}: {dv.detail}", dv))
        elif isinstance(p, Grant):
            if gate is not None and pos in _epoch_starts(gate.index):
                role = next(
                    r
                    for r, eps in gate.index.roles_of(p.subject_pk).items()
                    for e in eps
                    if e.start_pos == pos
                )
                effects.append(
                    Effect(op.op_id, kind, True, f"opens an epoch of role {role} for {p.subject_pk.hex()}")
                )
            else:
                why = problems.get(pos, "it opens no epoch")
                effects.append(Effect(op.op_id, kind, False, f"the grant opens no epoch: {why}"))
        elif isinstance(p, Revoke):
            closed = (
                []
                if gate is None
                else [e for e in gate.index.roles_of(p.subject_pk).get(p.role, ()) if e.end_pos == pos]
            )
            if closed:
                effects.append(
                    Effect(
                        op.op_id,
                        kind,
                        True,
                        f"closes {len(closed)} {p.role} epoch(s) of {p.subject_pk.hex()}",
                    )
                )
            else:
                effects.append(
                    Effect(
                        op.op_id,
                        kind,
                        False,
                        f"closes nothing: {p.subject_pk.hex()} has no open {p.role} epoch whose scope "
                        f"meets {_tags_text(p.scope_tags)}",
                    )
                )
        elif isinstance(p, IssuerKey | StatusListChunk):
            eff, text = _trust_effect(tv_before, tv_after, order, pos, op)
            effects.append(Effect(op.op_id, kind, eff, text))
        elif isinstance(p, Credential):
            effects.append(Effect(op.op_id, kind, True, f"carries VC {p.cred_id!r}"))
        else:
            effects.append(Effect(op.op_id, kind, True, f"stores a {kind} op"))
    return Preview(tuple(effects))
