"""The operator commands over a local store (``--db``), through ``ecac.cli.main`` as a user runs them.

The lifecycle: keys, issuer publish, vc issue, grant, allowed write, get, access, revoke,
denied write (not stored), explain, status-list revocation; and every user error is one
``Error:`` line with exit 1, no traceback, and leaves the store as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.clirun import Ecac, Run, ok
from ecac.cli.keyfile import KEY_FILE_ARG, parse_key_bytes, read_key_file
from ecac.core.errors import EcacError
from ecac.core.keys import key_seed
from ecac.store.rocks import Store, check_store_dir


def one_error(r: Run, *needles: str) -> str:
    """Exit 1, exactly one stderr line ``Error: …`` containing every needle, no traceback."""
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def op_ids(db: Path) -> list[bytes]:
    with Store.open(db, create_if_missing=False) as st:
        return [op.op_id for op in st.iter_topo_ops()]


@dataclass
class World:
    db: str
    admin: str
    user: str
    user_pk: str
    admin_pk: str


@pytest.fixture
def world(ecac: Ecac, tmp_path: Path) -> World:
    """Keys for an issuer/admin and a user, the issuer published, an editor VC (scope hv) granted."""
    admin_pk = ok(ecac("key", "new", "--out", "admin.key")).out.strip()
    user_pk = ok(ecac("key", "new", "--out", "user.key")).out.strip()
    db = str(tmp_path / "db")
    ok(ecac("issuer", "publish", "--key", "admin.key", "--issuer-id", "iss-1", "--db", db))
    ok(
        ecac(
            "vc", "issue", "--key", "admin.key", "--issuer-id", "iss-1", "--subject", user_pk,
            "--role", "editor", "--scope", "hv", "--status", "list-0:5", "--out", "user.vc",
        )
    )  # fmt: skip
    ok(ecac("grant", "--vc", "user.vc", "--key", "admin.key", "--db", db))
    return World(db, "admin.key", "user.key", user_pk, admin_pk)


# --------------------------------------------------------------------------- keys


def test_key_new_and_show(ecac: Ecac, tmp_path: Path) -> None:
    pk = ok(ecac("key", "new", "--out", "k")).out.strip()
    assert len(pk) == 64 and int(pk, 16) >= 0
    f = tmp_path / "k"
    assert f.stat().st_mode & 0o777 == 0o600
    text = f.read_bytes()
    assert len(text) == 65 and text.endswith(b"\n")
    assert ok(ecac("key", "show", "k")).out.strip() == pk
    assert json.loads(ok(ecac("key", "show", "k", "--json")).out) == {"public_key": pk, "key_file": "k"}
    one_error(ecac("key", "new", "--out", "k"), "already exists")
    assert f.read_bytes() == text  # not overwritten
    f.chmod(0o644)  # show warns, signing refuses
    r = ok(ecac("key", "show", "k"))
    assert r.out.strip() == pk and "accessible by group or others" in r.err
    # a node's identity file (32 raw bytes) is a key file too
    (tmp_path / "node_key").write_bytes(key_seed(1, b"n"))
    os.chmod(tmp_path / "node_key", 0o600)
    assert (
        ok(ecac("key", "show", "node_key")).out.strip()
        == bytes(parse_key_bytes(key_seed(1, b"n"), "x").verify_key).hex()
    )


def test_key_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EcacError, match="does not exist"):
        read_key_file(missing)
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(EcacError, match="not a key file"):
        read_key_file(bad)
    with pytest.raises(EcacError, match="is a directory"):
        read_key_file(tmp_path)
    seed = key_seed(1, b"x").hex()
    loose = tmp_path / "loose"
    loose.write_text(seed.upper() + "\n")
    loose.chmod(0o640)
    with pytest.raises(EcacError, match=r"mode 0640\); run `chmod 600"):
        read_key_file(loose)
    loose.chmod(0o600)
    assert bytes(read_key_file(loose)[0]).hex() == seed
    with pytest.raises(EcacError, match="secret key on the command line is refused"):
        KEY_FILE_ARG.convert(seed, None, None)  # the reference's hex argument: put it in a file
    assert bytes(KEY_FILE_ARG.convert(str(loose), None, None)).hex() == seed


# --------------------------------------------------------------------------- the lifecycle


def test_lifecycle_grant_write_get_access_revoke_explain(ecac: Ecac, world: World) -> None:
    db = world.db
    # the VC is one that the reference's vc-verify accepts (in-band trust of the store)
    claims = json.loads(ok(ecac("vc-verify", "user.vc", "--db", db)).out)
    assert (
        claims["subject_pk_hex"] == world.user_pk and claims["role"] == "editor" and claims["scope"] == ["hv"]
    )
    assert (claims["issuer"], claims["status_list_id"], claims["status_index"]) == ("iss-1", "list-0", 5)

    rep = json.loads(ok(ecac("access", "--db", db, "--json")).out)
    assert rep["policy_active"] and [(s["subject_pk"], s["role"]) for s in rep["subjects"]] == [
        (world.user_pk, "editor")
    ]
    assert rep["subjects"][0]["epochs"][0]["status"] == "live" and rep["subjects"][0]["epochs"][0][
        "scope"
    ] == ["hv"]
    assert (
        rep["issuers"][0]["issuer_id"] == "iss-1" and rep["issuers"][0]["keys"][0]["pubkey"] == world.admin_pk
    )
    text = ok(ecac("access", "--db", db)).out
    assert world.user_pk in text and "live" in text and "iss-1" in text

    w = ok(ecac("write", "o", "x", "hello world", "--key", world.user, "--db", db))
    first_id = w.out.split()[0]
    assert w.lines == [f"{first_id} Data mv:o:x ALLOWED"] and first_id.encode() and len(first_id) == 64
    assert ok(ecac("get", "o", "x", "--db", db)).out == "hello world\n"
    assert ok(ecac("get", "--db", db)).out == "o.x = hello world\n"
    doc = json.loads(ok(ecac("get", "--db", db, "--json")).out)
    assert doc["objects"] == {"o": {"x": {"type": "mv", "values": [{"kind": "text", "text": "hello world"}]}}}

    r = ok(
        ecac(
            "revoke",
            "--subject",
            world.user_pk,
            "--role",
            "editor",
            "--scope",
            "hv",
            "--key",
            world.admin,
            "--db",
            db,
        )
    )
    assert "Revoke: closes 1 editor epoch" in r.out
    rep = json.loads(ok(ecac("access", "--db", db, "--json")).out)
    assert rep["subjects"][0]["epochs"][0]["status"] == "revoked"

    before = op_ids(Path(db))
    denied = ecac("write", "o", "x", "again", "--key", world.user, "--db", db)
    line = one_error(denied, "write denied (revoked_cred)", "nothing was stored")
    assert "closed at position" in line
    assert op_ids(Path(db)) == before  # a denied write is not stored
    assert ok(ecac("get", "o", "x", "--db", db)).out == "hello world\n"

    # stored on request, it replicates like any op, and explain shows both decisions
    stored = ecac("write", "o", "x", "again", "--key", world.user, "--db", db, "--store-denied")
    one_error(stored, "revoked_cred", "stored anyway")
    denied_id = stored.out.split()[0]
    assert len(op_ids(Path(db))) == len(before) + 1
    ex = ok(ecac("explain", "--db", db)).lines
    assert ex[0] == f"{first_id} mv:o:x ALLOWED" and ex[2] == f"{denied_id} mv:o:x DENIED revoked_cred"
    assert "closed at position" in ex[3]
    one = ok(ecac("explain", denied_id[:12], "--db", db)).lines
    assert one[0] == f"{denied_id} mv:o:x DENIED revoked_cred" and one[-1].startswith("  why: ")
    js = json.loads(ok(ecac("explain", "--db", db, "--json")).out)
    assert [(d["verdict"], d["reason"]) for d in js["decisions"]] == [
        ("ALLOWED", None),
        ("DENIED", "revoked_cred"),
    ]
    ops = json.loads(ok(ecac("ops", "--db", db, "--limit", "3", "--json")).out)
    assert ops["total"] == len(before) + 1 and ops["ops"][0]["op_id"] == denied_id
    assert ops["ops"][0]["payload"] == {"key": "mv:o:x", "value": "again"}
    assert ok(ecac("ops", "--db", db)).lines[0] == f"{len(before) + 1} of {len(before) + 1} ops, newest first"
    assert ok(ecac("verify-store", "--db", db)).out == "OK\n"


def set_bit(ecac: Ecac, world: World, index: int, *, clear: bool = False) -> Run:
    """``status-list set`` of bit ``index`` of iss-1's list-0, signed by the admin."""
    args = ["status-list", "set", "--key", world.admin, "--issuer-id", "iss-1", "--list", "list-0"]
    return ecac(*args, "--index", str(index), *(["--clear"] if clear else []), "--db", world.db)


