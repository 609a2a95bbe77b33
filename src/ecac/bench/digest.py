"""Digest-update benchmarks: ``digest-update`` (policy-heavy store) and ``digest-update-hb`` (hb chain).

They time exactly what the node's ``DigestTracker`` does for each newly stored op:
``dag.insert_many(ops); replayer.apply(dag)`` on a ``Replayer(max_points=2,
auto_every=50_000)`` (the node's settings) that already holds the digest of a ``--ops``-op
DAG. Building the DAG and the first apply are untimed setup (``initial_apply_ms`` is
reported). Then ``WRITES`` single-op Data writes, each signed before the clock starts and
sorting after every stored op (the usual case: a local write or a fresh op from a peer),
give ``median_ms``, ``p99_ms`` (nearest rank) and ``max_ms``.

``digest-update`` continues the policy-heavy stream (``ecac.bench.policy``: editors with
VCs, grants, revokes, status lists, issuer-key rotation), so every apply has a write gate.
It also times the two kinds of policy write: a 1-op Revoke (continues the live state, the
gate's epochs are extended) and a Credential + Grant pair (a retroactive input: replay
restarts from a resume point and the gate is rebuilt over the whole order; verified
credentials come from the replayer's memo). Finally the digest is checked against a fresh
``replay_full`` of the same DAG, so a fast wrong answer fails the run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.bench.policy import PolicyHeavy, editors_for
from ecac.bench.replay import peak_rss_mb
from ecac.core.dag import Dag
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.replay import Replayer, replay_full
from ecac.testing.workloads import iter_hb_chain

#: timed single-op Data writes per run
WRITES = 200
#: timed 1-op Revokes and Credential+Grant pairs (``digest-update`` only)
REVOKES = 20
REGRANTS = 5
#: the node's DigestTracker settings (ecac.net.node)
NODE_MAX_POINTS = 2
NODE_AUTO_EVERY = 50_000


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 1]) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _summary(prefix: str, samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {}
    return {
        f"{prefix}median_ms": round(statistics.median(samples), 3),
        f"{prefix}p99_ms": round(percentile(samples, 0.99), 3),
        f"{prefix}max_ms": round(max(samples), 3),
    }


class _Tracker:
    """The DigestTracker's apply path without the node around it."""

    def __init__(self, ops: Sequence[Op]) -> None:
        self.dag = Dag()
        self.dag.insert_many(ops)
        self.replayer = Replayer(max_points=NODE_MAX_POINTS, auto_every=NODE_AUTO_EVERY)
        t0 = time.perf_counter()
        _, self.digest = self.replayer.apply(self.dag)
        self.initial_apply_ms = _ms(time.perf_counter() - t0)

    def write(self, ops: list[Op]) -> float:
        """Insert ``ops`` and bring the digest up to date; the elapsed milliseconds."""
        t0 = time.perf_counter()
        self.dag.insert_many(ops)
        _, self.digest = self.replayer.apply(self.dag)
        return (time.perf_counter() - t0) * 1000

    def timed(self, make: Callable[[], list[Op]], n: int) -> tuple[list[float], list[int]]:
        """``n`` writes of ``make()`` (built untimed): their times and the replay start positions."""
        times: list[float] = []
        starts: list[int] = []
        for _ in range(n):
            ops = make()
            times.append(self.write(ops))
            starts.append(self.replayer.last_start)
        return times, starts

    def check(self, name: str, seed: int) -> float:
        """Fail unless the incremental digest equals a fresh full replay; the check's seconds."""
        t0 = time.perf_counter()
        _, want = replay_full(self.dag)
        elapsed = time.perf_counter() - t0
        if want != self.digest:
            raise EcacError(
                f"digest-update parity failed: {want.hex()} != {self.digest.hex()} "
                f"(scenario={name}, seed={seed})"
            )
        return elapsed


def _result(name: str, params: BenchParams, tr: _Tracker, data_times: list[float]) -> dict[str, Any]:
    return {
        "scenario": name,
        "ops": params.ops,
        "seed": params.seed,
        "store_ops": len(tr.dag),
        "writes": len(data_times),
        "initial_apply_ms": tr.initial_apply_ms,
        **_summary("", data_times),
        "mean_ms": round(statistics.fmean(data_times), 3) if data_times else 0.0,
    }


@scenario(
    "digest-update",
    "node digest after 1-op writes into a --ops policy-heavy store (dag.insert_many + Replayer.apply): "
    "median/p99/max ms, plus Revoke and Credential+Grant writes",
)
def bench_digest_update(params: BenchParams) -> dict[str, Any]:
    gen = PolicyHeavy(params.seed, editors_for(params.peers))
    stream = gen.stream()
    ops = [next(stream) for _ in range(params.ops)]
    kinds = Counter(op.payload.NAME for op in ops)
    tr = _Tracker(ops)
    del ops

    data_times, data_starts = tr.timed(lambda: [gen.data()], WRITES)
    continued = sum(s > 0 for s in data_starts)

    def revoke() -> list[Op]:
        return list(gen.revoke()) if gen.granted else [gen.data()]

    revoke_times, _ = tr.timed(revoke, REVOKES)
    regrant_times, regrant_starts = tr.timed(lambda: list(gen.regrant()), REGRANTS)
    check_s = tr.check("digest-update", params.seed)

    res = _result("digest-update", params, tr, data_times)
    res.update(
        {
            "editors": len(gen.editors),
            "policy_ops": params.ops - kinds.get("Data", 0),
            "credentials": kinds.get("Credential", 0),
            "continued_writes": continued,
            **_summary("revoke_", revoke_times),
            **_summary("regrant_", regrant_times),
            "regrant_restart_from": min(regrant_starts) if regrant_starts else 0,
            "full_replay_check_ms": _ms(check_s),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "state_digest": tr.digest.hex(),
        }
    )
    return res


@scenario(
    "digest-update-hb",
    "node digest after 1-op writes appended to a --ops hb chain (Data only, no policy): median/p99/max ms",
)
def bench_digest_update_hb(params: BenchParams) -> dict[str, Any]:
    chain: Iterator[Op] = iter_hb_chain(params.seed, params.ops + WRITES)
    ops = [next(chain) for _ in range(params.ops)]
    tr = _Tracker(ops)
    del ops
    data_times, data_starts = tr.timed(lambda: [next(chain)], WRITES)
    check_s = tr.check("digest-update-hb", params.seed)
    res = _result("digest-update-hb", params, tr, data_times)
    res.update(
        {
            "continued_writes": sum(s > 0 for s in data_starts),
            "full_replay_check_ms": _ms(check_s),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "state_digest": tr.digest.hex(),
        }
    )
    return res
