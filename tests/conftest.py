"""Shared fixtures: the specification's test vectors.

The spec folder is ``$ECAC_SPEC_DIR`` (default ``<repo>/../shared/spec``); the vectors are
its ``vectors/`` folder (``$ECAC_VECTORS`` overrides that directly). A missing folder is a
test failure, not a skip: the vectors are the compatibility contract.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ecac.core.op import Op
from ecac.core.opcodec import read_log

REPO = Path(__file__).resolve().parents[1]


def spec_dir() -> Path:
    return Path(os.environ.get("ECAC_SPEC_DIR", REPO.parent / "shared" / "spec"))


def vectors_dir() -> Path:
    return Path(os.environ.get("ECAC_VECTORS", spec_dir() / "vectors"))


@dataclass(frozen=True)
class Vectors:
    dir: Path
    expected: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.dir / name

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def ops(self, name: str) -> list[Op]:
        """The ops of a fixture log file, decoded by the tolerant reader (not verified)."""
        return read_log(self.read(name), name)

    @property
    def op_logs(self) -> dict[str, Any]:
        return self.expected["op_logs"]


@pytest.fixture(scope="session")
def vectors() -> Vectors:
    d = vectors_dir()
    exp = d / "expected.json"
    if not exp.is_file():
        pytest.fail(f"spec vectors not found at {d}; set ECAC_SPEC_DIR (or ECAC_VECTORS)")
    return Vectors(d, json.loads(exp.read_text(encoding="utf-8")))


def cli_run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the ``ecac`` command in-process (click's runner); exceptions are caught into the result."""
    from ecac.cli import cli

    return CliRunner().invoke(cli, list(args), env=env)


def cli_ok(*args: str, env: dict[str, str] | None = None) -> Result:
    """``cli_run`` that must succeed (exit 0, no exception)."""
    r = cli_run(*args, env=env)
    assert r.exception is None, (r.exception, r.stderr)
    assert r.exit_code == 0
    return r
