"""Audit CLI commands (store §3.3): op-append-audited, audit-verify-chain, audit-export,
audit-verify-full, audit-cat, audit-record.

Auditing is built in, so these do the real work (the reference prints "audit feature is not
enabled" without its build feature). Logs are read and written by ``ecac.store.auditlog``; the
default sink is ``$ECAC_AUDIT_DIR`` or ``.audit`` (``open_default``). Verification
failures are ``EcacError``s: ``Error: <message>`` on stderr, exit 1.

Additions (documented in ``--help`` and docs/storage.md): ``audit-verify-chain
--expect-head HEX`` pins the last entry hash, ``--print-head`` prints it.

With ``ECAC_NODE_SK_HEX`` set the store itself logs an ``IngestedOp`` per put input into
``<db>/audit`` (store §1.3 step 2); ``op-append-audited`` adds the refusals to the default sink.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ecac.cli.common import db_option, env_db_option, opened
from ecac.cli.store_cmds import DEFAULT_BATCH, read_op_files
from ecac.core.audit import (
    INVALID_SIG,
    AuditError,
    MemorySink,
    SkippedOp,
    cat_line,
    compare_decisions,
    decisions,
    export_line,
    replay_audited,
)
from ecac.core.errors import EcacError
from ecac.core.keys import parse_hex
from ecac.core.op import Op
from ecac.store.auditlog import (
    DEFAULT_DIR,
    ENV_DIR,
    INDEX,
    NODE_PK,
    STORE_AUDIT_SUBDIR,
    AuditReader,
    AuditWriter,
    open_default,
)
from ecac.store.resume import load_dag
from ecac.store.rocks import Store
from ecac.store.verifypool import VerifyPool

dir_option = click.option(
    "--dir",
    "directory",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Audit log directory.",
)

default_db_option = env_db_option  # --db/-d, env ECAC_DB, default .ecac.db (as every store command)


def open_sink() -> AuditWriter:
    """The default sink; the reference's message (with the cause below it) when it cannot open."""
    try:
        return open_default()
    except AuditError as e:
        raise EcacError(f"audit sink unavailable: set ECAC_NODE_SK_HEX\n\nCaused by:\n    {e}") from None


# --------------------------------------------------------------------------- op-append-audited


def _append_audited(st: Store, ops: list[Op], sink: AuditWriter) -> None:
    """Put ``ops`` in batches; the store's own log (``<db>/audit``, with ECAC_NODE_SK_HEX) gets
    an IngestedOp per op from ``put_many`` itself, the default sink a SkippedOp per refusal."""
    for lo in range(0, len(ops), DEFAULT_BATCH):
        part = ops[lo : lo + DEFAULT_BATCH]
        res = st.put_many(part, on_invalid="skip")
        failed = {r.index: r for r in res.rejected}
        skipped = []
        for i, op in enumerate(part):
            r = failed.get(i)
            if r is None:
                click.echo(f"appended {op.op_id.hex()}", err=True)
            else:
                click.echo(f"append failed for {op.op_id.hex()}: {r.message}", err=True)
                # a strict store's admission refusal carries its code (hlc_regression, ...)
                skipped.append(SkippedOp(op.op_id, 0, r.reason or INVALID_SIG))
        sink.append_many(skipped)


@click.command("op-append-audited")
@db_option
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def op_append_audited_cmd(db: Path, inputs: tuple[Path, ...]) -> None:
    """Append op files like op-append, but log each refused op as SkippedOp{invalid_sig} to the
    default audit sink ($ECAC_AUDIT_DIR or .audit) and continue with the next."""
    with open_sink() as sink:
        ops, unreadable = read_op_files(inputs)
        with opened(db) as st:
            _append_audited(st, ops, sink)
    if unreadable is not None:
        raise unreadable


# --------------------------------------------------------------------------- verification and views


@click.command("audit-verify-chain")
@dir_option
@click.option(
    "--expect-head",
    metavar="HEX",
    default=None,
    help="Also require the last entry hash to be HEX (a head recorded earlier): catches removed, "
    "added or rewritten records at the end.",
)
@click.option("--print-head", is_flag=True, help="Also print `head=<hex> records=<n>` (to pin later).")
def audit_verify_chain_cmd(directory: str, expect_head: str | None, print_head: bool) -> None:
    """Verify an audit log: seq order, node id, hash chain and every signature.

    A torn record at the end of the last segment (a crash mid-append) is cut off, with a
    `truncated tail repaired at <path> (offset N)` line on stderr.
    """
    reader = AuditReader(directory)
    with VerifyPool() as pool:
        if expect_head is None:
            res = reader.verify(pool.verify)
        else:
            res = reader.verify_against_head(parse_hex(expect_head, 32, "audit head"), pool.verify)
    click.echo(f"OK: audit chain verified at {directory}")
    if print_head:
        click.echo(f"head={res.head.hex()} records={res.count}")


