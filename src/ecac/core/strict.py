"""The strict profile's write gate: a project trust root and causal deny-wins (docs/security.md).

Under the strict profile (a log rooted in a ``Genesis`` op, ``ecac.core.profile``) the
reference's positional rules are replaced by causal ones, all pure functions of the op set:

* **Void ops.** An op whose HLC is below one of its parents' (``hlc_regression``), a second
  Genesis, and every descendant of such an op (``invalid_ancestor``) have no effect at all:
  the same verdicts as if admission had refused them (``profile.admission_error``).
* **Trust root.** Admins are the genesis admins plus whoever an admin appointed by an
  ``AdminAppoint`` in the appointee's op's causal past. Only admins' IssuerKey,
  IssuerKeyRevoke and StatusListChunk ops count (the TrustView is built from those alone; the
  reference's self-signed M4 ``issuer_admin`` path does not exist here).
* **Grants.** A Grant counts when its VC verifies in band against that TrustView, names the
  Grant's subject, and is not self-issued (the verifying issuer key is not the subject's key).
* **Revokes.** A Revoke of ``(subject, role, scope_tags)`` counts against a counting Grant of
  that subject and role whose scope meets ``scope_tags`` when its author is an admin (at the
  Revoke), the Grant's subject, or the Grant's VC issuer (the issuer key's public key).
* **Causal deny-wins.** A Data op X by S is permitted iff some counting Grant G of S (a role
  that may do the action, scope meeting the resource's tags, VC window containing X's HLC)
  is a strict ancestor of X, and every counting Revoke R of G that is not an ancestor of G
  (a revoke before a re-grant does not touch the re-grant) has X as a strict ancestor (the
  revoker had seen X). So a write concurrent with its revoke, or after it, is denied, whatever
  the HLCs say.

Happens-before is the exact ``Dag.hb`` (O(1) in the common cases): replay passes its own
DAG; given only an order (explain, preview) the gate builds a private one
(``Dag.extend_ordered``, chain extensions in C), so both get the same verdicts. A data op's
candidates are found without scanning every grant: only the author's grants, newest first,
positioned before the op and before their first killing Revoke (a Grant can only permit ops
positioned after it, and an op can only be in the past of Revokes positioned after it).

Incremental: ``StrictGates`` extends the previous gate over appended ops unless they hold a
kind of ``STRICT_RETROACTIVE_KINDS`` (a Revoke may deny an earlier concurrent write) or a
Credential an earlier Grant names; replay's resume checks use the same set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, islice
from operator import attrgetter, itemgetter, le, lt

from ecac.core import policy
from ecac.core.dag import Dag
from ecac.core.errors import VcError
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
    StatusListChunk,
)
from ecac.core.profile import HLC_REGRESSION, Profile, detect_profile, is_strict_order
from ecac.core.resources import derive_action_and_tags, role_can_write
from ecac.core.trust import TrustView
from ecac.core.vc import VcMemo, VerifiedClaims, cred_hash, parse_compact

# deny reasons (explain, gateway); the reference's four keep their names
INVALID_ANCESTOR = "invalid_ancestor"
SECOND_GENESIS = "second_genesis"
NO_GRANT_IN_PAST = "no_grant_in_past"
UNTRUSTED_ISSUER = "untrusted_issuer"
SELF_ISSUED = "self_issued_vc"
CONCURRENT_WITH_REVOKE = "concurrent_with_revoke"
REVOKED_CRED = policy.REVOKED_CRED
EXPIRED_CRED = policy.EXPIRED_CRED
OUT_OF_SCOPE = policy.OUT_OF_SCOPE
STRICT_REASONS = (
    HLC_REGRESSION,
    INVALID_ANCESTOR,
    SECOND_GENESIS,
    UNTRUSTED_ISSUER,
    SELF_ISSUED,
    NO_GRANT_IN_PAST,
    OUT_OF_SCOPE,
    EXPIRED_CRED,
    REVOKED_CRED,
    CONCURRENT_WITH_REVOKE,
)

#: payload kinds that can change the verdict of an op ordered before them under strict (core §8.4
#: for strict): the reference's position-independent inputs plus Revoke (causal: a revoke arriving
#: later denies an earlier concurrent write) and Genesis (mixing). Saved resume points are never
#: continued over them; the live gate looks closer (``_StrictState.harmless``).
STRICT_RETROACTIVE_KINDS = frozenset(
    {"Credential", "IssuerKey", "IssuerKeyRevoke", "StatusListChunk", "Revoke", "Genesis"}
)

_TRUST_TYPES = (IssuerKey, IssuerKeyRevoke, StatusListChunk)
_PAYLOAD = attrgetter("payload")
_OP_ID = attrgetter("op_id")
_FIRST = itemgetter(0)
_HLC = attrgetter("hlc")
_HLC_KEY = attrgetter("physical_ms", "logical", "node_id")
_INF = 1 << 62

#: ``policy.Gate.permits``: (author_pk, action, tags, pos, hlc) -> permitted
Permits = Callable[[bytes, str, frozenset[str], int, Hlc], bool]


@dataclass(frozen=True, slots=True)
class StrictGrant:
    """A counting Grant: its position and id, the VC's subject, role, scope and window, and the
    public key of the issuer key that verified the VC."""

    pos: int
    op_id: bytes
    subject: bytes
    role: str
    scope: frozenset[str]
    nbf_ms: int
    exp_ms: int
    issuer_pk: bytes
    cred_hash: bytes


@dataclass(slots=True)
class _Kill:
    """The counting Revokes of one Grant that are not in its causal past, and the first position.

    Only the causally minimal killers are kept (an antichain, ``add``): the two questions asked of
    them, "is the op before every killer" and "is some killer in the op's past", have the same
    answer over the minimal killers as over all (a later killer follows a minimal one). So a
    subject whose access is toggled n times along one history keeps one killer per grant, not up
    to n. Which Revokes kill anything at all is ``_StrictState.killers``."""

    revokes: list[bytes] = field(default_factory=list)
    first_pos: int = _INF

    def add(self, r: bytes, hb: Callable[[bytes, bytes], bool]) -> None:
        revokes = self.revokes
        if any(hb(x, r) for x in revokes):
            return  # an earlier killer implies this one
        if revokes:
            revokes[:] = [x for x in revokes if not hb(r, x)]
        revokes.append(r)


class _Fast:
    """An author's last op permitted by a grant that no Revoke kills, with its tags and action: an
    op whose only parent is that op has the grant in its causal past too (``permits_in``)."""

    __slots__ = ("action", "grant", "last", "tags")

    def __init__(self, last: tuple[bytes], grant: StrictGrant, tags: frozenset[str], action: str) -> None:
        self.last = last
        self.grant = grant
        self.tags = tags
        self.action = action


class _Alive:
    """One author's grants that can permit an op at ``pos``: positioned before it and not killed at
    or before it (``(end, grant)``, oldest first; ``end``: the position of its first killing Revoke).
    Queries come in position order (replay, explain): moving forward adds the grants passed and drops
    the killed ones, so each grant is looked at about twice however many dead grants the author
    has; a query behind ``pos`` starts over. Dropped whenever the author's grants or kills change."""

    __slots__ = ("ends", "grants", "i", "live", "next_end", "pos")

    def __init__(self, grants: list[StrictGrant], kills: dict[bytes, _Kill]) -> None:
        self.grants = grants
        self.ends = [k.first_pos if (k := kills.get(g.op_id)) is not None else _INF for g in grants]
        self.i = 0  # grants[:i] were passed
        self.pos = -1
        self.live: list[tuple[int, StrictGrant]] = []
        self.next_end = _INF  # the smallest end in ``live``

    def at(self, pos: int) -> list[tuple[int, StrictGrant]]:
        if pos == self.pos:
            return self.live
        if pos < self.pos:
            self.i, self.live, self.next_end = 0, [], _INF
        self.pos = pos
        live = self.live
        if pos >= self.next_end:
            live = self.live = [x for x in live if x[0] > pos]
            self.next_end = min(map(_FIRST, live), default=_INF)
        gs, ends, i = self.grants, self.ends, self.i
        n = len(gs)
        while i < n and gs[i].pos < pos:
            e = ends[i]
            if e > pos:
                live.append((e, gs[i]))
                if e < self.next_end:
                    self.next_end = e
            i += 1
        self.i = i
        return live


