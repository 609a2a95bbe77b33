"""``write``, ``keyrotate``, ``grant-key`` and ``show`` end to end through click (store §3.3, core §15)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from conftest import cli_ok as ok
from conftest import cli_run as run
from ecac.cli.keyfile import create_key_file
from ecac.cli.policy_cmds import DEMO_ISSUER, demo_issuers_toml
from ecac.cli.store_cmds import opened
from ecac.core.enc import aad, decode_enc, decrypt, derive_tag_key
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, key_seed, public_key
from ecac.core.op import Data, KeyGrant, KeyRotate, Op, SealedKeyRotate
from ecac.core.opcodec import encode_ops
from ecac.testing.scenarios import ADMIN, USER, credential_op, data_op, grant_op, issuer_key_op, vc_token

ADMIN_HEX = key_seed(1, b"policy/admin").hex()
USER_HEX = key_seed(1, b"policy/user").hex()
OTHER = key_pair(1, b"enc/other")
DAY_MS = 86_400_000


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """Run in tmp_path (./trust is relative) with a store named by ECAC_DB and both keys set."""
    monkeypatch.chdir(tmp_path)
    return {
        "ECAC_DB": str(tmp_path / "db"),
        "ECAC_KEYADMIN_SK_HEX": ADMIN_HEX,
        "ECAC_SUBJECT_SK_HEX": USER_HEX,
    }


def lines(out: str) -> list[str]:
    return out.splitlines()


def stored(db: str) -> list[Op]:
    with opened(Path(db)) as st:
        return list(st.iter_topo_ops())


def test_help_lists_each_command() -> None:
    for cmd in ("write", "keyrotate", "grant-key", "show"):
        assert "--db" in ok(cmd, "--help").output


def test_keyrotate_derives_stores_and_logs_the_key(env: dict[str, str | None]) -> None:
    r1 = lines(ok("keyrotate", "confidential", env=env).output)
    assert r1[0] == "tag=confidential new_version=1"
    assert re.fullmatch(r"keyrotate_op_id=[0-9a-f]{64}", r1[1])
    assert lines(ok("keyrotate", "confidential", env=env).output)[0] == "tag=confidential new_version=2"
    with opened(Path(env["ECAC_DB"] or "")) as st:
        key2 = st.get_tag_key("confidential", 2)
        assert key2 == derive_tag_key(st.db_uuid(), "confidential", 2)
        assert st.max_key_version_for_tag("confidential") == 2
    rot = [op.payload for op in stored(env["ECAC_DB"] or "") if isinstance(op.payload, KeyRotate)]
    assert [(p.tag, p.new_version) for p in rot] == [("confidential", 1), ("confidential", 2)]
    assert rot[1].new_key == key2


def test_keyrotate_without_admin_key_stores_nothing(env: dict[str, str | None]) -> None:
    ok("keyrotate", "confidential", env=env)
    r = run("keyrotate", "confidential", env={**env, "ECAC_KEYADMIN_SK_HEX": None})
    assert r.exit_code == 1 and isinstance(r.exception, EcacError)
    assert "ECAC_KEYADMIN_SK_HEX" in str(r.exception)
    with opened(Path(env["ECAC_DB"] or "")) as st:
        assert st.max_key_version_for_tag("confidential") == 1
        assert st.get_tag_key("confidential", 2) is None
    assert len(stored(env["ECAC_DB"] or "")) == 1


def test_write_plaintext(env: dict[str, str | None]) -> None:
    out = lines(ok("write", "data", "a", "b", "hello", env=env).output)
    assert re.fullmatch(r"write_op_id=[0-9a-f]{64}", out[0]) and out[1] == "obj=a field=b"
    (op,) = stored(env["ECAC_DB"] or "")
    assert op.payload == Data("mv:a:b", b"hello")
    assert op.author_pk == public_key(USER) and op.hlc.logical == 0 and op.hlc.node_id == 1


def test_write_errors(env: dict[str, str | None]) -> None:
    r = run("write", "set", "a", "b", "v", env=env)
    assert r.exit_code == 1 and str(r.exception) == "unsupported write kind 'set'; only 'data' is implemented"
    r = run("write", "data", "a", "b", "v", env={**env, "ECAC_SUBJECT_SK_HEX": None})
    assert r.exit_code == 1 and "ECAC_SUBJECT_SK_HEX" in str(r.exception)
    r = run("write", "data", "o", "x", "v", env=env)
    assert r.exit_code == 1
    assert str(r.exception) == "no key_version for tag='confidential'; run `keyrotate confidential` first"
    assert run("write", "data", "o", env=env).exit_code == 2


def test_write_confidential_encrypts_with_newest_key_over_sorted_parents(env: dict[str, str | None]) -> None:
    ok("keyrotate", "confidential", env=env)
    ok("keyrotate", "confidential", env=env)
    with opened(Path(env["ECAC_DB"] or "")) as st:  # two more roots: the write gets three parents
        st.put_many([data_op(None, Hlc(ms, 0, 1), "mv:a:b", b"r") for ms in (5, 6)])
    ok("write", "data", "o", "x", "top secret", env=env)
    op = stored(env["ECAC_DB"] or "")[-1]
    assert isinstance(op.payload, Data) and op.payload.key == "mv:o:x" and len(op.parents) == 3
    enc = decode_enc(op.payload.value)
    assert (enc.tag, enc.key_version) == ("confidential", 2)
    with opened(Path(env["ECAC_DB"] or "")) as st:
        key = st.get_tag_key("confidential", 2)
    assert key is not None
    assert decrypt(key, enc, aad(op.author_pk, op.hlc, op.parents, "o", "x")) == b"top secret"


def _policy_store(env: dict[str, str | None], tmp_path: Path, subject: SigningKey = USER) -> Path:
    """In-band issuer key, Credential + Grant (editor on confidential) for ``subject``, the same VC
    in ./vc.jwt, and the issuer in ./trust/issuers.toml for grant-key's file verification."""
    now = time.time_ns() // 1_000_000
    token = vc_token(
        subject, now - 60_000, now + DAY_MS, scope=("confidential",), iss=DEMO_ISSUER, status=None
    )
    cred = credential_op(token, now - 60_000)
    ops = [issuer_key_op(issuer_id=DEMO_ISSUER), cred, grant_op(cred, subject)]
    with opened(Path(env["ECAC_DB"] or "")) as st:
        st.put_many(ops)
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "issuers.toml").write_text(demo_issuers_toml(public_key(ADMIN)))
    (tmp_path / "vc.jwt").write_bytes(token)
    return tmp_path / "vc.jwt"


