"""Run the headline benchmark matrix through ``ecac bench --json`` and print one table.

Usage: ``.venv/bin/python benchmarks/run_all.py [--quick] [--out bench-out/results.json]``.
Each row is one ``ecac bench`` process (fresh interpreter, so peak RSS is per scenario).
The numbers are what the issues' performance targets are read from; nothing here
asserts a threshold (benchmarks print, tests assert).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FULL = [
    ("hb-chain", 10_000, []),
    ("hb-chain", 100_000, []),
    ("concurrent", 10_000, ["--peers", "8"]),
    ("concurrent", 100_000, ["--peers", "8"]),
    ("offline-revocation", 100_000, []),
    ("policy-heavy", 10_000, []),
    ("policy-heavy", 100_000, []),
    ("ingest", 100_000, []),
    ("store-replay", 100_000, []),
    ("sync", 10_000, ["--nodes", "2"]),
    ("sync", 10_000, ["--nodes", "3"]),
    ("digest-update", 100_000, []),
    ("digest-update-hb", 100_000, []),
    ("status-latency", 100_000, []),
]
QUICK = [
    (s, min(n, 10_000), extra)
    for s, n, extra in FULL
    if n <= 10_000 or s in ("hb-chain", "digest-update", "digest-update-hb")
]

COLUMNS = ("replay_full_ms", "ops_per_s", "raw_verify_per_s", "verify_fraction", "peak_rss_mb")
#: the digest-update rows: one write's time to an up-to-date digest (target < 20 ms at 100k)
UPDATE_COLUMNS = ("median_ms", "p99_ms", "max_ms", "revoke_median_ms", "regrant_median_ms", "peak_rss_mb")
#: the status-latency row: GET /status while the node ingests a sync (target p99 < 50 ms at 100k)
STATUS_COLUMNS = ("status_p50_ms", "status_p99_ms", "status_max_ms", "status_requests", "ops_synced_ms")


def run(scenario: str, ops: int, extra: list[str], seed: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "ecac",
        "bench",
        "--scenario",
        scenario,
        "--ops",
        str(ops),
        "--seed",
        str(seed),
    ]
    cmd += [*extra, "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {
            "scenario": scenario,
            "ops": ops,
            "error": proc.stderr.strip().splitlines()[-1:] or ["failed"],
        }
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(wall, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k-op rows only")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path("bench-out/results.json"))
    args = ap.parse_args()
    rows = []
    for scenario, ops, extra in QUICK if args.quick else FULL:
        row = run(scenario, ops, extra, args.seed)
        rows.append(row)
        columns = UPDATE_COLUMNS if scenario.startswith("digest-update") else COLUMNS
        columns = STATUS_COLUMNS if scenario == "status-latency" else columns
        cells = [f"{row.get(c, '')}" for c in columns]
        label = f"{scenario} {' '.join(extra)}".strip()
        print(f"{label:28} {ops:>7}  " + "  ".join(f"{c}={v}" for c, v in zip(columns, cells, strict=True)))
        if "error" in row:
            print(f"    error: {row['error']}")
        sys.stdout.flush()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
