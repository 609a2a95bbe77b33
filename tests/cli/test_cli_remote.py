"""The operator commands through a running node (``--node URL``) against real ``ecac node``
processes on 127.0.0.1: the whole lifecycle, the answers identical to ``--db`` on the same
store, the write announced to a second node, the token required, and ``peers``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.clirun import Ecac, Run, ok
from ecac.net.procs import NodeProc, start_node


def one_error(r: Run, *needles: str) -> str:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@dataclass
class Pair:
    a: NodeProc
    b: NodeProc

    @staticmethod
    def url(n: NodeProc) -> str:
        assert n.control_url is not None
        return n.control_url

    @staticmethod
    def token(n: NodeProc) -> str:
        return str(n.db / "control.token")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two nodes, b dialling a (one pair for the module: starting nodes is the slow part)."""
    d = tmp_path_factory.mktemp("nodes")
    a = start_node(d / "a", anti_entropy_ms=300)
    try:
        b = start_node(d / "b", peers=[a.addr], anti_entropy_ms=300)
        try:
            yield Pair(a, b)
        finally:
            b.stop()
    finally:
        a.stop()


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_lifecycle_through_a_node_matches_the_store(ecac: Ecac, pair: Pair) -> None:
    a, b = pair.a, pair.b
    node_a = ("--node", pair.url(a), "--token-file", pair.token(a))
    node_b = ("--node", pair.url(b), "--token-file", pair.token(b))
    db_a = ("--db", str(a.db))  # read-only opens: no lock, so they work beside the running node

    admin_pk = ok(ecac("key", "new", "--out", "admin.key")).out.strip()
    user_pk = ok(ecac("key", "new", "--out", "user.key")).out.strip()
    ok(ecac("issuer", "publish", "--key", "admin.key", "--issuer-id", "iss-1", *node_a))
    ok(
        ecac(
            "vc", "issue", "--key", "admin.key", "--issuer-id", "iss-1", "--subject", user_pk,
            "--role", "editor", "--scope", "hv", "--out", "user.vc",
        )
    )  # fmt: skip

    # every POST needs the token: without it a one-line 401 that says where the token is
    one_error(
        ecac("grant", "--vc", "user.vc", "--key", "admin.key", "--node", pair.url(a)),
        "answered 401",
        "--token-file",
    )
    ok(ecac("grant", "--vc", "user.vc", "--key", "admin.key", *node_a))

    # a write to the store of a running node is refused by its lock, with the way through the node
    locked = ecac("write", "o", "x", "v", "--key", "user.key", *db_a)
    one_error(locked, "is locked", "--node URL")

    w = ok(ecac("write", "o", "x", "hello world", "--key", "user.key", *node_a))
    first_id = w.out.split()[0]
    assert w.lines == [f"{first_id} Data mv:o:x ALLOWED"]
    assert ok(ecac("get", "o", "x", *node_a)).out == "hello world\n"
    # announced: node b has it too (and reads it with no token at all)
    eventually(lambda: ecac("get", "o", "x", "--node", pair.url(b)).out == "hello world\n")

    rep = json.loads(ok(ecac("access", *node_b, "--json")).out)
    assert [(s["subject_pk"], s["role"]) for s in rep["subjects"]] == [(user_pk, "editor")]
    assert rep["issuers"][0]["keys"][0]["pubkey"] == admin_pk

    r = ok(
        ecac(
            "revoke", "--subject", user_pk, "--role", "editor", "--scope", "hv", "--key", "admin.key",
            *node_a,
        )
    )  # fmt: skip
    assert "Revoke: closes 1 editor epoch" in r.out
    denied = ecac("write", "o", "x", "again", "--key", "user.key", *node_a)
    one_error(denied, "write denied (revoked_cred)", "nothing was stored")
    stored = ecac("write", "o", "x", "again", "--key", "user.key", *node_a, "--store-denied")
    one_error(stored, "revoked_cred", "stored anyway")
    denied_id = stored.out.split()[0]
    assert ok(ecac("get", "o", "x", *node_a)).out == "hello world\n"
    one = ok(ecac("explain", denied_id[:12], *node_a)).lines
    assert one[0] == f"{denied_id} mv:o:x DENIED revoked_cred"
    # not found: the same one line as with --db
    for args in (("explain", "ffffffff"), ("get", "nope"), ("get", "o", "nope")):
        assert one_error(ecac(*args, *node_a)) == one_error(ecac(*args, *db_a)), args

    # --node and --db give the same documents and the same text
    eventually(lambda: json.loads(ecac("ops", *node_a, "--json").out)["total"] == 6)
    for args in (
        ("get",),
        ("get", "o"),
        ("get", "o", "x"),
        ("get", "--json"),
        ("get", "o", "--json"),
        ("get", "o", "x", "--json"),
        ("explain",),
        ("explain", "--json"),
        ("explain", denied_id, "--json"),
        ("ops",),
        ("ops", "--json"),
        ("ops", "--limit", "2", "--json"),
    ):
        remote, local = ok(ecac(*args, *node_a)), ok(ecac(*args, *db_a))
        assert remote.out == local.out, args
    remote_acc = json.loads(ok(ecac("access", *node_a, "--json")).out)
    local_acc = json.loads(ok(ecac("access", *db_a, "--json")).out)
    assert remote_acc.pop("now_ms") <= local_acc.pop("now_ms")
    assert remote_acc == local_acc

    # and node b converged on the same state, denied write included
    eventually(
        lambda: ecac("explain", "--node", pair.url(b), "--json").out == ecac("explain", *db_a, "--json").out
    )


