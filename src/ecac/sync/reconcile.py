"""Range-based set reconciliation (``/ecac/reconcile/1``): which complete ops two nodes differ by.

Our own implementation of the idea behind Negentropy (range-based set reconciliation, RBSR):
both sides hold a sorted set of keys ``(physical_ms, logical, node_id, op_id)`` (the complete
ops, ``ecac.core.rangefp.RangeTree``). A frame is a sequence of consecutive *ranges* covering
the whole key space, each with a *mode*:

* ``Skip``: nothing to say about this range (equal, or already resolved);
* ``Fp(c, f)``: the sender holds ``c`` keys in the range and their 8-byte fingerprint is ``f``;
* ``Ids(ids)``: every id the sender holds in the range (in key order);
* ``Diff(h, m)``: the range is resolved: ``h`` = the ids the sender holds there that the receiver
  lacks; when it answers the receiver's ``Ids``, ``m`` = a bitmap over that list, bit i set when
  the sender lacks the receiver's i-th id (when it answers an ``Fp``, ``m`` is empty).

Receiving ``Fp``: an equal count and fingerprint give ``Skip``. If we hold exactly **one key
more**, we try each of our keys there: when removing exactly one of them gives the sender's
fingerprint, that key is the whole difference, and we answer ``Diff([it], [])`` (*decoding*:
a scattered difference costs one range and its id, not a walk down to a leaf). If we hold one
key less, we answer our own ``Fp`` of the same range, so the sender decodes it. Otherwise the
range is split: into our ``Ids`` when we (or the sender) hold at most ``id_list_max`` keys
there, else into 2 … ``buckets`` sub-ranges of equal size (by our keys), each as ``Fp``; how
many is chosen from the density of differences the frame shows (the share of its ``Fp``
ranges that differ), so that each sub-range holds about one difference: fewer, and a range
holds several (it cannot be decoded), more, and the equal ones are paid for. Receiving
``Ids`` gives a ``Diff`` (or, if our extra ids there are too many for the frame, our own
``Ids`` of the range, as many as fit); receiving ``Diff`` resolves the range. So after a range
is resolved **both** sides know its symmetric difference: ``need`` (ids the peer holds that we
lack: they feed the sync planner's want-list) and ``have`` (ids we hold that the peer lacks:
the peer learns them as its own ``need``).

A frame with no ``Fp`` and no ``Ids`` needs no answer: its sender is done once it sent it, its
receiver once it processed it. The initiator's first frame splits its whole set into buckets.

**Limits** (``ReconcileLimits``): frame body bytes, ranges and ids per frame, frames sent per
side, keys tried by one decoding. When the output would exceed a frame limit, the rest of the
key space from the first range not answered is sent as one ``Fp`` (the peer splits it again
next round), so every frame makes progress; after ``max_rounds`` frames a side stops,
``complete`` stays False and the ids found so far are still valid (anti-entropy runs another
session later). Malformed frames (strict decoding, arrays that do not match the modes, bounds
not increasing, a ``Diff`` that answers no ``Ids`` or ``Fp`` we sent, a wrong bitmap length,
duplicate ids, more ids or ranges than the limits) raise ``ProtocolError``.

Encoding (declarative, ``ecac.core.codec``; byte-exact in docs/protocol.md): the frame is a
struct of eight parallel arrays, so per range only values are written, never field names or
variant tags: ``m`` (one small uint per range: the mode in bits 0–1, and whether the range's
upper bound has a logical/node pair and an id prefix in bits 2 and 3), ``b`` (per bound: ms as
a delta from the previous bound, then logical and node id when flagged), ``p`` (the id prefixes
flagged), ``c`` and ``f`` (count and fingerprint per ``Fp``), ``n`` (ids per ``Ids`` / ``Diff``),
``i`` (the ids, 4 big-endian u64 words each) and ``x`` (the bitmap per ``Diff``). A typical
``Fp`` range costs 12–15 bytes, an ``Skip`` 2–4 and an id 36.

Pure: no I/O, no clock, no randomness; deterministic for given sets and limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ecac.core.codec import ByteVec, Serde, U64Int, serde
from ecac.core.errors import EcacError, ProtocolError
from ecac.core.order import SortKey
from ecac.core.rangefp import FP_LEN, TOTAL_FP_LEN, Bound, fingerprint_of, id_value, total_fingerprint

__all__ = [
    "MIN_BOUND",
    "RECONCILE_PROTOCOL_ID",
    "Diff",
    "Fp",
    "Ids",
    "Mode",
    "RangeView",
    "ReconcileFrame",
    "ReconcileLimits",
    "Reconciler",
    "Skip",
    "encode_ranges",
    "ids_from_words",
    "ids_to_words",
    "min_bound",
    "wire_fp",
]

RECONCILE_PROTOCOL_ID = "/ecac/reconcile/1"
ID_LEN = 32
_WORDS_PER_ID = ID_LEN // 8
#: the lower end of the key space (every key is at or above it)
MIN_BOUND: Bound = (0, 0, 0, b"")

# mode word: bits 0-1 the mode, bit 2 "the upper bound has logical and node", bit 3 "… an id prefix"
SKIP_M, FP_M, IDS_M, DIFF_M = 0, 1, 2, 3
_LN_FLAG = 4
_PREFIX_FLAG = 8
#: sub-ranges are sized for about this many differences each (tuned with ``ecac bench --scenario reconcile``)
_DIFFS_PER_BUCKET = 1.0


class RangeView(Protocol):
    """What a reconciler reads of its set (``RangeTree`` implements it)."""

    def __len__(self) -> int: ...
    def rank(self, bound: Bound | SortKey | None) -> int: ...
    def key_at(self, i: int) -> SortKey: ...
    def fingerprint(self, lo: int, hi: int, salt: bytes = b"") -> bytes: ...
    def sum_range(self, lo: int, hi: int) -> int: ...
    def keys(self, lo: int = 0, hi: int | None = None) -> list[SortKey]: ...


@dataclass(frozen=True, slots=True)
class ReconcileLimits:
    """Tunables of a session; both sides should use the same ``buckets`` / ``id_list_max`` (not required)."""

    buckets: int = 16  # sub-ranges a differing range is split into at most
    id_list_max: int = 4  # a range with at most this many of our keys is sent as Ids
    max_frame: int = 256 * 1024  # body bytes of one frame (sent and accepted)
    max_ids: int = 4096  # ids per frame (Ids and Diff together)
    max_ranges: int = 4096  # ranges per frame
    max_rounds: int = 32  # frames one side sends in a session
    decode_max: int = 16384  # keys tried when decoding one range (one hash each)

    def __post_init__(self) -> None:
        if not 2 <= self.buckets <= 256:
            raise ValueError("buckets must be between 2 and 256")
        if self.id_list_max < 1:
            raise ValueError("id_list_max must be at least 1")
        if self.max_frame < max(4096, self.buckets * 100 + 2048) or self.max_frame > 2**32 - 1:
            raise ValueError("max_frame must be between max(4096, 100 × buckets + 2048) and 2^32-1 bytes")
        if self.max_ids < self.id_list_max or self.max_ranges < self.buckets + 4 or self.max_rounds < 1:
            raise ValueError("max_ids must be >= id_list_max, max_ranges >= buckets + 4, max_rounds >= 1")
        if self.decode_max < 0:
            raise ValueError("decode_max must not be negative")


# --------------------------------------------------------------------------- modes


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to say about the range."""


