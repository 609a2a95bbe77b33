"""Store CLI commands (store §3.3): op-append, replay-from-store, checkpoints, verify-store, status.

Every command takes ``--db/-d DIR`` and creates the store when it is missing (reference
behaviour). Outputs are exactly the reference's lines; errors are ``EcacError``s, which
the CLI prints as ``Error: <message>`` with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from pathlib import Path
from typing import Any

import blake3
import click
from nacl.signing import SigningKey

from ecac.cli.common import (
    db_option,
    db_or_node,
    env_db_option,
    load_ops,
    mint,
    node_status,
    one_target,
    opened,
    render_node_status,
    wall_clock_ms,
)
from ecac.cli.keyfile import KEY_FILE_ARG
from ecac.core.codec import dumps
from ecac.core.errors import EcacError
from ecac.core.hlc import U32_MAX, U64_MAX
from ecac.core.keys import parse_hex, public_key
from ecac.core.op import IssuerKey, IssuerKeyRevoke, Op, Payload, StatusListChunk
from ecac.core.replay import replay_full
from ecac.core.trust import TrustView
from ecac.store.memory import PutRejectedError
from ecac.store.resume import load_dag, replay_store
from ecac.store.rocks import Store

DEFAULT_BATCH = 1024


# --------------------------------------------------------------------------- op-append


def op_files(paths: tuple[Path, ...]) -> list[Path]:
    """Files to append: each file as given; a directory's ``*.cbor`` files (non-recursive, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".cbor"))
        else:
            out.append(p)
    return out


def read_op_files(
    inputs: tuple[Path, ...], *, parents_first: bool = False
) -> tuple[list[Op], EcacError | None]:
    """The ops of the input files in order, up to the first unreadable file, and its error.

    The caller appends the ops read and then raises the error, so the ops of the files
    before a bad one are still appended (the reference's behaviour). With
    ``parents_first`` each file's ops are reordered by ``parents_first`` (``op-append``).
    """
    ops: list[Op] = []
    for f in op_files(inputs):
        try:
            loaded = load_ops(str(f))
        except EcacError as e:
            return ops, e
        ops.extend(parent_first(loaded) if parents_first else loaded)
    return ops, None


def parent_first(ops: list[Op]) -> list[Op]:
    """``ops`` reordered so that every op comes after its parents that are among them (a stable sort).

    An op whose parents are all outside the list keeps its place relative to the others
    like it; an op is moved only as far as its first in-list parent's position requires:
    among the ops whose in-list parents are all placed, the earliest in the input goes next.
    So a prefix of the result never holds an op without a parent that the list holds,
    and ``op-append`` writing it in batches leaves, whenever it stops (a crash, a refused
    op), no op waiting for a parent from the same file. A repeated id counts as its first
    copy; ops in a cycle (possible only with forged ids, which put refuses) keep their
    input order at the end.
    """
    first: dict[bytes, int] = {}
    for i, op in enumerate(ops):
        first.setdefault(op.op_id, i)
    unmet = [0] * len(ops)
    waiting: dict[int, list[int]] = {}  # input index -> the entries waiting for it
    ready: list[int] = []
    for i, op in enumerate(ops):
        for p in dict.fromkeys(op.parents):
            j = first.get(p)
            if j is not None and j != i:
                unmet[i] += 1
                waiting.setdefault(j, []).append(i)
        if not unmet[i]:
            ready.append(i)
    heapify(ready)
    out: list[int] = []
    while ready:
        i = heappop(ready)
        out.append(i)
        for c in waiting.get(i, ()):
            unmet[c] -= 1
            if not unmet[c]:
                heappush(ready, c)
    if len(out) < len(ops):
        placed = set(out)
        out.extend(i for i in range(len(ops)) if i not in placed)
    return [ops[i] for i in out]


def append_ops(
    st: Store, ops: list[Op], batch: int, on_appended: Callable[[bytes], None] = lambda _i: None
) -> int:
    """Put ``ops`` in batches (one synced write each, ``Store.put_stream``); the first invalid op aborts.

    Ops before the failing one stay stored, as with the reference's one-put-per-op loop.
    """
    done = 0
    try:
        for res in st.put_stream(ops, batch):
            for op in ops[done : done + len(res.stored) + res.duplicates]:
                on_appended(op.op_id)
            done += len(res.stored) + res.duplicates
    except PutRejectedError as e:
        good = ops[done : e.rejection.index]  # the failing batch's ops before the refused one
        if good:
            st.put_many(good)
        for op in good:
            on_appended(op.op_id)
        raise
    return done


