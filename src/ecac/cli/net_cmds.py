"""CLI commands of one area (see ecac.cli)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