@dataclass(frozen=True, slots=True)
class Fp:
    """The sender holds ``c`` keys in the range with fingerprint ``f`` (``wire_fp``: a u64)."""

    c: int
    f: int


@dataclass(frozen=True, slots=True)
class Ids:
    """Every id the sender holds in the range, in key order."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Diff:
    """The range is resolved: ids only the sender holds (``h``); answering ``Ids``, the bitmap of
    the receiver's ids the sender lacks (``m``, bit i of byte i // 8, least significant first)."""

    h: tuple[bytes, ...]
    m: bytes = b""


Mode = Skip | Fp | Ids | Diff
SKIP = Skip()


def wire_fp(fp: bytes) -> int:
    """A fingerprint as written on the wire: its bytes as a big-endian uint."""
    return int.from_bytes(fp, "big")


# --------------------------------------------------------------------------- wire


@serde
@dataclass(frozen=True, slots=True)
class ReconcileFrame(Serde):
    """One frame: ``len(m)`` consecutive ranges; range i ends at bound i (the last at +infinity).

    Parallel arrays (see the module docstring): ``m`` modes (+ bound flags), ``b`` bound words,
    ``p`` bound prefixes, ``c``/``f`` per ``Fp``, ``n`` per ``Ids``/``Diff``, ``i`` id words,
    ``x`` per ``Diff``.
    """

    m: tuple[U64Int, ...]
    b: tuple[U64Int, ...]
    p: tuple[ByteVec, ...]
    c: tuple[U64Int, ...]
    f: tuple[U64Int, ...]
    n: tuple[U64Int, ...]
    i: tuple[U64Int, ...]
    x: tuple[ByteVec, ...]
    t: tuple[U64Int, ...] = ()

    def ranges(self) -> list[tuple[Bound, Bound | None, Mode]]:
        """``(lower, upper, mode)`` per range (upper None = +infinity), checking the layout."""
        modes = self.m
        if not modes:
            raise ProtocolError("reconcile: a frame has at least one range")
        out: list[tuple[Bound, Bound | None, Mode]] = []
        lo: Bound = MIN_BOUND
        ms = 0
        bp = pp = cp = np_ = ip = xp = 0
        last = len(modes) - 1
        b, p, n, words = self.b, self.p, self.n, self.i
        try:
            for r, code in enumerate(modes):
                if code > 15:
                    raise ProtocolError(f"reconcile: mode word {code} is not 0-15")
                kind = code & 3
                hi: Bound | None = None
                if r < last:
                    ms += b[bp]
                    bp += 1
                    logical = node = 0
                    if code & _LN_FLAG:
                        logical, node = b[bp], b[bp + 1]
                        bp += 2
                        if not logical and not node:
                            raise ProtocolError("reconcile: a flagged logical/node pair must not be 0, 0")
                    prefix = b""
                    if code & _PREFIX_FLAG:
                        prefix = p[pp]
                        pp += 1
                        if not 1 <= len(prefix) <= ID_LEN:
                            raise ProtocolError(f"reconcile: a bound's id prefix is 1 to {ID_LEN} bytes")
                    hi = (ms, logical, node, prefix)
                    if hi <= lo:
                        raise ProtocolError("reconcile: range bounds must increase")
                elif code & (_LN_FLAG | _PREFIX_FLAG):
                    raise ProtocolError("reconcile: the last range has no upper bound to flag")
                mode: Mode
                if kind == SKIP_M:
                    mode = SKIP
                elif kind == FP_M:
                    mode = Fp(self.c[cp], self.f[cp])
                    cp += 1
                    if mode.f >> (8 * FP_LEN):
                        raise ProtocolError(f"reconcile: a fingerprint is {FP_LEN} bytes")
                else:
                    k = n[np_]
                    np_ += 1
                    if ip + _WORDS_PER_ID * k > len(words):
                        raise ProtocolError("reconcile: an id count beyond the ids of the frame")
                    ids = tuple(ids_from_words(words[ip : ip + _WORDS_PER_ID * k]))
                    ip += _WORDS_PER_ID * k
                    if kind == IDS_M:
                        mode = Ids(ids)
                    else:
                        mode = Diff(ids, self.x[xp])
                        xp += 1
                out.append((lo, hi, mode))
                if hi is not None:
                    lo = hi
        except IndexError:
            raise ProtocolError("reconcile: the arrays of a frame are shorter than its modes say") from None
        if (bp, pp, cp, cp, np_, ip, xp) != (
            len(b),
            len(p),
            len(self.c),
            len(self.f),
            len(n),
            len(words),
            len(self.x),
        ):
            raise ProtocolError("reconcile: the arrays of a frame are longer than its modes say")
        return out


