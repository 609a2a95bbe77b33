"""Policy benchmark ``policy-heavy``: replay throughput and policy-build time on a log where
more than a tenth of the ops are policy ops.

Workload (deterministic in ``seed``; ``--peers`` editors, 64 when ``--peers`` is 1). HLC
physical times grow by one per op and parents are always earlier ops, so the total order
is the generation order and every count below is exact for a given ``(ops, seed, peers)``:

* setup: the admin self-issues ``issuer_admin`` (M4) and grants it, so TrustView gating is
  live; the admin publishes an IssuerKey for each of 4 issuers; every editor gets a VC
  (issuer ``e % 4``; scope ``[hv, mech]``, sometimes only ``hv`` or ``mech``; a tenth are
  short-lived) carried by a Credential op of its issuer and a Grant by the admin.
* then per step: a Revoke of a granted editor (2.5 %), a new VC + Grant for a revoked or
  expired editor (4 %), a new status-list version of one issuer with one more bit set
  (0.4 %; whole list re-published in 128-byte chunks), an issuer-key rotation (0.2 %:
  IssuerKey ``k<n+1>``, later VCs carry ``kid``, then IssuerKeyRevoke of ``k<n>``), else a
  data op: ``mv:c<i>:param<j>`` (55 %), ``set+``/``set-`` on ``c<i>.param<j>`` (25/10 %),
  ``set+:o:s:e<k>`` (5 %), ``mv:o:x`` (5 %), by a random editor or, 1 % of the time, an
  outsider with no grant. Editors keep writing after a Revoke or expiry (the denials
  exercise every deny reason).

Measured like the replay scenarios (``ecac.bench.replay.run_replay_bench``: full replay from
bytes with signature checks, raw verify rate, incremental parity, peak RSS), plus the
policy build alone (``epochs_m4`` → ``TrustView.build`` → ``epochs_with_trustview``, the body
of ``policy.build_write_gate``) and the verdict counts.
"""

from __future__ import annotations

import gc
import hashlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from nacl.signing import SigningKey

from ecac.bench import BenchParams, scenario
from ecac.bench.replay import run_replay_bench
from ecac.core import policy
from ecac.core.dag import Dag
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import (
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    Op,
    Payload,
    Revoke,
    StatusListChunk,
    make_op,
)
from ecac.core.trust import TrustView
from ecac.core.vc import cred_hash, mint_vc
from ecac.store.bulk import bulk_load

DEFAULT_EDITORS = 64
ISSUERS = 4
OUTSIDERS = 4
CONTROLLERS = 50
PARAMS = 6
SET_ELEMS = 8
CHUNK_BYTES = 128
T0_MS = 1000

P_REVOKE = 0.025
P_REGRANT = 0.04
P_STATUS = 0.004
P_ROTATE = 0.002
P_OUTSIDER = 0.01

SCOPES = (("hv", "mech"),) * 8 + (("hv",), ("mech",))


def editors_for(peers: int) -> int:
    return peers if peers > 1 else DEFAULT_EDITORS


