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

import fnmatch
import gc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from ecac import _native
from ecac.core.audit import Checkpoint as AuditCheckpoint
from ecac.core.errors import DecodeError, EcacError, StoreError
from ecac.core.op import Op, header_cbor_of, op_id_of
from ecac.core.opcodec import decode_op
from ecac.core.order import SortKey, first_difference, kahn_order
from ecac.core.sig import Verify
from ecac.core.state import State
from ecac.store.auditlog import AuditWriter, store_writer
from ecac.store.bulk import bulk_load
from ecac.store.memory import IndexedOpStore
from ecac.store.rows import (
    CF_NAMES,
    META_LAST_CHECKPOINT,
    META_RESUME_PREFIX,
    META_SCHEMA,
    META_TOPO_WATERMARK,
    META_UUID,
    SCHEMA_VERSION,
    CheckpointBlob,
    EdgeVal,
    ResumeRecord,
    _build_edge,
    _edge_canonical,
    _edge_cbor,
    by_author_key,
    checkpoint_key,
    edge_bytes,
    keyring_key,
    resume_key,
    verified_vc_persist,
)

CRASH_ENV = "ECAC_CRASH_AFTER_WRITE"
_READ_CHUNK = 1024
_SCAN_MIN = 4096  # fewer ids than this: point reads even when they are most of the store


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


#: what may be in a store directory before its RocksDB ``CURRENT`` exists: RocksDB's own files
#: of an interrupted create, and the files ecac keeps beside the database (node key, gateway token, audit)
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


def check_store_dir(path: Path, *, create: bool) -> None:
    """Refuse a ``--db`` that is not (or cannot become) an ecac store, before RocksDB writes there.

    RocksDB creates a database in whatever directory it is given (``--db /`` or ``--db ~``
    would scatter ``CURRENT``, ``LOCK`` and ``*.log`` files among the user's own), so the CLI
    and ``ecac node`` call this before ``Store.open``: a path that is not a directory, or a
    non-empty directory with neither a RocksDB ``CURRENT`` nor only setup leftovers, is
    refused with one line; a missing or empty one is accepted only with ``create`` (else
    ``store <path> does not exist``). ``Store.open`` checks the schema of a real database.
    """
    if not path.exists():
        if path.is_symlink():
            raise StoreError(f"store {path} is a dangling symbolic link")
        if not create:
            raise StoreError(f"store {path} does not exist")
        return
    if not path.is_dir():
        raise StoreError(f"--db {path} is not a directory")
    if (path / "CURRENT").is_file():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise StoreError(f"--db {path}: cannot list the directory: {e.strerror or e}") from None
    foreign = [
        n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in (*_SETUP_NAMES, *_ECAC_NAMES))
    ]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise StoreError(
            f"--db {path} is not an ecac store (a non-empty directory without a RocksDB database: {shown}); "
            "give a new or empty directory, or an existing store"
        )
    if not create:
        raise StoreError(f"store {path} does not exist")


