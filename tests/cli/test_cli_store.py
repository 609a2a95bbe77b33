"""Store CLI commands: exact outputs and exit codes (store §3.3)."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli_ok as ok
from conftest import cli_run as run
from ecac.cli.store_cmds import EXIT_INCOMPLETE, parent_first
from ecac.core.codec import dumps, loads
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, make_op
from ecac.core.opcodec import encode_ops
from ecac.store.rocks import Store, open_rdict
from ecac.testing.workloads import gen_concurrent, gen_hb_chain

FIXTURES = [
    "fixtures/ops.cbor",
    "fixtures/hb_chain.cbor",
    "fixtures/mv_concurrent.cbor",
    "fixtures/orset_races.cbor",
]
ECAC = [sys.executable, "-c", "from ecac.cli import main; main()"]


def fails(msg: str, *args: str, prefix: bool = False):
    r = run(*args)
    assert isinstance(r.exception, EcacError), r.exception
    assert str(r.exception).startswith(msg) if prefix else str(r.exception) == msg
    return r


@pytest.mark.parametrize("fixture", FIXTURES)
def test_append_then_replay_equals_file_replay(tmp_path, vectors, fixture):
    db = str(tmp_path / "db")
    path = str(vectors.path(fixture))
    r = ok("op-append", "--db", db, path)
    ids = [o["op_id_hex"] for o in vectors.op_logs[fixture]["ops_in_file_order"]]
    assert r.stderr.splitlines() == [f"appended {h}" for h in ids]
    assert r.stdout == ""
    want = ok("replay", path).stdout
    log = vectors.op_logs[fixture]
    assert want == f"{log['state_json']}\ndigest={log['state_digest_hex']}\n"
    assert ok("replay-from-store", "-d", db).stdout == want
    assert ok("replay-from-store", "-d", db, "--verify-sigs").stdout == want
    assert ok("replay-from-store", "-d", db, "--from-checkpoint").stdout == want
    assert ok("verify-store", "-d", db).stdout == "OK\n"
    assert ok("verify-store", "-d", db, "--verify-sigs").stdout == "OK\n"


def test_append_directory_sorted_non_recursive(tmp_path):
    ops = gen_hb_chain(21, 4)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "b.op.cbor").write_bytes(encode_ops(ops[2:4]))
    (d / "a.cbor").write_bytes(ops[1].cbor)  # a single op, not a list
    (d / "0.cbor").write_bytes(ops[0].cbor)
    (d / "notes.txt").write_bytes(b"ignored")
    (d / "sub" / "x.cbor").write_bytes(b"ignored too")
    r = ok("op-append", "-d", str(tmp_path / "db"), str(d))
    assert r.stderr.splitlines() == [f"appended {op.op_id.hex()}" for op in ops]
    r = ok("op-append", "-d", str(tmp_path / "db2"), "--quiet", "--batch-size", "1", str(d))
    assert r.stderr == ""
    assert ok("status", "-d", str(tmp_path / "db2"), "--json").stdout.count('"op_count":4') == 1


def test_append_first_failure_aborts_earlier_ops_stay(tmp_path):
    ops = gen_hb_chain(22, 5)
    bad = loads(ops[2].cbor)
    bad["sig"][0] ^= 1
    payload = b"\x85" + ops[0].cbor + ops[1].cbor + dumps(bad) + ops[3].cbor + ops[4].cbor
    f = tmp_path / "log.cbor"
    f.write_bytes(payload)
    for batch in ("1", "2", "1024"):
        db = str(tmp_path / f"db{batch}")
        r = fails(
            f"invalid signature for op {ops[2].op_id.hex()}",
            "op-append",
            "-d",
            db,
            "--batch-size",
            batch,
            str(f),
        )
        assert r.stderr.splitlines() == [f"appended {op.op_id.hex()}" for op in ops[:2]]
        st = json.loads(ok("status", "-d", db, "--json").stdout)
        assert st["op_count"] == 2 and st["stored_ops"] == 2


def test_append_unreadable_file_after_good_ones(tmp_path):
    ops = gen_hb_chain(23, 2)
    (tmp_path / "a.cbor").write_bytes(encode_ops(ops))
    (tmp_path / "b.cbor").write_bytes(b"\xff\x00garbage")
    db = str(tmp_path / "db")
    msg = f"{tmp_path / 'b.cbor'}: not a CBOR Vec<Op> or Op"
    r = fails(msg, "op-append", "-d", db, str(tmp_path), prefix=True)
    assert len(r.stderr.splitlines()) == 2
    assert json.loads(ok("status", "-d", db, "--json").stdout)["op_count"] == 2


def test_checkpoint_commands(tmp_path):
    ops = gen_hb_chain(24, 30)
    f1, f2 = tmp_path / "p1.cbor", tmp_path / "p2.cbor"
    f1.write_bytes(encode_ops(ops[:20]))
    f2.write_bytes(encode_ops(ops[20:]))
    db = str(tmp_path / "db")
    for cmd in ("checkpoint-list", "checkpoint-create", "replay-from-store", "verify-store", "status"):
        fails(f"store {db} does not exist", cmd, "-d", db)  # a mistyped --db creates nothing
    assert not (tmp_path / "db").exists()
    Store.open(db).close()
    assert ok("checkpoint-list", "-d", db).stdout == "(no checkpoints)\n"
    ok("op-append", "-d", db, "-q", str(f1))
    assert ok("checkpoint-create", "-d", db).stdout == "1\n"
    assert ok("checkpoint-list", "-d", db).stdout == "latest: 1 @ topo_idx=20\n"
    r = ok("checkpoint-load", "-d", db, "1")
    prefix = ok("replay-from-store", "-d", db).stdout.splitlines()[0]
    assert r.stdout == prefix + "\n" and r.stderr == "checkpoint_topo_idx=20\n"
    ok("op-append", "-d", db, "-q", str(f2))
    full = ok("replay-from-store", "-d", db).stdout
    assert ok("replay-from-store", "-d", db, "--from-checkpoint").stdout == full
    assert ok("checkpoint-create", "-d", db).stdout == "2\n"
    assert ok("checkpoint-list", "-d", db).stdout == "latest: 2 @ topo_idx=30\n"
    fails("checkpoint 3 not found", "checkpoint-load", "-d", db, "3")
    status = json.loads(ok("status", "-d", db, "--json").stdout)
    assert status["latest_checkpoint"] == {"id": 2, "topo_idx": 30}
    assert status["state_digest"] == full.splitlines()[1].removeprefix("digest=")


def test_status_keys_and_orphans(tmp_path):
    ops = gen_hb_chain(25, 4)
    f = tmp_path / "x.cbor"
    f.write_bytes(encode_ops([ops[0], ops[2], ops[3]]))  # ops 2 and 3 wait for op 1
    db = str(tmp_path / "db")
    ok("op-append", "-d", db, "-q", str(f))
    s = json.loads(ok("status", "-d", db, "--json").stdout)
    for key in (
        "op_count",
        "head_count",
        "topo_watermark",
        "state_digest",
        "latest_checkpoint",
        "pending_ops",
    ):
        assert key in s
    assert (s["op_count"], s["pending_ops"], s["stored_ops"], s["head_count"]) == (1, 2, 3, 1)
    assert s["heads"] == [ops[0].op_id.hex()] and s["topo_watermark"] is None
    text = ok("status", "-d", db).stdout
    assert "op_count: 1\n" in text and "pending_ops: 2\n" in text
    r = run("verify-store", "-d", db)  # orphans are not corruption: incomplete, exit 3
    assert r.exit_code == 3 and r.stdout == (
        "incomplete: 2 ops wait for missing parents (1 missing ops, 1 missing parent references)\n"
    )


def test_usage_error_exits_2(tmp_path):
    r = run("replay-from-store")
    assert r.exit_code == 2 and "--db" in r.stderr


def _corrupt(db: Path, op_id: bytes) -> None:
    h = open_rdict(db)
    cf = h.get_column_family("ops")
    v = bytes(cf[op_id])
    cf[op_id] = v[:-1] + bytes([v[-1] ^ 1])
    del cf
    gc.collect()
    h.close()
    del h
    gc.collect()


def test_verify_store_corruption_process_exit_code(tmp_path):
    ops = gen_hb_chain(26, 3)
    f = tmp_path / "x.cbor"
    f.write_bytes(encode_ops(ops))
    db = tmp_path / "db"
    ok("op-append", "-d", str(db), "-q", str(f))
    _corrupt(db, ops[1].op_id)
    p = subprocess.run([*ECAC, "verify-store", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("Error: ") and ops[1].op_id.hex() in p.stderr
    p = subprocess.run(
        [*ECAC, "replay-from-store", "--db", str(db)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 1 and p.stderr == f"Error: op_id mismatch for {ops[1].op_id.hex()}\n"


def test_crash_hook_aborts_after_first_batch(tmp_path):
    ops = gen_hb_chain(27, 6)
    f = tmp_path / "x.cbor"
    f.write_bytes(encode_ops(ops))
    db = tmp_path / "db"
    env = dict(os.environ, ECAC_CRASH_AFTER_WRITE="1")
    p = subprocess.run([*ECAC, "op-append", "-d", str(db), "--batch-size", "2", str(f)], env=env, timeout=60)
    assert p.returncode == -6  # SIGABRT (a shell reports 134)
    assert ok("verify-store", "-d", str(db)).stdout == "OK\n"
    s = json.loads(ok("status", "-d", str(db), "--json").stdout)
    assert s["op_count"] == 2  # exactly the first committed batch
    ok("op-append", "-d", str(db), "-q", str(f))
    assert ok("replay-from-store", "-d", str(db)).stdout == ok("replay", str(f)).stdout


def test_crash_mid_import_leaves_no_op_waiting_for_a_parent_of_its_file(tmp_path):
    """Children first in the file: op-append still writes parents first, so a crash leaves a clean prefix."""
    ops = gen_concurrent(28, 12, 3)
    f = tmp_path / "x.cbor"
    f.write_bytes(encode_ops(list(reversed(ops))))  # every child before its parent
    db = tmp_path / "db"
    env = dict(os.environ, ECAC_CRASH_AFTER_WRITE="1")
    cmd = [*ECAC, "op-append", "-d", str(db), "--batch-size", "4", str(f)]
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    assert p.returncode == -6  # aborted right after the first committed batch of 4
    p = subprocess.run([*ECAC, "verify-store", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, "OK\n", "")
    with Store.open(db) as st:
        assert st.op_count() == st.complete_count() == 4 and st.pending_count() == 0
    ok("op-append", "-d", str(db), "-q", str(f))
    assert ok("verify-store", "-d", str(db)).stdout == "OK\n"
    assert ok("replay-from-store", "-d", str(db)).stdout == ok("replay", str(f)).stdout


def test_verify_store_tells_incomplete_from_corrupt(tmp_path):
    """Ops waiting for parents from another file: exit 3 and the count; a flipped byte: exit 1."""
    ops = gen_hb_chain(29, 6)
    tail = tmp_path / "tail.cbor"
    tail.write_bytes(encode_ops(ops[3:]))  # its first op's parent is in no file given
    db = tmp_path / "db"
    ok("op-append", "-d", str(db), "-q", str(tail))
    want = "incomplete: 3 ops wait for missing parents (1 missing ops, 1 missing parent references)\n"
    r = run("verify-store", "-d", str(db))
    assert (r.exit_code, r.stdout) == (EXIT_INCOMPLETE, want)
    p = subprocess.run([*ECAC, "verify-store", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (3, want, "")
    _corrupt(db, ops[4].op_id)  # corruption wins over incompleteness
    p = subprocess.run([*ECAC, "verify-store", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == f"Error: op_id mismatch for {ops[4].op_id.hex()}\n"


def test_verify_store_help_documents_the_exit_codes():
    text = ok("verify-store", "--help").stdout
    assert "(exit 0)" in text and "(exit 3)" in text and "(exit 1)" in text


def test_op_append_writes_each_file_parents_first(tmp_path):
    ops = gen_hb_chain(30, 5)
    f = tmp_path / "x.cbor"
    f.write_bytes(encode_ops([ops[3], ops[1], ops[4], ops[0], ops[2]]))
    db = str(tmp_path / "db")
    r = ok("op-append", "-d", db, "--batch-size", "2", str(f))
    assert r.stderr.splitlines() == [f"appended {op.op_id.hex()}" for op in ops]
    assert ok("verify-store", "-d", db).stdout == "OK\n"


def _op(sk, i: int, parents: list[bytes]):
    return make_op(sk, parents, Hlc(100 + i, 0, 1), Data("mv:o:x", bytes([i])))


def test_parent_first_is_a_stable_sort_by_in_file_parents():
    sk = key_pair(9, b"pf")
    outside = b"\x42" * 32
    a = _op(sk, 0, [])
    b = _op(sk, 1, [a.op_id])
    c = _op(sk, 2, [outside])  # its parent is not in the file: keeps its place
    d = _op(sk, 3, [b.op_id, c.op_id])
    e = _op(sk, 4, [])
    assert parent_first([a, b, c, d, e]) == [a, b, c, d, e]  # already parents first: unchanged
    assert parent_first([d, c, b, e, a]) == [c, e, a, b, d]
    assert parent_first([b, b, a]) == [a, b, b]  # a repeated op follows its first copy's parents
    assert parent_first([]) == []
    x = _op(sk, 5, [])
    y = _op(sk, 6, [])
    forged_x = replace(x, parents=(y.op_id,))  # a cycle needs forged ids (put refuses them)
    forged_y = replace(y, parents=(x.op_id,))
    assert parent_first([forged_x, a, forged_y]) == [a, forged_x, forged_y]


@given(seed=st.integers(0, 2**32), n=st.integers(0, 25))
@settings(max_examples=60, deadline=None)
def test_parent_first_orders_every_prefix_parents_first(seed, n):
    rng = random.Random(seed)
    sk = key_pair(10, b"pf")
    made: list = []
    for i in range(n):
        ps = [op.op_id for op in rng.sample(made, min(len(made), rng.randint(0, 2)))]
        if rng.random() < 0.2:
            ps.append(bytes([i]) * 32)  # a parent outside the file
        made.append(_op(sk, i, ps))
    shuffled = made[:]
    rng.shuffle(shuffled)
    out = parent_first(shuffled)
    assert sorted(op.op_id for op in out) == sorted(op.op_id for op in made)
    where = {op.op_id: i for i, op in enumerate(out)}
    assert all(where[p] < where[op.op_id] for op in out for p in op.parents if p in where)
    free = [op for op in shuffled if not any(p in where for p in op.parents)]
    assert [op for op in out if op in free] == free  # ops without in-file parents keep their order


# --------------------------------------------------------------------------- trust ops


def test_trust_commands_outputs_and_dump(tmp_path, monkeypatch):
    import hashlib

    import blake3
    import cbor2

    from ecac.core.keys import public_key, signing_key_from_hex
    from ecac.store.rocks import Store

    monkeypatch.setenv("ECAC_TIME_MS", "5000")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "99")  # ECAC_TIME_MS wins
    db = tmp_path / "db"
    monkeypatch.setenv("ECAC_DB", str(db))
    from ecac.cli.keyfile import create_key_file

    sk_hex = "11" * 32
    pk_hex = public_key(signing_key_from_hex(sk_hex)).hex()
    r = run("trust-issuer-publish", "issuer-1", "k1", "EdDSA", sk_hex)  # the reference's form is refused
    assert r.exit_code == 1 and not db.exists()
    assert str(r.exception).startswith("ISSUER_KEY_FILE: a secret key on the command line is refused")
    create_key_file(tmp_path / "issuer.key", signing_key_from_hex(sk_hex))
    sk_hex = str(tmp_path / "issuer.key")  # the key file takes the secret's place
    r = ok("trust-issuer-publish", "issuer-1", "k1", "EdDSA", sk_hex)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("issuer_key_op_id=") and lines[0].endswith(" issuer_id=issuer-1 key_id=k1")
    assert lines[1] == f"valid_from_ms=5000 valid_until_ms={5000 + 365 * 86_400_000}"
    key_op = bytes.fromhex(lines[0].split()[0].split("=")[1])
    fails(
        "valid_until_ms (5) must be > valid_from_ms (10)",
        *("trust-issuer-publish", "issuer-1", "k2", "EdDSA", sk_hex, "--valid-from-ms", "10"),
        *("--valid-until-ms", "5"),
    )
    chunk = tmp_path / "chunk.bin"
    chunk.write_bytes(b"\x05")
    args = ("trust-status-chunk", "issuer-1", "list-0", "1", "0", str(chunk), sk_hex)
    fails("bitset_sha256_hex not provided; pass --bitset-sha256-hex <64-hex>", *args)
    fails("expected 64 hex chars for SHA-256 value", *args, "--bitset-sha256-hex", "abc")
    sha = hashlib.sha256(b"\x05").hexdigest()
    r = ok(*args, "--bitset-sha256-hex", sha.upper())
    assert r.stdout.endswith(" issuer_id=issuer-1 list_id=list-0 version=1 chunk_index=0\n")
    chunk_op = bytes.fromhex(r.stdout.split()[0].split("=")[1])
    monkeypatch.setenv("ECAC_TIME_MS", "7000")
    r = ok("trust-issuer-revoke", "issuer-1", "k1", "compromised", sk_hex)
    assert r.stdout.startswith("issuer_revoke_op_id=")
    assert r.stdout.endswith(" issuer_id=issuer-1 key_id=k1 reason=compromised\n")
    revoke_op = bytes.fromhex(r.stdout.split()[0].split("=")[1])
    with Store.open(db) as st:
        op = st.get_op(revoke_op)
        assert op.hlc.physical_ms == 7000 and op.hlc.logical == 0 and op.hlc.node_id == 1
        assert op.parents == (chunk_op,)  # parents are heads(8) at minting time
        assert st.get_op(chunk_op).parents == (key_op,)
        assert st.op_count() == 3
    dump = json.loads(ok("trust-dump").stdout)
    issuers = {
        "issuer-1": {
            "k1": {
                "algo": "EdDSA",
                "valid_from_ms": 5000,
                "valid_until_ms": 5000 + 365 * 86_400_000,
                "activated_at_ms": 5000,
                "revoked_at_ms": 7000,
                "pubkey_hex": pk_hex,
            }
        }
    }
    lists = {
        "list-0": {
            "issuer_id": "issuer-1",
            "list_id": "list-0",
            "version": 1,
            "num_chunks": 1,
            "bitset_sha256_hex": sha,
            "digest_matches": True,
        }
    }
    assert dump["issuers"] == issuers and dump["status_lists"] == lists
    assert dump["issuers_digest_hex"] == blake3.blake3(cbor2.dumps(issuers)).hexdigest()
    assert dump["status_lists_digest_hex"] == blake3.blake3(cbor2.dumps(lists)).hexdigest()
    text = ok("trust-dump").stdout
    assert text.startswith(
        '{\n  "issuers": {\n    "issuer-1": {\n      "k1": {\n        "activated_at_ms": 5000,'
    )


def test_trust_time_falls_back_to_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.delenv("ECAC_TIME_MS", raising=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "3")
    from ecac.cli.keyfile import create_key_file
    from ecac.core.keys import signing_key_from_hex

    create_key_file(tmp_path / "k", signing_key_from_hex("22" * 32))
    r = ok("trust-issuer-publish", "-d", str(tmp_path / "db"), "iss", "k", "EdDSA", str(tmp_path / "k"))
    assert r.stdout.splitlines()[1] == f"valid_from_ms=3000 valid_until_ms={3000 + 365 * 86_400_000}"