def test_peers_status_and_the_token(ecac: Ecac, pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair.a, pair.b
    eventually(
        lambda: any(
            p["connected"] for p in json.loads(ecac("peers", "--node", pair.url(b), "--json").out)["peers"]
        )
    )
    doc = json.loads(ok(ecac("peers", "--node", pair.url(b), "--json")).out)
    assert doc["self"]["peer_id"] == b.peer_id
    (pa,) = [p for p in doc["peers"] if p["peer_id"] == a.peer_id]
    assert pa["connected"] is True and isinstance(pa["addrs"], list)
    text = ok(ecac("peers", "--node", pair.url(b))).lines
    assert text[0].startswith(f"self {b.peer_id}")
    assert any(line.startswith(f"{a.peer_id}  connected") for line in text)
    # reference nodes answer hello: A proves its subject (its node key) and B serves it
    eventually(
        lambda: all(
            p["subject"] for p in json.loads(ecac("peers", "--node", pair.url(b), "--json").out)["peers"]
        )
    )
    doc = json.loads(ok(ecac("peers", "--node", pair.url(b), "--json")).out)
    (pa,) = [p for p in doc["peers"] if p["peer_id"] == a.peer_id]
    assert pa["subject"] == a.status()["identity"]["subject"]
    assert pa["served"] is True and pa["refused_us"] == {}
    assert f"    subject {pa['subject']}  served" in ok(ecac("peers", "--node", pair.url(b))).lines
    st = json.loads(ok(ecac("status", "--node", pair.url(a), "--json")).out)
    assert st["peer_id"] == a.peer_id
    args = ("inject-demo-ops", "--node", pair.url(a), "--count", "3", "--seed", "9")
    one_error(ecac(*args), "answered 401")
    done = json.loads(ok(ecac(*args, "--token-file", pair.token(a))).out)
    assert done["count"] == 3 and done["op_count"] == st["op_count"] + 3
    monkeypatch.setenv("ECAC_CONTROL_TOKEN", Path(pair.token(a)).read_text().strip())  # the token's text
    again = json.loads(ok(ecac(*args)).out)  # chained on the new heads: three more ops
    assert again["op_count"] == st["op_count"] + 6
    monkeypatch.setenv("ECAC_CONTROL_TOKEN", "0" * 64)
    one_error(ecac(*args), "answered 401", "ECAC_CONTROL_TOKEN")