def test_grant_key_errors_and_output(env: dict[str, str | None], tmp_path: Path) -> None:
    jwt = str(_policy_store(env, tmp_path))
    user_hex = public_key(USER).hex()
    r = run("grant-key", user_hex, "confidential", "1", jwt, env=env)
    assert r.exit_code == 1
    assert str(r.exception) == "no key for tag='confidential', version=1 in keyring; run keyrotate first"
    ok("keyrotate", "confidential", env=env)
    r = run("grant-key", public_key(OTHER).hex(), "confidential", "1", jwt, env=env)
    assert r.exit_code == 1
    assert str(r.exception) == f"subject_pk_hex does not match VC subject_pk (VC subject is {user_hex})"
    assert run("grant-key", user_hex, "confidential", "x", jwt, env=env).exit_code == 2
    out = lines(ok("grant-key", user_hex, "confidential", "1", jwt, env=env).output)
    assert re.fullmatch(r"keygrant_op_id=[0-9a-f]{64}", out[0])
    assert out[1:3] == [f"subject_pk={user_hex}", "tag=confidential key_version=1"]
    assert re.fullmatch(r"cred_hash=[0-9a-f]{64}", out[3])
    kg = stored(env["ECAC_DB"] or "")[-1].payload
    assert isinstance(kg, KeyGrant) and (kg.subject_pk, kg.key_version) == (public_key(USER), 1)