def encode_ranges(ranges: Sequence[tuple[Bound | None, Mode]], total: Sequence[int] = ()) -> ReconcileFrame:
    """The frame of ``(upper, mode)`` ranges in order (the last upper None, the others increasing);
    ``total``: the ``t`` words (the sender's first frame only)."""
    m: list[int] = []
    b: list[int] = []
    p: list[bytes] = []
    c: list[int] = []
    f: list[int] = []
    n: list[int] = []
    words: list[int] = []
    x: list[bytes] = []
    ms = 0
    for j, (upper, mode) in enumerate(ranges):
        if (upper is None) != (j == len(ranges) - 1):
            raise ValueError("a reconcile frame's last range, and only it, ends at +infinity")
        code = 0
        if upper is not None:
            b.append(upper[0] - ms)
            ms = upper[0]
            if upper[1] or upper[2]:
                code |= _LN_FLAG
                b += (upper[1], upper[2])
            if upper[3]:
                code |= _PREFIX_FLAG
                p.append(upper[3])
        if isinstance(mode, Skip):
            code |= SKIP_M
        elif isinstance(mode, Fp):
            code |= FP_M
            c.append(mode.c)
            f.append(mode.f)
        elif isinstance(mode, Ids):
            code |= IDS_M
            n.append(len(mode.ids))
            words += ids_to_words(mode.ids)
        else:
            code |= DIFF_M
            n.append(len(mode.h))
            words += ids_to_words(mode.h)
            x.append(mode.m)
        m.append(code)
    return ReconcileFrame(
        tuple(m), tuple(b), tuple(p), tuple(c), tuple(f), tuple(n), tuple(words), tuple(x), tuple(total)
    )


