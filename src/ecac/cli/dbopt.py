"""``--db DIR`` done safely: the one ``--db/-d`` option of every store command (``ECAC_DB``
fallback) and the open that first runs ``ecac.store.rocks.check_store_dir``.

RocksDB creates a database in whatever directory it is given, so ``--db /`` or ``--db ~``
would scatter ``CURRENT``, ``LOCK``, ``*.log`` and ``MANIFEST-*`` files among the user's
own. ``check_store_dir`` (shared with ``ecac node``) refuses an existing non-empty directory
that holds neither a RocksDB database (``CURRENT``) nor only the files a store or node leaves
while it is being set up. Whether the database inside really is an ecac store (schema
``ecac:v1``) is checked by ``Store.open`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ecac.core.errors import StoreError

if TYPE_CHECKING:  # imported when a store is opened: commands that talk to a node never load RocksDB
    from ecac.store.rocks import Store

DB_ENV = "ECAC_DB"


@contextmanager
def open_store(db: Path, *, create: bool, read_only: bool = False) -> Iterator[Store]:
    """``check_store_dir``, then the store for one command (created only with ``create``), always closed.

    ``common.opened`` is this with the ``must_exist``/``read_only`` flags of the reference's
    commands. A store locked by a running node (its ``control.token`` is there) says to go
    through the node instead.
    """
    from ecac.store.rocks import Store, check_store_dir

    check_store_dir(db, create=create)
    try:
        st = Store.open(db, create_if_missing=create and not read_only, read_only=read_only)
    except StoreError as e:
        if "locked" in str(e) and (db / "control.token").exists():
            raise StoreError(
                f"{e} (a running node? go through it: --node URL, its --control address)"
            ) from None
        raise
    try:
        yield st
    finally:
        st.close()


def db_option(
    help_text: str = "Store directory (env ECAC_DB).", default: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db/-d DIR`` with the ``ECAC_DB`` fallback, as the ``db`` parameter: the one ``--db``
    of every store command.

    No default unless given (the reference's "store by env" commands default to ``.ecac.db``),
    because most commands also take ``--node URL`` (a running node) and must not silently
    pick ``.ecac.db`` then; ``require_db`` turns a missing one into a usage error.
    """
    return click.option(
        "--db",
        "-d",
        "db",
        envvar=DB_ENV,
        default=default,
        show_default=default is not None,
        metavar="DIR",
        type=click.Path(path_type=Path),
        help=help_text,
    )


def require_db(db: Path | None) -> Path:
    """``db``, or a usage error (exit 2) naming both ways to give it."""
    if db is None:
        raise click.UsageError(f"no store: give --db DIR (or set {DB_ENV})")
    return db
