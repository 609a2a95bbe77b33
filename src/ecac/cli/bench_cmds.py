"""``ecac bench``: run one registered benchmark scenario and print its numbers (store §3.4).

Human output is a table; with ``--json`` the result is also printed as one JSON object on
the last stdout line, for scripts. ``--list`` shows every scenario of ``ecac.bench``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecac.bench import BenchParams, load_all
from ecac.core.errors import EcacError

NET_UNSUPPORTED = (
    "--net is not supported in this drop. Run local scenarios (hb-chain | concurrent) without --net."
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column(headers[0])
    table.add_column(headers[1], overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console = Console(emoji=False, markup=False, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # full digests on one line in logs
    console.print(table)


def stderr_console() -> Console:
    """The console of the progress bar (a function, so tests can hand in a terminal)."""
    return Console(stderr=True)


@contextmanager
def progress(label: str) -> Iterator[None]:
    """A transient progress bar (spinner, pulsing bar, elapsed time) on stderr while a scenario
    runs, only when stderr is a terminal: logs, pipes and stdout (table, JSON line) stay as they were."""
    console = stderr_console()
    if not console.is_terminal:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        bar.add_task(label, total=None)
        yield


@click.command("bench")
@click.option("--scenario", default="hb-chain", show_default=True, help="Scenario name (see --list).")
@click.option("--ops", type=click.IntRange(min=0), default=100, show_default=True, help="Number of ops.")
@click.option(
    "--seed", type=click.IntRange(0, 2**64 - 1), default=1, show_default=True, help="Workload seed."
)
@click.option("--peers", type=click.IntRange(min=1), default=1, show_default=True, help="Writers / peers.")
@click.option(
    "--nodes", type=click.IntRange(min=1), default=2, show_default=True, help="Nodes (sync scenarios)."
)
@click.option(
    "--topology",
    type=click.Choice(["line", "star", "random"]),
    default="line",
    show_default=True,
    help="How the nodes are linked (mesh and sim scenarios).",
)
@click.option(
    "--diff",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Ops differing between the two stores (reconcile scenario).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Incremental tail length (0: 10% of the ops).",
)
@click.option(
    "--no-reconcile",
    "no_reconcile",
    is_flag=True,
    help="Sim scenario: no set reconciliation (/ecac/reconcile/1), only the announce/heads/bloom path.",
)
@click.option(
    "--link-delay-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Mesh scenario: every link through a userspace proxy (ecac.bench.linkproxy, not netem) "
    "with this one-way delay per chunk; 0: the proxy alone.",
)
@click.option(
    "--link-loss",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Mesh scenario: TCP segment loss of every proxied link (0.01 = 1 %; a loss holds 200 ms).",
)
@click.option(
    "--partition-s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Mesh scenario (line or star): after the join cut the middle link this long while both of its "
    "nodes write, then restore it and time the heal (links through the proxy).",
)
@click.option("--json", "as_json", is_flag=True, help="Also print the result as one JSON line (last line).")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--net", is_flag=True, help="Networked run (not supported; kept for compatibility).")
@click.option("--partition", metavar="PATH", default=None, help="Accepted and ignored (compatibility).")
def bench_cmd(
    scenario: str,
    ops: int,
    seed: int,
    peers: int,
    nodes: int,
    topology: str,
    diff: int,
    checkpoint_every: int,
    no_reconcile: bool,
    link_delay_ms: float | None,
    link_loss: float,
    partition_s: float,
    as_json: bool,
    list_only: bool,
    net: bool,
    partition: str | None,
) -> None:
    """Run a benchmark scenario and print its measurements."""
    scenarios = load_all()
    if list_only:
        print_table(
            "ecac bench scenarios",
            ("scenario", "description"),
            [(name, scenarios[name][1]) for name in sorted(scenarios)],
        )
        return
    if net:
        raise EcacError(NET_UNSUPPORTED)
    if scenario not in scenarios:
        raise EcacError(f"unsupported scenario '{scenario}'. Supported: {', '.join(sorted(scenarios))}")
    params = BenchParams(
        scenario,
        ops,
        seed,
        peers,
        nodes,
        checkpoint_every,
        topology=topology,
        diff=diff,
        reconcile=not no_reconcile,
        link_delay_ms=link_delay_ms,
        link_loss=link_loss,
        partition_s=partition_s,
    )
    with progress(f"bench {scenario}: {ops:,} ops"):
        result = scenarios[scenario][0](params)
    print_table(f"ecac bench {scenario}", ("metric", "value"), [(k, _fmt(v)) for k, v in result.items()])
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(bench_cmd)
