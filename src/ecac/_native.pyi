"""Types of ``ecac._native``, the project's one C module (see ``_native.c`` for the contracts)."""

from collections.abc import Iterable
from typing import Protocol, TypeVar

from ecac.core.hlc import Hlc
from ecac.core.op import Data, Op, Payload

class _EdgeRow(Protocol):
    """An ``edges`` row as ``scan``/``skeletons`` read it (``ecac.store.rows.EdgeVal``)."""

    @property
    def parents(self) -> tuple[bytes, ...]: ...
    @property
    def author_pk(self) -> bytes: ...
    @property
    def hlc_ms(self) -> int: ...
    @property
    def hlc_logical(self) -> int: ...
    @property
    def hlc_node(self) -> int: ...

_E = TypeVar("_E", bound=_EdgeRow)
#: a DAG node (``ecac.core.dag._Node``): opaque here, built and linked by ``extend_chains``
_N = TypeVar("_N")

def configure_ops(
    op_type: type[Op],
    hlc_type: type[Hlc],
    data_type: type[Data],
    /,
) -> None:
    """The slots classes the decoders build (``scan`` interns Data keys through a per-call table)."""

def configure_edges(edge_type: type[_EdgeRow], /) -> None:
    """The ``edges``-row class ``scan`` and ``skeletons`` read (slots: parents, author_pk, hlc_*)."""

def configure_dag(node_type: type[object], /) -> None:
    """The DAG node class ``extend_chains`` builds (its ten object slots)."""

def scan(
    rows: Iterable[tuple[bytes, bytes | None]],
    edges: dict[bytes, _E],
    positions: dict[bytes, int],
    out: list[Op | None],
    /,
) -> tuple[int, list[tuple[bytes, bytes | None]]]:
    """Decode canonical Data rows into ``out[positions[op_id]]``: ``(placed, rest)``, rest in scan order."""

def skeletons(
    ids: list[bytes], edges: dict[bytes, _E], payload: Payload, sig: bytes, cbor: bytes, /
) -> list[Op]:
    """An Op per id with the header fields of ``edges[id]`` and the given payload, sig and cbor."""

def extend_chains(
    ops: list[Op],
    start: int,
    nodes: dict[bytes, _N],
    chains: list[list[_N]],
    order: list[Op] | None,
    unplaced: int,
    /,
) -> int:
    """Bulk chain extension of ``ecac.core.dag``; the index of the first op left to the caller."""

def verify_batch(items: Iterable[tuple[bytes, bytes, bytes]], /) -> list[bool]:
    """Strict Ed25519 (libsodium) of each ``(public_key, signature, message)``, GIL released.

    libsodium is resolved on the first call (from the copy PyNaCl loaded), not at import.
    """

def cbor_extent(
    data: bytes | bytearray | memoryview, pos: int, max_depth: int, max_cost: int, /
) -> tuple[int, int, int]:
    """``(end, items, cost)`` of the CBOR item at ``pos`` (``ecac.core.codec.cbor_extent``), GIL released.

    ValueError naming the byte for malformed or truncated input, a declared length beyond the input,
    nesting deeper than ``max_depth``, a tag, or an estimated decoded size above ``max_cost``.
    """
