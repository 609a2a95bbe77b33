"""Store benchmarks: ``ingest`` and ``store-replay`` (RocksDB in a temporary directory).

``ingest`` puts ``--ops`` hb-chain ops (store §5.1 ``gen_hb_chain``) through
``Store.put_stream`` in synced batches (strict decode, op id, signature, one fdatasync per
batch; the next batch's signatures verify while this one is written) and compares the
rate with the single-thread Ed25519 verify rate measured on the same ops in the same run.
``store-replay`` replays a store of verified ops (no signature checks; the median of three
full replays, each run listed), then resumes from a checkpoint taken at 90 % of the ops.
Both report the bytes on disk per op (every file of the store directory, WAL included).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ecac.bench import BenchParams, scenario
from ecac.bench.replay import raw_verify_rate, verify_sample
from ecac.core.errors import EcacError
from ecac.core.replay import replay_full
from ecac.store.resume import load_dag, replay_store
from ecac.store.rocks import Store
from ecac.testing.workloads import iter_hb_chain

BATCH = 1024
#: full store replays timed; ``replay_full_ms`` / ``ops_per_s`` come from their median
REPLAY_RUNS = 3


def dir_bytes(path: Path) -> int:
    """Total size of every file below ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _fill(st: Store, blobs: list[bytes]) -> None:
    for _ in st.put_stream(blobs, BATCH):
        pass


@scenario("ingest", "hb-chain ops through Store.put_stream in synced batches vs the raw verify rate")
def bench_ingest(params: BenchParams) -> dict[str, Any]:
    t = time.perf_counter()
    blobs = [op.cbor for op in iter_hb_chain(params.seed, params.ops)]
    gen_ms = _ms(time.perf_counter() - t)
    n = len(blobs)
    sample = verify_sample(blobs)
    raw_before = raw_verify_rate(sample)
    with tempfile.TemporaryDirectory(prefix="ecac-bench-") as tmp:
        path = Path(tmp) / "db"
        st = Store.open(path, sync_writes=True)
        gc.collect()
        t0 = time.perf_counter()
        _fill(st, blobs)
        t1 = time.perf_counter()
        raw_rate = (raw_before + raw_verify_rate(sample)) / 2  # sampled around the ingest, like the load
        st.close()
        t2 = time.perf_counter()
        st = Store.open(path)
        t3 = time.perf_counter()
        try:
            if st.complete_count() != n:
                raise EcacError(f"ingest lost ops: {st.complete_count()} of {n} complete")
            digest = replay_store(st).digest
        finally:
            st.close()
        disk = dir_bytes(path)
    ingest_s = t1 - t0
    ops_per_s = n / ingest_s if ingest_s > 0 else 0.0
    return {
        "scenario": "ingest",
        "ops": n,
        "seed": params.seed,
        "batch": BATCH,
        "batches": (n + BATCH - 1) // BATCH,
        "ingest_ms": _ms(ingest_s),
        "ops_per_s": round(ops_per_s, 1),
        "raw_verify_per_s": round(raw_rate, 1),
        "raw_verify_sample": len(sample),
        "verify_fraction": round(ops_per_s / raw_rate, 3) if raw_rate else 0.0,
        "reopen_ms": _ms(t3 - t2),
        "log_bytes": sum(len(b) for b in blobs),
        "bytes_on_disk": disk,
        "bytes_per_op": disk // n if n else 0,
        "generate_ms": gen_ms,
        "state_digest": digest.hex(),
    }


@scenario("store-replay", "replay a store of verified hb-chain ops; resume from a checkpoint at 90%")
def bench_store_replay(params: BenchParams) -> dict[str, Any]:
    blobs = [op.cbor for op in iter_hb_chain(params.seed, params.ops)]
    n = len(blobs)
    cut = (n * 9) // 10
    with tempfile.TemporaryDirectory(prefix="ecac-bench-") as tmp:
        path = Path(tmp) / "db"
        with Store.open(path, sync_writes=False) as st:  # setup, untimed
            _fill(st, blobs[:cut])
            dag = load_dag(st)
            state, _ = replay_full(dag)
            order = dag.topo_order()
            st.checkpoint_create(state, len(order), order)
            del dag, state, order
            _fill(st, blobs[cut:])
        gc.collect()
        t0 = time.perf_counter()
        st = Store.open(path)
        t1 = time.perf_counter()
        try:
            runs = []
            for _ in range(REPLAY_RUNS):  # the first run includes the index's lazily built positions
                gc.collect()
                ta = time.perf_counter()
                full = replay_store(st)
                runs.append(time.perf_counter() - ta)
            gc.collect()
            t3 = time.perf_counter()
            resumed = replay_store(st, from_checkpoint=True)
            t4 = time.perf_counter()
            gc.collect()
            t5 = time.perf_counter()
            checked = replay_store(st, verify_sigs=True)
            t6 = time.perf_counter()
        finally:
            st.close()
        disk = dir_bytes(path)
    if not (full.digest == resumed.digest == checked.digest):
        raise EcacError(f"store replay parity failed (scenario=store-replay, seed={params.seed})")
    if n and resumed.start != cut:
        raise EcacError(f"checkpoint not used: resumed at {resumed.start}, expected {cut}")
    full_s, resume_s = statistics.median(runs), t4 - t3
    return {
        "scenario": "store-replay",
        "ops": n,
        "seed": params.seed,
        "open_ms": _ms(t1 - t0),
        "replay_full_ms": _ms(full_s),
        "replay_full_runs_ms": [_ms(r) for r in runs],
        "ops_per_s": round(n / full_s, 1) if full_s > 0 else 0.0,
        "checkpoint_at": cut,
        "replay_resume_ms": _ms(resume_s),
        "resume_speedup": round(full_s / resume_s, 2) if resume_s > 0 else 0.0,
        "replay_verify_sigs_ms": _ms(t6 - t5),
        "verify_sigs_ops_per_s": round(n / (t6 - t5), 1) if t6 > t5 else 0.0,
        "bytes_on_disk": disk,
        "bytes_per_op": disk // n if n else 0,
        "state_digest": full.digest.hex(),
    }
