"""CLI: ``replay``, ``project`` and ``bench`` (store §3.1, §3.3, §3.4, §3.7)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ecac.cli import main
from ecac.core.codec import dumps
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op
from ecac.core.opcodec import encode_ops
from ecac.core.replay import replay_full
from ecac.testing.workloads import gen_hb_chain

ECAC = str(Path(sys.executable).with_name("ecac"))  # the installed console script

FIXTURES = [
    "fixtures/ops.cbor",
    "fixtures/hb_chain.cbor",
    "fixtures/mv_concurrent.cbor",
    "fixtures/orset_races.cbor",
    "fixtures_m5/hb_chain.cbor",
    "fixtures_m5/mv_concurrent.cbor",
    "fixtures_m5/orset_races.cbor",
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def log_bytes(ops: list[Op]) -> bytes:
    """A log file encoded from the ops' fields (``Op.cbor`` of a ``replace``d op is stale)."""
    return dumps([{"header": op.header_obj(), "sig": list(op.sig), "op_id": list(op.op_id)} for op in ops])


def write_ops(path: Path, ops: list[Op]) -> str:
    path.write_bytes(encode_ops(ops))
    return str(path)


@pytest.mark.parametrize("name", FIXTURES)
def test_replay_prints_the_vector_state_and_digest(capsys, vectors, name):
    exp = vectors.op_logs[name]
    code, out, err = run(capsys, "replay", str(vectors.path(name)))
    assert code == 0
    assert err == ""
    assert out == f"{exp['state_json']}\ndigest={exp['state_digest_hex']}\n"


def test_project_outputs(capsys, vectors):
    path = str(vectors.path("fixtures/ops.cbor"))
    assert run(capsys, "project", path, "o", "x") == (
        0,
        '{"type":"mv","project":"41","winners":["41","42"]}\n',
        "",
    )
    assert run(capsys, "project", path, "o", "s") == (
        0,
        '{"type":"set","elements":[{"key":"e","value":"7632"}]}\n',
        "",
    )
    assert run(capsys, "project", path, "zz", "x") == (0, '{"error":"object not found","obj":"zz"}\n', "")
    assert run(capsys, "project", path, "o", "q") == (
        0,
        '{"error":"field not found","obj":"o","field":"q"}\n',
        "",
    )


def _cases() -> dict[str, list[Op]]:
    """The three cases of store §3.7 (permutations converge), with a deterministic key."""
    sk = key_pair(1, b"test/cli")
    a = make_op(sk, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    b = make_op(sk, [a.op_id], Hlc(11, 0, 1), Data("mv:o:x", b"B"))
    c = make_op(sk, [b.op_id], Hlc(12, 0, 1), Data("mv:o:x", b"C"))
    m1 = make_op(sk, [], Hlc(10, 0, 1), Data("mv:o:x", b"A"))
    m2 = make_op(sk, [], Hlc(10, 0, 2), Data("mv:o:x", b"B"))
    add1 = make_op(sk, [], Hlc(10, 0, 1), Data("set+:o:s:e", b"v1"))
    rem = make_op(sk, [], Hlc(10, 0, 2), Data("set-:o:s:e", b""))
    add2 = make_op(sk, [], Hlc(11, 0, 1), Data("set+:o:s:e", b"v2"))
    rem2 = make_op(sk, [add1.op_id], Hlc(12, 0, 1), Data("set-:o:s:e", b""))
    return {"chain": [a, b, c], "mv": [m1, m2], "orset": [add1, rem, add2, rem2]}


@pytest.mark.parametrize("case", ["chain", "mv", "orset"])
def test_permutations_converge_through_the_real_binary(tmp_path, vectors, case):
    ops = _cases()[case]
    rng = random.Random(case)
    outputs = set()
    for i in range(3):
        perm = ops[:]
        rng.shuffle(perm)
        path = write_ops(tmp_path / f"{case}-{i}.cbor", perm)
        res = subprocess.run([ECAC, "replay", path], capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, res.stderr
        outputs.add(res.stdout)
        proj = subprocess.run(
            [ECAC, "project", path, "o", "x" if case != "orset" else "s"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert ('"type":"mv' if case != "orset" else '"type":"set') in proj.stdout
    assert len(outputs) == 1
    want_file = {
        "chain": "fixtures/hb_chain.cbor",
        "mv": "fixtures/mv_concurrent.cbor",
        "orset": "fixtures/orset_races.cbor",
    }
    exp = vectors.op_logs[want_file[case]]
    assert outputs == {f"{exp['state_json']}\ndigest={exp['state_digest_hex']}\n"}


def test_admission_on_file_load(capsys, tmp_path):
    ops = gen_hb_chain(42, 4)
    corrupt = [replace(op, sig=bytes([op.sig[0] ^ 1]) + op.sig[1:]) for op in ops]
    body = dumps(
        [{"header": op.header_obj(), "sig": list(op.sig), "op_id": list(op.op_id)} for op in corrupt]
    )
    path = tmp_path / "corrupt.cbor"
    path.write_bytes(body)
    code, out, err = run(capsys, "replay", str(path))
    assert code == 0
    assert err.splitlines() == [f"rejected op {op.op_id.hex()}: invalid signature" for op in ops]
    assert out == (
        '{"objects":[],"processed_count":0}\n'
        "digest=e4e3f156af8170f7901165a76379030ace024fa8adc0d04883f7ecbd27669384\n"
    )
    # valid ops in the same file still load; their children wait for the rejected parent
    mixed = [ops[0], corrupt[1], ops[2], ops[3]]
    path.write_bytes(log_bytes(mixed))
    code, out, err = run(capsys, "replay", str(path))
    assert code == 0
    assert err == f"rejected op {ops[1].op_id.hex()}: invalid signature\n"
    assert out.startswith('{"objects":[{"id":"o","fields":[{"name":"x","project":"7630"')
    assert '"processed_count":1}' in out
    # a later valid copy of the rejected op is admitted, and completes the chain
    path.write_bytes(log_bytes([*mixed, ops[1]]))
    code, out, err = run(capsys, "replay", str(path))
    assert (code, err) == (0, f"rejected op {ops[1].op_id.hex()}: invalid signature\n")
    assert '"processed_count":4}' in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "not a CBOR Vec<Op> or Op"),
        (b"\x82\x01", "not a CBOR Vec<Op> or Op"),
        (b"hello world", "not a CBOR Vec<Op> or Op"),
        (dumps({"a": 1}), "not a CBOR Vec<Op> or Op"),
        (dumps([1, 2]), "not a CBOR Vec<Op> or Op"),
    ],
)
def test_unreadable_or_bad_files_exit_1_naming_the_file(capsys, tmp_path, content, message):
    path = tmp_path / "bad.cbor"
    if content is not None:
        path.write_bytes(content)
    for cmd in (["replay", str(path)], ["project", str(path), "o", "x"]):
        code, out, err = run(capsys, *cmd)
        assert code == 1
        assert out == ""
        assert err.startswith(f"Error: {path}: ")
        assert message in err


def test_truncated_file_exits_1(capsys, tmp_path):
    data = encode_ops(gen_hb_chain(1, 3))
    path = tmp_path / "t.cbor"
    path.write_bytes(data[:-5])
    code, _, err = run(capsys, "replay", str(path))
    assert code == 1 and str(path) in err


def test_a_directory_is_an_error_not_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "replay", str(tmp_path))
    assert code == 1 and "cannot read" in err


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "replay")[0] == 2
    assert run(capsys, "project", "only-a-file")[0] == 2
    assert run(capsys, "replay", "a", "b")[0] == 2
    assert run(capsys, "bench", "--ops", "-1")[0] == 2
    assert run(capsys, "bench", "--nope")[0] == 2


