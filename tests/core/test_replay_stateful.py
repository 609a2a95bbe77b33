"""Hypothesis state machine for the incremental replayer against the naive model: a fresh full replay.

Rules make ops of every policy kind with working credentials (data writes, Credentials,
Grants, Revokes, KeyGrants, IssuerKeys, IssuerKeyRevokes, status-list chunks), with random
parents and HLCs around a clock that moves forward, so most new ops sort after the earlier
ones (the live state is continued) and some before (it is not); some ops are held back and
released later, so their descendants wait in the DAG as orphans, and some VCs are granted
before any Credential op carries them. ``apply`` brings several
replayers up to date (default; memo evicting on every entry; frequent resume points) and
checks each against ``replay_full`` of the same DAG: state JSON, digest and write gate.
"""

from __future__ import annotations

import hashlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from nacl.signing import SigningKey

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
    KeyGrant,
    Op,
    Payload,
    Revoke,
    StatusListChunk,
    make_op,
)
from ecac.core.replay import Replayer, ResumePoint, replay_full
from ecac.core.vc import VcMemo, cred_hash, editor_claims, mint_vc

ISSUERS = [key_pair(3, b"stateful/issuer/%d" % i) for i in range(2)]
USERS = [key_pair(3, b"stateful/user/%d" % i) for i in range(3)]
KEYS = ("mv:o:x", "set+:o:s:e1", "set-:o:s:e1", "mv:c1:param1", "set+:o:x:e2", "mv:o:s")
TAGS = ("hv", "mech")
#: the op kinds ``new_ops`` draws from, repeated for weight
OP_KINDS = (
    ("data_write",) * 6
    + ("credential", "grant") * 3
    + ("republish", "republish", "key_grant", "revoke", "revoke")
    + ("issuer_key", "issuer_key_revoke", "status_chunk", "status_chunk")
)


def _pk(sk: SigningKey) -> bytes:
    return public_key(sk)


class ReplayerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dag = Dag()
        self.inserted: list[Op] = []
        self.made: list[Op] = []
        self.held: list[Op] = []
        self.tokens: list[tuple[bytes, int]] = []  # (VC bytes, subject index)
        self.clock = 1000
        self.replayers = [
            Replayer(),
            Replayer(gates=policy.GateBuilder(VcMemo(max_entries=1))),
            Replayer(auto_every=3, max_points=2),
        ]
        self.applied = False

    # ------------------------------------------------------------------ op making

    def _emit(self, data: st.DataObject, sk: SigningKey, payload: Payload) -> None:
        n = len(self.made)
        picks = data.draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True)) if n else []
        parents = sorted({self.made[i].op_id for i in picks})
        self.clock += 3
        # mostly now (sorts after every earlier op), sometimes in the past (sorts into the middle)
        ms = self.clock - (data.draw(st.integers(1, 40)) if data.draw(st.integers(0, 4)) == 0 else 0)
        op = make_op(sk, parents, Hlc(ms, 0, data.draw(st.integers(0, 2))), payload)
        self.made.append(op)
        if data.draw(st.integers(0, 5)) == 0:
            self.held.append(op)  # arrives later; its descendants wait as orphans
        else:
            self._insert(op)
        if data.draw(st.booleans()):
            self.apply()

    def _insert(self, op: Op) -> None:
        self.dag.insert(op)
        self.inserted.append(op)
        self.applied = False

    def _scope(self, data: st.DataObject) -> tuple[str, ...]:
        return tuple(data.draw(st.lists(st.sampled_from(TAGS), min_size=1, max_size=2, unique=True)))

    # ------------------------------------------------------------------ rules

    @initialize()
    def publish_issuer_keys(self) -> None:
        """Both issuers' k0 keys at the start, so most VCs can verify in band."""
        for i, sk in enumerate(ISSUERS):
            payload = IssuerKey(f"issuer-{i}", "k0", "EdDSA", _pk(sk), 0, U64_MAX)
            op = make_op(sk, [], Hlc(900, 0, i), payload)
            self.made.append(op)
            self._insert(op)

    def _data_write(self, data: st.DataObject) -> None:
        granted = [USERS[s] for _, s in self.tokens[-3:]] * 3  # recent VC subjects write most
        author = data.draw(st.sampled_from(granted + USERS + ISSUERS[:1]))
        key = data.draw(st.sampled_from(KEYS))
        self._emit(data, author, Data(key, data.draw(st.binary(max_size=2))))

    def _credential(self, data: st.DataObject) -> None:
        """A fresh VC, usually signed by its issuer and published by it (so M4 verifies too)."""
        subject = data.draw(st.integers(0, len(USERS) - 1))
        i = data.draw(st.integers(0, len(ISSUERS) - 1))
        nbf = self.clock + data.draw(st.integers(-40, 10))
        claims = editor_claims(
            _pk(USERS[subject]),
            nbf_ms=nbf,
            exp_ms=nbf + data.draw(st.integers(1, 400)),
            scope=self._scope(data),
            role=data.draw(st.sampled_from(["editor"] * 4 + ["issuer_admin"])),
            iss=f"issuer-{i}",
            jti=f"c{len(self.tokens)}",
            status=data.draw(st.sampled_from([None, (f"list-{i}", 0), (f"list-{i}", 3)])),
        )
        signer = data.draw(st.sampled_from([ISSUERS[i]] * 4 + [USERS[subject]]))
        kid = data.draw(st.sampled_from([None, None, "k0", "k1"]))
        token = mint_vc(signer, claims, kid=kid)
        self.tokens.append((token, subject))
        author = data.draw(st.sampled_from([signer, signer, USERS[0]]))
        if data.draw(st.integers(0, 2)):  # else only granted for now; ``republish`` may carry it later
            self._emit(data, author, Credential(f"c{len(self.tokens)}", token))

    def _republish(self, data: st.DataObject) -> None:
        """A VC in another (or its first) Credential op, by any author."""
        token, _ = data.draw(st.sampled_from(self.tokens))
        self._emit(data, data.draw(st.sampled_from(USERS + ISSUERS)), Credential("again", token))

    def _grant(self, data: st.DataObject) -> None:
        token, subject = data.draw(st.sampled_from(self.tokens))
        if data.draw(st.integers(0, 5)) == 0:
            subject = (subject + 1) % len(USERS)  # a subject the VC does not name: ignored
        self._emit(data, ISSUERS[0], Grant(_pk(USERS[subject]), cred_hash(token)))

    def _key_grant(self, data: st.DataObject) -> None:
        token, subject = data.draw(st.sampled_from(self.tokens))
        self._emit(data, ISSUERS[0], KeyGrant(_pk(USERS[subject]), "hv", 1, cred_hash(token)))

    def _revoke(self, data: st.DataObject) -> None:
        subject = data.draw(st.sampled_from(USERS))
        role = data.draw(st.sampled_from(["editor", "editor", "issuer_admin"]))
        at = Hlc(data.draw(st.integers(900, 1300)), 0, 0)
        self._emit(data, ISSUERS[0], Revoke(_pk(subject), role, self._scope(data), at))

    def _issuer_key(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(ISSUERS) - 1))
        pubkey = _pk(data.draw(st.sampled_from([ISSUERS[i]] * 3 + [USERS[0]])))
        payload = IssuerKey(
            f"issuer-{i}",
            data.draw(st.sampled_from(["k0", "k1"])),
            "EdDSA",
            pubkey,
            data.draw(st.sampled_from([0, self.clock - 20, self.clock + 5])),
            data.draw(st.sampled_from([U64_MAX, self.clock + 60])),
        )
        self._emit(data, data.draw(st.sampled_from(ISSUERS + USERS[:1])), payload)

    def _issuer_key_revoke(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(ISSUERS) - 1))
        key_id = data.draw(st.sampled_from(["k0", "k1"]))
        self._emit(data, ISSUERS[i], IssuerKeyRevoke(f"issuer-{i}", key_id, "rotated"))

    def _status_chunk(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(ISSUERS) - 1))
        bits = bytes([data.draw(st.sampled_from([0, 1, 8, 9]))])
        version = data.draw(st.integers(1, 3))
        payload = StatusListChunk(f"list-{i}", f"issuer-{i}", version, 0, hashlib.sha256(bits).digest(), bits)
        self._emit(data, ISSUERS[i], payload)

    @rule(data=st.data())
    def new_ops(self, data: st.DataObject) -> None:
        """One to four new ops, their kinds drawn with weights close to a real log's."""
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.sampled_from(OP_KINDS))
            if not self.tokens and kind in ("republish", "grant", "key_grant"):
                kind = "credential"
            getattr(self, f"_{kind}")(data)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A held-back op arrives (out of order: its children may already be waiting)."""
        op = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self._insert(op)

    @precondition(lambda self: self.inserted)
    @rule()
    def new_dag(self) -> None:
        """The same ops in a new DAG object (the replayers compare orders, not identity)."""
        self.dag = Dag.from_ops(reversed(self.inserted))
        self.applied = False

    @precondition(lambda self: self.applied)
    @rule()
    def restore_from_point(self) -> None:
        """Swap the first replayer for one restored from its saved point's bytes."""
        point = ResumePoint.from_bytes(self.replayers[0].save_point().to_bytes())
        self.replayers[0] = Replayer.from_point(point)
        self.applied = False  # a restored replayer has no live order to save until it applies

    @rule()
    def apply(self) -> None:
        want_state, want_digest = replay_full(self.dag)
        want_gate = policy.build_write_gate(self.dag.topo_order())
        for i, r in enumerate(self.replayers):
            state, digest = r.apply(self.dag)
            assert state.to_json() == want_state.to_json(), i
            assert digest == want_digest, i
            assert state.processed_count == len(self.dag.topo_order()), i
            assert r.gate == want_gate, i
        self.applied = True

    def teardown(self) -> None:
        self.apply()


ReplayerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=50, deadline=None)
TestReplayerMachine = ReplayerMachine.TestCase