@click.command("audit-export")
@dir_option
@click.option(
    "--out", default="audit.jsonl", show_default=True, type=click.Path(dir_okay=False), help="JSONL file."
)
def audit_export_cmd(directory: str, out: str) -> None:
    """Verify an audit log, then write one JSON object per record to OUT:
    seq, ts_monotonic, prev_hash_hex, node_id_hex, event, signature_hex."""
    reader = AuditReader(directory)
    with VerifyPool() as pool:
        res = reader.verify(pool.verify)
    lines = [export_line(rec) + "\n" for _, _, rec in reader.iter_records(limit=res.count)]
    try:
        Path(out).write_text("".join(lines), encoding="utf-8")
    except OSError as e:
        raise EcacError(f"{out}: cannot write: {e.strerror or e}") from None
    click.echo(f"wrote deterministic JSONL to {out}")


@click.command("audit-cat")
@dir_option
@click.option(
    "--segment",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Print only this segment file (default: every segment in index.json).",
)
def audit_cat_cmd(directory: str, segment: str | None) -> None:
    """Print audit records as JSON lines, one `=== <segment> ===` header per file. No verification."""
    reader = AuditReader(directory)
    paths = [Path(segment)] if segment else [Path(directory) / s.path for s in reader.segments()]
    for i, path in enumerate(paths):
        click.echo(f"=== {path} ===")
        for _, rec in reader.segment_records(path, last=i == len(paths) - 1):
            click.echo(cat_line(rec))


# --------------------------------------------------------------------------- replay with auditing


def _full_dir(db: Path) -> Path:
    """$ECAC_AUDIT_DIR if it holds a log (index.json and node_pk.bin), else <db>/audit, else .audit."""
    env = os.environ.get(ENV_DIR)
    if env and (Path(env) / INDEX).is_file() and (Path(env) / NODE_PK).is_file():
        return Path(env)
    store_dir = db / STORE_AUDIT_SUBDIR
    if (store_dir / INDEX).is_file():
        return store_dir
    return Path(DEFAULT_DIR)


@click.command("audit-verify-full")
@default_db_option
def audit_verify_full_cmd(db: Path) -> None:
    """Verify the audit chain, replay the store, and compare the replay's decisions (AppliedOp and
    SkippedOp: op, position, reason) with those recorded in the log, as sorted lists.

    The log is $ECAC_AUDIT_DIR when it holds index.json and node_pk.bin, else <db>/audit, else .audit.
    """
    reader = AuditReader(_full_dir(db))
    with VerifyPool() as pool:
        res = reader.verify(pool.verify)
    recorded = decisions(rec.entry.event for _, _, rec in reader.iter_records(limit=res.count))
    with opened(db, must_exist=True) as st:
        dag = load_dag(st)
    sink = MemorySink()
    replay_audited(dag, sink)
    replayed = decisions(sink.events)
    div = compare_decisions(replayed, recorded)
    if div is not None:
        for line in div.lines():
            click.echo(line, err=True)
        raise EcacError("audit decisions diverge")
    click.echo(f"OK: replay decisions match audit ({len(replayed)} entries)")


@click.command("audit-record")
@default_db_option
def audit_record_cmd(db: Path) -> None:
    """Replay the store and append its decisions (AppliedOp / SkippedOp per data op, then one
    Checkpoint) to the default audit sink ($ECAC_AUDIT_DIR or .audit)."""
    with open_sink() as sink:
        with opened(db, must_exist=True) as st:
            dag = load_dag(st)
        events = MemorySink()
        replay_audited(dag, events)
        sink.append_many(events.events)
    click.echo("OK: wrote decision events to the audit sink")


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    for cmd in (
        op_append_audited_cmd,
        audit_verify_chain_cmd,
        audit_export_cmd,
        audit_verify_full_cmd,
        audit_cat_cmd,
        audit_record_cmd,
    ):
        group.add_command(cmd)