def test_status_list_revocation_and_reinstatement(ecac: Ecac, world: World) -> None:
    db = world.db
    ok(ecac("write", "o", "x", "v1", "--key", world.user, "--db", db))
    r = ok(set_bit(ecac, world, 5))
    assert "status list list-0 is now version 1 by iss-1" in r.out
    rep = json.loads(ok(ecac("access", "--db", db, "--json")).out)
    assert rep["subjects"] == [] and rep["status_lists"][0]["revoked"] == [5]
    assert "revoked by status list 'list-0' index 5" in rep["ineffective_grants"][0]["problem"]
    # retroactive: the earlier write is now denied everywhere, so the field is gone
    js = json.loads(ok(ecac("explain", "--db", db, "--json")).out)
    assert [(d["verdict"], d["reason"]) for d in js["decisions"]] == [("DENIED", "deny_wins")]
    one_error(ecac("get", "o", "x", "--db", db), "Object 'o' not found")
    one_error(
        ecac("write", "o", "x", "v2", "--key", world.user, "--db", db), "deny_wins", "revoked by status list"
    )
    # keeping other bits, a new version clears this one
    ok(set_bit(ecac, world, 9))
    ok(set_bit(ecac, world, 5, clear=True))
    rep = json.loads(ok(ecac("access", "--db", db, "--json")).out)
    assert rep["status_lists"][0]["version"] == 3 and rep["status_lists"][0]["revoked"] == [9]
    assert ok(ecac("get", "o", "x", "--db", db)).out == "v1\n"