def _issuer_pk(token: bytes, claims: VerifiedClaims, tv: TrustView) -> bytes | None:
    """The public key of the issuer key that verified ``token`` (selected as verification did)."""
    try:
        header = parse_compact(token).header
    except VcError:
        return None
    kid_v = header.get("kid") if isinstance(header, dict) else None
    if claims.issuer is None:
        return None
    rec = tv.select_key(claims.issuer, kid_v if isinstance(kid_v, str) else None, claims.nbf_ms)
    return None if rec is None else bytes(rec.pubkey)


class _StrictState:
    """What a strict gate build found over one order, kept so that the gate can be extended."""

    def __init__(self, order: Sequence[Op], memo: VcMemo, dag: Dag | None = None) -> None:
        """``dag``: the DAG whose ``topo_order()`` is ``order`` (replay has it; its ``hb`` is used
        and its later growth is trusted); without it a private one is built from the order."""
        self.profile = detect_profile(order)
        if not self.profile.strict:
            raise ValueError("not a strict log")
        self.memo = memo
        self.private = dag is None
        if dag is None:
            dag = Dag()
            dag.extend_ordered(list(order))
        self.dag = dag
        self.hb = dag.hb
        self._top: tuple[int, int, int] | None = None  # the largest HLC scanned (``_void_scan``)
        self.admins = frozenset(self.profile.admins)
        self.appointed: dict[bytes, list[bytes]] = {}  # admin pk -> counting AdminAppoint op ids
        #: op id -> why it is void (no effect)
        self.void: dict[bytes, str] = {}
        self.creds: dict[bytes, list[Op]] = {}  # cred_hash -> Credential ops carrying it
        #: cred_hash -> (claims, issuer key) or why the VC confers nothing
        self.claims: dict[bytes, tuple[VerifiedClaims, bytes] | str] = {}
        self.grants: dict[bytes, list[StrictGrant]] = {}  # subject -> counting grants by position
        #: subject -> (position, why) of its Grants that do not count
        self.uncounted: dict[bytes, list[tuple[int, str]]] = {}
        self.kills: dict[bytes, _Kill] = {}  # grant op id -> its (minimal) killing revokes
        self.killers: set[bytes] = set()  # op ids of the Revokes that kill some grant
        #: (subject, role) -> (position, Revoke, its author is an admin there)
        self.revokes: dict[tuple[bytes, str], list[tuple[int, Op, bool]]] = {}
        self.named: set[bytes] = set()  # cred hashes some Grant names
        self._fast: dict[bytes, _Fast] = {}  # author -> the fast path of ``permits_in``
        self._alive: dict[bytes, _Alive] = {}  # author -> its grants that can permit (``_candidates``)
        self._void_scan(order, 0)
        trust: list[tuple[int, Op]] = []
        grants: list[tuple[int, Op]] = []
        revokes: list[tuple[int, Op]] = []
        void = self.void
        for pos, op in policy.policy_ops(order):
            if op.op_id in void:
                continue
            p = op.payload
            if isinstance(p, AdminAppoint):
                self._appoint(op)
            elif isinstance(p, _TRUST_TYPES):
                if self.is_admin(op.author_pk, op.op_id):
                    trust.append((pos, op))
            elif isinstance(p, Credential):
                self.creds.setdefault(cred_hash(p.cred_bytes), []).append(op)
            elif isinstance(p, Grant):
                grants.append((pos, op))
            elif isinstance(p, Revoke):
                revokes.append((pos, op))
        self.tv = TrustView.build_from(trust, None)
        for pos, op in grants:
            self._grant(pos, op)
        for pos, op in revokes:
            self._revoke(pos, op)

    # ------------------------------------------------------------------ building blocks

    def _void_scan(self, order: Sequence[Op], start: int) -> None:
        """Mark ops with an HLC below a parent's, extra Genesis ops and their descendants void.

        Parents are positioned before their children, so an op can only be below a parent's when
        it is below the largest HLC positioned before it: only those ops look at their parents.
        Kahn's order takes the smallest ready HLC first, so in a log without a regression the HLCs
        never decrease along the order, and that check is a pass in C."""
        tail = order[start:]
        if not tail:
            return
        keys = list(map(_HLC_KEY, map(_HLC, tail)))  # HLCs as tuples: compared in C
        lo = 1 if start == 0 else 0  # the genesis has no parents
        top = keys[0] if start == 0 else self._top
        assert top is not None
        self._top = max(top, max(keys))
        own = keys[lo:]
        below: list[int] = []  # indices in ``tail`` of ops below an HLC before them
        if own and (top > own[0] or not all(map(le, own, islice(own, 1, None)))):
            before = accumulate(own, max, initial=top)  # the largest HLC before each op
            below = list(compress(range(lo, len(tail)), map(lt, own, before)))
        regress: set[int] = set()
        if below:
            get = self.dag.get
            for i in below:
                k = keys[i]
                for pid in tail[i].parents:
                    p = get(pid)
                    if p is not None and _HLC_KEY(p.hlc) > k:
                        regress.add(i)
                        break
        # detect_profile refused a second Genesis in the first build
        second = set()
        if start and Genesis in set(map(type, map(_PAYLOAD, tail))):
            second = {i for i, op in enumerate(tail) if type(op.payload) is Genesis}
        void = self.void
        if not void and not regress and not second:
            return  # the common case
        first = 0 if void else min(regress | second)
        for i in range(max(first, lo), len(tail)):
            op = tail[i]
            why = SECOND_GENESIS if i in second else None
            if any(pid in void for pid in op.parents):
                why = INVALID_ANCESTOR
            elif why is None and i in regress:
                why = HLC_REGRESSION
            if why is not None:
                void[op.op_id] = why

    def is_admin(self, pk: bytes, at: bytes) -> bool:
        """``pk`` is a genesis admin, or a counting appointment of it is a strict ancestor of ``at``."""
        if pk in self.admins:
            return True
        hb = self.hb
        return any(hb(a, at) for a in self.appointed.get(pk, ()))

    def _appoint(self, op: Op) -> None:
        p = op.payload
        assert isinstance(p, AdminAppoint)
        if self.is_admin(op.author_pk, op.op_id):
            self.appointed.setdefault(p.admin_pk, []).append(op.op_id)

    def _claims(self, h: bytes) -> tuple[VerifiedClaims, bytes] | str:
        """The claims of VC ``h`` and its issuer's key, or why it confers nothing (cached per build)."""
        got = self.claims.get(h)
        if got is not None:
            return got
        res: tuple[VerifiedClaims, bytes] | str = UNTRUSTED_ISSUER
        for op in self.creds.get(h, ()):
            token = op.payload.cred_bytes  # type: ignore[union-attr]
            vc = self.memo.inband(token, self.tv)
            if vc is None:
                continue
            ipk = _issuer_pk(token, vc, self.tv)
            if ipk is None:
                continue
            res = SELF_ISSUED if ipk == vc.subject_pk else (vc, ipk)
            break
        self.claims[h] = res
        return res

    def _grant(self, pos: int, op: Op) -> None:
        p = op.payload
        assert isinstance(p, Grant)
        self.named.add(p.cred_hash)
        got = self._claims(p.cred_hash)
        if isinstance(got, str) or got[0].subject_pk != p.subject_pk:
            why = got if isinstance(got, str) else UNTRUSTED_ISSUER
            self.uncounted.setdefault(p.subject_pk, []).append((pos, why))
            return
        vc, ipk = got
        g = StrictGrant(
            pos, op.op_id, p.subject_pk, vc.role, vc.scope, vc.nbf_ms, vc.exp_ms, ipk, p.cred_hash
        )
        self.grants.setdefault(p.subject_pk, []).append(g)
        self._alive.pop(p.subject_pk, None)
        # revokes already seen (earlier positions) that are not in this grant's past kill it
        for rpos, r, admin in self.revokes.get((p.subject_pk, vc.role), ()):
            self._maybe_kill(g, rpos, r, admin)

    def _revoke(self, pos: int, op: Op) -> None:
        p = op.payload
        assert isinstance(p, Revoke)
        admin = self.is_admin(op.author_pk, op.op_id)
        self.revokes.setdefault((p.subject_pk, p.role), []).append((pos, op, admin))
        for g in self.grants.get(p.subject_pk, ()):
            if g.role == p.role:
                self._maybe_kill(g, pos, op, admin)

    def _maybe_kill(self, g: StrictGrant, rpos: int, r: Op, admin: bool) -> None:
        p = r.payload
        assert isinstance(p, Revoke)
        if g.scope.isdisjoint(p.scope_tags):
            return
        author = r.author_pk
        if not (admin or author == g.subject or author == g.issuer_pk):
            return  # a Revoke by an unrelated author counts for nothing
        if rpos < g.pos and self.hb(r.op_id, g.op_id):
            return  # the revoke is in the grant's past: a re-grant after it
        k = self.kills.get(g.op_id)
        if k is None:
            k = self.kills[g.op_id] = _Kill()
            self._fast.pop(g.subject, None)  # its grant may be this one
        self.killers.add(r.op_id)
        k.add(r.op_id, self.hb)
        if rpos < k.first_pos:
            k.first_pos = rpos
            self._alive.pop(g.subject, None)

    def extend(self, order: Sequence[Op], start: int) -> None:
        """Continue over ``order[start:]`` when it is ``harmless``: the DAG, void marks,
        appointments, new VCs, Grants and Revokes, in position order."""
        if self.private:
            self.dag.extend_ordered(list(order[start:]))
        self._void_scan(order, start)
        void = self.void
        items = [(pos, op) for pos, op in policy.policy_ops(order[start:]) if op.op_id not in void]
        for _, op in items:  # claims are position-independent: every new VC first
            p = op.payload
            if isinstance(p, Credential):
                self.creds.setdefault(cred_hash(p.cred_bytes), []).append(op)
        for pos, op in items:
            p = op.payload
            if isinstance(p, AdminAppoint):
                self._appoint(op)
            elif isinstance(p, Grant):
                self._grant(start + pos, op)
            elif isinstance(p, Revoke):
                self._revoke(start + pos, op)

    def harmless(self, order: Sequence[Op], keep: int) -> bool:
        """Whether ``order[keep:]``, appended, leaves every verdict at positions ``< keep`` as it
        is: no trust op or Genesis, every Credential carries a VC that no earlier Grant names,
        and no Revoke can deny an earlier write (``_revoke_harmless``)."""
        for op in order[keep:]:
            p = op.payload
            kind = p.NAME
            if kind == "Credential":
                h = cred_hash(p.cred_bytes)  # type: ignore[union-attr]
                if h in self.named:
                    return False
            elif kind == "Revoke":
                if not self._revoke_harmless(order, keep, op):
                    return False
            elif kind in STRICT_RETROACTIVE_KINDS:
                return False
        return True

    def _revoke_harmless(self, order: Sequence[Op], keep: int, r: Op) -> bool:
        """A Revoke appended after position ``keep`` denies nothing before it when every write of its
        subject there that is permitted now is in the Revoke's causal past (the revoker saw it).
        Conservative: the Revoke's authority and the re-grant exception are not looked at."""
        p = r.payload
        assert isinstance(p, Revoke)
        subject = p.subject_pk
        if subject not in self.grants:
            return True  # nothing of the subject is permitted
        hb = self.hb
        rid = r.op_id
        for pos in range(keep):
            x = order[pos]
            xp = x.payload
            if x.author_pk != subject or type(xp) is not Data or hb(x.op_id, rid):
                continue
            d = derive_action_and_tags(xp.key)
            if d is not None and self.permits(x, d.action, d.tags, pos):
                return False
        return True

    # ------------------------------------------------------------------ verdicts

    def permits(self, op: Op, action: str, tags: frozenset[str], pos: int) -> bool:
        """Whether data op ``op`` at ``pos`` (action and tags of its key) is permitted."""
        if op.op_id in self.void:
            return False
        return self._search(op, action, tags, pos)

    def _search(self, op: Op, action: str, tags: frozenset[str], pos: int) -> bool:
        """``permits`` of a non-void op: the author's grants that can permit at ``pos``, newest first."""
        author = op.author_pk
        alive = self._alive.get(author)
        if alive is None:
            gs = self.grants.get(author)
            if not gs:
                return False
            alive = self._alive[author] = _Alive(gs, self.kills)
        oid = op.op_id
        t = op.hlc.physical_ms
        hb = self.hb
        kills = self.kills
        for end, g in reversed(alive.at(pos)):
            if not role_can_write(g.role, action) or g.scope.isdisjoint(tags):
                continue
            if not g.nbf_ms <= t < g.exp_ms or not hb(g.op_id, oid):
                continue
            if end == _INF:  # no Revoke kills g
                self._fast[author] = _Fast((oid,), g, tags, action)
                return True
            if all(hb(oid, r) for r in kills[g.op_id].revokes):
                return True
        return False

    def permits_in(self, order: Sequence[Op]) -> Permits:
        """``policy.Gate.permits`` over ``order`` (the op at ``pos`` decides; ``author_pk`` and
        ``hlc`` are its own): one call per op, and the common case inline (an op whose only parent
        is its author's last op permitted by a grant no Revoke kills, on the same resource tags)."""
        void = self.void
        fast = self._fast
        search = self._search

        def permits(author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> bool:
            op = order[pos]
            f = fast.get(op.author_pk)
            if f is not None and op.parents == f.last:
                g = f.grant
                if (
                    (tags is f.tags and action is f.action)
                    or (not g.scope.isdisjoint(tags) and role_can_write(g.role, action))
                ) and g.nbf_ms <= op.hlc.physical_ms < g.exp_ms:
                    if void and op.op_id in void:
                        return False
                    f.last = (op.op_id,)
                    f.tags = tags
                    f.action = action
                    return True
            if void and op.op_id in void:
                return False
            return search(op, action, tags, pos)

        return permits

    def deny_reason(self, op: Op, action: str, tags: frozenset[str], pos: int) -> str:
        """Why a denied data op was denied (explain only; never decides state)."""
        oid = op.op_id
        why = self.void.get(oid)
        if why is not None:
            return why
        hb = self.hb
        gs = [g for g in self.grants.get(op.author_pk, ()) if role_can_write(g.role, action)]
        past = [g for g in gs if g.pos < pos and hb(g.op_id, oid)]
        if not past:
            bad = self.uncounted.get(op.author_pk, ())
            earlier = [w for p, w in bad if p < pos]
            if earlier and not gs:
                return SELF_ISSUED if SELF_ISSUED in earlier else UNTRUSTED_ISSUER
            return NO_GRANT_IN_PAST
        scoped = [g for g in past if not g.scope.isdisjoint(tags)]
        if not scoped:
            return OUT_OF_SCOPE
        t = op.hlc.physical_ms
        timely = [g for g in scoped if g.nbf_ms <= t < g.exp_ms]
        if not timely:
            return EXPIRED_CRED
        for g in timely:
            k = self.kills.get(g.op_id)
            if k is not None and any(hb(r, oid) for r in k.revokes):
                return REVOKED_CRED
        return CONCURRENT_WITH_REVOKE


@dataclass(frozen=True, slots=True)
class StrictGate:
    """The strict write gate of one order (``policy.Gate``): ``permits(author_pk, action, tags, pos,
    hlc)`` reads the op at ``pos`` (``_StrictState.permits_in``: a plain function, replay calls it
    once per data op)."""

    state: _StrictState
    order: Sequence[Op]
    permits: Permits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "permits", self.state.permits_in(self.order))

    @property
    def profile(self) -> Profile:
        return self.state.profile

    @property
    def trust_view(self) -> TrustView:
        return self.state.tv

    def deny_reason(self, author_pk: bytes, action: str, tags: frozenset[str], pos: int, hlc: Hlc) -> str:
        return self.state.deny_reason(self.order[pos], action, tags, pos)

    def detail(self, pos: int, action: str, tags: frozenset[str], reason: str | None) -> str:
        """The why of one verdict in words (explain's ``detail``)."""
        op = self.order[pos]
        st = self.state
        hb = st.hb
        mine = [g for g in st.grants.get(op.author_pk, ()) if role_can_write(g.role, action)]
        if reason is None:
            g = next(
                g
                for g in reversed(mine)
                if g.pos < pos and hb(g.op_id, op.op_id) and not g.scope.isdisjoint(tags)
            )
            return (
                f"strict: {g.role} grant {g.op_id.hex()} at position {g.pos} is in this op's causal past "
                "and no counting revoke of it is concurrent with or after this op"
            )
        texts = {
            HLC_REGRESSION: "strict: this op's HLC is below a parent's (HLCs never decrease along edges)",
            INVALID_ANCESTOR: "strict: an ancestor of this op is void (HLC regression or second genesis)",
            SECOND_GENESIS: "strict: a second genesis has no effect",
            UNTRUSTED_ISSUER: "strict: the author's grants carry VCs that verify against no issuer key "
            "published by an admin of the project",
            SELF_ISSUED: "strict: the author's VC is signed with the author's own key (self-issued: no role)",
            NO_GRANT_IN_PAST: "strict: no counting grant of the author is in this op's causal past",
            OUT_OF_SCOPE: "strict: no grant in this op's causal past covers the resource's tags "
            + "{"
            + ", ".join(sorted(tags))
            + "}",
            EXPIRED_CRED: "strict: this op's time is outside the VC window of every covering grant",
        }
        if reason in texts:
            return texts[reason]
        kills = [
            r
            for g in mine
            if g.pos < pos and hb(g.op_id, op.op_id)
            for r in (st.kills[g.op_id].revokes if g.op_id in st.kills else ())
        ]
        seen = [r for r in kills if hb(r, op.op_id)]
        if reason == REVOKED_CRED and seen:
            return f"strict: revoke {seen[0].hex()} is in this op's causal past"
        conc = [r for r in kills if not hb(r, op.op_id) and not hb(op.op_id, r)]
        if conc:
            return (
                f"strict: revoke {conc[0].hex()} is concurrent with this op (the revoker had not seen it); "
                "causal deny-wins, whatever the HLCs say"
            )
        return "strict: denied"

    def void_reason(self, op_id: bytes) -> str | None:
        """Why an op (of any kind) has no effect under strict, or None."""
        return self.state.void.get(op_id)

    def counting_grants(self, subject: bytes) -> tuple[StrictGrant, ...]:
        return tuple(self.state.grants.get(subject, ()))

    def is_admin(self, pk: bytes, at: bytes) -> bool:
        return self.state.is_admin(pk, at)