@click.command("op-append")
@db_option
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--batch-size", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--quiet", "-q", is_flag=True, help="Do not print an `appended <id>` line per op.")
def op_append_cmd(db: Path, inputs: tuple[Path, ...], batch_size: int, quiet: bool) -> None:
    """Append op files (or directories of *.cbor files) to the store, validating every op.

    Each file's ops are written parents first (an op after every parent the same file
    holds; otherwise in file order), one synced batch at a time, so an interrupted append
    leaves no op waiting for a parent from its own file. The first invalid op aborts; the
    ops written before it (in that order) stay.
    """
    ops, unreadable = read_op_files(inputs, parents_first=True)
    with opened(db) as st:
        _append_with_feedback(st, ops, batch_size, quiet)
    if unreadable is not None:
        raise unreadable


def _append_with_feedback(st: Store, ops: list[Op], batch_size: int, quiet: bool) -> None:
    """``append_ops`` with ``appended`` lines and, on a terminal, a progress bar."""
    if not (sys.stderr.isatty() and len(ops) > batch_size):
        emit = (lambda _i: None) if quiet else (lambda i: click.echo(f"appended {i.hex()}", err=True))
        append_ops(st, ops, batch_size, emit)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("appending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("ops", total=len(ops))

        def emit_bar(op_id: bytes) -> None:
            if not quiet:
                bar.console.print(f"appended {op_id.hex()}", highlight=False, soft_wrap=True)
            bar.advance(task)

        append_ops(st, ops, batch_size, emit_bar)


# --------------------------------------------------------------------------- replay and checkpoints


@click.command("replay-from-store")
@db_option
@click.option(
    "--from-checkpoint", is_flag=True, help="Resume from the newest checkpoint that is still valid."
)
@click.option("--verify-sigs", is_flag=True, help="Re-verify every op's signature (done at ingest already).")
def replay_from_store_cmd(db: Path, from_checkpoint: bool, verify_sigs: bool) -> None:
    """Replay the store's ops: the state JSON, then digest=<hex>."""
    with opened(db, must_exist=True) as st:
        res = replay_store(st, from_checkpoint=from_checkpoint, verify_sigs=verify_sigs)
    click.echo(res.state.to_json())
    click.echo(f"digest={res.digest.hex()}")


@click.command("checkpoint-create")
@db_option
def checkpoint_create_cmd(db: Path) -> None:
    """Replay the store in full and save a checkpoint; prints its id."""
    with opened(db, must_exist=True) as st:
        dag = load_dag(st)
        state, _ = replay_full(dag)
        order = dag.topo_order()
        cid = st.checkpoint_create(state, len(order), order)
    click.echo(str(cid))


@click.command("checkpoint-list")
@db_option
def checkpoint_list_cmd(db: Path) -> None:
    """The latest checkpoint: `latest: <id> @ topo_idx=<n>`, or `(no checkpoints)`."""
    with opened(db, must_exist=True) as st:
        latest = st.checkpoint_latest()
    if latest is None:
        click.echo("(no checkpoints)")
    else:
        click.echo(f"latest: {latest[0]} @ topo_idx={latest[1]}")


@click.command("checkpoint-load")
@db_option
@click.argument("checkpoint_id", type=click.IntRange(0, 2**64 - 1))
def checkpoint_load_cmd(db: Path, checkpoint_id: int) -> None:
    """Print a checkpoint's state JSON (its topo_idx goes to stderr)."""
    with opened(db, must_exist=True) as st:
        state, topo_idx = st.checkpoint_load(checkpoint_id)
    click.echo(state.to_json())
    click.echo(f"checkpoint_topo_idx={topo_idx}", err=True)


#: exit code of ``verify-store`` for a store without corruption whose ops wait for missing parents
EXIT_INCOMPLETE = 3


@click.command("verify-store")
@db_option
@click.option("--verify-sigs", is_flag=True, help="Also re-verify every op's signature.")
def verify_store_cmd(db: Path, verify_sigs: bool) -> None:
    """Check the store's integrity (op ids, parent edges, the VC cache) and recompute its total order.

    \b
    Prints OK (exit 0); or, when nothing is corrupt but some ops wait for parents that are
    not stored (an interrupted sync or import), `incomplete: N ops wait for missing
    parents (M missing ops, R missing parent references)` (exit 3); corruption is
    `Error: <what and which op>` on stderr (exit 1).
    """
    with opened(db, must_exist=True) as st:
        report = st.verify_integrity(verify_sigs=verify_sigs)
    click.echo(report.describe())
    if report.incomplete:
        sys.exit(EXIT_INCOMPLETE)


# --------------------------------------------------------------------------- status


def local_status(st: Store) -> dict[str, Any]:
    """Status of a local store; the state digest comes from a (checkpoint-resumed) replay."""
    res = replay_store(st, from_checkpoint=True)
    latest = st.checkpoint_latest()
    return {
        "op_count": st.complete_count(),
        "stored_ops": st.op_count(),
        "pending_ops": st.pending_count(),
        "head_count": st.index.head_count(),
        "heads": [h.hex() for h in st.heads(8)],
        "topo_watermark": st.topo_watermark(),
        "state_digest": res.digest.hex(),
        "latest_checkpoint": None if latest is None else {"id": latest[0], "topo_idx": latest[1]},
    }


def render_status(status: dict[str, Any], as_json: bool) -> str:
    """One JSON object, or ``key: value`` lines (the same keys) for people."""
    if as_json:
        return json.dumps(status, separators=(",", ":"))
    lines = []
    for k, v in status.items():
        if isinstance(v, list):
            v = ", ".join(v) if v else "-"
        elif isinstance(v, dict):
            v = " ".join(f"{a}={b}" for a, b in v.items())
        elif v is None:
            v = "-"
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


@click.command("status")
@db_or_node("Store directory", "A running node's control URL instead of --db")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of key: value lines.")
def status_cmd(db: Path | None, node_url: str | None, token_file: Path | None, as_json: bool) -> None:
    """Ops, heads, pending ops, watermark, latest checkpoint and state digest of a store (or a live node)."""
    db, node_url = one_target(db, node_url)
    if node_url is not None:
        status = node_status(node_url, token_file)
        if as_json:
            click.echo(json.dumps(status, separators=(",", ":")))
        else:
            render_node_status(status)
        return
    assert db is not None  # one_target: exactly one of the two
    with opened(db, must_exist=True) as st:
        status = local_status(st)
    click.echo(render_status(status, as_json))


# --------------------------------------------------------------------------- trust ops (store §3.3)

YEAR_MS = 365 * 86_400_000


def deterministic_now_ms() -> int:
    """``ECAC_TIME_MS``, else ``SOURCE_DATE_EPOCH`` × 1000, else the wall clock (store §3.1)."""
    for name, scale in (("ECAC_TIME_MS", 1), ("SOURCE_DATE_EPOCH", 1000)):
        raw = os.environ.get(name)
        if raw is not None:
            try:
                v = int(raw.strip()) * scale
            except ValueError:
                continue
            if 0 <= v < 2**64:
                return v
    return wall_clock_ms()


def mint_and_store(db: Path, sk: SigningKey, now_ms: int, payload: Payload) -> Op:
    """``mint`` into the store at ``db``."""
    with opened(db) as st:
        return mint(st, sk, now_ms, payload)


@click.command("trust-issuer-publish")
@env_db_option
@click.argument("issuer_id")
@click.argument("key_id")
@click.argument("algo")
@click.argument("sk", metavar="ISSUER_KEY_FILE", type=KEY_FILE_ARG)
@click.option("--prev-key-id", default=None, help="The key this one replaces.")
@click.option("--valid-from-ms", type=click.IntRange(0, U64_MAX), default=None, help="Default: now.")
@click.option(
    "--valid-until-ms", type=click.IntRange(0, U64_MAX), default=None, help="Default: now + 365 days."
)
def trust_issuer_publish_cmd(
    db: Path,
    issuer_id: str,
    key_id: str,
    algo: str,
    sk: SigningKey,
    prev_key_id: str | None,
    valid_from_ms: int | None,
    valid_until_ms: int | None,
) -> None:
    """Publish the issuer's own public key as an IssuerKey op (in-band trust).

    ISSUER_KEY_FILE is a key file (`ecac key new`); the reference's hex seed is refused.
    """
    now = deterministic_now_ms()
    vf = now if valid_from_ms is None else valid_from_ms
    vu = min(now + YEAR_MS, U64_MAX) if valid_until_ms is None else valid_until_ms
    if vu <= vf:
        raise EcacError(f"valid_until_ms ({vu}) must be > valid_from_ms ({vf})")
    payload = IssuerKey(issuer_id, key_id, algo, public_key(sk), vf, vu, prev_key_id)
    op = mint_and_store(db, sk, now, payload)
    click.echo(f"issuer_key_op_id={op.op_id.hex()} issuer_id={issuer_id} key_id={key_id}")
    click.echo(f"valid_from_ms={vf} valid_until_ms={vu}")


@click.command("trust-issuer-revoke")
@env_db_option
@click.argument("issuer_id")
@click.argument("key_id")
@click.argument("reason")
@click.argument("sk", metavar="ISSUER_KEY_FILE", type=KEY_FILE_ARG)
def trust_issuer_revoke_cmd(db: Path, issuer_id: str, key_id: str, reason: str, sk: SigningKey) -> None:
    """Revoke an issuer key with an IssuerKeyRevoke op, signed with the key in ISSUER_KEY_FILE."""
    op = mint_and_store(db, sk, deterministic_now_ms(), IssuerKeyRevoke(issuer_id, key_id, reason))
    click.echo(f"issuer_revoke_op_id={op.op_id.hex()} issuer_id={issuer_id} key_id={key_id} reason={reason}")


@click.command("trust-status-chunk")
@env_db_option
@click.argument("issuer_id")
@click.argument("list_id")
@click.argument("version", type=click.IntRange(0, U32_MAX))
@click.argument("chunk_index", type=click.IntRange(0, U32_MAX))
@click.argument("chunk_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("sk", metavar="ISSUER_KEY_FILE", type=KEY_FILE_ARG)
@click.option("--bitset-sha256-hex", "bitset_hex", default=None, help="SHA-256 of the whole bitset (64 hex).")
def trust_status_chunk_cmd(
    db: Path,
    issuer_id: str,
    list_id: str,
    version: int,
    chunk_index: int,
    chunk_path: Path,
    sk: SigningKey,
    bitset_hex: str | None,
) -> None:
    """Publish one chunk of a status list (LSB-first bits) as a StatusListChunk op.

    Signed with the key in ISSUER_KEY_FILE (a key file; the reference's hex seed is refused).
    """
    if bitset_hex is None:
        raise EcacError("bitset_sha256_hex not provided; pass --bitset-sha256-hex <64-hex>")
    bitset_sha = parse_hex(bitset_hex, 32, "SHA-256 value")
    try:
        chunk = chunk_path.read_bytes()
    except OSError as e:
        raise EcacError(f"{chunk_path}: cannot read: {e.strerror or e}") from None
    payload = StatusListChunk(list_id, issuer_id, version, chunk_index, bitset_sha, chunk)
    op = mint_and_store(db, sk, deterministic_now_ms(), payload)
    click.echo(
        f"status_list_chunk_op_id={op.op_id.hex()} issuer_id={issuer_id} list_id={list_id} "
        f"version={version} chunk_index={chunk_index}"
    )


def trust_dump_obj(tv: TrustView) -> dict[str, Any]:
    """The ``trust-dump`` document: ordered views of issuer keys and status lists plus their digests.

    Each digest is BLAKE3 of the CBOR of the ordered map (keys ascending, struct fields in
    declaration order), as the reference computes it.
    """
    issuers: dict[str, dict[str, dict[str, Any]]] = {}
    for iss in sorted(tv.issuers):
        issuers[iss] = {}
        for kid in sorted(tv.issuers[iss]):
            r = tv.issuers[iss][kid]
            issuers[iss][kid] = {
                "algo": r.algo,
                "valid_from_ms": r.valid_from_ms,
                "valid_until_ms": r.valid_until_ms,
                "activated_at_ms": r.activated_at_ms,
                "revoked_at_ms": r.revoked_at_ms,
                "pubkey_hex": r.pubkey.hex(),
            }
    lists: dict[str, dict[str, Any]] = {}
    for lid in sorted(tv.status_lists):
        sl = tv.status_lists[lid]
        lists[lid] = {
            "issuer_id": sl.issuer_id,
            "list_id": sl.list_id,
            "version": sl.version,
            "num_chunks": len(sl.chunks),
            "bitset_sha256_hex": sl.bitset_sha256.hex(),
            "digest_matches": True,  # TrustView keeps only complete lists whose SHA-256 matches
        }
    return {
        "issuers": issuers,
        "issuers_digest_hex": blake3.blake3(dumps(issuers)).hexdigest(),
        "status_lists": lists,
        "status_lists_digest_hex": blake3.blake3(dumps(lists)).hexdigest(),
    }


@click.command("trust-dump")
@env_db_option
def trust_dump_cmd(db: Path) -> None:
    """Print the in-band TrustView of the store's ops as pretty JSON with sorted keys."""
    from ecac.core.policy import trust_view_for

    with opened(db, must_exist=True) as st:
        tv = trust_view_for(list(st.iter_topo_ops()))
    click.echo(json.dumps(trust_dump_obj(tv), indent=2, sort_keys=True, ensure_ascii=False))


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    for cmd in (
        op_append_cmd,
        replay_from_store_cmd,
        checkpoint_create_cmd,
        checkpoint_list_cmd,
        checkpoint_load_cmd,
        verify_store_cmd,
        status_cmd,
        trust_issuer_publish_cmd,
        trust_issuer_revoke_cmd,
        trust_status_chunk_cmd,
        trust_dump_cmd,
    ):
        group.add_command(cmd)