def test_sets_env_fallbacks_and_the_reference_write(
    ecac: Ecac, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECAC_DB", world.db)
    monkeypatch.setenv("ECAC_KEY_FILE", world.user)
    # o.s is tagged mech, outside this VC's scope hv
    one_error(ecac("write", "o", "s", "a", "--set-add"), "out_of_scope")
    ok(ecac("write", "c1", "param1", "a", "--set-add"))
    ok(ecac("write", "c1", "param1", "b", "--set-add"))
    ok(ecac("write", "c1", "param1", "a", "--set-remove"))
    assert ok(ecac("get", "c1")).out == "c1.param1 = {b}\n"
    monkeypatch.delenv("ECAC_KEY_FILE")
    monkeypatch.setenv("ECAC_SUBJECT_SK_HEX", (Path(world.user).read_text().strip()))
    ok(ecac("write", "c1", "param2", "\u00e9t\u00e9"))  # the reference's variable signs too
    assert ok(ecac("get", "c1", "param2")).out == "\u00e9t\u00e9\n"
    # the reference's form is unchanged (store §3.3): its two lines, no verdict
    legacy = ok(ecac("write", "data", "a", "b", "hi"))
    assert legacy.lines[0].startswith("write_op_id=") and legacy.lines[1] == "obj=a field=b"
    assert ecac("write", "data", "a", "b", "hi", "--key", world.user).code == 2
    assert ecac("write", "o", "x").code == 2


# --------------------------------------------------------------------------- errors


def test_every_user_error_is_one_line_and_stores_nothing(ecac: Ecac, world: World, tmp_path: Path) -> None:
    db = world.db
    before = op_ids(Path(db))
    (tmp_path / "loose.key").write_bytes(Path(world.user).read_bytes())
    (tmp_path / "loose.key").chmod(0o644)
    (tmp_path / "junk.key").write_text("hello\n")
    (tmp_path / "junk.key").chmod(0o600)
    (tmp_path / "junk.vc").write_text("not a jwt\n")
    ok(ecac("key", "new", "--out", "stranger.key"))
    stranger_pk = ok(ecac("key", "show", "stranger.key")).out.strip()
    ok(ecac("vc", "issue", "--key", "stranger.key", "--issuer-id", "nobody", "--subject", stranger_pk,
            "--role", "editor", "--scope", "hv", "--out", "stranger.vc"))  # fmt: skip
    w = ("write", "o", "x", "v", "--db", db)
    adm = ("--key", world.admin, "--db", db)
    vc = ("vc", "issue", "--key", world.admin, "--issuer-id", "iss-1", "--role", "editor", "--scope", "hv")
    vc_user = (*vc, "--subject", world.user_pk)
    taken_kid = json.loads(ok(ecac("access", "--db", db, "--json")).out)["issuers"][0]["keys"][0]["key_id"]
    squat = (
        "issuer",
        "publish",
        "--key",
        "stranger.key",
        "--issuer-id",
        "iss-1",
        "--key-id",
        taken_kid,
        "--db",
        db,
    )
    revoke = ("revoke", "--subject", stranger_pk, "--role", "editor", "--scope", "hv", *adm)
    cases = [
        ((*w, "--key", "missing.key"), "does not exist"),
        ((*w, "--key", "loose.key"), "accessible by group or others"),
        ((*w, "--key", "junk.key"), "not a key file"),
        (w, "no signing key"),
        (("write", "o:p", "x", "v", "--key", world.user, "--db", db), "contains ':'"),
        (("write", "o", "s", "a:b", "--set-add", "--key", world.user, "--db", db), "contains ':'"),
        (("grant", "--vc", "junk.vc", *adm), "not a usable VC"),
        (("grant", "--vc", "nope.vc", *adm), "cannot read"),
        (("grant", "--vc", "stranger.vc", *adm), "'nobody' has no published key"),
        (revoke, "closes nothing"),
        (squat, "first wins"),
        (("issuer", "publish", "--issuer-id", "i", "--valid-from-ms", "5", "--valid-until-ms", "5", *adm),
         "must be >"),
        ((*vc, "--subject", "abc", "--out", "x.vc"), "expected 64 hex chars for subject public key"),
        ((*vc_user, "--ttl", "soon", "--out", "x.vc"), "bad duration"),
        ((*vc_user, "--nbf", "10", "--exp", "10", "--out", "x.vc"), "at or before its nbf"),
        ((*vc_user, "--status", "list", "--out", "x.vc"), "bad --status"),
        ((*vc_user, "--out", "user.vc"), "already exists"),
        (("get", "q", "--db", db), "Object 'q' not found"),
        (("get", "o", "zz", "--db", db), "Object 'o' not found"),
        (("explain", "0000", "--db", db), "no data op with id 0000"),
        (("explain", "zz!", "--db", db), "expected hex"),
        (("get", "--db", str(tmp_path / "no-such-store")), "does not exist"),
        (("access", "--db", str(tmp_path / "admin.key")), "not a directory"),
    ]  # fmt: skip
    for args, needle in cases:
        one_error(ecac(*args), needle)
    assert not (tmp_path / "x.vc").exists()
    assert op_ids(Path(db)) == before
    assert ok(ecac("verify-store", "--db", db)).out == "OK\n"
    r = ecac("get")  # no store at all: a usage error
    assert r.code == 2 and "--db" in r.err


def test_db_refuses_a_directory_that_is_not_a_store(ecac: Ecac, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    ok(ecac("key", "new", "--out", "u.key"))
    for args in (
        ("write", "o", "x", "v", "--key", "u.key", "--db", str(home)),
        ("issuer", "publish", "--key", "u.key", "--issuer-id", "i", "--db", str(home)),
        ("get", "--db", str(home)),
    ):
        one_error(ecac(*args), "is not an ecac store", "notes.txt")
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]  # RocksDB wrote nothing there
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error(ecac("access", "--db", str(empty)), "does not exist")  # reads never create a store
    ok(ecac("write", "o", "x", "v", "--key", "u.key", "--db", str(empty)))  # writes may
    check_store_dir(empty, create=False)  # now a store
    leftovers = tmp_path / "half"
    leftovers.mkdir()
    (leftovers / "LOCK").write_text("")
    (leftovers / "OPTIONS-000007").write_text("")
    check_store_dir(leftovers, create=True)  # an interrupted create may be finished


def test_reads_work_while_a_writer_holds_the_store(ecac: Ecac, world: World) -> None:
    ok(ecac("write", "o", "x", "seen", "--key", world.user, "--db", world.db))
    with Store.open(world.db):  # as a running node holds it
        assert ok(ecac("get", "o", "x", "--db", world.db)).out == "seen\n"
        assert ok(ecac("explain", "--db", world.db)).lines[0].endswith("mv:o:x ALLOWED")
        one_error(ecac("write", "o", "x", "v", "--key", world.user, "--db", world.db), "locked")