def build_strict_gate(order: Sequence[Op], memo: VcMemo | None = None, dag: Dag | None = None) -> StrictGate:
    """The strict gate of a strict log (ValueError for a reference log, MixedProfileError if mixed);
    ``dag``: the DAG ``order`` is the order of, when the caller has it (saves building one)."""
    return StrictGate(_StrictState(order, memo if memo is not None else VcMemo(), dag), order)


def build_gate(
    order: Sequence[Op], memo: VcMemo | None = None, dag: Dag | None = None
) -> policy.WriteGate | StrictGate | None:
    """The gate replay uses for ``order``: strict when the log starts with its genesis, else the
    reference's (``policy.build_write_gate``, unchanged; None = allow-all). Mixed logs raise."""
    if is_strict_order(order):
        return build_strict_gate(order, memo, dag)
    detect_profile(order)  # raises for a Genesis that is not the root
    return policy.build_write_gate(order) if memo is None else policy.build_write_gate(order, memo)


Decision = tuple[Op, str, "str | None"]


def explain(order: Sequence[Op]) -> list[Decision]:
    """``policy.explain`` for a strict log: per data op, ALLOWED or DENIED with its strict reason."""
    gate = build_strict_gate(order)
    out: list[Decision] = []
    for pos, op in enumerate(order):
        p = op.payload
        if type(p) is not Data:
            continue
        d = derive_action_and_tags(p.key)
        if d is None:
            continue
        if gate.permits(op.author_pk, d.action, d.tags, pos, op.hlc):
            out.append((op, policy.ALLOWED, None))
        else:
            out.append((op, policy.DENIED, gate.deny_reason(op.author_pk, d.action, d.tags, pos, op.hlc)))
    return out