def test_show_plaintext_for_the_granted_subject_redacted_for_others(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    jwt = str(_policy_store(env, tmp_path))
    user_hex = public_key(USER).hex()
    ok("keyrotate", "confidential", env=env)
    ok("grant-key", user_hex, "confidential", "1", jwt, env=env)
    ok("write", "data", "o", "x", "hello M9", env=env)
    assert ok("show", "o", "x", "--subject-pk", user_hex, env=env).output == "hello M9\n"
    other = ok("show", "o", "x", "--subject-pk", public_key(OTHER).hex(), env=env).output
    assert other == '"<redacted>"\n'
    nofield = ok("show", "o", "nope", "--subject-pk", user_hex, env=env).output
    assert nofield == '{"error":"field not found","obj":"o","field":"nope"}\n'
    noobj = ok("show", "zz", "x", "--subject-pk", user_hex, env=env).output
    assert noobj == '{"error":"object not found","obj":"zz"}\n'
    r = run("show", "o", "x", "--subject-pk", "abc", env=env)
    assert r.exit_code == 1 and isinstance(r.exception, EcacError)


# --------------------------------------------------------------------------- keys from the log


def test_a_second_store_decrypts_and_continues_the_key_sequence(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    """KeyRotate carries its key in clear, so a store that only received the ops (op-append, as
    sync would) shows the plaintext without a keyring entry, grants that version, and its own
    keyrotate makes version 2, not a second "version 1"."""
    jwt = str(_policy_store(env, tmp_path))
    user_hex = public_key(USER).hex()
    ok("keyrotate", "confidential", env=env)
    ok("grant-key", user_hex, "confidential", "1", jwt, env=env)
    ok("write", "data", "o", "x", "shared secret", env=env)
    log = tmp_path / "log.cbor"
    log.write_bytes(encode_ops(stored(env["ECAC_DB"] or "")))

    b = {**env, "ECAC_DB": str(tmp_path / "b")}
    ok("op-append", "--db", str(tmp_path / "b"), str(log))
    with opened(tmp_path / "b") as st:
        assert st.max_key_version_for_tag("confidential") is None  # nothing in b's keyring
    assert ok("show", "o", "x", "--subject-pk", user_hex, env=b).output == "shared secret\n"
    assert ok("show", "o", "x", "--subject-pk", public_key(OTHER).hex(), env=b).output == '"<redacted>"\n'
    ok("grant-key", user_hex, "confidential", "1", jwt, env=b)  # the log holds version 1
    assert lines(ok("keyrotate", "confidential", env=b).output)[0] == "tag=confidential new_version=2"
    rot = [
        (op.payload.tag, op.payload.new_version)
        for op in stored(str(tmp_path / "b"))
        if isinstance(op.payload, KeyRotate)
    ]
    assert rot == [("confidential", 1), ("confidential", 2)]


def test_write_data_on_a_second_store_encrypts_under_the_logs_newest_key(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    ok("keyrotate", "confidential", env=env)
    ok("keyrotate", "confidential", env=env)
    log = tmp_path / "log.cbor"
    log.write_bytes(encode_ops(stored(env["ECAC_DB"] or "")))
    b = {**env, "ECAC_DB": str(tmp_path / "b")}
    ok("op-append", "--db", str(tmp_path / "b"), str(log))
    ok("write", "data", "o", "x", "from b", env=b)
    op = stored(str(tmp_path / "b"))[-1]
    assert isinstance(op.payload, Data)
    enc = decode_enc(op.payload.value)
    assert (enc.tag, enc.key_version) == ("confidential", 2)
    with opened(Path(env["ECAC_DB"] or "")) as st:  # the key a's keyrotate published
        key = st.get_tag_key("confidential", 2)
    assert key is not None
    assert decrypt(key, enc, aad(op.author_pk, op.hlc, op.parents, "o", "x")) == b"from b"


def test_keyrotate_and_grant_key_take_a_key_file(env: dict[str, str | None], tmp_path: Path) -> None:
    jwt = str(_policy_store(env, tmp_path))
    create_key_file(tmp_path / "admin.key", OTHER)
    no_hex = {**env, "ECAC_KEYADMIN_SK_HEX": None}
    ok("keyrotate", "confidential", "--key", str(tmp_path / "admin.key"), env=no_hex)
    ok(
        "grant-key",
        public_key(USER).hex(),
        "confidential",
        "1",
        jwt,
        env={**no_hex, "ECAC_KEY_FILE": "admin.key"},
    )
    kr, kg = stored(env["ECAC_DB"] or "")[-2:]
    assert isinstance(kr.payload, KeyRotate) and isinstance(kg.payload, KeyGrant)
    assert kr.author_pk == kg.author_pk == public_key(OTHER)
    r = run("keyrotate", "confidential", env=no_hex)
    assert (
        r.exit_code == 1 and "--key FILE" in str(r.exception) and "ECAC_KEYADMIN_SK_HEX" in str(r.exception)
    )


# --------------------------------------------------------------------------- strict: sealed read keys


def test_strict_keyrotate_seals_to_live_readers_and_show_needs_the_readers_key(tmp_path: Path) -> None:
    """A strict store end to end: keyrotate seals a random key to ALICE and BOB (nothing in clear,
    nothing in the keyring), `write data` encrypts with the writer's own box, `show --key` opens it,
    `show --subject-pk` (no key) is redacted; after BOB's revoke the next keyrotate leaves him out
    and he cannot read what is written under it, while ALICE can. grant-key is refused."""
    keys: dict[str, tuple[Path, str]] = {}
    for name in ("admin", "alice", "bob", "mallory"):
        path = tmp_path / f"{name}.key"
        keys[name] = (path, ok("key", "new", "--out", str(path)).output.strip())
    db = str(tmp_path / "db")
    admin = str(keys["admin"][0])
    ok("init", "--profile", "strict", "--admin-key", admin, "--db", db)
    ok("issuer", "publish", "--key", admin, "--issuer-id", "acme", "--db", db)
    for name in ("alice", "bob"):
        vc = str(tmp_path / f"{name}.vc")
        ok(
            "vc", "issue", "--key", admin, "--issuer-id", "acme", "--subject", keys[name][1],
            "--role", "editor", "--scope", "hv", "--scope", "confidential", "--out", vc,
        )  # fmt: skip
        ok("grant", "--vc", vc, "--key", admin, "--db", db)
    env = {"ECAC_DB": db, "ECAC_SUBJECT_SK_HEX": keys["alice"][0].read_text().strip()}

    r = run("keyrotate", "confidential", "--key", str(keys["mallory"][0]), env=env)
    assert r.exit_code == 1 and "only the project's admins" in str(r.exception)
    out = lines(ok("keyrotate", "confidential", "--key", admin, env=env).output)
    assert out[:2] == ["tag=confidential new_version=1", "sealed_to=2 readers"]
    (rot,) = [op for op in stored(db) if isinstance(op.payload, SealedKeyRotate)]
    assert sorted(b.reader_pk.hex() for b in rot.payload.boxes) == sorted([keys["alice"][1], keys["bob"][1]])
    assert not any(isinstance(op.payload, KeyRotate) for op in stored(db))
    with opened(Path(db)) as st:
        assert st.max_key_version_for_tag("confidential") is None  # no key at rest

    ok("write", "data", "o", "x", "for readers", env=env)
    for name in ("alice", "bob"):
        assert ok("show", "o", "x", "--key", str(keys[name][0]), env=env).output == "for readers\n"
    assert ok("show", "o", "x", "--subject-pk", keys["bob"][1], env=env).output == '"<redacted>"\n'
    assert ok("show", "o", "x", "--key", str(keys["mallory"][0]), env=env).output == '"<redacted>"\n'
    r = run("show", "o", "x", "--key", str(keys["bob"][0]), "--subject-pk", keys["alice"][1], env=env)
    assert r.exit_code == 1 and "not the public key" in str(r.exception)

    ok("revoke", "--subject", keys["bob"][1], "--role", "editor", "--scope", "confidential",
       "--key", admin, "--db", db)  # fmt: skip
    out = lines(ok("keyrotate", "confidential", "--key", admin, env=env).output)
    assert out[:2] == ["tag=confidential new_version=2", "sealed_to=1 readers"]
    ok("write", "data", "o", "x", "after the revoke", env=env)
    last = stored(db)[-1]
    assert isinstance(last.payload, Data) and decode_enc(last.payload.value).key_version == 2
    assert ok("show", "o", "x", "--key", str(keys["alice"][0]), env=env).output == "after the revoke\n"
    assert ok("show", "o", "x", "--key", str(keys["bob"][0]), env=env).output == '"<redacted>"\n'
    assert ok("get", "o", "x", "--db", db).output == "<redacted: confidential v2>\n"  # get never decrypts

    r = run("write", "data", "o", "x", "x", env={**env, "ECAC_SUBJECT_SK_HEX": keys["bob"][0].read_text()})
    assert r.exit_code == 1 and "not a recipient of key version 2" in str(r.exception)
    r = run("grant-key", keys["alice"][1], "confidential", "2", str(tmp_path / "alice.vc"),
            "--key", admin, env=env)  # fmt: skip
    assert r.exit_code == 1 and "no effect in a strict project" in str(r.exception)
