"""Network CLI commands: ``node`` (the long-lived libp2p node) and ``inject-demo-ops``.

``ecac.net.node`` imports libp2p (~0.7 s, ~60 MB), so it is imported inside the commands
that need it, never at CLI start-up. ``status --node URL`` lives in ``store_cmds``; both use
``ecac.cli.common`` for ``--db``/``--node`` and the node's ``/status``.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ecac.cli.common import db_or_node, gateway, one_target, opened
from ecac.cli.dbopt import db_option, require_db
from ecac.core.errors import EcacError
from ecac.store.resume import replay_store
from ecac.testing.demo_ops import demo_ops_for

LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
_LISTEN_EXAMPLE = "/ip4/127.0.0.1/tcp/4001"


def check_listen_addr(text: str) -> None:
    """Refuse a ``--listen`` that is not ``/ip4/ADDRESS/tcp/PORT`` (or ``/ip6/…``) before libp2p
    starts: one line (exit 1) instead of a multiaddr parser's traceback."""
    parts = text.split("/")
    shape = f"--listen {text!r} is not a /ip4/ADDRESS/tcp/PORT multiaddr (e.g. {_LISTEN_EXAMPLE})"
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        hint = "; TCP is the only transport" if len(parts) == 5 and parts[3] in ("udp", "quic") else ""
        raise EcacError(shape + hint)
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        raise EcacError(f"--listen {text!r}: {parts[2]!r} is not an IP address") from None
    if ip.version != (4 if parts[1] == "ip4" else 6):
        raise EcacError(
            f"--listen {text!r}: {parts[2]!r} is not an IPv{4 if parts[1] == 'ip4' else 6} address"
        )
    port = parts[4]
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise EcacError(f"--listen {text!r}: port {port!r} is not a number in 0-65535 (0 picks a free port)")


SUBJECT_ENV = "ECAC_SUBJECT_SK_HEX"


def gateway_options(f: Any) -> Any:
    """The gateway flags of `node` and `serve`: --allow-writes, --write-key FILE, --allow-remote."""
    f = click.option(
        "--allow-remote",
        is_flag=True,
        help="Let the gateway listen on a non-loopback address and answer any Host name; every "
        "request (reads too) then needs the token.",
    )(f)
    f = click.option(
        "--write-key",
        "write_key",
        default=None,
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Secret key file that signs POST /api/data writes (else env {SUBJECT_ENV}, else the node key).",
    )(f)
    return click.option(
        "--allow-writes",
        is_flag=True,
        help="Accept POST /api/data (the reference's write endpoint); else it answers ok:false.",
    )(f)


def gateway_write_seed(write_key: Path | None) -> bytes | None:
    """The seed that signs the gateway's ``POST /api/data``: ``--write-key FILE``, else
    ``ECAC_SUBJECT_SK_HEX``, else None (the node's identity key)."""
    import os

    from ecac.cli.keyfile import load_signing_key

    if write_key is None and not os.environ.get(SUBJECT_ENV, "").strip():
        return None
    return bytes(load_signing_key(write_key, hex_env=SUBJECT_ENV))


def check_project(project: str) -> None:
    """``--project`` must make a valid announce topic (a usage error otherwise)."""
    from ecac.sync.wire import announce_topic

    try:
        announce_topic(project)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--project") from None


def check_peer_addrs(addrs: Sequence[str], hint: str) -> None:
    """Every bootstrap address must be ``/ip4|ip6/…/tcp/PORT/p2p/<id>`` (a usage error otherwise)."""
    from ecac.net.node import check_peer_addr

    for addr in addrs:
        try:
            check_peer_addr(addr)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=hint) from None


def run_node_cli(opts: Any, ready: Callable[[Any], None]) -> None:
    """``run_node`` with libp2p's errors (a port in use, …) as one-line ``EcacError``s."""
    from ecac.net.host import P2PError
    from ecac.net.node import run_node

    try:
        run_node(opts, ready)
    except P2PError as e:
        raise EcacError(str(e)) from None