def ids_to_words(ids: Sequence[bytes]) -> tuple[int, ...]:
    """32-byte ids as 4 big-endian u64 words each."""
    out: list[int] = []
    for x in ids:
        if len(x) != ID_LEN:
            raise ValueError(f"an op id is {ID_LEN} bytes, not {len(x)}")
        out.extend(int.from_bytes(x[i : i + 8], "big") for i in range(0, ID_LEN, 8))
    return tuple(out)


def ids_from_words(words: Sequence[int]) -> list[bytes]:
    """The inverse of ``ids_to_words``."""
    return [
        b"".join(w.to_bytes(8, "big") for w in words[i : i + _WORDS_PER_ID])
        for i in range(0, len(words), _WORDS_PER_ID)
    ]


def min_bound(a: SortKey, b: SortKey) -> Bound:
    """The shortest bound ``x`` with ``a < x <= b`` (``a < b``): it separates two adjacent keys."""
    if a[0] != b[0]:
        return (b[0], 0, 0, b"")
    if a[1] != b[1]:
        return (b[0], b[1], 0, b"")
    if a[2] != b[2]:
        return (b[0], b[1], b[2], b"")
    x, y = a[3], b[3]
    p = 0
    while p < ID_LEN and x[p] == y[p]:
        p += 1
    return (b[0], b[1], b[2], y[: p + 1])


# --------------------------------------------------------------------------- sizes (for the limits)


def _uint_len(v: int) -> int:
    return 1 if v < 24 else 2 if v < 256 else 3 if v < 65536 else 5 if v < 2**32 else 9


def _bytes_len(b: bytes) -> int:
    return _uint_len(len(b)) + sum(1 if x < 24 else 2 for x in b)


def _ids_len(ids: Sequence[bytes]) -> int:
    return sum(_uint_len(w) for w in ids_to_words(ids))


def _mode_len(m: Mode) -> int:
    """Bytes of a mode's entries in ``m``, ``c``, ``f``, ``n``, ``i``, ``x`` (exact)."""
    if isinstance(m, Skip):
        return 1
    if isinstance(m, Fp):
        return 1 + _uint_len(m.c) + _uint_len(m.f)
    if isinstance(m, Ids):
        return 1 + _uint_len(len(m.ids)) + _ids_len(m.ids)
    return 1 + _uint_len(len(m.h)) + _ids_len(m.h) + _bytes_len(m.m)


def _bound_len(upper: Bound | None, prev_ms: int) -> int:
    if upper is None:
        return 0
    n = _uint_len(upper[0] - prev_ms)
    if upper[1] or upper[2]:
        n += _uint_len(upper[1]) + _uint_len(upper[2])
    if upper[3]:
        n += _bytes_len(upper[3])
    return n


_FRAME_OVERHEAD = 1 + 9 * 2 + 9 * 9 + 3 * 9  # map head, nine one-letter keys, nine array heads, t
_BOUND_MAX = 3 * 9 + 1 + 2 * ID_LEN  # the largest bound
_CLOSE_MAX = _BOUND_MAX + 1 + 9 + 9  # the largest closing Fp range with the bound before it


