"""What several command modules share: file and store access, common options, output helpers.

Command modules (``*_cmds``) import from here and never from one another's helpers, so the
``ecac.cli`` package has no import cycle (checked by import-linter, pyproject.toml). The
heavy network modules stay imported inside the functions that talk to a node, so CLI
start-up never loads libp2p.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from nacl.signing import SigningKey

from ecac.cli.dbopt import DB_ENV, open_store, require_db
from ecac.cli.dbopt import db_option as _db_option
from ecac.core import policy
from ecac.core.errors import EcacError, VcError
from ecac.core.hlc import Hlc
from ecac.core.keys import to_hex
from ecac.core.op import Op, Payload, make_op
from ecac.core.opcodec import read_log
from ecac.core.trust import TrustStoreError
from ecac.core.vc import MISSING_FIELD, UNKNOWN_ISSUER, VerifiedClaims, verify_vc_file
from ecac.store.trustfiles import load_file_trust

if TYPE_CHECKING:  # loaded when a store is opened (ecac.cli.dbopt.open_store)
    from ecac.store.rocks import Store

# --------------------------------------------------------------------------- files


def read_file(path: str) -> bytes:
    """The bytes of ``path``; an unreadable file is an EcacError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise EcacError(f"{path}: cannot read: {e.strerror or e}") from None


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; a failure is an EcacError naming it."""
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise EcacError(f"{path}: cannot write: {e.strerror or e}") from None


def load_ops(path: str) -> list[Op]:
    """Tolerant read of an op file (list of ops, op, list of flat ops, flat op); not verified."""
    return read_log(read_file(path), path)


# --------------------------------------------------------------------------- the store

#: ``--db/-d DIR`` of the store commands (env ``ECAC_DB``; no default: a usage error when missing)
db_option = _db_option("Store directory (env ECAC_DB).")

#: ``--db/-d DIR`` of the reference's "store by env" commands: ``ECAC_DB``, default ``.ecac.db``
env_db_option = _db_option("Store directory (env ECAC_DB; created if missing).", default=".ecac.db")


@contextmanager
def opened(db: Path | None, *, read_only: bool = False, must_exist: bool = False) -> Iterator[Store]:
    """Open the store for one command and always close it.

    ``check_store_dir`` first: a ``--db`` that is a non-empty directory but not an ecac store
    is refused before RocksDB writes there. Commands that only read or derive from the ops
    (``must_exist``) refuse a missing store (``store <path> does not exist``, exit 1) instead
    of creating an empty one, so a mistyped ``--db`` cannot print the digest of an empty state.
    """
    with open_store(require_db(db), create=not (read_only or must_exist), read_only=read_only) as st:
        yield st


def wall_clock_ms() -> int:
    """The wall clock in ms: HLCs of ops minted by CLI commands (store §3.1); never in the core."""
    return time.time_ns() // 1_000_000


def mint(st: Store, sk: SigningKey, now_ms: int, payload: Payload) -> Op:
    """Sign ``payload`` with parents ``heads(8)`` and HLC ``{now, 0, 1}`` (store §3.1), then put it."""
    op = make_op(sk, st.heads(8), Hlc(now_ms, 0, 1), payload)
    st.put(op)
    return op


# --------------------------------------------------------------------------- a store or a node


NODE_ENV = "ECAC_NODE"


def node_option(help_text: str = "A running node's control URL instead of --db") -> Callable[..., Any]:
    """``--node URL`` (env ``ECAC_NODE``) as the ``node_url`` parameter."""
    return click.option(
        "--node",
        "node_url",
        envvar=NODE_ENV,
        default=None,
        metavar="URL",
        help=f"{help_text} (env {NODE_ENV}).",
    )


token_file_option = click.option(
    "--token-file",
    "token_file",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The node's gateway token (its <db>/control.token; else env ECAC_CONTROL_TOKEN).",
)


def db_or_node(db_help: str, node_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db/-d DIR`` (offline, env ``ECAC_DB``) or ``--node URL`` (a running node, env
    ``ECAC_NODE``) with ``--token-file FILE``: exactly one, see ``one_target``."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        f = token_file_option(f)
        f = node_option(node_help)(f)
        return _db_option(f"{db_help} (env ECAC_DB)")(f)

    return deco


def one_target(db: Path | None, node_url: str | None) -> tuple[Path | None, str | None]:
    """Exactly one of ``--db`` and ``--node``: ``(db, None)`` or ``(None, url)``, else a usage
    error (exit 2).

    A flag on the command line wins over the other's environment variable (``ECAC_DB`` set in
    the shell does not break ``--node URL``); both flags, or both variables and no flag, or
    neither, are refused.
    """
    ctx = click.get_current_context(silent=True)

    def on_line(name: str) -> bool:
        return ctx is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE

    if db is not None and node_url is not None:
        if on_line("db") and on_line("node_url"):
            raise click.UsageError("give --db DIR or --node URL, not both")
        if on_line("db"):
            return db, None
        if on_line("node_url"):
            return None, node_url
        raise click.UsageError(f"both {DB_ENV} and {NODE_ENV} are set: give --db DIR or --node URL")
    if db is None and node_url is None:
        raise click.UsageError(f"give --db DIR or --node URL (or set {DB_ENV} or {NODE_ENV})")
    return db, node_url


def gateway(node_url: str, token_file: Path | None, *, timeout: float = 30.0) -> Any:
    """The ``GatewayClient`` of ``--node URL`` with the token of ``resolve_token`` (imported here:
    the client stays out of CLI start-up)."""
    from ecac.net.client import GatewayClient, resolve_token

    return GatewayClient(node_url, token=resolve_token(token_file, None), timeout=timeout)


def node_status(url: str, token_file: Path | None = None) -> dict[str, Any]:
    """``GET /status`` of a running node (EcacError when unreachable)."""
    status: dict[str, Any] = gateway(url, token_file, timeout=10.0).status()
    return status


def render_node_status(status: dict[str, Any]) -> None:
    """A small rich table for people (``status --node URL`` without ``--json``)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"node {status.get('peer_id', '?')}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    rows = [
        ("listen", ", ".join(status.get("listen", []))),
        ("project", status.get("project")),
        (
            "ops (stored / complete / pending)",
            f"{status.get('op_count')} / {status.get('complete_count')} / {status.get('pending_ops')}",
        ),
        ("heads", status.get("head_count")),
        ("state digest", f"{status.get('state_digest')} (over {status.get('digest_ops')} ops)"),
        ("peers", "\n".join(status.get("peers", [])) or "-"),
        ("sync idle", status.get("sync_idle")),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    counters = status.get("counters", {})
    t.add_row("counters", " ".join(f"{k}={v}" for k, v in counters.items() if v) or "-")
    Console().print(t)