def _crash_hook() -> None:
    if os.environ.get(CRASH_ENV) == "1":
        os.abort()


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """What ``Store.verify_integrity`` found in a store without corruption.

    ``complete`` ops have every ancestor stored; the others (``waiting``) wait for
    ``missing_parents`` ids that are not stored, named by ``missing_refs`` parent entries
    (the reference's ``<n> missing parent references``). Waiting ops are legal: a sync or an
    import in progress leaves them, and they complete when the parents arrive.
    """

    ops: int
    complete: int
    missing_parents: int
    missing_refs: int

    @property
    def waiting(self) -> int:
        return self.ops - self.complete

    @property
    def incomplete(self) -> bool:
        return self.waiting > 0

    def describe(self) -> str:
        """``OK``, or ``incomplete: N ops wait for missing parents (…)``."""
        if not self.incomplete:
            return "OK"
        return (
            f"incomplete: {self.waiting} ops wait for missing parents "
            f"({self.missing_parents} missing ops, {self.missing_refs} missing parent references)"
        )


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
        self.verify_pool.close()
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
        with bulk_load():  # one long-lived object graph: cyclic collections would only rescan it
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
        # the C scan looks positions up with PyDict_GetItem: the index's live map is a dict already
        placed, rest = _native.scan(rows, edges, at if isinstance(at, dict) else dict(at), out)
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
    ) -> IntegrityReport:
        """Raise ``StoreError`` naming the first inconsistency; see store §1.10 and docs/storage.md.

        Ops waiting for a missing parent are not corruption (a sync or an import that has not
        finished): they are counted in the returned report (``report.incomplete``) once every
        check has passed. The total order is recomputed from the ``edges`` rows and compared
        with the index's (``order mismatch at position <i>: …``).
        """
        ops_cf, edges_cf = self._cfv("ops"), self._cfv("edges")
        stored: dict[bytes, tuple[tuple[bytes, ...], EdgeVal]] = {}
        pending: list[tuple[bytes, bytes, bytes]] = []
        n_ops = 0
        for k, v in ops_cf.items():
            n_ops += 1
            hx = bytes(k).hex()
            try:
                op = decode_op(bytes(v))
            except DecodeError as err:
                raise StoreError(f"undecodable op {hx}: {err}") from None
            if op.op_id != k or op.computed_id() != op.op_id:
                raise StoreError(f"op_id mismatch for {hx}")
            stored[op.op_id] = (op.parents, EdgeVal.of(op))
            if verify_sigs:
                pending.append((op.author_pk, op.sig, op.op_id))
                if len(pending) >= 4096:
                    _check_sig_chunk(pending, self.verify_pool.verify)
                    pending = []
        if pending:
            _check_sig_chunk(pending, self.verify_pool.verify)
        parents: dict[bytes, tuple[bytes, ...]] = {}
        keys: dict[bytes, SortKey] = {}
        n_edges = 0
        missing_refs = 0
        missing_ids: set[bytes] = set()
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
            op_id = bytes(k)
            absent = [p for p in e.parents if p not in stored]
            if absent:
                missing_refs += len(absent)
                missing_ids.update(absent)
            parents[op_id] = e.parents
            keys[op_id] = (e.hlc_ms, e.hlc_logical, e.hlc_node, op_id)
        if n_edges < n_ops:  # not in the reference's list; names the op instead of a bare count
            without = next(x for x in stored if x not in parents)
            raise StoreError(f"op without edges row {without.hex()}")
        if len(self._index) != n_ops:
            raise StoreError("topo/ops/edges mismatch")
        complete = self._check_order(parents, keys)
        self._verify_vc_caches(Path(trust_dir))
        return IntegrityReport(n_ops, complete, len(missing_ids), missing_refs)

    def verify_order(self) -> None:
        """Recompute the total order from the ``edges`` rows and compare it with the index's.

        For ``replay-from-store --verify-sigs``, which then replays the index's order: a
        StoreError (``order mismatch at position <i>: …``) instead of trusting it.
        """
        edges = self._edges
        parents = {op_id: e.parents for op_id, e in edges.items()}
        keys: dict[bytes, SortKey] = {
            op_id: (e.hlc_ms, e.hlc_logical, e.hlc_node, op_id) for op_id, e in edges.items()
        }
        self._check_order(parents, keys)

    def _check_order(self, parents: dict[bytes, tuple[bytes, ...]], keys: dict[bytes, SortKey]) -> int:
        """Compare a fresh order of ``parents``/``keys`` with the index's; returns the complete count.

        The fresh order is ``kahn_order``: store §1.6's algorithm from scratch, which shares
        no code with the index's incremental ``TotalOrder`` (nor with its bulk sweep).
        """
        want = kahn_order(parents, keys)
        with self._lock:
            have = self._index.topo_ids()
        i = first_difference(have, want)
        if i is not None:
            got = have[i].hex() if i < len(have) else "nothing"
            exp = want[i].hex() if i < len(want) else "nothing"
            raise StoreError(
                f"order mismatch at position {i}: the index has {got}, the edges rows give {exp}"
            )
        return len(want)

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


def _check_sig_chunk(items: list[tuple[bytes, bytes, bytes]], verify: Verify) -> None:
    for (_, _, op_id), ok in zip(items, verify(items), strict=True):
        if not ok:
            raise StoreError(f"signature invalid for {op_id.hex()}")
