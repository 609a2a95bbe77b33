"""The durable op store: RocksDB (rocksdict, raw mode) with the reference's eight column families.

Layouts are byte-exact with the reference (store §1.2): ``ops`` holds each op's canonical
CBOR, ``edges`` an ``EdgeVal``, ``by_author`` an 80-byte index key, plus VC caches,
checkpoints, the keyring and ``meta``. Every write is one atomic, synced ``WriteBatch``;
``put_many`` writes all accepted ops of a call in one batch (one fdatasync).

On open the ``edges`` rows are streamed into an ``OpIndex``, so membership, heads, the
total order and the recent bloom are answered from memory. Each op is verified once, at
ingest; replay from the store and ``verify_integrity`` do not re-check signatures unless
asked (README (c).6). See docs/storage.md for layouts, the resume-record key and the
crash-safety argument.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from ecac import _native
from ecac.core.audit import Checkpoint as AuditCheckpoint
from ecac.core.codec import (
    b2l,
    dumps,
    encode_uint,
    loads,
    struct_fields,
    to_bytes,
    to_u32,
    to_u64,
    uint8_items,
)
from ecac.core.dag import Dag
from ecac.core.errors import DecodeError, EcacError, StoreError
from ecac.core.op import Data, Op, header_cbor_of, op_id_of, slot_constructor
from ecac.core.opcodec import _ID_HEAD, _K_AUTHOR, _K_HEADER, _K_HLC, _K_PAYLOAD, decode_op
from ecac.core.opindex import OpIndex, SortKey
from ecac.core.policy import has_policy
from ecac.core.replay import Replayer, ResumePoint, replay_full, suffix_keeps_verdicts
from ecac.core.replay import order_hash as replay_order_hash
from ecac.core.sig import SigCheck, check_sigs, submit_sigs
from ecac.core.state import State
from ecac.store.auditlog import AuditWriter, store_writer
from ecac.store.memory import IndexedOpStore, OpStore

#: the eight column families, in the reference's order (store §1.2)
CF_NAMES = ("ops", "edges", "by_author", "vc_raw", "vc_verified", "checkpoints", "keys", "meta")
SCHEMA_VERSION = b"ecac:v1"
META_SCHEMA = b"schema_version"
META_UUID = b"db_uuid"
META_LAST_CHECKPOINT = b"last_checkpoint_id"
META_TOPO_WATERMARK = b"topo_watermark"
#: this implementation's checkpoint resume records: ``resume/<16 hex digits of the id>``
META_RESUME_PREFIX = b"resume/"
CRASH_ENV = "ECAC_CRASH_AFTER_WRITE"
_READ_CHUNK = 1024
_SCAN_MIN = 4096  # fewer ids than this: point reads even when they are most of the store


# --------------------------------------------------------------------------- row layouts


@dataclass(frozen=True, slots=True)
class EdgeVal:
    """The ``edges`` value: parents, author and HLC of an op (store §1.2)."""

    parents: tuple[bytes, ...]
    author_pk: bytes
    hlc_ms: int
    hlc_logical: int
    hlc_node: int

    @classmethod
    def of(cls, op: Op) -> EdgeVal:
        h = op.hlc
        return cls(op.parents, op.author_pk, h.physical_ms, h.logical, h.node_id)

    def encode(self) -> bytes:
        return dumps(
            {
                "parents": [b2l(p) for p in self.parents],
                "author_pk": b2l(self.author_pk),
                "hlc_ms": self.hlc_ms,
                "hlc_logical": self.hlc_logical,
                "hlc_node": self.hlc_node,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> EdgeVal:
        f = struct_fields(
            loads(data, "EdgeVal"), ("parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node"), "EdgeVal"
        )
        if not isinstance(f[0], list):
            raise DecodeError("EdgeVal.parents: expected an array")
        return cls(
            tuple(to_bytes(p, "EdgeVal.parents[]", 32) for p in f[0]),
            to_bytes(f[1], "EdgeVal.author_pk", 32),
            to_u64(f[2], "EdgeVal.hlc_ms"),
            to_u32(f[3], "EdgeVal.hlc_logical"),
            to_u32(f[4], "EdgeVal.hlc_node"),
        )


_EDGE_KEYS = ["parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node"]


def decode_edge_fast(data: bytes) -> EdgeVal:
    """``EdgeVal.decode`` for the open path, parsing the canonical layout straight from the bytes.

    A row in the layout ``edge_bytes`` writes (every row ``put`` writes) is parsed by
    ``_edge_canonical`` with C-level bytes methods (about 3x cheaper than a CBOR decode);
    any other row goes through ``_edge_cbor``, which accepts only what both the strict
    decoder and the reference's field order accept. Either way the values are the ones a
    CBOR decoder reads from ``data``; ``verify_integrity`` still compares every row
    strictly with its op.
    """
    e = _edge_canonical(data) if type(data) is bytes else None
    return e if e is not None else _edge_cbor(data)


#: canonical uint items: below 2**32 (u32 fields) and below 2**64 (u64), shortest form only
_EDGE_U32 = (
    rb"([\x00-\x17]|\x18[\x18-\xff]|\x19[\x01-\xff][\x00-\xff]"
    rb"|\x1a(?:[\x01-\xff][\x00-\xff]{3}|\x00[\x01-\xff][\x00-\xff]{2}))"
)
_EDGE_U64 = _EDGE_U32[:-1] + (
    rb"|\x1b(?:[\x01-\xff][\x00-\xff]{7}|\x00[\x01-\xff][\x00-\xff]{6}"
    rb"|\x00\x00[\x01-\xff][\x00-\xff]{5}|\x00\x00\x00[\x01-\xff][\x00-\xff]{4}))"
)
#: an edge row from its ``hlc_ms`` key to its end (``edge_bytes``' ``_K_EDGE_MS``/``_LOGICAL``/``_NODE``)
_EDGE_TAIL = re.compile(
    rb"\x66hlc_ms" + _EDGE_U64 + rb"\x6bhlc_logical" + _EDGE_U32 + rb"\x68hlc_node" + _EDGE_U32
)
#: a canonical uint item's value is its big-endian bytes less the head's bits (by item length)
_EDGE_UINT_BIAS = (0, 0, 0x18 << 8, 0x19 << 16, 0, 0x1A << 32, 0, 0, 0, 0x1B << 64)
_from_bytes = int.from_bytes  # big-endian by default
#: author_pk items -> the key: a log has few authors (cleared when full)
_EDGE_AUTHORS: dict[bytes, bytes] = {}
_EDGE_AUTHORS_MAX = 4096


def _edge_canonical(data: bytes) -> EdgeVal | None:
    """The ``EdgeVal`` of a row in exactly ``edge_bytes``' layout, else None.

    Every byte is checked: the fixed keys, the parents' array head, each id as its 0x98 0x20
    head and 32 canonical uint items (``uint8_items``), the shortest-form uints to the end of
    the row. Canonical items never contain that head or a key's bytes (a byte >= 0x18 only
    follows the 0x18 prefix), so the searches below find the real boundaries.
    """
    a = data.find(_K_AUTHOR, 10)  # the author_pk key and its id head
    m = data.find(_K_EDGE_MS, a + len(_K_AUTHOR))
    if m < 0 or a < 0 or not data.startswith(_K_EDGE_PARENTS):
        return None
    items = data[a + len(_K_AUTHOR) : m]
    pk = _EDGE_AUTHORS.get(items)
    if pk is None:
        pk = uint8_items(items)
        if pk is None or len(pk) != 32:
            return None
        if len(_EDGE_AUTHORS) >= _EDGE_AUTHORS_MAX:
            _EDGE_AUTHORS.clear()
        _EDGE_AUTHORS[items] = pk
    t = _EDGE_TAIL.fullmatch(data, m)
    if t is None:
        return None
    n = data[9] - 0x80  # the parents' array head (up to 23 parents here)
    if n == 1:
        p = uint8_items(data[12:a]) if data.startswith(_ID_HEAD, 10) else None
        if p is None or len(p) != 32:
            return None
        ps: tuple[bytes, ...] = (p,)
    elif n == 0:
        if a != 10:
            return None
        ps = ()
    elif 1 < n < 24:
        runs = data[10:a].split(_ID_HEAD)
        if len(runs) != n + 1 or runs[0]:
            return None
        ps = ()
        for r in runs[1:]:
            p = uint8_items(r)
            if p is None or len(p) != 32:
                return None
            ps += (p,)
    else:
        return None
    ms, lg, nd = t.groups()
    bias = _EDGE_UINT_BIAS
    return _build_edge(
        ps,
        pk,
        _from_bytes(ms) - bias[len(ms)],
        _from_bytes(lg) - bias[len(lg)],
        _from_bytes(nd) - bias[len(nd)],
    )


def _edge_cbor(data: bytes) -> EdgeVal:
    """A row not in the canonical layout: the strict decoder's checks plus the reference's field order."""
    obj = loads(data, "EdgeVal")
    if type(obj) is not dict or list(obj) != _EDGE_KEYS:
        raise DecodeError("EdgeVal: unexpected keys")
    return EdgeVal.decode(data)


def by_author_key(op: Op) -> bytes:
    """``author_pk ‖ hlc_ms BE8 ‖ logical BE4 ‖ node BE4 ‖ op_id`` (80 bytes)."""
    h = op.hlc
    return (
        op.author_pk
        + h.physical_ms.to_bytes(8, "big")
        + h.logical.to_bytes(4, "big")
        + h.node_id.to_bytes(4, "big")
        + op.op_id
    )


def keyring_key(tag: str, version: int) -> bytes:
    """``len(tag) ‖ tag ‖ version BE4``; tags longer than 255 UTF-8 bytes are refused."""
    t = tag.encode("utf-8")
    if len(t) > 255:
        raise StoreError(f"tag {tag!r} is longer than 255 bytes")
    if not 0 <= version < 2**32:
        raise StoreError(f"key version {version} out of u32 range")
    return bytes([len(t)]) + t + version.to_bytes(4, "big")


def checkpoint_key(checkpoint_id: int) -> bytes:
    return checkpoint_id.to_bytes(8, "big")


def resume_key(checkpoint_id: int) -> bytes:
    return META_RESUME_PREFIX + f"{checkpoint_id:016x}".encode()


@dataclass(frozen=True, slots=True)
class CheckpointBlob:
    """``{topo_idx, state_digest, state_cbor}`` (core §10.4); ``state_cbor`` as an int array."""

    topo_idx: int
    state_digest: bytes
    state_cbor: bytes

    def encode(self) -> bytes:
        return dumps(
            {
                "topo_idx": self.topo_idx,
                "state_digest": b2l(self.state_digest),
                "state_cbor": b2l(self.state_cbor),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> CheckpointBlob:
        f = struct_fields(loads(data, "checkpoint"), ("topo_idx", "state_digest", "state_cbor"), "checkpoint")
        return cls(
            to_u64(f[0], "checkpoint.topo_idx"),
            to_bytes(f[1], "checkpoint.state_digest", 32),
            to_bytes(f[2], "checkpoint.state_cbor"),
        )


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """What core §8.4 needs to decide whether a checkpoint may be resumed from (store §1.9).

    ``k = len(P)`` for the order ``P`` that produced the state, ``order_hash`` = BLAKE3 of
    P's concatenated op ids, ``has_policy`` = P contains a Grant or Revoke, and
    ``non_data`` = the ids of P's ops whose payload is not ``Data`` (ascending), so that a
    resumed replay decodes only those of the prefix (policy needs them; Data ops before
    ``k`` are never read again). Stored in ``meta`` under ``resume/<id as 16 hex digits>``
    as CBOR ``{"k": u64, "order_hash": [32 ints], "has_policy": bool, "non_data": [[32 ints]…]}``.
    """

    k: int
    order_hash: bytes
    has_policy: bool
    non_data: tuple[bytes, ...]

    @classmethod
    def of_order(cls, order: Sequence[Op]) -> ResumeRecord:
        non_data = sorted(op.op_id for op in order if type(op.payload) is not Data)
        return cls(len(order), replay_order_hash(order), has_policy(order), tuple(non_data))

    def encode(self) -> bytes:
        return dumps(
            {
                "k": self.k,
                "order_hash": b2l(self.order_hash),
                "has_policy": self.has_policy,
                "non_data": [b2l(x) for x in self.non_data],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ResumeRecord:
        fields = ("k", "order_hash", "has_policy", "non_data")
        f = struct_fields(loads(data, "resume record"), fields, "resume record")
        if type(f[2]) is not bool:
            raise DecodeError("resume record.has_policy: expected a bool")
        if not isinstance(f[3], list):
            raise DecodeError("resume record.non_data: expected an array")
        return cls(
            to_u64(f[0], "resume.k"),
            to_bytes(f[1], "resume.order_hash", 32),
            f[2],
            tuple(to_bytes(x, "resume.non_data[]", 32) for x in f[3]),
        )


def verified_vc_persist(claims: Any) -> bytes:
    """``VerifiedVcPersist`` CBOR of verified VC claims (store §1.2; the field is ``scope``)."""
    return dumps(
        {
            "cred_id": claims.cred_id,
            "issuer": claims.issuer,
            "subject_pk": b2l(claims.subject_pk),
            "role": claims.role,
            "scope": sorted(claims.scope),
            "nbf_ms": claims.nbf_ms,
            "exp_ms": claims.exp_ms,
            "status_list_id": claims.status_list_id,
            "status_index": claims.status_index,
            "cred_hash": b2l(claims.cred_hash),
        }
    )


# --------------------------------------------------------------------------- edges rows from op bytes

#: canonical uints below 2**16 (HLC logical/node values and small physical times)
_UINT16 = [encode_uint(v) for v in range(1 << 16)]


def _uint(v: int) -> bytes:
    return _UINT16[v] if v < 0x10000 else encode_uint(v)


_build_edge = slot_constructor(EdgeVal)
_native.configure_edges(EdgeVal)  # the bulk decoders read the header fields of these rows
_K_EDGE_PARENTS = b"\xa5\x67parents"
_K_EDGE_AUTHOR = b"\x69author_pk"
_K_EDGE_MS = b"\x66hlc_ms"
_K_EDGE_LOGICAL = b"\x6bhlc_logical"
_K_EDGE_NODE = b"\x68hlc_node"


def edge_bytes(op: Op) -> bytes:
    """``EdgeVal.of(op).encode()``, cut from the op's canonical bytes (the same parents and author items).

    Layout of both: the ``parents`` array, then ``author_pk``; the op has the HLC between
    them (``hlc`` key, map, three uints), the edge has its three uints at the end. Falls
    back to encoding when ``op.cbor`` does not have the canonical layout.
    """
    data = op.cbor
    i = data.find(_K_HLC, len(_K_HEADER))
    j = data.find(_K_AUTHOR, i) + len(_K_AUTHOR) - len(_ID_HEAD)
    k = data.find(_K_PAYLOAD, j)
    if i < 0 or k < 0 or j < i or not data.startswith(_K_HEADER):
        return EdgeVal.of(op).encode()
    h = op.hlc
    return b"".join(
        (
            _K_EDGE_PARENTS,
            data[len(_K_HEADER) : i],
            _K_EDGE_AUTHOR,
            data[j:k],
            _K_EDGE_MS,
            _uint(h.physical_ms),
            _K_EDGE_LOGICAL,
            _uint(h.logical),
            _K_EDGE_NODE,
            _uint(h.node_id),
        )
    )


# --------------------------------------------------------------------------- opening


def _db_options(create_if_missing: bool) -> Options:
    o = Options(raw_mode=True)
    o.create_if_missing(create_if_missing)
    o.create_missing_column_families(True)
    o.set_paranoid_checks(True)
    o.set_allow_concurrent_memtable_write(True)
    o.set_bytes_per_sync(1 << 20)
    return o


def _rdict(p: Path, names: Iterable[str], create_if_missing: bool, **kwargs: Any) -> Rdict:
    cfs = {name: Options(raw_mode=True) for name in names if name != "default"}
    try:
        return Rdict(str(p), _db_options(create_if_missing), column_families=cfs, **kwargs)
    except Exception as e:
        msg = str(e)
        if "lock" in msg.lower():
            raise StoreError(f"store {p} is locked by another process") from None
        raise StoreError(f"cannot open store {p}: {msg}") from None


def _close_rdict(db: Rdict) -> None:
    gc.collect()
    db.close()
    del db
    gc.collect()


def open_rdict(
    path: str | os.PathLike[str], create_if_missing: bool = True, read_only: bool = False
) -> Rdict:
    """The one place that opens RocksDB: raw mode, all eight CFs (store §9.2 pitfalls).

    Missing column families are created one by one in the order of store §1.2 (rocksdict
    alone would create them in hash order), then the database is opened with all eight.
    """
    p = Path(path)
    exists = (p / "CURRENT").exists()
    if (read_only or not create_if_missing) and not exists:
        raise StoreError(f"store {p} does not exist")
    if read_only:
        return _rdict(p, CF_NAMES, False, access_type=AccessType.read_only())
    present = Rdict.list_cf(str(p), Options(raw_mode=True)) if exists else ["default"]
    if any(name not in present for name in CF_NAMES):
        db = _rdict(p, present, create_if_missing)
        try:
            for name in CF_NAMES:
                if name not in present:
                    db.create_column_family(name, Options(raw_mode=True))
        finally:
            _close_rdict(db)
    return _rdict(p, CF_NAMES, create_if_missing)


def _crash_hook() -> None:
    if os.environ.get(CRASH_ENV) == "1":
        os.abort()


# --------------------------------------------------------------------------- the store


class Store(IndexedOpStore):
    """A RocksDB-backed op store with checkpoints, VC caches, keyring and meta (store §1)."""

    def __init__(self, path: Path, db: Rdict, sync_writes: bool, read_only: bool) -> None:
        super().__init__()
        self.path = path
        self._db: Rdict | None = db
        self._read_only = read_only
        self._wopts = WriteOptions()
        self._wopts.sync = sync_writes
        self._h = {name: db.get_column_family_handle(name) for name in CF_NAMES}
        self._cf = {name: db.get_column_family(name) for name in CF_NAMES}
        self._edges: dict[bytes, EdgeVal] = {}
        self._bad_edge_rows = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        create_if_missing: bool = True,
        sync_writes: bool = True,
        read_only: bool = False,
    ) -> Store:
        """Open (or create) a store: schema guard, db_uuid, index load, adopt_ready (store §1.3)."""
        p = Path(path)
        db = open_rdict(p, create_if_missing=create_if_missing, read_only=read_only)
        st = cls(p, db, sync_writes, read_only)
        try:
            st._init_meta()
            if not read_only:
                st.audit = store_writer(p)  # <db>/audit when ECAC_NODE_SK_HEX is set (store §1.3)
            st._load_index()
            if not read_only:
                st.adopt_ready()
        except BaseException:
            st.close()
            raise
        return st

    def close(self) -> None:
        """Release column-family views before closing, so the same process can reopen."""
        db = self._db
        if db is None:
            return
        self._db = None
        if isinstance(self.audit, AuditWriter):
            self.audit.close()
        self.audit = None
        self._h.clear()
        self._cf.clear()
        gc.collect()
        db.close()
        del db
        gc.collect()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cfv(self, name: str) -> Any:
        if self._db is None:
            raise StoreError(f"store {self.path} is closed")
        return self._cf[name]

    def _batch(self) -> WriteBatch:
        if self._read_only:
            raise StoreError(f"store {self.path} is open read-only")
        return WriteBatch(raw_mode=True)

    def _commit_batch(self, wb: WriteBatch) -> None:
        if self._db is None:
            raise StoreError(f"store {self.path} is closed")
        try:
            self._db.write(wb, self._wopts)
        except Exception as e:
            raise StoreError(f"write to store {self.path} failed: {e}") from None

    def _init_meta(self) -> None:
        meta = self._cfv("meta")
        sv = meta.get(META_SCHEMA)
        if sv is not None and bytes(sv) != SCHEMA_VERSION:
            raise StoreError("unknown schema_version; expected ecac:v1")
        if self._read_only:
            return
        wb = WriteBatch(raw_mode=True)
        dirty = False
        if sv is None:
            wb.put(META_SCHEMA, SCHEMA_VERSION, self._h["meta"])
            dirty = True
        if meta.get(META_UUID) is None:
            wb.put(META_UUID, os.urandom(16), self._h["meta"])
            dirty = True
        if dirty:
            self._commit_batch(wb)

    def _load_index(self) -> None:
        """Decode the ``edges`` rows and bulk-load the OpIndex from them (keys of length != 32 are ignored).

        ``OpIndex.load`` completes all ops in one pass; adding them one by one in the rows'
        (id) order would park most of them until their parent's row came by.
        """
        gc_was = gc.isenabled()
        gc.disable()  # one long-lived object graph: cyclic collections would only rescan it
        try:
            edges = self._edges
            parents: dict[bytes, tuple[bytes, ...]] = {}
            keys: dict[bytes, tuple[int, int, int, bytes]] = {}
            canonical = _edge_canonical
            for k, v in self._cfv("edges").items():
                if len(k) != 32:
                    continue
                e = canonical(v)
                if e is None:
                    try:
                        e = _edge_cbor(v)
                    except DecodeError:
                        self._bad_edge_rows += 1
                        continue
                edges[k] = e
                parents[k] = e.parents
                keys[k] = (e.hlc_ms, e.hlc_logical, e.hlc_node, k)
            self._index.load(parents, keys)
        finally:
            if gc_was:
                gc.enable()

    def adopt_ready(self) -> int:
        """Write ``edges``/``by_author`` for ``ops`` rows lacking them whose parents are all stored.

        Put always writes all three rows together, so this only matters for databases
        written by older reference versions. Returns the number of adopted ops.
        """
        ops_cf = self._cfv("ops")
        todo: list[Op] = []
        for k in ops_cf.keys():  # noqa: SIM118 (rocksdict views are not iterable)
            if len(k) != 32 or k in self._edges:
                continue
            try:
                op = decode_op(ops_cf[k])
            except (DecodeError, KeyError):
                continue
            if op.op_id == k and all(ops_cf.get(p) is not None for p in op.parents):
                todo.append(op)
        with self._lock:
            todo = [op for op in todo if not self._index.contains(op.op_id)]
            if todo:
                self._commit(todo)
        return len(todo)

    # ------------------------------------------------------------------ ops (IndexedOpStore hooks)

    def _read_bytes(self, op_id: bytes) -> bytes | None:
        v = self._cfv("ops").get(op_id)
        return None if v is None else bytes(v)

    def _write(self, ops: Sequence[Op]) -> None:
        """One atomic batch: ``ops``, ``edges`` and ``by_author`` rows of every op (store §1.4)."""
        wb = self._batch()
        h_ops, h_edges, h_auth = self._h["ops"], self._h["edges"], self._h["by_author"]
        edges = []
        for op in ops:
            h = op.hlc
            e = _build_edge(op.parents, op.author_pk, h.physical_ms, h.logical, h.node_id)
            edges.append(e)
            wb.put(op.op_id, op.cbor, h_ops)
            wb.put(op.op_id, edge_bytes(op), h_edges)
            wb.put(by_author_key(op), b"", h_auth)
        self._commit_batch(wb)
        for op, e in zip(ops, edges, strict=True):
            self._edges[op.op_id] = e
        _crash_hook()

    def edge(self, op_id: bytes) -> EdgeVal | None:
        """The ``edges`` row of a stored op (from memory)."""
        return self._edges.get(op_id)

    def iter_topo_ops(self, start: int = 0) -> Iterator[Op]:
        """Complete ops from topo position ``start`` on, streamed (see ``ops_for``)."""
        with self._lock:
            ids = self._index.topo_slice(start)
        return self.ops_for(ids)

    def ops_for(self, ids: Sequence[bytes]) -> Iterator[Op]:
        """The stored ops of ``ids``, in that order (``missing op <hex>`` for an absent one).

        Decoded as ``replay_ops`` decodes. Rows come from one sequential scan of ``ops`` when
        ``ids`` cover at least half of the store, else from batched point reads, a batch at
        a time.
        """
        if self._scan_pays(len(ids)):
            return iter(self._decoded(ids, self._cfv("ops").items()))
        return self._decoded_chunks(ids)

    def _decoded_chunks(self, ids: Sequence[bytes]) -> Iterator[Op]:
        for i in range(0, len(ids), _READ_CHUNK):
            chunk = ids[i : i + _READ_CHUNK]
            yield from self._decoded(chunk, self._chunk_rows(chunk))

    def replay_ops(self, checked: bool = False) -> Iterator[Op]:
        """Every complete op in topo order, for a full replay (see ``_decoded``).

        With ``checked`` every op id is also recomputed from its header bytes
        (``--verify-sigs``, whose signature checks ``load_dag`` runs).
        """
        with self._lock:
            ids = self._index.topo_slice(0)
            at = self._index.positions()
        rows = self._cfv("ops").items() if self._scan_pays(len(ids)) else self._chunk_rows(ids)
        return iter(self._decoded(ids, rows, at, checked))

    def _chunk_rows(self, ids: Sequence[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        ops_cf = self._cfv("ops")
        for i in range(0, len(ids), _READ_CHUNK):
            chunk = ids[i : i + _READ_CHUNK]
            yield from zip(chunk, ops_cf.get(chunk), strict=True)

    def _decoded(
        self,
        ids: Sequence[bytes],
        rows: Iterable[tuple[bytes, bytes | None]],
        positions: Mapping[bytes, int] | None = None,
        checked: bool = False,
    ) -> list[Op]:
        """The ops of ``ids`` (in that order) from ``rows``, which may hold other rows too.

        Canonical Data rows are decoded in bulk by ``ecac._native``: their header bytes must
        equal the ``edges`` row and are not re-hashed (docs/decisions.md D35, D39); with
        ``checked`` their ids are recomputed from the header bytes too. Other rows go to the
        strict decoder, which names a bad row. ``positions`` maps each id to its index in
        ``ids`` (built when not given).
        """
        at = positions if positions is not None else {x: i for i, x in enumerate(ids)}
        if len(at) != len(ids):  # repeated ids: decode each once
            uniq = list(dict.fromkeys(ids))
            by_id = dict(zip(uniq, self._decoded(uniq, rows, checked=checked), strict=True))
            return [by_id[x] for x in ids]
        edges = self._edges
        out: list[Op | None] = [None] * len(ids)
        placed, rest = _native.scan(rows, edges, at, out)
        if checked:
            for op in out:
                if op is not None and op_id_of(header_cbor_of(op)) != op.op_id:
                    raise StoreError(f"op_id mismatch for {op.op_id.hex()}")
        for op_id, data in rest:
            i = at.get(op_id)
            if i is not None and i < len(out) and data is not None:  # a live map: ops added since
                out[i] = self._strict_stored(op_id, data)
                placed += 1
        if placed != len(ids):
            gone = next(op_id for op_id, op in zip(ids, out, strict=True) if op is None)
            raise StoreError(f"missing op {gone.hex()}")
        return out  # type: ignore[return-value]

    def _scan_pays(self, n: int) -> bool:
        """Whether reading ``n`` of the stored rows is cheaper by one full scan than by point reads."""
        return n >= _SCAN_MIN and 2 * n >= len(self._index)

    def _strict_stored(self, op_id: bytes, data: bytes) -> Op:
        try:
            op = decode_op(data)
        except DecodeError as e:
            raise StoreError(f"undecodable op {op_id.hex()}: {e}") from None
        if op.op_id != op_id or op_id_of(header_cbor_of(op)) != op_id:  # canonical: cut, not re-encoded
            raise StoreError(f"op_id mismatch for {op_id.hex()}")
        if EdgeVal.of(op) != self._edges.get(op_id):
            raise StoreError(f"edges parents mismatch for {op_id.hex()}")
        return op

    def get_op(self, op_id: bytes) -> Op | None:
        data = self.get_op_bytes(op_id)
        return None if data is None else self._strict_stored(op_id, data)

    # ------------------------------------------------------------------ meta

    def db_uuid(self) -> bytes:
        v = self._cfv("meta").get(META_UUID)
        if v is None:
            raise StoreError("missing db_uuid")
        if len(v) != 16:
            raise StoreError("db_uuid must be 16 bytes")
        return bytes(v)

    def _meta_u64(self, key: bytes) -> int | None:
        v = self._cfv("meta").get(key)
        if v is None:
            return None
        if len(v) != 8:
            raise StoreError(f"meta/{key.decode()} must be 8 bytes, got {len(v)}")
        return int.from_bytes(v, "big")

    def topo_watermark(self) -> int | None:
        return self._meta_u64(META_TOPO_WATERMARK)

    def set_topo_watermark(self, value: int) -> None:
        wb = self._batch()
        wb.put(META_TOPO_WATERMARK, value.to_bytes(8, "big"), self._h["meta"])
        self._commit_batch(wb)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_create_raw(
        self, state_cbor: bytes, state_digest: bytes, topo_idx: int, resume: ResumeRecord | None = None
    ) -> int:
        """Store a checkpoint blob (and its resume record) with ``id = last + 1`` in one batch."""
        with self._lock:
            last = self._meta_u64(META_LAST_CHECKPOINT) or 0
            cid = last + 1
            wb = self._batch()
            blob = CheckpointBlob(topo_idx, state_digest, state_cbor).encode()
            wb.put(checkpoint_key(cid), blob, self._h["checkpoints"])
            wb.put(META_LAST_CHECKPOINT, cid.to_bytes(8, "big"), self._h["meta"])
            if resume is not None:
                wb.put(resume_key(cid), resume.encode(), self._h["meta"])
            self._commit_batch(wb)
            if self.audit is not None:
                self.audit.append(AuditCheckpoint(cid, topo_idx, state_digest))
        return cid

    def checkpoint_create(self, state: State, topo_idx: int, order: Sequence[Op] | None = None) -> int:
        """Checkpoint ``state`` (store §1.9); with the ``order`` that produced it, also a resume record.

        Without ``order`` the checkpoint can be loaded but is never resumed from.
        """
        rec = None
        if order is not None:
            if state.processed_count != len(order) or topo_idx != len(order):
                raise ValueError("state was not computed over this order")
            rec = ResumeRecord.of_order(order)
        return self.checkpoint_create_raw(state.snapshot_cbor(), state.digest(), topo_idx, rec)

    def checkpoint_load(self, checkpoint_id: int) -> tuple[State, int]:
        """``(state, topo_idx)``; ``checkpoint digest mismatch`` when the state does not match."""
        blob = self.checkpoint_blob(checkpoint_id)
        try:
            state = State.from_snapshot_cbor(blob.state_cbor)
        except DecodeError as e:
            raise StoreError(f"checkpoint {checkpoint_id} is corrupt: {e}") from None
        if state.digest() != blob.state_digest:
            raise StoreError("checkpoint digest mismatch")
        return state, blob.topo_idx

    def resume_candidates(self) -> list[tuple[int, ResumeRecord]]:
        """Checkpoints that carry a decodable resume record, newest (highest id) first."""
        out = []
        for k, v in self._cfv("meta").items(from_key=META_RESUME_PREFIX):
            if not bytes(k).startswith(META_RESUME_PREFIX):
                break
            try:
                cid = int(bytes(k)[len(META_RESUME_PREFIX) :], 16)
                out.append((cid, ResumeRecord.decode(bytes(v))))
            except (ValueError, DecodeError):
                continue
        out.sort(key=lambda t: t[0], reverse=True)
        return out

    def checkpoint_blob(self, checkpoint_id: int) -> CheckpointBlob:
        v = self._cfv("checkpoints").get(checkpoint_key(checkpoint_id))
        if v is None:
            raise StoreError(f"checkpoint {checkpoint_id} not found")
        try:
            return CheckpointBlob.decode(bytes(v))
        except DecodeError as e:
            raise StoreError(f"checkpoint {checkpoint_id} is corrupt: {e}") from None

    def checkpoint_list(self) -> list[tuple[int, int]]:
        """Every checkpoint as ``(id, topo_idx)``, ascending by id."""
        out = []
        for k, v in self._cfv("checkpoints").items():
            if len(k) == 8:
                try:
                    out.append((int.from_bytes(k, "big"), CheckpointBlob.decode(bytes(v)).topo_idx))
                except DecodeError:
                    continue
        return out

    def checkpoint_latest(self) -> tuple[int, int] | None:
        """``(id, topo_idx)`` of ``meta/last_checkpoint_id``, or None."""
        cid = self._meta_u64(META_LAST_CHECKPOINT)
        if cid is None:
            return None
        return cid, self.checkpoint_blob(cid).topo_idx

    def resume_record(self, checkpoint_id: int) -> ResumeRecord | None:
        v = self._cfv("meta").get(resume_key(checkpoint_id))
        if v is None:
            return None
        try:
            return ResumeRecord.decode(bytes(v))
        except DecodeError:
            return None

    # ------------------------------------------------------------------ VC caches (store §1.11)

    def persist_vc_raw(self, cred_hash: bytes, jwt: bytes) -> None:
        self._put_one("vc_raw", cred_hash, jwt)

    def persist_vc_verified(self, cred_hash: bytes, cbor: bytes) -> None:
        self._put_one("vc_verified", cred_hash, cbor)

    def get_vc_raw(self, cred_hash: bytes) -> bytes | None:
        v = self._cfv("vc_raw").get(cred_hash)
        return None if v is None else bytes(v)

    def get_vc_verified(self, cred_hash: bytes) -> bytes | None:
        v = self._cfv("vc_verified").get(cred_hash)
        return None if v is None else bytes(v)

    def _put_one(self, cf: str, key: bytes, value: bytes) -> None:
        wb = self._batch()
        wb.put(key, value, self._h[cf])
        self._commit_batch(wb)

    # ------------------------------------------------------------------ keyring (store §1.12)

    def put_tag_key(self, tag: str, version: int, key: bytes) -> None:
        if len(key) != 32:
            raise StoreError(f"key for ({tag}, {version}) must be 32 bytes, got {len(key)}")
        self._put_one("keys", keyring_key(tag, version), bytes(key))

    def get_tag_key(self, tag: str, version: int) -> bytes | None:
        v = self._cfv("keys").get(keyring_key(tag, version))
        if v is None:
            return None
        if len(v) != 32:
            raise StoreError(f"key for ({tag}, {version}) must be 32 bytes, got {len(v)}")
        return bytes(v)

    def max_key_version_for_tag(self, tag: str) -> int | None:
        best: int | None = None
        for k in self._cfv("keys").keys():  # noqa: SIM118 (rocksdict views are not iterable)
            n = k[0] if k else -1
            if len(k) != 1 + n + 4:
                continue
            try:
                t = k[1 : 1 + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if t == tag:
                v = int.from_bytes(k[1 + n :], "big")
                best = v if best is None else max(best, v)
        return best

    # ------------------------------------------------------------------ integrity (store §1.10)

    def verify_integrity(
        self, verify_sigs: bool = False, trust_dir: str | os.PathLike[str] = "trust"
    ) -> None:
        """Raise ``StoreError`` naming the first inconsistency; see store §1.10 for the checks."""
        ops_cf, edges_cf = self._cfv("ops"), self._cfv("edges")
        stored: dict[bytes, tuple[tuple[bytes, ...], EdgeVal]] = {}
        pending: list[tuple[bytes, bytes, bytes]] = []
        n_ops = 0
        for k, v in ops_cf.items():
            n_ops += 1
            hx = bytes(k).hex()
            try:
                op = decode_op(bytes(v))
            except DecodeError as e:
                raise StoreError(f"undecodable op {hx}: {e}") from None
            if op.op_id != k or op.computed_id() != op.op_id:
                raise StoreError(f"op_id mismatch for {hx}")
            stored[op.op_id] = (op.parents, EdgeVal.of(op))
            if verify_sigs:
                pending.append((op.author_pk, op.sig, op.op_id))
                if len(pending) >= 4096:
                    _check_sig_chunk(pending)
                    pending = []
        if pending:
            _check_sig_chunk(pending)
        parents: dict[bytes, tuple[bytes, ...]] = {}
        keys: dict[bytes, SortKey] = {}
        n_edges = 0
        missing = 0
        for k, v in edges_cf.items():
            n_edges += 1
            hx = bytes(k).hex()
            if k not in stored:
                raise StoreError(f"edge without op {hx}")
            try:
                e = EdgeVal.decode(bytes(v))
            except DecodeError:
                raise StoreError(f"edges parents mismatch for {hx}") from None
            if e.parents != stored[k][0]:
                raise StoreError(f"edges parents mismatch for {hx}")
            if e != stored[k][1]:  # not in the reference's list: author or HLC differ from the op
                raise StoreError(f"edges value mismatch for {hx}")
            missing += sum(1 for p in e.parents if p not in stored)
            op_id = bytes(k)
            parents[op_id] = e.parents
            keys[op_id] = (e.hlc_ms, e.hlc_logical, e.hlc_node, op_id)
        if missing:
            raise StoreError(f"{missing} missing parent references")
        if n_edges < n_ops:  # not in the reference's list; names the op instead of a bare count
            without = next(x for x in stored if x not in parents)
            raise StoreError(f"op without edges row {without.hex()}")
        fresh = OpIndex()
        fresh.load(parents, keys)
        if not (len(fresh.topo_ids()) == n_ops == n_edges):
            raise StoreError("topo/ops/edges mismatch")
        self._verify_vc_caches(Path(trust_dir))

    def _verify_vc_caches(self, trust_dir: Path) -> None:
        """VC cache parity, only when ``<trust_dir>/issuers.toml`` loads (store §1.10 step 5)."""
        from ecac.core.vc import verify_vc_file
        from ecac.store.trustfiles import load_file_trust

        try:
            trust, status = load_file_trust(trust_dir)
        except EcacError:
            return
        raw_keys: set[bytes] = set()
        for k, jwt in self._cfv("vc_raw").items():
            if len(k) != 32:
                continue
            raw_keys.add(bytes(k))
            hx = bytes(k).hex()
            try:
                claims = verify_vc_file(bytes(jwt), trust, status)
            except EcacError as e:
                raise StoreError(f"vc_raw failed to verify for {hx}: {e}") from None
            got = self.get_vc_verified(bytes(k))
            if got is None:
                raise StoreError(f"missing vc_verified for {hx}")
            if got != verified_vc_persist(claims):
                raise StoreError(f"vc_verified mismatch for {hx}")
        for k in self._cfv("vc_verified").keys():  # noqa: SIM118 (rocksdict views are not iterable)
            if bytes(k) not in raw_keys:
                raise StoreError(f"vc_verified without vc_raw for {bytes(k).hex()}")


def _check_sig_chunk(items: list[tuple[bytes, bytes, bytes]]) -> None:
    for (_, _, op_id), ok in zip(items, check_sigs(items), strict=True):
        if not ok:
            raise StoreError(f"signature invalid for {op_id.hex()}")


# --------------------------------------------------------------------------- replay from the store


def load_dag(store: OpStore, verify_sigs: bool = False) -> Dag:
    """A DAG of the store's complete ops, streamed in the store's topo order.

    The store's index already computed the deterministic order, so the ops are appended
    with ``Dag.extend_ordered`` (no second topological sort). Signatures were verified at
    ingest and are not checked again unless ``verify_sigs``; then each chunk's signatures
    are checked on the verify threads while the next chunk is decoded, and a failure is a
    StoreError. With ``verify_sigs`` the store's decoder also recomputes every op id
    (``Store.replay_ops(checked=True)``), so a signature is only ever checked over a true id.
    """
    dag = Dag()
    pending: list[tuple[list[Op], SigCheck]] = []

    def checked(ops: Iterator[Op]) -> Iterator[Op]:
        chunk: list[Op] = []
        for op in ops:
            chunk.append(op)
            if len(chunk) >= _VERIFY_CHUNK:
                pending.append(_submit_sigs(chunk))
                chunk = []
                if len(pending) > 1:
                    _sigs_ok(*pending.pop(0))
            yield op
        if chunk:
            pending.append(_submit_sigs(chunk))

    gc_was = gc.isenabled()
    gc.disable()  # hundreds of thousands of long-lived objects: collections would only rescan them
    try:
        ops = store.replay_ops(checked=verify_sigs) if isinstance(store, Store) else store.iter_topo_ops()
        dag.extend_ordered(checked(ops) if verify_sigs else ops)
        for entry in pending:
            _sigs_ok(*entry)
    finally:
        if gc_was:
            gc.enable()
    return dag


_VERIFY_CHUNK = 2048


def _submit_sigs(ops: list[Op]) -> tuple[list[Op], SigCheck]:
    return ops, submit_sigs([(op.author_pk, op.sig, op.op_id) for op in ops])


def _sigs_ok(ops: list[Op], fut: SigCheck) -> None:
    for op, good in zip(ops, fut.result(), strict=True):
        if not good:
            raise StoreError(f"invalid signature for op {op.op_id.hex()}")


@dataclass(frozen=True, slots=True)
class StoreReplay:
    """Result of a replay from the store: state, digest, and where it started.

    ``start`` is the number of ops taken from a checkpoint (0 for a full replay) and
    ``checkpoint_id`` that checkpoint, or None.
    """

    state: State
    digest: bytes
    start: int
    checkpoint_id: int | None


#: payload of prefix ops that a resumed replay never reads (Data ops before the checkpoint)
_UNREAD = Data("", b"")


def replay_store(store: Store, from_checkpoint: bool = False, verify_sigs: bool = False) -> StoreReplay:
    """Replay the store's complete ops; the result always equals a full replay.

    With ``from_checkpoint``, continue from the newest checkpoint whose resume record
    satisfies core §8.4's three conditions against the current order (prefix hash, no
    retroactive kind after it, no policy switch after a policy-free prefix); otherwise,
    and for checkpoints without a record, replay in full.

    The cyclic garbage collector is paused meanwhile: the DAG's objects hold no cycles
    and are freed by reference counting when the replay ends, while each collection
    would rescan every one of them (and the store's index).
    """
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if from_checkpoint:
            res = _resume(store, verify_sigs)
            if res is not None:
                return res
        state, digest = replay_full(load_dag(store, verify_sigs))
        return StoreReplay(state, digest, 0, None)
    finally:
        if gc_was:
            gc.enable()


def _resume(store: Store, verify_sigs: bool) -> StoreReplay | None:
    cands = store.resume_candidates()
    if not cands:
        return None
    ids = store.topo_ids()
    n = len(ids)
    joined = b"".join(ids)
    tail: list[Op] = []  # decoded ops of positions [n - len(tail), n)
    chosen: tuple[int, ResumeRecord] | None = None
    for cid, rec in cands:
        k = rec.k
        if k > n or blake3.blake3(memoryview(joined)[: 32 * k]).digest() != rec.order_hash:
            continue
        have = n - len(tail)
        if k < have:
            tail[:0] = list(store.ops_for(ids[k:have]))
        if suffix_keeps_verdicts(tail[k - (n - len(tail)) :], rec.has_policy):
            chosen = (cid, rec)
            break
    if chosen is None:
        return None
    cid, rec = chosen
    k = rec.k
    suffix = tail[k - (n - len(tail)) :]
    if verify_sigs:
        dag = load_dag(store, verify_sigs=True)
    else:
        dag = _resume_dag(store, ids[:k], set(rec.non_data), suffix)
    blob = store.checkpoint_blob(cid)
    point = ResumePoint(k, rec.order_hash, rec.has_policy, blob.state_cbor, blob.state_digest)
    try:
        r = Replayer.from_point(point, max_points=1)
    except DecodeError:
        raise StoreError("checkpoint digest mismatch") from None
    state, digest = r.apply(dag)
    if r.last_start != k:  # cannot happen after the checks above; never trust a skeleton prefix
        return None
    return StoreReplay(state, digest, k, cid)


def _resume_dag(store: Store, prefix: list[bytes], non_data: set[bytes], suffix: Sequence[Op]) -> Dag:
    """A DAG whose prefix Data ops carry only their header fields (never read when resuming)."""
    try:
        ops = _native.skeletons(prefix, store._edges, _UNREAD, b"", b"")
    except KeyError as e:
        raise StoreError(f"missing op {e.args[0].hex()}") from None
    listed = [i for i, op_id in enumerate(prefix) if op_id in non_data]
    for i, op in zip(listed, store.ops_for([prefix[i] for i in listed]), strict=True):
        ops[i] = op
    ops.extend(suffix)
    dag = Dag()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        dag.extend_ordered(ops)
    finally:
        if gc_was:
            gc.enable()
    return dag


def replay_from_store(
    store: Store, from_checkpoint: bool = False, verify_sigs: bool = False
) -> tuple[State, bytes]:
    """``(state, digest)`` of ``replay_store`` (the ``replay-from-store`` command)."""
    res = replay_store(store, from_checkpoint, verify_sigs)
    return res.state, res.digest
