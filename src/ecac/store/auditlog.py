"""Audit log files (store §1.13): the writer, the verifying reader with tail repair, the default hook.

The I/O half of ``ecac.core.audit``. A log directory holds ``index.json``, ``segment-00000001.log``,
…, ``node_pk.bin`` and ``node_id.bin`` (and ``node_sk.bin`` for the default hook). Segment
files are ``u32 BE length ‖ record`` frames; the index lists the segments with their first
and last seq and hash. Every append is written and fsynced before the index is rewritten
(``index.tmp``, fsync, rename), so after a crash the last segment can hold records the
index does not list yet (those of one ``append_many``) and one torn record at its end.
A writer is safe to share between threads (appends are serialised).

Choices beyond store §1.13 (``docs/decisions.md``):

* A writer holds an exclusive ``flock`` on the directory while open: a second writer fails
  with a clear message instead of interleaving chains, and the reader never truncates a
  tail that a live writer is still writing.
* Opening a writer checks the end of the last segment: a torn tail is repaired, complete
  records the index does not list yet (a crash between fsync and the index rename) are
  adopted, a segment that ends before the index says (a tail repaired by the reader) is
  continued from its last record, and a log whose last record was not signed by this
  node's key and node_id is refused rather than extended into an unverifiable chain.
* A file that "ends mid-record" only counts as a torn tail when no further record header
  follows the cut (``audit.tail_is_one_append``); a damaged length prefix in front of
  intact records is reported as ``Truncated`` instead of cutting those records off.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import blake3
from nacl.signing import SigningKey

from ecac.core.audit import (
    ZERO_HASH,
    AuditError,
    AuditEvent,
    AuditRecord,
    ChainBuilder,
    ChainVerifier,
    Frames,
    Truncated,
    decode_record,
    frame,
    split_frames,
    tail_is_one_append,
)
from ecac.core.errors import DecodeError, EcacError
from ecac.core.keys import public_key, signing_key_from_hex
from ecac.core.sig import Verify, check_sigs, sig_ok

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

ENV_DIR = "ECAC_AUDIT_DIR"
ENV_ROTATE_MB = "ECAC_AUDIT_ROTATE_MB"
DEFAULT_DIR = ".audit"
DEFAULT_ROTATE_MB = 8
MIB = 1 << 20

INDEX = "index.json"
INDEX_TMP = "index.tmp"
NODE_PK = "node_pk.bin"
NODE_ID = "node_id.bin"
NODE_SK = "node_sk.bin"

Report = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def segment_name(segment_id: int) -> str:
    return f"segment-{segment_id:08d}.log"


def rotate_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``ECAC_AUDIT_ROTATE_MB`` (a positive whole number, default 8) × 1 MiB."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_ROTATE_MB, "").strip()
    if not raw:
        return DEFAULT_ROTATE_MB * MIB
    try:
        mb = int(raw, 10)
    except ValueError:
        mb = 0
    if mb < 1:
        raise AuditError(
            f"{ENV_ROTATE_MB} must be a positive whole number of MiB "
            f"(default {DEFAULT_ROTATE_MB}), got {raw!r}"
        )
    return mb * MIB


# --------------------------------------------------------------------------- index.json


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One ``index.json`` entry. A segment with no record yet has ``first_seq`` 0 and both
    hashes equal to the hash the chain continues from (zeros for segment 1)."""

    segment_id: int
    path: str
    first_seq: int
    last_seq: int
    first_hash: bytes
    last_hash: bytes

    def to_obj(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "path": self.path,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_hash": list(self.first_hash),
            "last_hash": list(self.last_hash),
        }

    @property
    def has_records(self) -> bool:
        return self.first_seq != 0


def index_text(segments: list[SegmentInfo]) -> str:
    """Pretty JSON, 2-space indent, keys in the order of store §1.13, no trailing newline."""
    return json.dumps({"segments": [s.to_obj() for s in segments]}, indent=2)


def _idx_int(obj: Any, key: str, limit: int, where: str) -> int:
    v = obj.get(key)
    if type(v) is not int or not 0 <= v <= limit:
        raise AuditError(f"{where}: `{key}` must be an integer in 0..{limit}, got {v!r}")
    return v


