"""Running ``ecac`` in-process for CLI tests: ``main`` as the console script runs it, its exit code
and captured output (the ``ecac`` fixture of ``tests/cli/conftest.py`` builds on this)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ecac.cli import main

#: the environment variables any ecac command reads: cleared for every test
ENV_VARS = (
    "ECAC_DB",
    "ECAC_NODE",
    "ECAC_CONTROL_TOKEN",
    "ECAC_KEY_FILE",
    "ECAC_SUBJECT_SK_HEX",
    "ECAC_KEYADMIN_SK_HEX",
    "ECAC_NODE_SK_HEX",
)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Ecac = Callable[..., Run]


def runner(capsys: pytest.CaptureFixture[str]) -> Ecac:
    """``run(*args)`` → Run: ``main(args)`` with its SystemExit turned into the exit code."""

    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        else:  # pragma: no cover - main always exits
            code = 0
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def ok(r: Run) -> Run:
    assert r.code == 0, (r.out, r.err)
    return r
