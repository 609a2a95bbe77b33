"""Core CLI commands: ``replay`` and ``project`` (store §3.3).

Both read an op file with the tolerant reader, admit ops (one ``rejected op <hex>:
<reason>`` line on stderr per op that fails verification; the rest is still replayed),
build the DAG and replay it in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from ecac.cli.common import echo_decisions, load_ops
from ecac.core.dag import Dag
from ecac.core.op import Op
from ecac.core.replay import replay_full
from ecac.core.state import State, project_field_json
from ecac.store.verifypool import VerifyPool


@dataclass(frozen=True, slots=True)
class FileReplay:
    """The result of replaying an op file: the DAG (and so the order), the state and its digest."""

    dag: Dag
    state: State
    digest: bytes

    @property
    def order(self) -> list[Op]:
        return self.dag.topo_order()


def replay_file(path: str) -> FileReplay:
    """Read, admit (rejections reported on stderr), insert and fully replay an op file."""
    ops = load_ops(path)
    dag = Dag()
    with VerifyPool() as pool:
        rejections = dag.admit_and_insert(ops, pool.verify)
    for rej in rejections:
        click.echo(str(rej), err=True)
    state, digest = replay_full(dag)
    return FileReplay(dag, state, digest)


@click.command("replay")
@click.argument("ops_file", metavar="OPS_FILE")
@click.option(
    "--explain",
    is_flag=True,
    help="First print one line per data op: '<op_id> <key> ALLOWED' or '<op_id> <key> DENIED <reason>'.",
)
def replay_cmd(ops_file: str, explain: bool) -> None:
    """Replay an op file: the state JSON, then digest=<hex>."""
    result = replay_file(ops_file)
    if explain:  # decision lines before the two usual lines, which stay unchanged
        echo_decisions(result.order)
    click.echo(result.state.to_json())
    click.echo(f"digest={result.digest.hex()}")


@click.command("project")
@click.argument("ops_file", metavar="OPS_FILE")
@click.argument("obj")
@click.argument("field")
def project_cmd(ops_file: str, obj: str, field: str) -> None:
    """Replay an op file and print one field's projection as JSON."""
    result = replay_file(ops_file)
    click.echo(project_field_json(result.state, obj, field))


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(replay_cmd)
    group.add_command(project_cmd)
