"""The policy-heavy workload and its bench scenario (``ecac bench --scenario policy-heavy``)."""

from __future__ import annotations

import json
from collections import Counter

from click.testing import CliRunner

from ecac.bench import load_all
from ecac.bench.policy import DEFAULT_EDITORS, editors_for, gen_policy_heavy
from ecac.cli import cli
from ecac.core import policy
from ecac.core.dag import Dag
from ecac.core.sig import admit

REQUIRED_KEYS = {
    "scenario",
    "ops",
    "seed",
    "peers",
    "policy_ops",
    "policy_fraction",
    "replay_full_ms",
    "ops_per_s",
    "policy_build_ms",
    "applied",
    "denied",
    "state_digest",
}
POLICY_KINDS = {"Credential", "Grant", "Revoke", "StatusListChunk", "IssuerKey", "IssuerKeyRevoke"}


def test_workload_is_deterministic_valid_and_policy_heavy():
    ops = gen_policy_heavy(3, 3000)
    assert len(ops) == 3000
    assert [op.op_id for op in gen_policy_heavy(3, 3000)] == [op.op_id for op in ops]
    assert [op.op_id for op in gen_policy_heavy(4, 50)] != [op.op_id for op in ops[:50]]
    good, bad = admit(ops)
    assert bad == [] and len(good) == 3000
    # HLCs grow with the generation index and parents come first: the order is the stream
    assert Dag.from_ops(reversed(ops)).topo_order() == ops
    kinds = Counter(op.payload.NAME for op in ops)
    assert set(kinds) >= POLICY_KINDS
    assert (len(ops) - kinds["Data"]) / len(ops) >= 0.10
    keys = {op.payload.key.split(":")[0] for op in ops if op.payload.NAME == "Data"}  # type: ignore[union-attr]
    assert keys == {"mv", "set+", "set-"}


def test_workload_exercises_allow_and_several_deny_reasons():
    verdicts = Counter(reason or v for _, v, reason in policy.explain(gen_policy_heavy(1, 3000)))
    assert verdicts[policy.ALLOWED] > 0.8 * sum(verdicts.values())
    for reason in (policy.REVOKED_CRED, policy.OUT_OF_SCOPE, policy.DENY_WINS):
        assert verdicts[reason] > 0, verdicts


def test_editor_count_follows_peers():
    assert editors_for(1) == DEFAULT_EDITORS
    assert editors_for(5) == 5
    authors = {op.author_pk for op in gen_policy_heavy(2, 400, editors=5) if op.payload.NAME == "Data"}
    assert 5 <= len(authors) <= 5 + 4  # the editors plus at most the four outsiders


def _bench(*extra: str) -> dict:
    r = CliRunner().invoke(cli, ["bench", "--scenario", "policy-heavy", "--ops", "400", "--json", *extra])
    assert r.exception is None, r.exception
    assert r.exit_code == 0
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_bench_policy_heavy_smoke_keys_counts_and_deterministic_digest():
    assert "policy-heavy" in load_all()
    a, b = _bench(), _bench()
    assert set(a) >= REQUIRED_KEYS
    assert a["scenario"] == "policy-heavy" and a["ops"] == 400 and a["seed"] == 1 and a["peers"] == 1
    assert a["state_digest"] == b["state_digest"]
    assert len(a["state_digest"]) == 64
    assert a["policy_fraction"] >= 0.10
    assert a["applied"] + a["denied"] == a["ops"] - a["policy_ops"]
    assert a["denied"] == sum(a[f"denied_{r}"] for r in policy.DENY_REASONS)
    assert a["policy_build_ms"] > 0 and a["ops_per_s"] > 0
    c = _bench("--seed", "2", "--peers", "6")
    assert c["editors"] == 6 and c["seed"] == 2
    assert c["state_digest"] != a["state_digest"]
