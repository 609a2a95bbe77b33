"""``ecac init``: create a project with its security profile (docs/security.md, "Strict profile").

``--profile reference`` creates an empty store: the reference's rules, byte-identical logs, no
trust root. ``--profile strict`` signs the project's Genesis op (its admins are the public keys
of the ``--admin-key`` files; the first one signs) and puts it into a new store (``--db``) or
writes it to a file (``--out``) from which other replicas are seeded (``ecac op-append``). The
profile is then fixed: every op of the project must descend from that genesis. Not a
subcommand of ``project``, which is the reference's projection command.
"""

from __future__ import annotations

from pathlib import Path

import click

from ecac.cli.common import wall_clock_ms
from ecac.cli.dbopt import db_option, open_store
from ecac.cli.keyfile import create_private_file, read_key_file
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import public_key
from ecac.core.profile import PROFILES, STRICT, genesis_op


def _project_name(project: str | None, db: Path | None, out: Path | None) -> str:
    if project is not None:
        if not project.strip():
            raise EcacError("--project: the project name must not be empty")
        return project
    where = db if db is not None else out
    assert where is not None
    return where.resolve().stem or "ecac"


@click.command("init")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    required=True,
    help="reference: the reference's rules (anyone may publish policy ops); strict: a genesis op "
    "with a trust root, causal deny-wins and HLC checks.",
)
@click.option(
    "--admin-key",
    "admin_keys",
    multiple=True,
    metavar="FILE",
    type=click.Path(path_type=Path),
    help="Key file of a project admin (repeatable; strict needs at least one; the first signs the genesis).",
)
@click.option(
    "--project",
    default=None,
    metavar="NAME",
    help="Project name in the genesis (default: the file or directory name).",
)
@db_option("Create the project's store in this directory (must not exist or be empty).")
@click.option(
    "--out",
    default=None,
    metavar="GENESIS",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the signed genesis op (CBOR) to this new file instead (strict only).",
)
def init_cmd(
    profile: str, admin_keys: tuple[Path, ...], project: str | None, db: Path | None, out: Path | None
) -> None:
    """Create a project: an empty reference store, or a strict project's signed genesis."""
    if (db is None) == (out is None):
        raise click.UsageError("give exactly one of --db DIR or --out GENESIS")
    if profile != STRICT:
        if out is not None:
            raise click.UsageError(
                "--out GENESIS is for --profile strict (a reference project has no genesis)"
            )
        if admin_keys:
            raise click.UsageError(
                "--admin-key is for --profile strict (the reference profile has no trust root)"
            )
        assert db is not None
        if db.exists() and any(db.iterdir()):
            raise EcacError(f"{db} is not empty; `ecac init` creates a new project")
        with open_store(db, create=True):
            pass
        click.echo(f"initialised reference project store {db}")
        return
    if not admin_keys:
        raise click.UsageError("--profile strict needs at least one --admin-key FILE")
    keys = [read_key_file(p)[0] for p in admin_keys]
    admins = [public_key(sk) for sk in keys]
    op = genesis_op(keys[0], _project_name(project, db, out), admins, Hlc(wall_clock_ms(), 0, 1))
    if out is not None:
        if out.exists():
            raise EcacError(f"{out} exists; not overwriting a genesis")
        create_private_file(out, op.cbor, "genesis file")
        where = str(out)
    else:
        assert db is not None
        if db.exists() and any(db.iterdir()):
            raise EcacError(f"{db} is not empty; `ecac init` creates a new project")
        with open_store(db, create=True) as st:
            st.put(op)
        where = f"store {db}"
    click.echo(f"initialised strict project {op.payload.project!r} in {where}")  # type: ignore[union-attr]
    click.echo(f"genesis {op.op_id.hex()}")
    for a in sorted(set(admins)):
        click.echo(f"admin {a.hex()}")


def register(group: click.Group) -> None:
    group.add_command(init_cmd)