class PolicyHeavy:
    """The generator's state: keys, chains, grants and status lists (no I/O, no clock)."""

    def __init__(self, seed: int, editors: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.t = T0_MS
        self.admin = key_pair(seed, b"policy-heavy/admin")
        self.issuer_gen = [0] * ISSUERS
        self.issuer_keys = [self._issuer_key(k, 0) for k in range(ISSUERS)]
        self.editors = [key_pair(seed, b"policy-heavy/editor/%d" % e) for e in range(editors)]
        self.outsiders = [key_pair(seed, b"policy-heavy/outsider/%d" % o) for o in range(OUTSIDERS)]
        self.last: dict[bytes, bytes] = {}  # author pk -> its latest op (its chain)
        self.admin_seen: dict[bytes, bytes] = {}  # author pk -> latest admin op merged
        self.scope: list[tuple[str, ...]] = [()] * editors
        self.exp: list[int] = [0] * editors
        self.granted: set[int] = set()
        self.serials = [0] * ISSUERS
        self.status_bits = [bytearray() for _ in range(ISSUERS)]
        self.status_version = [0] * ISSUERS
        self.jti = 0

    def _issuer_key(self, k: int, gen: int) -> SigningKey:
        return key_pair(self.seed, b"policy-heavy/issuer/%d/%d" % (k, gen))

    # ------------------------------------------------------------------ op emission

    def op(
        self, sk: SigningKey, payload: Payload, extra: tuple[bytes, ...] = (), merge_admin: bool = False
    ) -> Op:
        """A signed op on ``sk``'s chain at the next HLC, optionally merging the admin's head."""
        pk = public_key(sk)
        parents = list(extra)
        prev = self.last.get(pk)
        if prev is not None:
            parents.append(prev)
        admin_head = self.last.get(public_key(self.admin))
        if merge_admin and admin_head is not None and self.admin_seen.get(pk) != admin_head:
            parents.append(admin_head)
            self.admin_seen[pk] = admin_head
        op = make_op(sk, sorted(set(parents)), Hlc(self.t, 0, 1), payload)
        self.t += 1
        self.last[pk] = op.op_id
        return op

    def grant(self, e: int) -> Iterator[Op]:
        """A fresh VC for editor ``e`` (its issuer's current key), its Credential and Grant."""
        k = e % ISSUERS
        scope = self.rng.choice(SCOPES)
        nbf = self.t
        exp = nbf + self.rng.randrange(500, 5000) if self.rng.random() < 0.1 else U64_MAX
        self.jti += 1
        claims = {
            "exp": exp,
            "iss": f"issuer-{k}",
            "jti": f"ph-{self.jti}",
            "nbf": nbf,
            "role": "editor",
            "scope": list(scope),
            "status": {"id": f"status-{k}", "index": self.serials[k]},
            "sub_pk": public_key(self.editors[e]).hex(),
        }
        self.serials[k] += 1
        gen = self.issuer_gen[k]
        token = mint_vc(self.issuer_keys[k], claims, kid=f"k{gen}" if gen else None)
        cred = self.op(self.issuer_keys[k], Credential(f"ph-{self.jti}", token))
        yield cred
        yield self.op(self.admin, Grant(public_key(self.editors[e]), cred_hash(token)), (cred.op_id,))
        self.scope[e], self.exp[e] = scope, exp
        self.granted.add(e)

    def revoke(self) -> Iterator[Op]:
        e = self.rng.choice(sorted(self.granted))
        self.granted.discard(e)
        yield self.op(
            self.admin, Revoke(public_key(self.editors[e]), "editor", self.scope[e], Hlc(self.t, 0, 1))
        )

    def regrant(self) -> Iterator[Op]:
        idle = [e for e in range(len(self.editors)) if e not in self.granted or self.exp[e] <= self.t]
        yield from self.grant(self.rng.choice(idle) if idle else self.rng.randrange(len(self.editors)))

    def status_update(self) -> Iterator[Op]:
        """Set one more bit of an issuer's list and re-publish all its chunks as a new version."""
        k = self.rng.randrange(ISSUERS)
        if not self.serials[k]:
            return
        bits = self.status_bits[k]
        index = self.rng.randrange(self.serials[k])
        need = (index // 8 // CHUNK_BYTES + 1) * CHUNK_BYTES
        if len(bits) < need:
            bits.extend(bytes(need - len(bits)))
        bits[index // 8] |= 1 << (index % 8)
        self.status_version[k] += 1
        sha = hashlib.sha256(bits).digest()
        for c in range(len(bits) // CHUNK_BYTES):
            chunk = bytes(bits[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES])
            payload = StatusListChunk(f"status-{k}", f"issuer-{k}", self.status_version[k], c, sha, chunk)
            yield self.op(self.admin, payload)

    def rotate(self) -> Iterator[Op]:
        """Publish the next key of an issuer (active from now), then revoke the previous one."""
        k = self.rng.randrange(ISSUERS)
        old = self.issuer_gen[k]
        new = old + 1
        self.issuer_gen[k] = new
        self.issuer_keys[k] = self._issuer_key(k, new)
        pk = public_key(self.issuer_keys[k])
        yield self.op(
            self.admin, IssuerKey(f"issuer-{k}", f"k{new}", "EdDSA", pk, self.t, U64_MAX, f"k{old}")
        )
        yield self.op(self.admin, IssuerKeyRevoke(f"issuer-{k}", f"k{old}", "rotated"))

    def data(self) -> Op:
        rng = self.rng
        author = rng.choice(self.outsiders) if rng.random() < P_OUTSIDER else rng.choice(self.editors)
        r = rng.random()
        c, p = rng.randrange(CONTROLLERS), rng.randrange(PARAMS)
        if r < 0.55:
            key = f"mv:c{c}:param{p}"
        elif r < 0.80:
            key = f"set+:c{c}:param{p}:e{rng.randrange(SET_ELEMS)}"
        elif r < 0.90:
            key = f"set-:c{c}:param{p}:e{rng.randrange(SET_ELEMS)}"
        elif r < 0.95:
            key = f"set+:o:s:e{rng.randrange(SET_ELEMS)}"
        else:
            key = "mv:o:x"
        return self.op(author, Data(key, rng.randbytes(4)), merge_admin=True)

    # ------------------------------------------------------------------ the stream

    def setup(self) -> Iterator[Op]:
        admin_pk = public_key(self.admin)
        claims = {
            "exp": U64_MAX,
            "iss": "admin",
            "jti": "ph-admin",
            "nbf": self.t,
            "role": "issuer_admin",
            "scope": ["trust"],
            "sub_pk": admin_pk.hex(),
        }
        token = mint_vc(self.admin, claims)
        cred = self.op(self.admin, Credential("ph-admin", token))
        yield cred
        yield self.op(self.admin, Grant(admin_pk, cred_hash(token)))
        for k in range(ISSUERS):
            pk = public_key(self.issuer_keys[k])
            yield self.op(self.admin, IssuerKey(f"issuer-{k}", "k0", "EdDSA", pk, 0, U64_MAX))
        for e in range(len(self.editors)):
            yield from self.grant(e)

    def stream(self) -> Iterator[Op]:
        yield from self.setup()
        while True:
            r = self.rng.random()
            if r < P_REVOKE and self.granted:
                yield from self.revoke()
            elif r < P_REVOKE + P_REGRANT:
                yield from self.regrant()
            elif r < P_REVOKE + P_REGRANT + P_STATUS:
                yield from self.status_update()
            elif r < P_REVOKE + P_REGRANT + P_STATUS + P_ROTATE:
                yield from self.rotate()
            else:
                yield self.data()


def iter_policy_heavy(seed: int, n: int, editors: int = DEFAULT_EDITORS) -> Iterator[Op]:
    """The first ``n`` ops of the policy-heavy stream."""
    stream = PolicyHeavy(seed, editors).stream()
    for _ in range(n):
        yield next(stream)


def gen_policy_heavy(seed: int, n: int, editors: int = DEFAULT_EDITORS) -> list[Op]:
    return list(iter_policy_heavy(seed, n, editors))


# --------------------------------------------------------------------------- the bench


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 3)


@scenario(
    "policy-heavy",
    "many editors on c<i>.param<j>, >=10% policy ops (grants, revokes, status lists, key rotation); "
    "replay throughput + policy build time",
)
def bench_policy_heavy(params: BenchParams) -> dict[str, Any]:
    editors = editors_for(params.peers)
    ops: list[Op] = []

    def keep(it: Iterator[Op]) -> Iterator[Op]:
        for op in it:
            ops.append(op)
            yield op

    res = run_replay_bench("policy-heavy", keep(iter_policy_heavy(params.seed, params.ops, editors)), params)
    order = Dag.from_ops(ops).topo_order()
    kinds = Counter(op.payload.NAME for op in order)
    policy_ops = len(order) - kinds.get("Data", 0)

    gc.collect()
    with bulk_load():  # timed without collections, as in a bulk replay
        t0 = time.perf_counter()
        has = policy.has_policy(order)
        admin_idx = policy.epochs_m4(order) if has else None
        t1 = time.perf_counter()
        tv = TrustView.build(order, admin_idx)
        t2 = time.perf_counter()
        policy.epochs_with_trustview(order, tv)
        t3 = time.perf_counter()

    verdicts = Counter(reason or verdict for _, verdict, reason in policy.explain(order))
    denied = sum(v for k, v in verdicts.items() if k != policy.ALLOWED)
    credentials = kinds.get("Credential", 0)
    res.update(
        {
            "editors": editors,
            "policy_ops": policy_ops,
            "policy_fraction": round(policy_ops / len(order), 4) if order else 0.0,
            "credentials": credentials,
            "grants": kinds.get("Grant", 0),
            "revokes": kinds.get("Revoke", 0),
            "status_chunks": kinds.get("StatusListChunk", 0),
            "issuer_keys": kinds.get("IssuerKey", 0),
            "issuer_key_revokes": kinds.get("IssuerKeyRevoke", 0),
            "policy_build_ms": _ms(t0, t3),
            "epochs_m4_ms": _ms(t0, t1),
            "trustview_ms": _ms(t1, t2),
            "epochs_trustview_ms": _ms(t2, t3),
            "trust_issuer_keys": sum(len(v) for v in tv.issuers.values()),
            "trust_status_lists": len(tv.status_lists),
            "applied": verdicts.get(policy.ALLOWED, 0),
            "denied": denied,
            **{f"denied_{r}": verdicts.get(r, 0) for r in policy.DENY_REASONS},
        }
    )
    # the digest last, as in the other scenarios' tables
    res["state_digest"] = res.pop("state_digest")
    return res