def _idx_hash(obj: Any, key: str, where: str) -> bytes:
    v = obj.get(key)
    if not isinstance(v, list) or len(v) != 32 or any(type(b) is not int or not 0 <= b <= 255 for b in v):
        raise AuditError(f"{where}: `{key}` must be an array of 32 byte values")
    return bytes(v)


def parse_index(text: str, source: str) -> list[SegmentInfo]:
    """The segments of an ``index.json``; AuditError naming the file and the entry otherwise."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise AuditError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("segments"), list):
        raise AuditError(f'{source}: expected {{"segments": [...]}}')
    out: list[SegmentInfo] = []
    for i, s in enumerate(obj["segments"]):
        where = f"{source}: segments[{i}]"
        if not isinstance(s, dict):
            raise AuditError(f"{where}: expected an object")
        sid = _idx_int(s, "segment_id", 0xFFFFFFFF, where)
        path = s.get("path")
        if path != segment_name(sid):
            raise AuditError(f"{where}: `path` must be {segment_name(sid)!r}, got {path!r}")
        if out and sid <= out[-1].segment_id:
            raise AuditError(f"{where}: segment ids must increase (got {sid} after {out[-1].segment_id})")
        out.append(
            SegmentInfo(
                sid,
                path,
                _idx_int(s, "first_seq", 2**64 - 1, where),
                _idx_int(s, "last_seq", 2**64 - 1, where),
                _idx_hash(s, "first_hash", where),
                _idx_hash(s, "last_hash", where),
            )
        )
    return out


def read_index(directory: Path) -> list[SegmentInfo] | None:
    """The index of ``directory``, or None when it has no ``index.json``."""
    p = directory / INDEX
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"{p}: cannot read: {e}") from None
    return parse_index(text, str(p))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp`` (or index.tmp), fsync, rename."""
    tmp = path.parent / (INDEX_TMP if path.name == INDEX else path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_index(directory: Path, segments: list[SegmentInfo]) -> None:
    """Atomic rewrite: ``index.tmp``, fsync, rename to ``index.json``."""
    try:
        _write_durably(directory / INDEX, index_text(segments).encode("utf-8"))
    except OSError as e:
        raise AuditError(f"cannot write {directory / INDEX}: {e.strerror or e}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _sync_data(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


# --------------------------------------------------------------------------- locking


class _DirLock:
    """An exclusive ``flock`` on the log directory (held by a writer, briefly by a repairing reader)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def try_acquire(cls, directory: Path) -> _DirLock | None:
        fd = os.open(directory, os.O_RDONLY)
        if fcntl is None:  # pragma: no cover
            return cls(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# --------------------------------------------------------------------------- identity files


def _read_fixed(path: Path, length: int) -> bytes | None:
    """The bytes of ``path`` (None if missing); AuditError unless exactly ``length`` bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuditError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) != length:
        raise AuditError(f"{path}: expected {length} bytes, found {len(data)}")
    return data


# --------------------------------------------------------------------------- the writer


class AuditWriter:
    """Appends signed records to an audit log directory (store §1.13); an ``AuditSink``.

    ``rotate_bytes`` defaults to ``ECAC_AUDIT_ROTATE_MB`` MiB; a new segment starts before
    an append once the current one holds that many bytes (length prefixes included). Each
    append is written, fdatasynced, and then recorded in ``index.json``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        sk: SigningKey,
        node_id: bytes,
        *,
        rotate_bytes: int | None = None,
        report: Report = _stderr,
    ) -> None:
        if len(node_id) != 32:
            raise ValueError("node_id must be 32 bytes")
        self.dir = Path(directory)
        self.node_id = bytes(node_id)
        self.node_pk = public_key(sk)
        self.rotate_bytes = rotate_bytes_from_env() if rotate_bytes is None else rotate_bytes
        if self.rotate_bytes < 1:
            raise ValueError("rotate_bytes must be at least 1")
        self._report = report
        self._fd: int | None = None
        self._mutex = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuditError(f"cannot create audit directory {self.dir}: {e.strerror or e}") from None
        try:
            lock = _DirLock.try_acquire(self.dir)
        except OSError as e:
            raise AuditError(f"cannot open audit directory {self.dir}: {e.strerror or e}") from None
        if lock is None:
            raise AuditError(
                f"audit log {self.dir} is in use by another writer (it holds the directory lock)"
            )
        self._lock: _DirLock | None = lock
        try:
            self._segments = self._load_segments()
            self._recover()
            self._write_identity()
            last = self._segments[-1]
            path = self.dir / last.path
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._bytes = os.fstat(self._fd).st_size
            seq = max(s.last_seq for s in self._segments)
            self._chain = ChainBuilder(sk, self.node_id, seq, last.last_hash)
        except OSError as e:
            self.close()
            raise AuditError(f"cannot open the audit log at {self.dir}: {e}") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ open

    def _load_segments(self) -> list[SegmentInfo]:
        segs = read_index(self.dir)
        if not segs:
            segs = [SegmentInfo(1, segment_name(1), 0, 0, ZERO_HASH, ZERO_HASH)]
            (self.dir / segs[0].path).touch()
            write_index(self.dir, segs)
        # a segment created by a rotation whose index rename was lost
        while (self.dir / segment_name(segs[-1].segment_id + 1)).exists():
            last = segs[-1]
            segs.append(
                SegmentInfo(
                    last.segment_id + 1,
                    segment_name(last.segment_id + 1),
                    0,
                    last.last_seq,
                    last.last_hash,
                    last.last_hash,
                )
            )
            write_index(self.dir, segs)
        return segs

    def _recover(self) -> None:
        """Adopt complete records the index does not list yet, repair a torn tail, check ownership.

        Only the last segment can be ahead of the index (records are fsynced before the
        index is renamed). Its frames are decoded from the end back to the index's last
        seq; those after it must continue the chain (seq, prev_hash, node_id, signature).
        """
        last = self._segments[-1]
        path = self.dir / last.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if last.has_records:
                raise AuditError(
                    f"{path} is missing but index.json lists records in it; the log cannot be extended"
                ) from None
            path.touch()
            data = b""
        fr = split_frames(data)
        seq = max(s.last_seq for s in self._segments)
        ahead: list[tuple[str, AuditRecord]] = []
        boundary: tuple[str, AuditRecord] | None = None
        for off, body in reversed(fr.records):
            where = f"{path} offset {off}"
            try:
                rec = decode_record(body)
            except DecodeError as e:
                raise AuditError(
                    f"cannot append to the audit log at {self.dir}: the record at {where} is unreadable "
                    f"({e}); run `ecac audit-verify-chain --dir {self.dir}`, or move the directory away"
                ) from None
            if rec.seq <= seq:
                boundary = (where, rec)
                break
            ahead.append((where, rec))
        if fr.tail and not tail_is_one_append(data, fr):
            self._inconsistent(f"{path} has a damaged length prefix at offset {fr.end}")
        indexed = seq
        if boundary is not None:
            where, rec = boundary
            self._check_own(where, rec)
            h = rec.entry_hash()
            if rec.seq < seq and not ahead:  # indexed records lost at the end (a repaired tail)
                last = self._segments[-1] = replace(last, last_seq=rec.seq, last_hash=h)
                seq = rec.seq
            elif rec.seq != seq or h != last.last_hash:
                self._inconsistent(f"index.json ends at seq {seq}, but {where} holds seq {rec.seq}")
        elif last.has_records:  # every record of the last segment was lost
            before = self._segments[-2] if len(self._segments) > 1 else None
            seq, h = (before.last_seq, before.last_hash) if before else (0, ZERO_HASH)
            last = self._segments[-1] = replace(last, first_seq=0, last_seq=seq, first_hash=h, last_hash=h)
        if seq < indexed:
            self._report(
                f"index.json listed audit records up to seq {indexed} but {path} ends at seq {seq} "
                f"(a repaired tail); continuing the chain from seq {seq}"
            )
        prev = last.last_hash
        for where, rec in reversed(ahead):
            self._check_own(where, rec)
            if rec.seq != seq + 1 or rec.entry.prev_hash != prev:
                self._inconsistent(f"{where} holds seq {rec.seq}, which does not continue seq {seq}")
            seq, prev = rec.seq, rec.entry_hash()
            seg = self._segments[-1]
            if not seg.has_records:
                seg = replace(seg, first_seq=seq, first_hash=prev)
            self._segments[-1] = replace(seg, last_seq=seq, last_hash=prev)
        if fr.tail:
            _truncate(path, fr.end)
            self._report(f"truncated tail repaired at {path} (offset {fr.end})")
        if seq != indexed:
            write_index(self.dir, self._segments)
        if ahead:
            self._report(f"adopted {len(ahead)} audit record(s) up to seq {seq} missing from index.json")

    def _check_own(self, where: str, rec: AuditRecord) -> None:
        """The record was written by this node: its node_id and key."""
        if rec.entry.node_id != self.node_id or not sig_ok(self.node_pk, rec.signature, rec.entry_hash()):
            raise AuditError(
                f"the audit log at {self.dir} was written by another node ({where} has node_id "
                f"{rec.entry.node_id.hex()}, or another key signed it); "
                "use that node's key or another directory"
            )

    def _inconsistent(self, detail: str) -> NoReturn:
        raise AuditError(
            f"cannot append to the audit log at {self.dir}: {detail}; "
            f"run `ecac audit-verify-chain --dir {self.dir}`, or move the directory away"
        )

    def _write_identity(self) -> None:
        """``node_pk.bin`` and ``node_id.bin``, rewritten when they differ (store §1.13)."""
        for name, value in ((NODE_PK, self.node_pk), (NODE_ID, self.node_id)):
            p = self.dir / name
            try:
                current = p.read_bytes()
            except FileNotFoundError:
                current = None
            if current != value:
                _write_durably(p, value)

    # ------------------------------------------------------------------ append

    @property
    def head_digest(self) -> bytes | None:
        """The last entry hash, or None when nothing was written yet."""
        return None if self._chain.seq == 0 else self._chain.prev_hash

    @property
    def seq(self) -> int:
        """The seq of the last record written (0 when none)."""
        return self._chain.seq

    @property
    def segments(self) -> list[SegmentInfo]:
        return list(self._segments)

    def append(self, event: AuditEvent) -> int:
        """Sign, write and fsync one record, then update the index; returns its seq."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """``append`` for many events with one fdatasync and one index write per segment touched.

        Rotation is checked before every record exactly as for ``append``. A record is only
        listed in the index once it is durable; if a write fails, the records of the
        failing segment chunk are cut off again and the chain continues as before them.
        """
        with self._mutex:
            return self._append_many(events)

    def _append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        if self._fd is None:
            raise AuditError(f"audit writer for {self.dir} is closed")
        seqs: list[int] = []
        chunk = bytearray()
        hashes: list[bytes] = []  # entry hashes of the chunk's records
        mark = self._chain.state()
        for event in events:
            if self._bytes + len(chunk) >= self.rotate_bytes:
                self._commit(chunk, hashes, mark)
                chunk, hashes = bytearray(), []
                self._rotate()
                mark = self._chain.state()
            rec, h, wire = self._chain.make(event)
            self._chain.advance(rec, h)
            chunk += frame(wire)
            hashes.append(h)
            seqs.append(rec.seq)
        self._commit(chunk, hashes, mark)
        return seqs

    def _commit(self, chunk: bytearray, hashes: list[bytes], mark: tuple[int, int, bytes]) -> None:
        """Write and fdatasync ``chunk`` (records ``mark.seq + 1``…) to the current segment,
        then record it in the index."""
        if not hashes:
            return
        assert self._fd is not None
        try:
            _write_all(self._fd, bytes(chunk))
            _sync_data(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._bytes)
            self._chain.restore(mark)
            path = self.dir / self._segments[-1].path
            raise AuditError(f"cannot write to {path}: {e.strerror or e}") from None
        self._bytes += len(chunk)
        seg = self._segments[-1]
        if not seg.has_records:
            seg = replace(seg, first_seq=mark[0] + 1, first_hash=hashes[0])
        self._segments[-1] = replace(seg, last_seq=mark[0] + len(hashes), last_hash=hashes[-1])
        write_index(self.dir, self._segments)

    def _rotate(self) -> None:
        last = self._segments[-1]
        sid = last.segment_id + 1
        path = self.dir / segment_name(sid)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise AuditError(f"cannot create {path}: {e.strerror or e}") from None
        if os.fstat(fd).st_size:
            os.close(fd)
            raise AuditError(f"{path} already holds data that index.json does not list; move it away")
        _fsync_dir(self.dir)
        prev = self._chain.prev_hash
        self._segments.append(SegmentInfo(sid, path.name, 0, self._chain.seq, prev, prev))
        write_index(self.dir, self._segments)
        assert self._fd is not None
        os.close(self._fd)
        self._fd = fd
        self._bytes = 0

    def close(self) -> None:
        """Close the segment and release the directory lock (idempotent)."""
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if getattr(self, "_lock", None) is not None:
                self._lock.release()  # type: ignore[union-attr]
                self._lock = None

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the reader


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """A verified log: ``count`` records, ``head`` = the last entry hash (zeros when empty)."""

    count: int
    head: bytes
    segments: int


class AuditReader:
    """Reads and verifies an audit log directory (store §1.13)."""

    def __init__(self, directory: str | os.PathLike[str], *, report: Report = _stderr) -> None:
        self.dir = Path(directory)
        self._report = report

    def segments(self) -> list[SegmentInfo]:
        segs = read_index(self.dir)
        if segs is None:
            raise AuditError(
                f"no audit log at {self.dir}: {self.dir / INDEX} is missing "
                "(wrong --dir, or nothing was audited yet)"
            )
        return segs

    def identity(self) -> tuple[bytes, bytes]:
        """``(node_id, node_pk)`` from ``node_id.bin`` and ``node_pk.bin``."""
        out = []
        for name in (NODE_ID, NODE_PK):
            v = _read_fixed(self.dir / name, 32)
            if v is None:
                raise AuditError(f"no audit log at {self.dir}: {self.dir / name} is missing")
            out.append(v)
        return out[0], out[1]

    def _frames(self, path: Path) -> tuple[bytes, Frames]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise Truncated(str(path), "the segment file listed in index.json is missing") from None
        except OSError as e:
            raise AuditError(f"{path}: cannot read: {e.strerror or e}") from None
        return data, split_frames(data)

    def verify(self, verify: Verify = check_sigs) -> VerifyResult:
        """Check the whole chain (``ChainVerifier``); signatures by ``verify`` (``VerifyPool.verify``...)."""
        return self._verify(None, verify)

    def verify_against_head(self, expected: bytes, verify: Verify = check_sigs) -> VerifyResult:
        """``verify`` plus: the last entry hash must be ``expected`` (``HeadMismatch``)."""
        return self._verify(bytes(expected), verify)

    def _verify(self, expected_head: bytes | None, verify: Verify) -> VerifyResult:
        segs = self.segments()
        node_id, node_pk = self.identity()
        v = ChainVerifier(node_id, node_pk, verify)
        repair: tuple[Path, int] | None = None
        for i, seg in enumerate(segs):
            path = self.dir / seg.path
            data, fr = self._frames(path)
            for off, body in fr.records:
                where = f"{path} offset {off}"
                try:
                    rec = decode_record(body)
                except DecodeError as e:
                    v.fail(Truncated(where, str(e)))
                v.feed(rec, where)
            v.flush()
            if i < len(segs) - 1:
                if fr.tail == "torn":  # 1-3 stray bytes in an older segment are ignored (reference)
                    have = len(data) - fr.end - 4
                    v.fail(
                        Truncated(
                            f"{path} offset {fr.end}",
                            f"the file ends {have} bytes into a {fr.want}-byte record, "
                            "and only the last segment may end mid-record",
                        )
                    )
            elif fr.tail:
                if not tail_is_one_append(data, fr):
                    v.fail(
                        Truncated(
                            f"{path} offset {fr.end}",
                            f"a length prefix claims {fr.want} bytes but further records follow it "
                            "(a damaged prefix, not a torn append); not cutting them off",
                        )
                    )
                repair = (path, fr.end)
        head = v.finish(expected_head)
        if repair is not None:
            self._repair(*repair)
        return VerifyResult(v.count, head, len(segs))

    def _repair(self, path: Path, offset: int) -> None:
        try:
            lock = _DirLock.try_acquire(self.dir)
        except OSError as e:
            raise AuditError(f"cannot open audit directory {self.dir}: {e.strerror or e}") from None
        if lock is None:
            self._report(
                f"truncated tail at {path} (offset {offset}) left in place: a writer has the log open"
            )
            return
        try:
            _truncate(path, offset)
        finally:
            lock.release()
        self._report(f"truncated tail repaired at {path} (offset {offset})")

    def segment_records(self, path: Path, *, last: bool = True) -> Iterator[tuple[int, AuditRecord]]:
        """``(offset, record)`` of one segment file, decoded strictly but NOT verified.

        An undecodable record, or a file that ends mid-frame (for a segment that is not
        the ``last``, only mid-record: 1-3 stray bytes there are ignored, as by ``verify``),
        raises ``Truncated`` after the records before it were yielded.
        """
        data, fr = self._frames(path)
        for off, body in fr.records:
            try:
                rec = decode_record(body)
            except DecodeError as e:
                raise Truncated(f"{path} offset {off}", str(e)) from None
            yield off, rec
        if fr.tail == "torn" or (fr.tail and last):
            raise Truncated(
                f"{path} offset {fr.end}",
                f"the file ends {len(data) - fr.end} bytes into a frame (`ecac audit-verify-chain "
                f"--dir {self.dir}` repairs a torn tail of the last segment)",
            )

    def iter_records(self, limit: int | None = None) -> Iterator[tuple[Path, int, AuditRecord]]:
        """``(segment path, offset, record)`` over the indexed segments, in log order, NOT verified;
        at most ``limit`` records (nothing after them is read)."""
        if limit is not None and limit <= 0:
            return
        segs = self.segments()
        n = 0
        for i, seg in enumerate(segs):
            path = self.dir / seg.path
            for off, rec in self.segment_records(path, last=i == len(segs) - 1):
                yield path, off, rec
                n += 1
                if limit is not None and n >= limit:
                    return


# --------------------------------------------------------------------------- the default hook


def open_default(
    environ: Mapping[str, str] | None = None, *, rotate_bytes: int | None = None, report: Report = _stderr
) -> AuditWriter:
    """The default audit sink (store §1.13): ``$ECAC_AUDIT_DIR`` or ``.audit``.

    The signing key is ``node_sk.bin`` (32-byte seed) and the node id ``node_id.bin``; each
    is created from the OS CSPRNG when missing. This key generation is the only randomness
    in the audit trail and never reaches replicated state. ``ECAC_NODE_SK_HEX`` is ignored
    here: that key belongs to the store's own log in ``<db>/audit``.
    """
    env = os.environ if environ is None else environ
    d = Path(env.get(ENV_DIR) or DEFAULT_DIR)
    try:
        d.mkdir(parents=True, exist_ok=True)
        seed = _read_fixed(d / NODE_SK, 32)
        if seed is None:
            seed = _create_secret(d / NODE_SK)
        node_id = _read_fixed(d / NODE_ID, 32) or os.urandom(32)
    except OSError as e:
        raise AuditError(f"cannot open the audit directory {d}: {e.strerror or e}") from None
    rb = rotate_bytes_from_env(env) if rotate_bytes is None else rotate_bytes
    return AuditWriter(d, SigningKey(seed), node_id, rotate_bytes=rb, report=report)


def _create_secret(path: Path) -> bytes:
    """A new random 32-byte seed in ``path`` (mode 0600), created atomically (written to a
    temporary file, then hard-linked); if another process won the race, its seed."""
    seed = os.urandom(32)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        got = _read_fixed(path, 32)
        assert got is not None
        return got
    finally:
        tmp.unlink()
    return seed


# --------------------------------------------------------------------------- the store's own log

ENV_NODE_SK = "ECAC_NODE_SK_HEX"
STORE_AUDIT_SUBDIR = "audit"


def store_writer(
    db_path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    report: Report = _stderr,
) -> AuditWriter | None:
    """The store's embedded audit log (store §1.3 step 2), or None when auditing is off.

    With ``ECAC_NODE_SK_HEX`` set to a 64-hex-char Ed25519 seed, a writer on
    ``<db>/audit`` with ``node_id = blake3(pk)``. A malformed key prints ``audit disabled:
    bad ECAC_NODE_SK_HEX (<err>)`` and auditing stays off, as in the reference.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_NODE_SK)
    if raw is None:
        return None
    try:
        sk = signing_key_from_hex(raw)
    except EcacError as e:
        report(f"audit disabled: bad {ENV_NODE_SK} ({e})")
        return None
    node_id = blake3.blake3(public_key(sk)).digest()
    return AuditWriter(
        Path(db_path) / STORE_AUDIT_SUBDIR, sk, node_id, rotate_bytes=rotate_bytes_from_env(env)
    )