class StrictGates:
    """The strict half of a replayer's gate source (``policy.GateBuilder`` hands strict logs here):
    builds the strict gate of each order, and extends the previous one over appended ops when
    that cannot change an earlier verdict (``keeps_verdicts``). Serves one replayer."""

    __slots__ = ("_checked", "_k", "_last", "_state", "builds", "extensions", "memo")

    def __init__(self, memo: VcMemo) -> None:
        self.memo = memo
        self._k = -1  # length of the previous order; -1: none
        self._last = b""
        self._state: _StrictState | None = None
        self._checked: tuple[Sequence[Op], int, bool] | None = None  # the last keeps_verdicts
        self.builds = 0
        self.extensions = 0

    def _continues(self, order: Sequence[Op], keep: int) -> bool:
        k = self._k
        return self._state is not None and 0 < keep == k <= len(order) and order[k - 1].op_id == self._last

    def keeps_verdicts(self, order: Sequence[Op], keep: int) -> bool:
        """Whether ``order[keep:]``, appended to the previous call's order, changes no earlier verdict."""
        checked = self._checked
        if checked is not None and checked[0] is order and checked[1] == keep:
            return checked[2]  # the replayer asks before it applies, then gate_for asks again
        ok = self._continues(order, keep) and self._state is not None and self._state.harmless(order, keep)
        self._checked = (order, keep, ok)
        return ok

    def gate_for(self, order: Sequence[Op], keep: int = 0, dag: Dag | None = None) -> StrictGate:
        """The strict gate of ``order``; ``dag``: the DAG it is the order of (see ``_StrictState``)."""
        st = self._state
        same_dag = st is not None and (st.private if dag is None else st.dag is dag)
        if st is not None and same_dag and self.keeps_verdicts(order, keep):
            st.extend(order, keep)
            self.extensions += 1
        else:
            st = self._state = _StrictState(order, self.memo, dag)
            self.builds += 1
        self._checked = None
        self._k = len(order)
        self._last = order[-1].op_id if order else b""
        return StrictGate(st, order)
