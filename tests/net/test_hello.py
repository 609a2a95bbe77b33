"""``ecac node --genesis FILE`` (``ecac.net.hello.import_genesis``) and a node's identity from its store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Data, make_op
from ecac.core.profile import genesis_op
from ecac.net.hello import identity_of, import_genesis
from ecac.store.rocks import Store

ADMIN = key_pair(5, b"net-hello/admin")
G = genesis_op(ADMIN, "p", [public_key(ADMIN)], Hlc(1, 0, 0))
OTHER = genesis_op(ADMIN, "other", [public_key(ADMIN)], Hlc(1, 0, 0))


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_genesis_seeds_an_empty_store_once(tmp_path: Path) -> None:
    gf = _file(tmp_path, "g", G.cbor)
    with Store.open(tmp_path / "db") as st:
        assert identity_of(st.profile)[0].profile == "reference"
        prof = import_genesis(st, gf)
        assert prof.genesis_id == G.op_id and st.op_count() == 1
        assert import_genesis(st, gf).genesis_id == G.op_id and st.op_count() == 1  # again: a no-op
        ident, live = identity_of(st.profile)
        assert ident.genesis_id == G.op_id and live is not None and public_key(ADMIN) in live.admins


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not cbor", "not a genesis op"),
        (make_op(ADMIN, (), Hlc(1, 0, 0), Data("mv:o:x", b"1")).cbor, "not a Genesis op"),
        (G.cbor + b"\x00", "not a genesis op"),
    ],
)
def test_a_file_that_is_no_genesis_is_refused_and_nothing_is_stored(
    tmp_path: Path, data: bytes, why: str
) -> None:
    with Store.open(tmp_path / "db") as st, pytest.raises(EcacError, match=why):
        import_genesis(st, _file(tmp_path, "g", data))
    with Store.open(tmp_path / "db") as st:
        assert st.op_count() == 0


def test_a_store_of_another_project_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db") as st:
        import_genesis(st, _file(tmp_path, "g", G.cbor))
        with pytest.raises(EcacError, match=f"store holds ops of strict project {G.op_id.hex()}"):
            import_genesis(st, _file(tmp_path, "o", OTHER.cbor))
        assert st.op_count() == 1
    with Store.open(tmp_path / "ref") as st:
        st.put(make_op(ADMIN, (), Hlc(1, 0, 0), Data("mv:o:x", b"1")))
        with pytest.raises(EcacError, match="a reference project"):
            import_genesis(st, _file(tmp_path, "g2", G.cbor))
        assert st.op_count() == 1
    with pytest.raises(EcacError, match="No such file"), Store.open(tmp_path / "db") as st:
        import_genesis(st, tmp_path / "missing")