@click.command("node")
@db_option("Store directory (env ECAC_DB; created if missing; holds node_key and control.token).")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    required=True,
    help="Listen multiaddr, e.g. /ip4/127.0.0.1/tcp/0 (repeatable).",
)
@click.option("--peer", "peers", multiple=True, help="Bootstrap peer /ip4/…/tcp/…/p2p/<id> (repeatable).")
@click.option("--project", required=True, help="Project id: gossip topic ecac/v1/<project>/announce.")
@click.option(
    "--control",
    default=None,
    help="HTTP gateway HOST:PORT (loopback unless --allow-remote; port 0 = any free port).",
)
@click.option("--log-level", default="INFO", show_default=True, type=LEVELS, help="stderr log level.")
@click.option(
    "--anti-entropy-ms",
    default=5000,
    show_default=True,
    type=click.IntRange(10, 3_600_000),
    help="Anti-entropy period.",
)
@click.option(
    "--key-file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Node identity seed file (default <db>/node_key; created if missing).",
)
@click.option(
    "--heartbeat-ms",
    default=500,
    show_default=True,
    type=click.IntRange(50, 60_000),
    help="Gossipsub heartbeat interval.",
)
@click.option(
    "--request-max-ops",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="Ops asked for per sync request (0 = the server's cap).",
)
@click.option(
    "--genesis",
    "genesis_file",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Join a strict project: its genesis op (from `ecac init --out`), put into an empty store "
    "(a store of another project is refused). Not needed once the store holds the genesis.",
)
@click.option(
    "--subject-key",
    "subject_key",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Secret key file of the subject this node speaks for in its hello (strict: peers serve it "
    "only while that subject holds a live role); default the node key.",
)
@click.option(
    "--exit-on-stdin-eof",
    is_flag=True,
    hidden=True,
    help="Stop when stdin reaches EOF (used by ecac.net.procs so nodes never outlive their parent).",
)
@gateway_options
def node_cmd(
    db: Path | None,
    listen: tuple[str, ...],
    peers: tuple[str, ...],
    project: str,
    control: str | None,
    log_level: str,
    anti_entropy_ms: int,
    key_file: Path | None,
    heartbeat_ms: int,
    request_max_ops: int,
    genesis_file: Path | None,
    subject_key: Path | None,
    exit_on_stdin_eof: bool,
    allow_writes: bool,
    write_key: Path | None,
    allow_remote: bool,
) -> None:
    """Run a network node until SIGINT/SIGTERM.

    The first stdout line is `listening <multiaddr>/p2p/<peer-id>`; with --control a second
    line `control http://HOST:PORT` and a third `dashboard: http://HOST:PORT/#token=…` follow
    (the gateway; its token is also in <db>/control.token). Logs go to stderr.
    """
    db = require_db(db)
    for addr in listen:
        check_listen_addr(addr)
    from ecac.net.gateway import parse_control_addr

    check_project(project)
    ctl = parse_control_addr(control, allow_remote=allow_remote) if control is not None else None
    seed = gateway_write_seed(write_key)
    subject_seed = None
    if subject_key is not None:
        from ecac.cli.keyfile import read_key_file

        subject_seed = bytes(read_key_file(subject_key)[0])

    from ecac.net.node import NodeOptions, configure_logging

    check_peer_addrs(peers, "--peer")

    configure_logging(log_level)
    overrides = {"request_max_ops": request_max_ops} if request_max_ops else {}
    opts = NodeOptions(
        db=db,
        listen=listen,
        project=project,
        peers=peers,
        control=ctl,
        anti_entropy_ms=anti_entropy_ms,
        key_file=key_file,
        heartbeat_interval=heartbeat_ms / 1000.0,
        sync_overrides=overrides,
        exit_on_stdin_eof=exit_on_stdin_eof,
        allow_writes=allow_writes,
        write_seed=seed,
        allow_remote=allow_remote,
        genesis_file=genesis_file,
        subject_seed=subject_seed,
    )

    def ready(node: Any) -> None:
        click.echo(f"listening {node.listen_addrs[0]}")
        if node.control_url is not None:
            click.echo(f"control {node.control_url}")
            click.echo(f"dashboard: {node.dashboard_url}")
        sys.stdout.flush()

    run_node_cli(opts, ready)


@click.command("inject-demo-ops")
@db_or_node(
    "Append to this store (offline; the node must not be running on it).",
    "Inject through a running node's control API URL.",
)
@click.option("--count", required=True, type=click.IntRange(1, 1_000_000), help="Number of ops.")
@click.option("--seed", required=True, type=click.IntRange(0, 2**64 - 1), help="Author key and payload seed.")
def inject_demo_ops_cmd(
    db: Path | None, node_url: str | None, token_file: Path | None, count: int, seed: int
) -> None:
    """Write COUNT chained, signed demo Data ops (see ecac.testing.demo_ops), offline or live."""
    db, node_url = one_target(db, node_url)
    if node_url is not None:
        click.echo(json.dumps(gateway(node_url, token_file).inject(count, seed), separators=(",", ":")))
        return
    assert db is not None
    with opened(db) as st:
        ops = demo_ops_for(st, count, seed)
        result = st.put_many([op.cbor for op in ops])
        digest = replay_store(st, from_checkpoint=True).digest
        total = st.op_count()
    click.echo(f"injected {len(result.stored)} ops ({ops[0].op_id.hex()} … {ops[-1].op_id.hex()})")
    click.echo(f"op_count={total}")
    click.echo(f"digest={digest.hex()}")


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    for cmd in (node_cmd, inject_demo_ops_cmd):
        group.add_command(cmd)
