"""Crash safety with real processes: SIGKILL at random moments and the ECAC_CRASH_AFTER_WRITE hook.

A child process ingests a few thousand ops in synced batches and is killed. Afterwards
the store must open, pass ``verify_integrity``, hold exactly a prefix of the committed
batches (every op wholly present or absent: ``ops`` row iff ``edges`` row iff
``by_author`` row, bytes verifying), and finishing the ingest must give the digest of a
full replay of all ops. ``op-append`` of a file whose children come before their parents,
killed the same way, must leave no op waiting for a parent (it writes parents first).
"""

from __future__ import annotations

import fcntl
import gc
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecac.core.dag import Dag
from ecac.core.opcodec import decode_op, encode_ops
from ecac.core.replay import replay_full
from ecac.core.sig import check_sigs
from ecac.store.resume import replay_from_store
from ecac.store.rocks import Store, open_rdict
from ecac.store.rows import CF_NAMES, EdgeVal, by_author_key
from ecac.testing.workloads import gen_concurrent

N_OPS = 3000
BATCH = 50
KILLS = 20
SEED = 20240611

CHILD = r"""
import sys
from pathlib import Path
from ecac.core.opcodec import read_log
from ecac.store.rocks import Store

db, log, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
ops = read_log(Path(log).read_bytes())
st = Store.open(db)
print("ready", flush=True)
for lo in range(0, len(ops), batch):
    st.put_many([op.cbor for op in ops[lo : lo + batch]])
print("done", flush=True)
st.close()
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    ops = gen_concurrent(SEED, N_OPS, 3)  # three writers, parents always before children
    path = tmp_path_factory.mktemp("crash") / "ops.cbor"
    path.write_bytes(encode_ops(ops))
    _, digest = replay_full(Dag.from_ops(ops))
    batches = [frozenset(op.op_id for op in ops[lo : lo + BATCH]) for lo in range(0, len(ops), BATCH)]
    return ops, path, digest, batches


def spawn(db: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(log), str(BATCH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def raw_rows(db: Path) -> dict[str, dict[bytes, bytes]]:
    h = open_rdict(db)
    out = {}
    for name in ("ops", "edges", "by_author"):
        cf = h.get_column_family(name)
        out[name] = {bytes(k): bytes(v) for k, v in cf.items()}
        del cf
    gc.collect()
    h.close()
    del h
    gc.collect()
    return out


def check_after_crash(db: Path, ops, digest: bytes, batches) -> int:
    """All post-crash assertions; returns how many ops had been committed."""
    with Store.open(db) as st:  # opens (lock released, WAL replayed)
        st.verify_integrity()
    rows = raw_rows(db)
    stored = set(rows["ops"])
    assert set(rows["edges"]) == stored
    assert {k[-32:] for k in rows["by_author"]} == stored and len(rows["by_author"]) == len(stored)
    # atomic batches: the stored set is exactly the first j batches
    j = 0
    acc: set[bytes] = set()
    while j < len(batches) and batches[j] <= stored:
        acc |= batches[j]
        j += 1
    assert acc == stored, "a batch was partially committed"
    decoded = [decode_op(v) for v in rows["ops"].values()]
    assert all(op.computed_id() == op.op_id for op in decoded)
    assert all(check_sigs([(op.author_pk, op.sig, op.op_id) for op in decoded]))
    for op in decoded:
        assert rows["edges"][op.op_id] == EdgeVal.of(op).encode()
        assert rows["by_author"][by_author_key(op)] == b""
    with Store.open(db) as st:  # finish the ingest: the full digest
        st.put_many([op.cbor for op in ops])
        assert replay_from_store(st)[1] == digest
        st.verify_integrity()
    return len(stored)


def test_sigkill_at_random_moments(tmp_path, workload):
    ops, log, digest, batches = workload
    rng = random.Random(SEED)
    # calibrate: how long does the ingest take on this machine right now?
    p = spawn(tmp_path / "calib", log)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    out, err = p.communicate(timeout=120)
    span = time.monotonic() - t0
    assert p.returncode == 0 and out.strip() == "done", err
    committed = []
    for i in range(KILLS):
        db = tmp_path / f"db{i}"
        p = spawn(db, log)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, span * 1.1))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        assert p.returncode in (-signal.SIGKILL, 0)
        committed.append(check_after_crash(db, ops, digest, batches))
    # the kills really landed mid-ingest, at different points
    assert sum(1 for c in committed if 0 < c < N_OPS) >= KILLS // 2, committed
    assert len(set(committed)) >= KILLS // 3, committed


def test_crash_after_write_hook_aborts(tmp_path, workload):
    ops, log, digest, batches = workload
    db = tmp_path / "db"
    env = dict(os.environ, ECAC_CRASH_AFTER_WRITE="1")
    p = spawn(db, log, env)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGABRT
    assert out.strip() == "ready"  # never reached "done"
    with Store.open(db) as st:
        assert set(st.topo_ids()) == batches[0]  # exactly the first committed batch
    assert check_after_crash(db, ops, digest, batches) == BATCH


def test_op_append_killed_mid_import_leaves_no_op_waiting_for_a_parent(tmp_path):
    ops = gen_concurrent(SEED + 1, 600, 4)
    rng = random.Random(SEED + 1)
    shuffled = ops[:]
    rng.shuffle(shuffled)  # most children come before their parents in the file
    log = tmp_path / "shuffled.cbor"
    log.write_bytes(encode_ops(shuffled))
    _, digest = replay_full(Dag.from_ops(ops))

    def append(db: Path) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "ecac", "op-append", "--batch-size", "20", "-d", str(db), str(log)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each `appended` line arrives as its batch commits
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    stored = []
    for i in range(6):
        db = tmp_path / f"db{i}"
        p = append(db)
        assert p.stderr is not None  # `appended` lines are progress, on stderr
        # a one-page pipe: the child blocks ~3 batches ahead of what was read, so it is mid-import
        fcntl.fcntl(p.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        # kill after the first i+1 committed batches' lines: no timing, the kill follows a commit
        for _ in range(20 * (i + 1)):
            line = p.stderr.readline()
            assert line.startswith("appended "), line
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        with Store.open(db) as st:
            report = st.verify_integrity()
            assert not report.incomplete, report.describe()
            stored.append(st.op_count())
            st.put_many([op.cbor for op in ops])
            assert replay_from_store(st)[1] == digest
    assert all(0 < n < len(ops) for n in stored), stored  # every kill landed mid-import


def test_cf_list_is_the_eight(tmp_path):
    from rocksdict import Options, Rdict

    Store.open(tmp_path / "db").close()
    assert Rdict.list_cf(str(tmp_path / "db"), Options(raw_mode=True)) == ["default", *CF_NAMES]
