"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.clirun import ENV_VARS, Ecac, runner


@pytest.fixture
def ecac(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Ecac:
    """``ecac(*args)`` → Run, in-process through ``main`` in ``tmp_path`` with a clean environment."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return runner(capsys)
