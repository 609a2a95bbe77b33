"""The op-file tools: op-make-min (spec vector), op-corrupt-sig, op-make-orphan, op-make-grant."""

from __future__ import annotations

from pathlib import Path

import blake3
from click.testing import CliRunner

from ecac.cli import cli
from ecac.cli.keyfile import create_key_file
from ecac.core.keys import signing_key_from_hex
from ecac.core.op import Credential, Grant
from ecac.core.opcodec import decode_op, read_log
from ecac.core.replay import replay_full
from ecac.core.sig import admit, check_op

SEED_11 = "11" * 32
SEED_22 = "22" * 32


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def key_file(tmp_path: Path, seed_hex: str) -> str:
    """The seed in a key file (0600), as these commands take it."""
    path = tmp_path / f"{seed_hex[:4]}.key"
    if not path.exists():
        create_key_file(path, signing_key_from_hex(seed_hex))
    return str(path)


def test_op_make_min_reproduces_the_spec_vector(tmp_path: Path, vectors) -> None:
    out = tmp_path / "min.cbor"
    res = run("op-make-min", key_file(tmp_path, SEED_11), str(out))
    assert res.exit_code == 0
    assert "wrote minimal op to" in res.stderr
    expected = vectors.expected["op_make_min"]
    assert out.read_bytes().hex() == expected["file_cbor_hex"]
    (op,) = read_log(out.read_bytes())
    assert op.op_id.hex() == expected["op_id_hex"]
    assert check_op(op) is None


def test_op_corrupt_sig_makes_every_op_fail_admission(tmp_path: Path, vectors) -> None:
    src = vectors.path("fixtures/ops.cbor")
    out = tmp_path / "bad.cbor"
    res = run("op-corrupt-sig", str(src), str(out))
    assert res.exit_code == 0
    ops = read_log(out.read_bytes())
    good, bad = admit(ops)
    assert good == [] and len(bad) == 5
    assert all(r.reason == "invalid signature" for r in bad)
    replay = run("replay", str(out))
    assert replay.stdout.splitlines()[0] == '{"objects":[],"processed_count":0}'
    assert replay.stderr.count("rejected op ") == 5


def test_op_make_orphan_appends_an_op_that_stays_pending(tmp_path: Path, vectors) -> None:
    src = vectors.path("fixtures/hb_chain.cbor")
    out = tmp_path / "orphan.cbor"
    res = run("op-make-orphan", str(src), key_file(tmp_path, SEED_22), str(out))
    assert res.exit_code == 0
    ops = read_log(out.read_bytes())
    base = read_log(src.read_bytes())
    assert ops[:-1] == base
    orphan = ops[-1]
    assert orphan.parents == (bytes(32),)
    assert orphan.payload == base[-1].payload
    assert check_op(orphan) is None
    state, _ = replay_full(ops)
    assert state.processed_count == 3  # the orphan never activates


def test_op_make_grant_writes_a_verifying_credential_and_grant(tmp_path: Path) -> None:
    res = run(
        "op-make-grant", key_file(tmp_path, SEED_11), key_file(tmp_path, SEED_22), str(tmp_path / "out")
    )
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("credential_op_id=")
    assert lines[1].startswith("grant_op_id      =")
    cred = decode_op((tmp_path / "out" / "cred.op.cbor").read_bytes())
    grant = decode_op((tmp_path / "out" / "grant.op.cbor").read_bytes())
    assert check_op(cred) is None and check_op(grant) is None
    assert isinstance(cred.payload, Credential) and isinstance(grant.payload, Grant)
    assert grant.parents == (cred.op_id,)
    assert grant.payload.cred_hash == blake3.blake3(b"m8-test-credential").digest()
    assert grant.payload.subject_pk == cred.author_pk
    assert lines[0] == f"credential_op_id={cred.op_id.hex()}"


def test_op_tools_report_unreadable_input_with_exit_1(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["op-corrupt-sig", str(tmp_path / "nope.cbor"), str(tmp_path / "o")])
    assert res.exit_code != 0
    assert not (tmp_path / "o").exists()


def test_op_tools_refuse_a_secret_on_the_command_line(tmp_path: Path) -> None:
    """The reference's hex seed in the key position is refused with how to fix it; nothing is written."""
    out = tmp_path / "min.cbor"
    for args in (
        ("op-make-min", SEED_11, str(out)),
        ("op-make-grant", key_file(tmp_path, SEED_11), SEED_22.upper(), str(tmp_path / "g")),
        ("op-make-orphan", str(out), SEED_22, str(out)),
    ):
        res = CliRunner().invoke(cli, list(args))
        assert res.exit_code == 1, args
        msg = str(res.exception)
        assert "secret key on the command line is refused" in msg and "ecac key new" in msg
        assert "\n" not in msg
    assert not out.exists() and not (tmp_path / "g").exists()
    # a key file that others may read is refused too (like ssh)
    loose = Path(key_file(tmp_path, SEED_22))
    loose.chmod(0o644)
    res = CliRunner().invoke(cli, ["op-make-min", str(loose), str(out)])
    assert res.exit_code == 1 and "chmod 600" in str(res.exception)
