"""The ``ecac`` command line: one click group, subcommands registered per area.

Each area module (core, policy, store, net, bench, …) exposes ``register(group)`` and is imported
only when one of its commands runs (``LazyGroup``). Errors
that a user can cause are ``EcacError``s: printed as ``Error: <message>`` on stderr with
exit code 1. Usage errors exit 2 (click's convention), success 0.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import click

from ecac import __version__
from ecac.core.errors import EcacError

#: command name → the module whose ``register(group)`` adds it. Modules load on first use, so a
#: command pays only for its own imports (``ecac write --node`` does not import RocksDB);
#: ``tests/cli/test_cli_lazy.py`` checks this table against what the modules register.
COMMAND_MODULES: Final[dict[str, str]] = {
    **dict.fromkeys(("replay", "project"), "core_cmds"),
    **dict.fromkeys(("op-corrupt-sig", "op-make-grant", "op-make-min", "op-make-orphan"), "optools_cmds"),
    **dict.fromkeys(("simulate", "vc-attach", "vc-mint-demo", "vc-status-set", "vc-verify"), "policy_cmds"),
    **dict.fromkeys(
        (
            "checkpoint-create",
            "checkpoint-list",
            "checkpoint-load",
            "op-append",
            "replay-from-store",
            "status",
            "trust-dump",
            "trust-issuer-publish",
            "trust-issuer-revoke",
            "trust-status-chunk",
            "verify-store",
        ),
        "store_cmds",
    ),
    **dict.fromkeys(("node", "inject-demo-ops"), "net_cmds"),
    "bench": "bench_cmds",
    "demo": "demo_cmds",
    **dict.fromkeys(
        (
            "audit-cat",
            "audit-export",
            "audit-record",
            "audit-verify-chain",
            "audit-verify-full",
            "op-append-audited",
        ),
        "audit_cmds",
    ),
    **dict.fromkeys(("grant-key", "keyrotate", "show"), "enc_cmds"),
    **dict.fromkeys(
        (
            "access",
            "explain",
            "get",
            "grant",
            "issuer",
            "key",
            "ops",
            "peers",
            "revoke",
            "status-list",
            "vc",
            "write",
        ),
        "access_cmds",
    ),
    "serve": "serve_cmds",
    "init": "init_cmds",
}

#: modules whose commands another module wraps: ``access_cmds``' ``write`` hands ``write data …``
#: to the reference's ``write`` that ``enc_cmds`` registers, so ``enc_cmds`` registers first
_LOAD_FIRST: Final[dict[str, tuple[str, ...]]] = {"access_cmds": ("enc_cmds",)}


class LazyGroup(click.Group):
    """A click group that imports a command's module when the command is first looked up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        mod = COMMAND_MODULES.get(cmd_name)
        if mod is not None:
            self._load(mod)
        return self.commands.get(cmd_name)

    def load_all(self) -> MutableMapping[str, click.Command]:
        """Register every command (for tools that walk ``commands``: docs and structure tests)."""
        for mod in sorted(set(COMMAND_MODULES.values())):
            self._load(mod)
        return self.commands

    def _load(self, mod: str) -> None:
        if mod in self._loaded:
            return
        for first in _LOAD_FIRST.get(mod, ()):
            self._load(first)
        self._loaded.add(mod)
        importlib.import_module(f"ecac.cli.{mod}").register(self)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ecac")
def cli() -> None:
    """ecac: Eventually Consistent Access Control (signed op log, deny-wins policy, CRDT state, sync)."""


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