# ---------------------------------------------------------------------- bench


def test_bench_json_last_line_and_table(capsys):
    code, out, err = run(capsys, "bench", "--scenario", "hb-chain", "--ops", "30", "--seed", "3", "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    res = json.loads(lines[-1])
    for key in (
        "scenario",
        "ops",
        "peers",
        "seed",
        "replay_full_ms",
        "ops_per_s",
        "state_digest",
        "raw_verify_per_s",
        "verify_fraction",
        "replay_incremental_ms",
        "peak_rss_mb",
    ):
        assert key in res, key
    assert (res["scenario"], res["ops"], res["seed"]) == ("hb-chain", 30, 3)
    assert res["raw_verify_per_s"] > 0
    assert res["incremental_suffix"] == 3
    assert res["state_digest"] == replay_full(gen_hb_chain(3, 30))[1].hex()
    table = "\n".join(lines[:-1])
    assert "raw_verify_per_s" in table and "verify_fraction" in table


def test_bench_scenarios_and_options(capsys):
    code, out, _ = run(capsys, "bench", "--list")
    assert code == 0
    for name in ("hb-chain", "concurrent", "concurrent-writers", "offline-revocation"):
        assert name in out
    code, out, _ = run(
        capsys,
        "bench",
        "--scenario",
        "concurrent-writers",
        "--ops",
        "40",
        "--peers",
        "3",
        "--checkpoint-every",
        "7",
        "--json",
    )
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["scenario"], res["writers"], res["incremental_suffix"]) == ("concurrent", 3, 7)
    code, out, _ = run(capsys, "bench", "--scenario", "offline-revocation", "--ops", "10", "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["ops"], res["revoke_t_ms"]) == (7, 1007)
    code, _, err = run(capsys, "bench", "--scenario", "partition-3")
    assert code == 1 and "unsupported scenario 'partition-3'. Supported:" in err and "hb-chain" in err
    code, _, err = run(capsys, "bench", "--net")
    assert code == 1 and "--net is not supported" in err


_STARTUP = """
import sys
from ecac.cli import cli
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("libp2p", "trio") or m.startswith("ecac.net"))
print(",".join(heavy))
"""


def test_cli_start_up_loads_no_network_stack():
    """All commands register at import; libp2p, trio and ecac.net load only in the commands using them."""
    res = subprocess.run([sys.executable, "-c", _STARTUP], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


def test_replay_reports_every_rejected_op_and_replays_the_rest(tmp_path: Path, capsys):
    """Admission runs on the CLI's verify pool: a forged op among many is reported, the rest replayed."""
    ops = gen_hb_chain(3, 600)
    bad = replace(ops[-1], sig=bytes([ops[-1].sig[0] ^ 1]) + ops[-1].sig[1:])
    bad = replace(
        bad, cbor=dumps({"header": bad.header_obj(), "sig": list(bad.sig), "op_id": list(bad.op_id)})
    )
    path = tmp_path / "ops.cbor"
    path.write_bytes(encode_ops([*ops[:-1], bad]))
    code, out, err = run(capsys, "replay", str(path))
    assert code == 0
    assert err.splitlines() == [f"rejected op {bad.op_id.hex()}: invalid signature"]
    _, want = replay_full(ops[:-1])
    assert out.splitlines()[-1] == f"digest={want.hex()}"
