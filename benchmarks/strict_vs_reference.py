"""Strict vs reference replay of the policy-heavy and concurrent workloads, in one run.

    .venv/bin/python benchmarks/strict_vs_reference.py [--sizes 10000,100000] [--repeat 3] [--json]

Reference: ``replay_full`` of the workload exactly as ``ecac bench`` generates it (reference
log, reference gate). Strict: the same stream rooted in a genesis naming the workload's admin
(every author's first op also has the genesis as parent), replayed with the strict gate
(``ecac.core.strict``: trust root, causal deny-wins, void-op scan, its own ancestry index).
The concurrent workload has no policy ops, so its strict variant first grants each writer
editor on ``hv`` (IssuerKey + Credential + Grant by the admin, the writer's first op on its
Grant); otherwise strict would deny every write. "Same shape" is the strict variant's ops
and parents without the genesis, replayed under the reference rules: the gate's cost alone.
Timed: ``replay_full`` of a DAG built beforehand (the DAG build is the same work in both
profiles), best of ``--repeat`` interleaved runs, without garbage collection. Targets
(issue 12): strict <= 1.5x reference at each size, and strict 100k <= 12x strict 10k.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator

from nacl.signing import SigningKey

from ecac.bench.policy import PolicyHeavy, iter_policy_heavy
from ecac.core import policy, strict
from ecac.core.dag import Dag
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Credential, Data, Grant, IssuerKey, Op, Payload, Revoke, make_op
from ecac.core.profile import genesis_op
from ecac.core.replay import replay_full
from ecac.core.vc import cred_hash, editor_claims, mint_vc
from ecac.testing.workloads import concurrent_authors, iter_concurrent

SEED = 42
PEERS = 8


class StrictPolicyHeavy(PolicyHeavy):
    """The policy-heavy stream, ``rooted`` in a genesis naming its admin (else the same shape as a
    reference log). ``revoker_sees``: the admin also signs each Revoke on the editor's head."""

    def __init__(self, seed: int, editors: int, rooted: bool = True, revoker_sees: bool = False) -> None:
        super().__init__(seed, editors)
        self.rooted = rooted
        self.revoker_sees = revoker_sees
        self.genesis = genesis_op(self.admin, "policy-heavy", [public_key(self.admin)], Hlc(self.t - 1, 0, 1))

    def op(
        self, sk: SigningKey, payload: Payload, extra: tuple[bytes, ...] = (), merge_admin: bool = False
    ) -> Op:
        if self.rooted and public_key(sk) not in self.last:
            extra = (*extra, self.genesis.op_id)
        return super().op(sk, payload, extra, merge_admin)

    def revoke(self) -> Iterator[Op]:
        """With ``revoker_sees``, the admin revokes having seen the editor's writes (as ``ecac revoke``
        signs on the current heads): under causal deny-wins a revoke denies every write under the
        grant that the revoker had not seen, so without it every revoke also voids the editor's
        earlier writes."""
        if not self.revoker_sees:
            yield from super().revoke()
            return
        e = self.rng.choice(sorted(self.granted))
        self.granted.discard(e)
        head = self.last.get(public_key(self.editors[e]))
        pl = Revoke(public_key(self.editors[e]), "editor", self.scope[e], Hlc(self.t, 0, 1))
        yield self.op(self.admin, pl, () if head is None else (head,))

    def stream(self) -> Iterator[Op]:
        if self.rooted:
            yield self.genesis
        yield from super().stream()


def strict_policy_heavy(seed: int, n: int, rooted: bool = True, revoker_sees: bool = False) -> list[Op]:
    it = StrictPolicyHeavy(seed, 64, rooted, revoker_sees).stream()
    return [next(it) for _ in range(n)]


def granted_concurrent(seed: int, n: int, peers: int, rooted: bool = True) -> list[Op]:
    """``gen_concurrent``'s writers and writes after one editor grant per writer; ``rooted``: the
    whole log descends from a genesis (strict), else it is a reference log with the same grants."""
    admin = key_pair(seed, b"strict-concurrent/admin")
    issuer = key_pair(seed, b"strict-concurrent/issuer")
    g = genesis_op(admin, "concurrent", [public_key(admin)], Hlc(1, 0, 0))
    ik_payload = IssuerKey("iss", "k0", "EdDSA", public_key(issuer), 0, U64_MAX)
    ik = make_op(admin, [g.op_id] if rooted else [], Hlc(2, 0, 0), ik_payload)
    ops = [g, ik] if rooted else [ik]
    last = ik.op_id
    writers = [key_pair(seed, b"concurrent/%d" % a) for a in range(concurrent_authors(peers))]
    grants: list[bytes] = []
    for i, w in enumerate(writers):
        claims = editor_claims(public_key(w), nbf_ms=3, exp_ms=U64_MAX, iss="iss", jti=f"c{i}", status=None)
        token = mint_vc(issuer, claims)
        cred = make_op(admin, [last], Hlc(3 + 2 * i, 0, 0), Credential(f"c{i}", token))
        grant = make_op(admin, [cred.op_id], Hlc(4 + 2 * i, 0, 0), Grant(public_key(w), cred_hash(token)))
        ops += [cred, grant]
        last = grant.op_id
        grants.append(grant.op_id)
    prev: list[bytes] = [last] * len(writers)
    for i in range(n - len(ops)):
        a = i % len(writers)
        op = make_op(writers[a], (prev[a],), Hlc(1000 + i, 0, i + 1), Data("mv:o:x", b"v%d" % i))
        prev[a] = op.op_id
        ops.append(op)
    return ops


