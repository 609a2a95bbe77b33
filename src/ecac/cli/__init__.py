"""The ``ecac`` command line: one click group, subcommands registered per area.

Each area module (core, policy, store, net, bench) exposes ``register(group)``. Errors
that a user can cause are ``EcacError``s: printed as ``Error: <message>`` on stderr with
exit code 1. Usage errors exit 2 (click's convention), success 0.
"""

from __future__ import annotations

import sys

import click

from ecac import __version__
from ecac.core.errors import EcacError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ecac")
def cli() -> None:
    """ecac: Eventually Consistent Access Control (signed op log, deny-wins policy, CRDT state, sync)."""


def _register_all() -> None:
    from ecac.cli import bench_cmds, core_cmds, demo_cmds, net_cmds, optools_cmds, policy_cmds, store_cmds
    from ecac.cli.audit_cmds import register as register_audit

    for mod in (core_cmds, optools_cmds, policy_cmds, store_cmds, net_cmds, bench_cmds, demo_cmds):
        mod.register(cli)
    register_audit(cli)
    from ecac.cli import enc_cmds

    enc_cmds.register(cli)
    from ecac.cli import access_cmds  # after enc_cmds: its `write` wraps the reference's `write data`

    access_cmds.register(cli)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps EcacError to exit 1 with a one-line message."""
    try:
        # without standalone mode click returns ctx.exit(n)'s code instead of exiting
        rv = cli.main(args=argv, prog_name="ecac", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except EcacError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
