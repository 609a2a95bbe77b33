"""The lazy command table of ``ecac.cli`` matches what the command modules register, and a
command that talks to a node does not load the store."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from ecac.cli import COMMAND_MODULES, cli


def test_table_matches_what_each_module_registers() -> None:
    registered: dict[str, str] = {}
    group = click.Group()
    for mod in ("enc_cmds", *sorted(set(COMMAND_MODULES.values()) - {"enc_cmds"})):
        before = {n: c for n, c in group.commands.items()}
        importlib.import_module(f"ecac.cli.{mod}").register(group)
        for name, cmd in group.commands.items():
            if before.get(name) is not cmd:
                registered[name] = mod
    assert registered == COMMAND_MODULES


def test_load_all_registers_every_command_once() -> None:
    commands = cli.load_all()  # type: ignore[attr-defined]
    assert sorted(commands) == sorted(COMMAND_MODULES)
    # access_cmds' `write` wraps the reference's `write data` of enc_cmds, whatever loaded first
    assert getattr(commands["write"], "ecac_legacy", None) is not None


def test_a_node_command_does_not_import_the_store() -> None:
    code = (
        "import sys; from ecac.cli import cli; cli.get_command(None, 'write'); cli.get_command(None, 'key');"
        "print('ecac.store.rocks' in sys.modules, 'rocksdict' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