def _time(dag: Dag, repeat: int) -> tuple[float, bytes]:
    best = float("inf")
    digest = b""
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            _, digest = replay_full(dag)
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best, digest


def _verdicts(dag: Dag) -> dict[str, int]:
    order = dag.topo_order()
    ex = strict.explain(order) if strict.is_strict_order(order) else policy.explain(order)
    return dict(Counter(r or v for _, v, r in ex))


#: name -> (the workload as ``ecac bench`` makes it, its strict variant, the strict variant's
#: shape as a reference log: same ops and parents, no genesis)
WORKLOADS: dict[
    str, tuple[Callable[[int], list[Op]], Callable[[int], list[Op]], Callable[[int], list[Op]]]
] = {
    "policy-heavy": (
        lambda n: list(iter_policy_heavy(SEED, n)),
        lambda n: strict_policy_heavy(SEED, n),
        lambda n: strict_policy_heavy(SEED, n, rooted=False),
    ),
    "policy-heavy-seen": (
        lambda n: list(iter_policy_heavy(SEED, n)),
        lambda n: strict_policy_heavy(SEED, n, revoker_sees=True),
        lambda n: strict_policy_heavy(SEED, n, rooted=False, revoker_sees=True),
    ),
    "concurrent": (
        lambda n: list(iter_concurrent(SEED, n, PEERS)),
        lambda n: granted_concurrent(SEED, n, PEERS),
        lambda n: granted_concurrent(SEED, n, PEERS, rooted=False),
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workloads", default="policy-heavy,concurrent", help=f"of {', '.join(WORKLOADS)}")
    ap.add_argument("--verdicts", action="store_true", help="also count the verdicts (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [w for w in args.workloads.split(",") if w]
    rows = []
    for name in names:
        ref_gen, strict_gen, same_gen = WORKLOADS[name]
        for n in sizes:
            repeat = args.repeat
            dags = {
                "reference": Dag.from_ops(ref_gen(n)),
                "strict": Dag.from_ops(strict_gen(n)),
                "same_shape": Dag.from_ops(same_gen(n)),
            }
            t = dict.fromkeys(dags, float("inf"))
            row: dict[str, object] = {"workload": name, "ops": n}
            for _ in range(repeat):  # interleaved, so that a busy machine slows all three alike
                for label, dag in dags.items():
                    t[label] = min(t[label], _time(dag, 1)[0])
            for label, dag in dags.items():
                row[f"{label}_s"] = round(t[label], 4)
                if args.verdicts:
                    row[f"{label}_verdicts"] = _verdicts(dag)
            del dags
            row["ratio"] = round(t["strict"] / t["reference"], 3)
            row["ratio_same_shape"] = round(t["strict"] / t["same_shape"], 3)
            rows.append(row)
            if not args.json:
                print(
                    f"{name:18s} {n:>7d} ops  reference {t['reference'] * 1000:9.1f} ms  "
                    f"same shape {t['same_shape'] * 1000:9.1f} ms  strict {t['strict'] * 1000:9.1f} ms  "
                    f"strict/reference {row['ratio']:5.2f}x  "
                    f"strict/same-shape {row['ratio_same_shape']:5.2f}x",
                    flush=True,
                )
                if args.verdicts:
                    for label in ("reference", "strict", "same_shape"):
                        print(f"    {label:10s} {row[f'{label}_verdicts']}")
    scale = {}
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for name in names:
            by = {r["ops"]: r for r in rows if r["workload"] == name}
            scale[name] = {
                "reference": round(float(by[hi]["reference_s"]) / float(by[lo]["reference_s"]), 2),  # type: ignore[arg-type]
                "strict": round(float(by[hi]["strict_s"]) / float(by[lo]["strict_s"]), 2),  # type: ignore[arg-type]
            }
            if not args.json:
                print(
                    f"{name:18s} {hi}/{lo} time ratio: reference {scale[name]['reference']}x, "
                    f"strict {scale[name]['strict']}x"
                )
    if args.json:
        print(json.dumps({"rows": rows, "scaling": scale}, indent=2))


if __name__ == "__main__":
    main()
