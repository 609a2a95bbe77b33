"""``--db DIR`` done safely: the option (``ECAC_DB`` fallback) and the check that a directory
is an ecac store before RocksDB is let loose on it.

RocksDB creates a database in whatever directory it is given, so ``--db /`` or ``--db ~``
would scatter ``CURRENT``, ``LOCK``, ``*.log`` and ``MANIFEST-*`` files among the user's
own. ``check_store_dir`` refuses an existing non-empty directory that holds neither a RocksDB
database (``CURRENT``) nor only the files a store or node leaves while it is being set up.
Whether the database inside really is an ecac store (schema ``ecac:v1``) is checked by
``Store.open`` itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ecac.core.errors import EcacError
from ecac.store.rocks import Store

DB_ENV = "ECAC_DB"

#: what may be in a store directory before its RocksDB ``CURRENT`` exists: RocksDB's own files
#: of an interrupted create, and the files ecac keeps beside the database
_SETUP_NAMES = (
    "LOCK",
    "LOG",
    "LOG.old.*",
    "IDENTITY",
    "OPTIONS-*",
    "MANIFEST-*",
    "*.log",
    "*.sst",
    "*.dbtmp",
)
_ECAC_NAMES = ("node_key", "control.token", "audit")


def _is_setup_leftover(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in (*_SETUP_NAMES, *_ECAC_NAMES))


def check_store_dir(path: Path, *, create: bool) -> None:
    """Refuse a ``--db`` that is not (or cannot become) an ecac store, with a one-line reason.

    * a path that exists and is not a directory: refused;
    * a directory with a RocksDB ``CURRENT`` file: accepted (``Store.open`` checks the schema);
    * a missing or empty directory: accepted when the command creates stores (``create``),
      else ``store <path> does not exist``;
    * any other non-empty directory: refused, nothing is written there.
    """
    if not path.exists():
        if path.is_symlink():
            raise EcacError(f"store {path} is a dangling symbolic link")
        if not create:
            raise EcacError(f"store {path} does not exist")
        return
    if not path.is_dir():
        raise EcacError(f"--db {path} is not a directory")
    if (path / "CURRENT").is_file():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise EcacError(f"--db {path}: cannot list the directory: {e.strerror or e}") from None
    if not names and not create:
        raise EcacError(f"store {path} does not exist")
    foreign = [n for n in names if not _is_setup_leftover(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise EcacError(
            f"--db {path} is not an ecac store (a non-empty directory without a RocksDB database: {shown}); "
            "give a new or empty directory, or an existing store"
        )
    if not create:
        raise EcacError(f"store {path} does not exist")


@contextmanager
def open_store(db: Path, *, create: bool, read_only: bool = False) -> Iterator[Store]:
    """``check_store_dir``, then the store for one command (created only with ``create``), always closed.

    The same as ``common.opened`` plus the check; this module imports nothing from
    ``ecac.cli`` so that ``common.opened`` can call ``check_store_dir`` itself.
    """
    check_store_dir(db, create=create)
    st = Store.open(db, create_if_missing=create and not read_only, read_only=read_only)
    try:
        yield st
    finally:
        st.close()


def db_option(
    help_text: str = "Store directory (env ECAC_DB).",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db/-d DIR`` with the ``ECAC_DB`` fallback and no default, as the ``db`` parameter.

    No default, because these commands will also take ``--node URL`` (a running node) and
    must not silently pick ``.ecac.db`` then; ``require_db`` turns a missing one into a usage
    error.
    """
    return click.option(
        "--db",
        "-d",
        "db",
        envvar=DB_ENV,
        default=None,
        metavar="DIR",
        type=click.Path(path_type=Path),
        help=help_text,
    )


def require_db(db: Path | None) -> Path:
    """``db``, or a usage error (exit 2) naming both ways to give it."""
    if db is None:
        raise click.UsageError(f"no store: give --db DIR (or set {DB_ENV})")
    return db
