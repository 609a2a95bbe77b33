"""Red-team fixtures and the report plugin.

Tests marked ``redteam`` are the full attacks: they run only when selected with ``-m redteam``
(``make redteam``), not in ``make test``; unmarked tests here (fast variants) run everywhere.
At the end of the session one line per attack is printed (``harness.Figures.line``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import FIGURES, RedTeam


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "redteam" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a full red-team attack: run `make redteam` (pytest -m redteam)")
    for item in items:
        if item.get_closest_marker("redteam") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("red-team figures")
    for f in FIGURES:
        terminalreporter.write_line(f.line())


@pytest.fixture
def redteam(tmp_path: Path) -> Iterator[RedTeam]:
    rt = RedTeam(tmp_path)
    try:
        yield rt
    finally:
        rt.cleanup()
