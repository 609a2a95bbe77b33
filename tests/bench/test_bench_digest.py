"""The digest-update bench scenarios (``ecac bench --scenario digest-update[-hb]``): smoke runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ecac.bench import load_all
from ecac.bench.digest import REGRANTS, REVOKES, WRITES, percentile
from ecac.cli import cli

KEYS = {"scenario", "ops", "seed", "store_ops", "writes", "median_ms", "p99_ms", "max_ms", "state_digest"}


def _bench(name: str, ops: int) -> dict:
    r = CliRunner().invoke(cli, ["bench", "--scenario", name, "--ops", str(ops), "--json"])
    assert r.exception is None, r.exception
    assert r.exit_code == 0
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_percentile_is_nearest_rank():
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 0.99) == 99.0
    assert percentile(xs, 1.0) == 100.0
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_scenarios_are_registered():
    assert {"digest-update", "digest-update-hb"} <= set(load_all())


def test_digest_update_policy_store_smoke():
    a = _bench("digest-update", 400)
    assert set(a) >= KEYS | {"revoke_median_ms", "regrant_median_ms", "policy_ops", "credentials"}
    assert a["writes"] == WRITES and a["ops"] == 400
    assert a["continued_writes"] == WRITES  # every appended Data write continued the live state
    assert a["policy_ops"] > 0 and a["credentials"] > 0
    assert a["store_ops"] == 400 + WRITES + REVOKES + 2 * REGRANTS  # a regrant is a Credential + Grant
    assert a["median_ms"] <= a["p99_ms"] <= a["max_ms"]
    assert a["state_digest"] == _bench("digest-update", 400)["state_digest"]


@pytest.mark.parametrize("ops", [0, 50])
def test_digest_update_hb_smoke(ops):
    a = _bench("digest-update-hb", ops)
    assert set(a) >= KEYS
    assert a["store_ops"] == ops + WRITES
    assert a["continued_writes"] == (WRITES if ops else WRITES - 1)