class _Out:
    """The frame being built: ranges in order, adjacent Skips merged, sizes tracked exactly."""

    def __init__(self, limits: ReconcileLimits) -> None:
        self.limits = limits
        self.uppers: list[Bound | None] = []
        self.modes: list[Mode] = []
        self.size = _FRAME_OVERHEAD
        self.ids = 0
        self.full = False
        self._prev_ms = 0  # ms of the bound before the last range's upper bound
        self._last_bound = 0  # encoded bytes of the last range's upper bound

    def _last_ms(self) -> int:
        u = self.uppers[-1] if self.uppers else None
        return u[0] if u is not None else 0

    def room(self, mode_len: int, ids: int, ranges: int = 1) -> bool:
        """Whether ``ranges`` more ranges of that size (together) still fit, keeping room for
        the closing Fp range and one more: after any add that asked, two ranges stay free, which
        the paths that add without asking (a cut Ids then the closing Fp) rely on."""
        lim = self.limits
        return (
            self.size + _BOUND_MAX + mode_len + 2 * _CLOSE_MAX <= lim.max_frame
            and self.ids + ids <= lim.max_ids
            and len(self.modes) + ranges + 2 <= lim.max_ranges
        )

    def add(self, upper: Bound | None, mode: Mode) -> None:
        if isinstance(mode, Skip) and self.modes and isinstance(self.modes[-1], Skip):
            new = _bound_len(upper, self._prev_ms)
            self.size += new - self._last_bound
            self._last_bound = new
            self.uppers[-1] = upper
            return
        self._prev_ms = self._last_ms()
        self._last_bound = _bound_len(upper, self._prev_ms)
        self.uppers.append(upper)
        self.modes.append(mode)
        self.size += self._last_bound + _mode_len(mode)
        if isinstance(mode, Ids):
            self.ids += len(mode.ids)
        elif isinstance(mode, Diff):
            self.ids += len(mode.h)

    def frame(self, total: Sequence[int]) -> ReconcileFrame:
        if not self.modes or self.uppers[-1] is not None:
            raise AssertionError("a reconcile frame must end with the range up to +infinity")
        return encode_ranges(list(zip(self.uppers, self.modes, strict=True)), total)


def _needs_reply(modes: Sequence[Mode]) -> bool:
    return any(isinstance(m, Fp | Ids) for m in modes)


# --------------------------------------------------------------------------- the session

_Range = tuple[Bound, Bound | None]
_TOTAL_WORDS = TOTAL_FP_LEN // 8