# --------------------------------------------------------------------------- trust and credentials

#: the reference's relative trust directory (``./trust/issuers.toml``, ``./trust/status/``)
DEFAULT_TRUST = "./trust"

trust_option = click.option(
    "--trust",
    "trust_dir",
    default=DEFAULT_TRUST,
    show_default=True,
    metavar="DIR",
    help="File trust store: DIR/issuers.toml and DIR/status/<list_id>.bin.",
)


def rust_debug_str(text: str) -> str:
    """``format!("{:?}", text)`` of Rust: quoted, with ``\\``, ``"`` and control characters escaped."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def vc_error_text(e: VcError) -> str:
    """The reference's ``VcError`` debug form: ``UnknownIssuer("x")``, ``MissingField("iss")``, ``BadSig``."""
    if e.kind in (UNKNOWN_ISSUER, MISSING_FIELD):
        return f"{e.kind}({rust_debug_str(e.detail)})"
    return e.kind


def file_trust_verify(token: bytes, trust_dir: str | Path) -> VerifiedClaims:
    """Verify against ``issuers.toml`` and the status files, with the reference's error lines."""
    try:
        store, status = load_file_trust(trust_dir)
    except TrustStoreError as e:
        raise EcacError(f"trust load failed: {e}") from None
    try:
        return verify_vc_file(token, store, status)
    except VcError as e:
        raise EcacError(f"VC verify failed (filesystem trust): {vc_error_text(e)}") from None


def echo_attach_result(cred: Op, grant: Op, cred_path: str, grant_path: str) -> None:
    """The four stdout lines of ``vc-attach`` (and ``op-make-grant``), spacing exact."""
    click.echo(f"credential_op_id={to_hex(cred.op_id)}")
    click.echo(f"grant_op_id      ={to_hex(grant.op_id)}")
    click.echo(f"cred_hash        ={to_hex(grant.payload.cred_hash)}")  # type: ignore[union-attr]
    click.echo(f"wrote: {cred_path} and {grant_path}")


# --------------------------------------------------------------------------- policy decisions


def shown_key(key: str) -> str:
    """A data key as one whitespace-free token (JSON-quoted when it has spaces or controls)."""
    if key and key.isprintable() and not any(c.isspace() for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def decision_lines(order: Sequence[Op]) -> list[str]:
    """One line per data op of ``order``: ``<op_id> <key> ALLOWED`` / ``... DENIED <reason>``."""
    lines = []
    for op, verdict, reason in policy.explain(order):
        line = f"{to_hex(op.op_id)} {shown_key(op.payload.key)} {verdict}"  # type: ignore[union-attr]
        lines.append(line if reason is None else f"{line} {reason}")
    return lines


def echo_decisions(order: Sequence[Op]) -> None:
    """Print the decision lines (``replay --explain`` and ``simulate``)."""
    for line in decision_lines(order):
        click.echo(line)
