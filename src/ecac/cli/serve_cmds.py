"""``ecac serve``: the HTTP gateway of store §3.5 over a store, with optional libp2p networking.

``serve`` is ``ecac node`` with the reference's flags: the gateway listens on ``--listen
HOST:PORT`` (default ``127.0.0.1:8080``), the store is ``--db`` (``ECAC_DB``, default
``.ecac.db``), and networking (store §2.3) runs only with ``--libp2p-listen MULTIADDR``,
dialling every ``--bootstrap`` address. A libp2p address that cannot be bound is a warning
(§3.5: ``Warning: Failed to start libp2p networking: …`` / ``Continuing without networking...``),
not an error. The gateway itself is the node's (``ecac.net.gateway``): token in
``<db>/control.token``, loopback only unless ``--allow-remote``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import click

from ecac.cli.dbopt import db_option, require_db
from ecac.cli.net_cmds import (
    LEVELS,
    check_listen_addr,
    check_peer_addrs,
    check_project,
    gateway_options,
    gateway_write_seed,
    run_node_cli,
)

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_PROJECT = "ecac-demo"


def _bind_problem(multiaddr: str) -> str | None:
    """Why ``/ip4|ip6/ADDR/tcp/PORT`` cannot be listened on (None: it can)."""
    parts = multiaddr.split("/")
    family = socket.AF_INET if parts[1] == "ip4" else socket.AF_INET6
    port = int(parts[4])
    if port == 0:
        return None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((parts[2], port))
        except OSError as e:
            return f"cannot listen on {multiaddr}: {e.strerror or e}"
    return None


@click.command("serve")
@click.option(
    "--listen",
    "listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Gateway address (loopback unless --allow-remote; port 0 picks a free one).",
)
@db_option("Store directory (env ECAC_DB; created if missing).", default=".ecac.db")
@click.option("--site-name", envvar="ECAC_SITE_NAME", default=None, help="Site label (env ECAC_SITE_NAME).")
@click.option(
    "--project",
    envvar="ECAC_PROJECT",
    default=DEFAULT_PROJECT,
    show_default=True,
    help="Gossip project: topic ecac/v1/<project>/announce (env ECAC_PROJECT).",
)
@click.option(
    "--libp2p-listen",
    "libp2p_listen",
    default=None,
    metavar="MULTIADDR",
    help="Start networking, listening on /ip4/ADDRESS/tcp/PORT (without it: no networking).",
)
@click.option(
    "--bootstrap",
    "bootstrap",
    multiple=True,
    metavar="MULTIADDR",
    help="Peer /ip4/…/tcp/…/p2p/<id> to dial and keep dialled (repeatable; needs --libp2p-listen).",
)
@click.option(
    "--anti-entropy-ms",
    default=5000,
    show_default=True,
    type=click.IntRange(10, 3_600_000),
    help="Anti-entropy period.",
)
@click.option("--log-level", default="INFO", show_default=True, type=LEVELS, help="stderr log level.")
@gateway_options
def serve_cmd(
    listen: str,
    db: Path | None,
    site_name: str | None,
    project: str,
    libp2p_listen: str | None,
    bootstrap: tuple[str, ...],
    anti_entropy_ms: int,
    log_level: str,
    allow_writes: bool,
    write_key: Path | None,
    allow_remote: bool,
) -> None:
    """Serve the HTTP gateway and the dashboard, with networking when --libp2p-listen is given.

    stdout: `libp2p Peer ID: <id>`, `ECAC Gateway starting on http://<addr>`, `Site: <name>`,
    `Write operations: ENABLED` (with --allow-writes), `libp2p networking: ENABLED|DISABLED`,
    `libp2p listen: <addr>` (with networking) and `dashboard: http://<addr>/#token=<token>`.
    """
    from ecac.net.gateway import parse_control_addr

    dbp = require_db(db)
    ctl = parse_control_addr(listen, allow_remote=allow_remote)
    check_project(project)
    seed = gateway_write_seed(write_key)

    from ecac.net.node import NodeOptions, configure_logging

    check_peer_addrs(bootstrap, "--bootstrap")
    listen_addrs: tuple[str, ...] = ()
    if libp2p_listen is not None:
        check_listen_addr(libp2p_listen)
        problem = _bind_problem(libp2p_listen)
        if problem is None:
            listen_addrs = (libp2p_listen,)
        else:
            click.echo(f"Warning: Failed to start libp2p networking: {problem}", err=True)
            click.echo("Continuing without networking...", err=True)
    if bootstrap and not listen_addrs:
        click.echo("Warning: --bootstrap is ignored without networking (--libp2p-listen)", err=True)
    configure_logging(log_level)
    opts = NodeOptions(
        db=dbp,
        listen=listen_addrs,
        project=project,
        peers=bootstrap if listen_addrs else (),
        control=ctl,
        anti_entropy_ms=anti_entropy_ms,
        allow_writes=allow_writes,
        write_seed=seed,
        allow_remote=allow_remote,
        site_name=site_name,
    )

    def ready(node: Any) -> None:
        click.echo(f"libp2p Peer ID: {node.peer_id}")
        click.echo(f"ECAC Gateway starting on {node.control_url}")
        click.echo(f"Site: {site_name if site_name is not None else '(unnamed)'}")
        if allow_writes:
            click.echo("Write operations: ENABLED")
        click.echo(f"libp2p networking: {'ENABLED' if listen_addrs else 'DISABLED'}")
        if listen_addrs:
            click.echo(f"libp2p listen: {node.listen_addrs[0] if node.listen_addrs else listen_addrs[0]}")
        click.echo(f"dashboard: {node.dashboard_url}")
        sys.stdout.flush()

    run_node_cli(opts, ready)


def register(group: click.Group) -> None:
    """Add ``serve`` to the top-level group."""
    group.add_command(serve_cmd)
