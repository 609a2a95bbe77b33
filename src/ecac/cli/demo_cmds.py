"""``ecac demo``: the user-facing tour of the network (what ``make demo`` runs); see ``ecac.net.demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--nodes", type=click.IntRange(2, 8), default=3, show_default=True, help="Nodes, linked in a line A—B—C…"
)
@click.option(
    "--ops",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Demo ops per write (each node before linking; both sides during the partition).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Put the node stores and logs here (an empty or new directory; kept). Default: a temp dir.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary workdir (stores and logs) after the run.")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds each convergence may take before the demo fails (exit 1).",
)
def demo_cmd(nodes: int, ops: int, workdir: Path | None, keep: bool, timeout: float) -> None:
    """Run real nodes on 127.0.0.1: write, link, converge, partition, write on both sides, heal.

    Every node is an `ecac node` process with its own RocksDB store. The last line is
    `converged: N nodes, <ops> ops, digest <hex16>, heal→converged <ms> ms`.
    """
    from rich.console import Console

    from ecac.net.demo import DemoOptions, run_demo

    console = Console(emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    result = run_demo(DemoOptions(nodes, ops, workdir, keep, timeout), console)
    click.echo(
        f"converged: {result.nodes} nodes, {result.ops} ops, digest {result.digest[:16]}, "
        f"heal→converged {result.heal_ms:.0f} ms"
    )


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(demo_cmd)
