"""docs/cli.md and the command tree cannot drift: every command, long option and environment
variable of ``ecac`` is documented there, every documented command exists, and neither the
``--help`` texts nor the user-facing docs speak in internal milestone names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from ecac.cli import cli

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
#: milestone and spec-section names that mean nothing to a user ("M9", "E16", "§16.2")
JARGON = re.compile(r"\b[ME]\d{1,2}\b|§")


def commands() -> Iterator[tuple[str, click.Command]]:
    """Every command below the group, by its path (``key new``, ``write``), groups included."""

    def walk(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
        if path:
            yield " ".join(path), cmd
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, (*path, name))

    cli.load_all()  # type: ignore[attr-defined]  # the group loads command modules lazily
    yield from walk(cli, ())


LEAVES = {path: cmd for path, cmd in commands() if not isinstance(cmd, click.Group)}
ALL = dict(commands())


def long_options(cmd: click.Command) -> list[str]:
    return [
        o
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden
        for o in (*p.opts, *p.secondary_opts)
        if o.startswith("--") and o != "--help"
    ]


def doc_entries(text: str) -> Iterator[tuple[str, str]]:
    """``(synopsis, text)`` of each command entry: a ``### `ecac …` `` heading with its body, or
    a row of a table whose first column is ``Command``."""
    lines = text.splitlines()
    in_commands = False
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            in_commands = False
        elif line.startswith("| Command |"):
            in_commands = True
        m = re.match(r"#{2,4} `(?:ecac )?([^`]+)`", line)
        if m:
            body = [line]
            for nxt in lines[i + 1 :]:
                if nxt.startswith("#"):
                    break
                body.append(nxt)
            yield m.group(1), "\n".join(body)
            continue
        m = re.match(r"\| `(?:ecac )?([^`]+)` \|", line)
        if m and in_commands:
            yield m.group(1), line


def command_of(synopsis: str) -> str | None:
    """The longest prefix of the synopsis's words that names a command (``write data OBJ`` ->
    ``write``), or None."""
    words = synopsis.split()
    for n in range(len(words), 0, -1):
        path = " ".join(words[:n])
        if path in ALL:
            return path
    return None


def documented() -> dict[str, str]:
    """Each documented command's entries, joined."""
    out: dict[str, list[str]] = {}
    for synopsis, body in doc_entries(CLI_MD.read_text(encoding="utf-8")):
        name = command_of(synopsis)
        assert name is not None, f"docs/cli.md documents {synopsis.split()[0]!r}, which is not a command"
        out.setdefault(name, []).append(body)
    return {k: "\n".join(v) for k, v in out.items()}


def has_token(text: str, token: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


def test_the_tree_is_what_this_test_walks() -> None:
    # a sanity check of the walker itself: groups and their subcommands are both found
    assert {"key new", "key show", "issuer publish", "write", "node", "replay"} <= set(LEAVES)
    assert "--store-denied" in long_options(LEAVES["write"])
    assert "--exit-on-stdin-eof" not in long_options(LEAVES["node"])  # hidden: test plumbing


def test_every_command_and_long_option_is_in_docs_cli() -> None:
    docs = documented()
    missing_cmds = sorted(set(LEAVES) - set(docs))
    assert not missing_cmds, f"commands missing from docs/cli.md: {missing_cmds}"
    missing = {
        name: [o for o in long_options(cmd) if not has_token(docs[name], o)] for name, cmd in LEAVES.items()
    }
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"options missing from their command's entry in docs/cli.md: {missing}"


def test_every_environment_variable_is_in_the_table() -> None:
    text = CLI_MD.read_text(encoding="utf-8")
    table = text[text.index("## Environment variables") :]
    table = table[: table.index("\n## ", 1)]
    envvars = {
        e
        for cmd in LEAVES.values()
        for p in cmd.params
        if isinstance(p, click.Option) and p.envvar
        for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar)
    }
    # the variables the code reads itself (not through click)
    envvars |= {"ECAC_SUBJECT_SK_HEX", "ECAC_KEYADMIN_SK_HEX", "ECAC_NODE_SK_HEX", "ECAC_CONTROL_TOKEN"}
    missing = sorted(e for e in envvars if f"`{e}`" not in table)
    assert not missing, f"environment variables missing from docs/cli.md's table: {missing}"


def test_help_texts_have_no_milestone_jargon() -> None:
    found = []
    # under the group's own context, as `ecac … --help` builds it: click caches each command's help
    # option with the names of the first context that asks, and a bare Context would fix them at
    # ``--help`` alone for every later test in this process (test_auditlog checks ``-h, --help``)
    top = click.Context(cli, info_name="ecac", **cli.context_settings)
    for name, cmd in commands():
        ctx = click.Context(cmd, info_name=f"ecac {name}", parent=top)
        for line in cmd.get_help(ctx).splitlines():
            if JARGON.search(line):
                found.append(f"{name}: {line.strip()}")
    assert not found, "internal names in --help:\n" + "\n".join(found)


def test_user_docs_have_no_milestone_jargon() -> None:
    for path in (README, CLI_MD):
        bad = [
            f"{path.name}:{i}: {line}"
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if JARGON.search(line)
        ]
        assert not bad, "\n".join(bad)
