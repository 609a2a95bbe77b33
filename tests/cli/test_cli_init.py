"""``ecac init``: reference stores, strict genesis into a store or a file, and its refusals."""

from __future__ import annotations

from pathlib import Path

from conftest import cli_ok, cli_run
from ecac.core.dag import Dag
from ecac.core.op import Genesis
from ecac.core.opcodec import read_log
from ecac.core.profile import STRICT, detect_profile
from ecac.core.replay import replay_full


def _err(r: object) -> str:
    """What the user sees of an error: click's message, or the EcacError ``main`` prints."""
    return f"{r.stderr} {r.exception}"  # type: ignore[attr-defined]


def _key(tmp_path: Path, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    pk = cli_ok("key", "new", "--out", str(path)).stdout.strip()
    return path, pk


def test_strict_init_writes_a_genesis_file_naming_every_admin(tmp_path: Path) -> None:
    a, pa = _key(tmp_path, "a.key")
    b, pb = _key(tmp_path, "b.key")
    out = tmp_path / "proj.genesis"
    r = cli_ok("init", "--profile", "strict", "--admin-key", str(a), "--admin-key", str(b), "--out", str(out))
    ops = read_log(out.read_bytes())
    assert len(ops) == 1
    g = ops[0]
    assert isinstance(g.payload, Genesis)
    assert g.payload.profile == STRICT and g.payload.project == "proj"
    assert sorted(x.hex() for x in g.payload.admins) == sorted([pa, pb])
    assert g.author_pk.hex() == pa and not g.parents
    assert f"genesis {g.op_id.hex()}" in r.stdout
    prof = detect_profile([g])
    assert prof.strict and prof.genesis_id == g.op_id
    # refuses to overwrite
    again = cli_run("init", "--profile", "strict", "--admin-key", str(a), "--out", str(out))
    assert again.exit_code == 1 and "exists" in _err(again)


def test_strict_init_into_a_store_then_the_store_replays_strict(tmp_path: Path) -> None:
    a, _ = _key(tmp_path, "a.key")
    db = tmp_path / "db"
    cli_ok("init", "--profile", "strict", "--admin-key", str(a), "--project", "demo", "--db", str(db))
    st = cli_ok("status", "--db", str(db)).stdout
    assert "op_count: 1" in st
    # a second init of the same store is refused
    r = cli_run("init", "--profile", "strict", "--admin-key", str(a), "--db", str(db))
    assert r.exit_code == 1 and "not empty" in _err(r)


def test_reference_init_creates_an_empty_store(tmp_path: Path) -> None:
    db = tmp_path / "ref"
    cli_ok("init", "--profile", "reference", "--db", str(db))
    assert "op_count: 0" in cli_ok("status", "--db", str(db)).stdout


def test_init_usage_errors(tmp_path: Path) -> None:
    a, _ = _key(tmp_path, "a.key")
    cases = [
        (["init", "--profile", "strict", "--out", str(tmp_path / "g")], "at least one --admin-key"),
        (["init", "--profile", "strict", "--admin-key", str(a)], "exactly one of --db"),
        (
            ["init", "--profile", "strict", "--admin-key", str(a), "--db", str(tmp_path / "d"), "--out", "x"],
            "exactly one of --db",
        ),
        (
            ["init", "--profile", "reference", "--out", str(tmp_path / "g")],
            "reference project has no genesis",
        ),
        (
            ["init", "--profile", "reference", "--admin-key", str(a), "--db", str(tmp_path / "r")],
            "no trust root",
        ),
        (["init", "--profile", "other", "--db", str(tmp_path / "o")], "Invalid value"),
    ]
    for args, msg in cases:
        r = cli_run(*args)
        assert r.exit_code == 2, args
        assert msg in r.stderr, (args, r.stderr)


def test_missing_admin_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    r = cli_run(
        "init", "--profile", "strict", "--admin-key", str(tmp_path / "nope"), "--out", str(tmp_path / "g")
    )
    assert r.exit_code == 1 and "does not exist" in _err(r)
    assert not (tmp_path / "g").exists()


def test_genesis_file_seeds_a_replayable_strict_log(tmp_path: Path) -> None:
    a, _ = _key(tmp_path, "a.key")
    out = tmp_path / "g.cbor"
    cli_ok("init", "--profile", "strict", "--admin-key", str(a), "--out", str(out))
    ops = read_log(out.read_bytes())
    state, _ = replay_full(Dag.from_ops(ops))
    assert state.processed_count == 1


def test_operator_commands_follow_the_strict_rules(tmp_path: Path) -> None:
    """A strict store end to end: only an admin publishes an issuer key, a granted editor
    writes, an unrelated revoke is refused, the admin's revoke denies the next write."""
    admin, _ = _key(tmp_path, "admin.key")
    stranger, _ = _key(tmp_path, "stranger.key")
    user, upk = _key(tmp_path, "user.key")
    db = str(tmp_path / "db")
    cli_ok("init", "--profile", "strict", "--admin-key", str(admin), "--db", db)
    r = cli_run("issuer", "publish", "--key", str(stranger), "--issuer-id", "acme", "--db", db)
    assert r.exit_code == 1 and "only the project's admins" in _err(r)
    cli_ok("issuer", "publish", "--key", str(admin), "--issuer-id", "acme", "--db", db)
    vc = str(tmp_path / "u.vc")
    cli_ok(
        "vc", "issue", "--key", str(admin), "--issuer-id", "acme", "--subject", upk,
        "--role", "editor", "--scope", "hv", "--out", vc,
    )  # fmt: skip
    cli_ok("grant", "--vc", vc, "--key", str(admin), "--db", db)
    assert "ALLOWED" in cli_ok("write", "o", "x", "one", "--key", str(user), "--db", db).stdout
    revoke = ("revoke", "--subject", upk, "--role", "editor", "--scope", "hv", "--db", db)
    r = cli_run(*revoke, "--key", str(stranger))
    assert r.exit_code == 1 and "closes nothing" in _err(r)
    cli_ok(*revoke, "--key", str(admin))
    r = cli_run("write", "o", "x", "two", "--key", str(user), "--db", db)
    assert r.exit_code == 1 and "revoked_cred" in _err(r)
    assert "o.x = one" in cli_ok("get", "--db", db).stdout