@dataclass(slots=True)
class Reconciler:
    """One side of one reconciliation session over a fixed set (``RangeView``); see the module docstring.

    The initiator calls ``start()`` and sends the frame; then each side calls ``receive(body)``
    for every frame it gets and sends what it returns, until it returns None (done). ``need``
    and ``have`` hold the ids found (each once, in the order found); ``complete`` is True when
    the session ended by itself rather than by a limit.
    """

    view: RangeView
    limits: ReconcileLimits = field(default_factory=ReconcileLimits)
    need: list[bytes] = field(default_factory=list)
    have: list[bytes] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    done: bool = False
    complete: bool = False
    nonce: int = 0  # the initiator's: salts the session's fingerprints (e.g. its count of sessions)
    verified: bool | None = None  # the result matched the peer's total fingerprint (None: not checked)
    _salt: bytes = b""
    _peer_total: bytes | None = None
    _pending_t: tuple[int, ...] = ()  # the t words of our first frame
    _need_set: set[bytes] = field(default_factory=set)
    _have_set: set[bytes] = field(default_factory=set)
    _sent_ids: dict[_Range, int] = field(default_factory=dict)  # our Ids ranges of the last frame
    _sent_fp: set[_Range] = field(default_factory=set)  # our Fp ranges of the last frame

    # ------------------------------------------------------------------ driving

    def start(self) -> bytes:
        """The initiator's first frame (its whole set, split into buckets, or its ids if few)."""
        if self.frames_sent or self.frames_received:
            raise ValueError("start() is the first call of the initiator only")
        if not 0 <= self.nonce < 2**64:
            raise ValueError("the nonce is a u64")
        self._pending_t = (*_words(self._total()), self.nonce)
        self._salt = b"".join(w.to_bytes(8, "big") for w in self._pending_t)
        out = _Out(self.limits)
        if not self._split(out, MIN_BOUND, None, 0, len(self.view), None, self.limits.buckets):
            self._close_with_fp(out, MIN_BOUND)
        body = self._send(out)
        assert body is not None  # max_rounds >= 1
        return body

    def receive(self, body: bytes) -> bytes | None:
        """Process one frame from the peer; returns the frame body to send, or None when done."""
        if self.done:
            raise ProtocolError("reconcile: a frame after the session ended")
        lim = self.limits
        if len(body) > lim.max_frame:
            raise ProtocolError(f"reconcile: a {len(body)}-byte frame exceeds the {lim.max_frame}-byte limit")
        try:
            frame = ReconcileFrame.decode(body)
        except ProtocolError:
            raise
        except EcacError as e:
            raise ProtocolError(f"reconcile: bad frame: {e}") from None
        if len(frame.m) > lim.max_ranges:
            raise ProtocolError(f"reconcile: {len(frame.m)} ranges exceed the limit of {lim.max_ranges}")
        if len(frame.i) > _WORDS_PER_ID * lim.max_ids:
            n = len(frame.i) // _WORDS_PER_ID
            raise ProtocolError(f"reconcile: {n} ids in one frame exceed the limit of {lim.max_ids}")
        ranges = frame.ranges()
        self._read_total(frame.t)
        self.frames_received += 1
        self.bytes_received += len(body)
        sent_ids, self._sent_ids = self._sent_ids, {}
        sent_fp, self._sent_fp = self._sent_fp, set()
        v = self.view
        # our ranks and fingerprint of every Fp range, and from them the density of differences
        ours: list[tuple[int, int, int] | None] = []
        compared = differ = keys = 0
        for lo, hi, mode in ranges:
            if not isinstance(mode, Fp):
                ours.append(None)
                continue
            a, b = v.rank(lo), v.rank(hi)
            f = wire_fp(v.fingerprint(a, b, self._salt))
            ours.append((a, b, f))
            if max(b - a, mode.c):
                compared += 1
                keys += max(b - a, mode.c)
                differ += (b - a, f) != (mode.c, mode.f)
        density = _density(compared, differ, keys)
        out = _Out(lim)
        for (lo, hi, mode), mine in zip(ranges, ours, strict=True):
            if isinstance(mode, Diff):
                self._on_diff(lo, hi, mode, sent_ids, sent_fp)  # knowledge only: answered by a Skip
            if out.full:
                continue  # covered by the closing Fp
            if isinstance(mode, Skip | Diff):
                if out.room(1, 0):
                    out.add(hi, SKIP)
                else:
                    self._close_with_fp(out, lo)
            elif isinstance(mode, Fp):
                assert mine is not None
                if not self._answer_fp(out, lo, hi, mode, mine, sent_fp, density):
                    self._close_with_fp(out, lo)
            elif not self._answer_ids(out, lo, hi, mode):
                self._close_with_fp(out, lo)
        if not _needs_reply([m for _, _, m in ranges]):
            self._completed()
            return None
        return self._send(out)

    def _send(self, out: _Out) -> bytes | None:
        if self.frames_sent >= self.limits.max_rounds:
            self.done = True  # by a limit: complete stays False
            return None
        body = out.frame(self._pending_t).encode()
        self._pending_t = ()
        if len(body) > self.limits.max_frame:  # pragma: no cover - the size estimate is an upper bound
            raise AssertionError(f"reconcile frame of {len(body)} bytes exceeds the limit")
        self.frames_sent += 1
        self.bytes_sent += len(body)
        if not _needs_reply(out.modes):
            self._completed()
        return body

    # ------------------------------------------------------------------ the totals

    def _total(self) -> bytes:
        v = self.view
        return total_fingerprint(v.sum_range(0, len(v)), len(v))

    def _read_total(self, t: Sequence[int]) -> None:
        """The ``t`` words: the initiator's total and nonce in its first frame, the responder's
        total in its first, nothing later."""
        if self.frames_received:
            want = 0
        elif self.frames_sent:
            want = _TOTAL_WORDS  # we initiated: the responder's first frame
        else:
            want = _TOTAL_WORDS + 1  # we respond: the initiator's first frame (its salt)
        if len(t) != want:
            raise ProtocolError(f"reconcile: this frame's t holds {want} words, not {len(t)}")
        if want:
            raw = b"".join(w.to_bytes(8, "big") for w in t)
            self._peer_total = raw[:TOTAL_FP_LEN]
            if want > _TOTAL_WORDS:
                self._salt = raw
                self._pending_t = _words(self._total())

    def _completed(self) -> None:
        """The session ended by itself: check the result against the peer's total fingerprint (a
        range fingerprint collision, 2^-32 each, would leave a difference unfound)."""
        self.done = True
        v = self.view
        total = sum(id_value(x) for x in self.need) - sum(id_value(x) for x in self.have)
        count = len(v) + len(self.need) - len(self.have)
        self.verified = total_fingerprint(v.sum_range(0, len(v)) + total, count) == self._peer_total
        self.complete = self.verified

    # ------------------------------------------------------------------ results

    def _found_need(self, x: bytes) -> None:
        if x not in self._need_set:
            self._need_set.add(x)
            self.need.append(x)

    def _found_have(self, x: bytes) -> None:
        if x not in self._have_set:
            self._have_set.add(x)
            self.have.append(x)

    # ------------------------------------------------------------------ answering one range

    def _answer_fp(
        self,
        out: _Out,
        lo: Bound,
        hi: Bound | None,
        mode: Fp,
        mine: tuple[int, int, int],
        sent_fp: set[_Range],
        density: float | None,
    ) -> bool:
        """Append the answer to one Fp range; False when the frame has no room for it."""
        a, b, f = mine
        n = b - a
        if (n, f) == (mode.c, mode.f):
            if not out.room(1, 0):
                return False
            out.add(hi, SKIP)
            return True
        if n == mode.c + 1 and n <= self.limits.decode_max:
            x = self._decode_one(a, b, mode.f)
            if x is not None:
                diff = Diff((x,))
                if not out.room(_mode_len(diff), 1):
                    return False
                out.add(hi, diff)
                self._found_have(x)
                return True
        elif n + 1 == mode.c and (lo, hi) not in sent_fp:
            # the peer holds one key more: our fingerprint lets it decode (unless it echoes ours)
            echo = Fp(n, f)
            if not out.room(_mode_len(echo), 0):
                return False
            out.add(hi, echo)
            self._sent_fp.add((lo, hi))
            return True
        return self._split(out, lo, hi, a, b, mode.c, _buckets(self.limits, n, mode.c, density))

    def _decode_one(self, a: int, b: int, peer_fp: int) -> bytes | None:
        """The one key of ours in ranks ``[a, b)`` whose removal leaves the peer's fingerprint, if
        exactly one does (one hash per key: the fingerprint is a hash of the sum and count)."""
        v = self.view
        total = v.sum_range(a, b)
        c = b - a - 1
        hits = [
            k[3]
            for k in v.keys(a, b)
            if wire_fp(fingerprint_of(total - id_value(k[3]), c, self._salt)) == peer_fp
        ]
        return hits[0] if len(hits) == 1 else None

    def _answer_ids(self, out: _Out, lo: Bound, hi: Bound | None, mode: Ids) -> bool:
        """Append the answer to one Ids range; False when the frame has no room for it."""
        v = self.view
        a, b = v.rank(lo), v.rank(hi)
        theirs = mode.ids
        their_set = set(theirs)
        if len(their_set) != len(theirs):
            raise ProtocolError("reconcile: an id list repeats an id")
        mine = [k[3] for k in v.keys(a, b)]
        my_set = set(mine)
        only_mine = tuple(x for x in mine if x not in their_set)
        bits = bytearray((len(theirs) + 7) // 8)
        for i, x in enumerate(theirs):
            if x not in my_set:
                bits[i >> 3] |= 1 << (i & 7)
        diff = Diff(only_mine, bytes(bits))
        if out.room(_mode_len(diff), len(only_mine)):
            for x in theirs:
                if x not in my_set:
                    self._found_need(x)
            for x in only_mine:
                self._found_have(x)
            out.add(hi, diff)
            return True
        # too many of ours for one Diff: learn theirs, then list ours (as much as fits, the rest of
        # the key space as one Fp), which the peer answers with a Diff
        if not out.room(200, 1):
            return False
        for x in theirs:
            if x not in my_set:
                self._found_need(x)
        return self._split(out, lo, hi, a, b, len(theirs), self.limits.buckets)

    def _split(
        self, out: _Out, lo: Bound, hi: Bound | None, a: int, b: int, peer_count: int | None, k: int
    ) -> bool:
        """Our keys of rank ``[a, b)`` in ``[lo, hi)``: as Ids when few (or the peer holds few), else
        as ``k`` fingerprints. False when the frame has no room for it."""
        lim = self.limits
        v = self.view
        n = b - a
        if n <= lim.id_list_max or (peer_count is not None and peer_count <= lim.id_list_max):
            keys = v.keys(a, b)
            ids = tuple(k[3] for k in keys)
            mode = Ids(ids)
            if out.room(_mode_len(mode), n):
                out.add(hi, mode)
                self._sent_ids[(lo, hi)] = n
                return True
            # as many as fit, then the rest of the key space as one Fp (answered next round)
            spare = (lim.max_frame - out.size - _BOUND_MAX - 2 * _CLOSE_MAX - 32) // (_WORDS_PER_ID * 9)
            fit = min(n - 1, lim.max_ids - out.ids, spare)
            if fit <= 0:
                return False
            cut = min_bound(keys[fit - 1], keys[fit])
            out.add(cut, Ids(ids[:fit]))
            self._sent_ids[(lo, cut)] = fit
            self._close_with_fp(out, cut)
            return True
        k = max(2, min(k, lim.buckets, n))  # n > id_list_max >= 1, k <= n: every bucket holds a key
        if not out.room(k * (_BOUND_MAX + 19), 0, k):
            return False
        start = a
        low = lo
        for j in range(k):
            end = a + (n * (j + 1)) // k
            upper = hi if j == k - 1 else min_bound(v.key_at(end - 1), v.key_at(end))
            out.add(upper, Fp(end - start, wire_fp(v.fingerprint(start, end, self._salt))))
            self._sent_fp.add((low, upper))
            start, low = end, upper if upper is not None else low
        return True

    def _close_with_fp(self, out: _Out, lo: Bound) -> None:
        """Close the frame with one Fp over ``[lo, +infinity)`` (the peer answers it next round)."""
        v = self.view
        a = v.rank(lo)
        out.add(None, Fp(len(v) - a, wire_fp(v.fingerprint(a, len(v), self._salt))))
        self._sent_fp.add((lo, None))
        out.full = True

    def _on_diff(
        self, lo: Bound, hi: Bound | None, mode: Diff, sent_ids: dict[_Range, int], sent_fp: set[_Range]
    ) -> None:
        theirs = mode.h
        if len(set(theirs)) != len(theirs):
            raise ProtocolError("reconcile: an id list repeats an id")
        v = self.view
        a = v.rank(lo)
        n = sent_ids.get((lo, hi))
        if n is None:
            if (lo, hi) not in sent_fp:
                raise ProtocolError("reconcile: a Diff range that answers no Ids or Fp we sent")
            if mode.m:
                raise ProtocolError("reconcile: a Diff that answers an Fp has an empty bitmap")
            mine = v.keys(a, v.rank(hi)) if theirs else []
        else:
            mine = v.keys(a, a + n)
            if len(mode.m) != (n + 7) // 8 or (n % 8 and mode.m[-1] >> (n % 8)):
                raise ProtocolError(f"reconcile: a Diff bitmap must have exactly {n} bits")
            for i, k in enumerate(mine):
                if mode.m[i >> 3] >> (i & 7) & 1:
                    self._found_have(k[3])
        mine_ids = {k[3] for k in mine}
        for x in theirs:
            if x not in mine_ids:
                self._found_need(x)


def _words(raw: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8))


def _density(compared: int, differ: int, keys: int) -> float | None:
    """Differences per key the peer's Fp ranges show (Poisson: a range of s keys is equal with
    probability e^(-density·s)); None when every range differs (at least one per range)."""
    if not compared or not differ:
        return 0.0
    if differ == compared:
        return None
    return -math.log1p(-differ / compared) * compared / keys


def _buckets(lim: ReconcileLimits, n: int, peer_count: int, density: float | None) -> int:
    """Sub-ranges for a differing range of ``n`` of our keys: about one difference each, as the
    frame's density predicts (scattered differences), or ``buckets`` when the range holds more
    than the density predicts (clustered ones)."""
    if density is None:
        return lim.buckets
    lam = max(n, peer_count) * density
    if lam < 0.5:
        # this range differs (and did not decode) although it should hold no difference: they are
        # clustered here (a recent fork), so split it as finely as allowed, not in halves per round
        return lim.buckets
    expected = lam / -math.expm1(-lam)  # given that the range differs
    expected = max(expected, abs(n - peer_count))
    return max(2, min(lim.buckets, math.ceil(expected / _DIFFS_PER_BUCKET)))
