"""Replay benchmarks: ``hb-chain``, ``concurrent`` (alias ``concurrent-writers``), ``offline-revocation``.

Each scenario generates its workload (store §3.4; untimed, keeping only the op bytes),
measures the single-thread PyNaCl verify rate on the same ops, then times a full replay
from bytes *with* signature checks: strict decode, op_id recomputation, Ed25519 verify,
DAG insert, total order and apply. Then it replays a prefix, adds the tail and times the
incremental apply, which must give the full-replay digest. Peak RSS is ``VmHWM``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from nacl.bindings import crypto_sign_open

from ecac.bench import BenchParams, scenario
from ecac.core.dag import Dag
from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.opcodec import decode_op
from ecac.core.replay import Replayer, replay_full
from ecac.store.verifypool import VerifyPool
from ecac.testing.workloads import (
    concurrent_authors,
    iter_concurrent,
    iter_hb_chain,
    iter_offline_revocation,
    offline_revocation_cut,
)

RAW_VERIFY_SAMPLE = 10_000


def peak_rss_mb() -> float:
    """Process peak resident set (``VmHWM``, else ``VmRSS``) in MiB; 0 when /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            status = f.read()
    except OSError:
        return 0.0
    vals = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            vals[name] = int(rest.split()[0])
    kb = vals.get("VmHWM", vals.get("VmRSS", 0))
    return kb / 1024


def verify_sample(blobs: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``(signed message, public key)`` of the first ops, for the raw verify rate."""
    out = []
    for b in blobs[:RAW_VERIFY_SAMPLE]:
        op = decode_op(b)
        out.append((op.sig + op.op_id, op.author_pk))
    return out


def raw_verify_rate(items: list[tuple[bytes, bytes]]) -> float:
    """Single-thread PyNaCl ``crypto_sign_open`` calls per second."""
    if not items:
        return 0.0
    t0 = time.perf_counter()
    for signed, pk in items:
        crypto_sign_open(signed, pk)
    return len(items) / (time.perf_counter() - t0)


def run_replay_bench(name: str, ops_iter: Iterator[Op], params: BenchParams) -> dict[str, Any]:
    t_gen = time.perf_counter()
    blobs = [op.cbor for op in ops_iter]
    gen_ms = (time.perf_counter() - t_gen) * 1000
    n = len(blobs)
    sample = verify_sample(blobs)
    raw_before = raw_verify_rate(sample)
    gc.collect()

    with VerifyPool() as pool:
        t0 = time.perf_counter()
        ops, rejected = pool.decode_and_admit(blobs)  # each chunk's signatures verify while the next decodes
        t1 = time.perf_counter()
    dag = Dag()
    for op in ops:
        dag.insert(op)
    t2 = time.perf_counter()
    dag.topo_order()
    t3 = time.perf_counter()
    state, digest = replay_full(dag)
    t4 = time.perf_counter()
    full_s = t4 - t0
    rss = peak_rss_mb()
    # measured again right after: machine load changes both rates alike only if sampled alike
    raw_after = raw_verify_rate(sample)
    raw_rate = (raw_before + raw_after) / 2
    chains = dag.chain_count()
    json_line = state.to_json()
    del dag, state

    suffix = min(params.checkpoint_every, n) if params.checkpoint_every > 0 else n // 10
    suffix = max(1, suffix) if n else 0
    prefix = Dag()
    for op in ops[: n - suffix]:
        prefix.insert(op)
    r = Replayer()
    r.apply(prefix)
    for op in ops[n - suffix :]:
        prefix.insert(op)
    t5 = time.perf_counter()
    _, inc_digest = r.apply(prefix)
    t6 = time.perf_counter()
    if inc_digest != digest:
        raise EcacError(
            f"replay parity failed: {digest.hex()} != {inc_digest.hex()} "
            f"(scenario={name}, seed={params.seed})"
        )
    ops_per_s = n / full_s if full_s > 0 else 0.0
    return {
        "scenario": name,
        "ops": n,
        "peers": params.peers,
        "seed": params.seed,
        "replay_full_ms": round(full_s * 1000, 3),
        "ops_per_s": round(ops_per_s, 1),
        "raw_verify_per_s": round(raw_rate, 1),
        "raw_verify_before_per_s": round(raw_before, 1),
        "raw_verify_after_per_s": round(raw_after, 1),
        "raw_verify_sample": len(sample),
        "verify_fraction": round(ops_per_s / raw_rate, 3) if raw_rate else 0.0,
        "decode_admit_ms": round((t1 - t0) * 1000, 3),
        "dag_insert_ms": round((t2 - t1) * 1000, 3),
        "topo_ms": round((t3 - t2) * 1000, 3),
        "apply_ms": round((t4 - t3) * 1000, 3),
        "rejected": len(rejected),
        "replay_incremental_ms": round((t6 - t5) * 1000, 3),
        "incremental_suffix": suffix,
        "incremental_start": r.last_start,
        "hb_chains": chains,
        "peak_rss_mb": round(rss, 1),
        "generate_ms": round(gen_ms, 1),
        "state_digest": digest.hex(),
        "state_json_bytes": len(json_line.encode("utf-8")),
    }


@scenario("hb-chain", "one writer, linear chain on mv:o:x (gen_hb_chain); full + incremental replay")
def bench_hb_chain(params: BenchParams) -> dict[str, Any]:
    return run_replay_bench("hb-chain", iter_hb_chain(params.seed, params.ops), params)


def _concurrent(params: BenchParams) -> dict[str, Any]:
    res = run_replay_bench("concurrent", iter_concurrent(params.seed, params.ops, params.peers), params)
    res["writers"] = concurrent_authors(params.peers)
    return res


scenario("concurrent", "clamp(peers,2,8) writers on mv:o:x, one chain each; full + incremental replay")(
    _concurrent
)
scenario("concurrent-writers", "alias of concurrent")(_concurrent)


@scenario("offline-revocation", "hb chain (seed ^ 0x5EEDCAFE) cut at 70% of --ops; full + incremental replay")
def bench_offline_revocation(params: BenchParams) -> dict[str, Any]:
    res = run_replay_bench("offline-revocation", iter_offline_revocation(params.seed, params.ops), params)
    res["revoke_t_ms"] = 1000 + offline_revocation_cut(params.ops)
    return res
