"""Range-based set reconciliation (``/ecac/reconcile/1``): which complete ops two nodes differ by.

Our own implementation of the idea behind Negentropy (range-based set reconciliation, RBSR):
both sides hold a sorted set of keys ``(physical_ms, logical, node_id, op_id)`` (the complete
ops, ``ecac.core.rangefp.RangeTree``). A frame is a sequence of consecutive *ranges* covering
the whole key space, each with a *mode*:

* ``Skip``: nothing to say about this range (equal, or already resolved);
* ``Fp(c, f)``: the sender holds ``c`` keys in the range and their fingerprint is ``f``;
* ``Ids(ids)``: every id the sender holds in the range (in key order);
* ``Diff(h, m)``: the answer to the receiver's own ``Ids`` for exactly this range: ``h`` = the
  ids the sender holds there that the receiver lacks, ``m`` = a bitmap over the receiver's list,
  bit i set when the sender lacks the receiver's i-th id.

Receiving ``Fp``: an equal fingerprint gives ``Skip``; a different one is split: when the
receiver holds at most ``id_list_max`` keys there (or the sender says it holds that few), it
sends its ``Ids``; otherwise ``buckets`` sub-ranges of equal size (by its own keys), each as
``Fp``. Receiving ``Ids`` gives a ``Diff`` (or, if the receiver's extra ids there are too many
for the frame, its own ``Ids`` of the range, as many as fit); receiving ``Diff`` resolves the
range. So after a range is resolved **both** sides know its symmetric difference: ``need``
(ids the peer holds that we lack: they feed the sync planner's want-list) and ``have`` (ids we
hold that the peer lacks: the peer learns them as its own ``need``).

A frame with no ``Fp`` and no ``Ids`` needs no answer: its sender is done once it sent it, its
receiver once it processed it. The initiator's first frame splits its whole set into buckets.

**Limits** (``ReconcileLimits``): frame body bytes, ranges and ids per frame, and frames sent
per side. When the output would exceed a frame limit, the rest of the key space from the first
range not answered is sent as one ``Fp`` (the peer splits it again next round), so every frame
makes progress; after ``max_rounds`` frames a side stops, ``complete`` stays False and the ids
found so far are still valid (anti-entropy runs another session later). Malformed frames
(strict decoding, bounds not increasing, a ``Diff`` that answers no ``Ids`` we sent, a wrong
bitmap length, duplicate ids, more ids or ranges than the limits) raise ``ProtocolError``.

Encoding (declarative, ``ecac.core.codec``; byte-exact in docs/protocol.md): the frame is a
struct of three parallel arrays, so per range only values are written, not field names —
``bounds`` (3 u64 per bound: ms delta from the previous bound, logical, node id), ``prefixes``
(the op-id prefix of each bound) and ``modes``. Ids and fingerprints are written as big-endian
u64 words (36 and 18 bytes on the wire instead of the 63 and 31 of an array of uints).

Pure: no I/O, no clock, no randomness; deterministic for given sets and limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ecac.core.codec import ByteVec, Serde, U64Int, serde, variant
from ecac.core.errors import EcacError, ProtocolError
from ecac.core.order import SortKey
from ecac.core.rangefp import FP_LEN, Bound

__all__ = [
    "MIN_BOUND",
    "RECONCILE_PROTOCOL_ID",
    "Diff",
    "Fp",
    "Ids",
    "RangeView",
    "ReconcileFrame",
    "ReconcileLimits",
    "Reconciler",
    "Skip",
    "ids_from_words",
    "ids_to_words",
    "min_bound",
]

RECONCILE_PROTOCOL_ID = "/ecac/reconcile/1"
ID_LEN = 32
_WORDS_PER_ID = ID_LEN // 8
_FP_WORDS = FP_LEN // 8
#: the lower end of the key space (every key is at or above it)
MIN_BOUND: Bound = (0, 0, 0, b"")


class RangeView(Protocol):
    """What a reconciler reads of its set (``RangeTree`` implements it)."""

    def __len__(self) -> int: ...
    def rank(self, bound: Bound | SortKey | None) -> int: ...
    def key_at(self, i: int) -> SortKey: ...
    def fingerprint(self, lo: int, hi: int) -> bytes: ...
    def keys(self, lo: int = 0, hi: int | None = None) -> list[SortKey]: ...


@dataclass(frozen=True, slots=True)
class ReconcileLimits:
    """Tunables of a session; both sides should use the same ``buckets`` / ``id_list_max`` (not required)."""

    buckets: int = 16  # sub-ranges a differing range is split into
    id_list_max: int = 32  # a range with at most this many of our keys is sent as Ids
    max_frame: int = 256 * 1024  # body bytes of one frame (sent and accepted)
    max_ids: int = 4096  # ids per frame (Ids and Diff together)
    max_ranges: int = 4096  # ranges per frame
    max_rounds: int = 32  # frames one side sends in a session

    def __post_init__(self) -> None:
        if not 2 <= self.buckets <= 256:
            raise ValueError("buckets must be between 2 and 256")
        if self.id_list_max < self.buckets:
            raise ValueError("id_list_max must be at least buckets")
        if self.max_frame < max(4096, self.buckets * 100 + 2048) or self.max_frame > 2**32 - 1:
            raise ValueError("max_frame must be between max(4096, 100 × buckets + 2048) and 2^32-1 bytes")
        if self.max_ids < self.id_list_max or self.max_ranges < self.buckets + 4 or self.max_rounds < 1:
            raise ValueError("max_ids must be >= id_list_max, max_ranges >= buckets + 4, max_rounds >= 1")


# --------------------------------------------------------------------------- wire


@variant
@dataclass(frozen=True, slots=True)
class Skip(Serde):
    """Nothing to say about the range."""

    NAME: ClassVar[str] = "Skip"


@variant
@dataclass(frozen=True, slots=True)
class Fp(Serde):
    """The sender holds ``c`` keys in the range with fingerprint ``f`` (2 big-endian u64 words)."""

    c: U64Int
    f: tuple[U64Int, ...]
    NAME: ClassVar[str] = "Fp"

    def __post_init__(self) -> None:
        if len(self.f) != _FP_WORDS:
            raise ProtocolError(f"reconcile: a fingerprint is {_FP_WORDS} u64 words, not {len(self.f)}")


@variant(newtype=True)
@dataclass(frozen=True, slots=True)
class Ids(Serde):
    """Every id the sender holds in the range, in key order, 4 big-endian u64 words each."""

    ids: tuple[U64Int, ...]
    NAME: ClassVar[str] = "Ids"

    def __post_init__(self) -> None:
        if len(self.ids) % _WORDS_PER_ID:
            raise ProtocolError("reconcile: an id list must hold 4 u64 words per id")


@variant
@dataclass(frozen=True, slots=True)
class Diff(Serde):
    """Answer to the receiver's ``Ids``: ids only the sender holds (``h``), bitmap of the receiver's
    ids the sender lacks (``m``, bit i of byte i // 8, least significant first)."""

    h: tuple[U64Int, ...]
    m: ByteVec
    NAME: ClassVar[str] = "Diff"

    def __post_init__(self) -> None:
        if len(self.h) % _WORDS_PER_ID:
            raise ProtocolError("reconcile: an id list must hold 4 u64 words per id")


Mode = Skip | Fp | Ids | Diff
SKIP = Skip()


@serde
@dataclass(frozen=True, slots=True)
class ReconcileFrame(Serde):
    """One frame: ``len(modes)`` consecutive ranges; range i ends at bound i (the last at +infinity).

    ``bounds`` holds 3 words per bound (ms as a delta from the previous bound's ms, logical,
    node id), ``prefixes`` one op-id prefix (0–32 bytes) per bound.
    """

    bounds: tuple[U64Int, ...]
    prefixes: tuple[ByteVec, ...]
    modes: tuple[Mode, ...]

    def ranges(self) -> list[tuple[Bound, Bound | None, Mode]]:
        """``(lower, upper, mode)`` per range (upper None = +infinity), checking the layout."""
        n = len(self.modes)
        if n == 0:
            raise ProtocolError("reconcile: a frame has at least one range")
        if len(self.prefixes) != n - 1 or len(self.bounds) != 3 * (n - 1):
            raise ProtocolError("reconcile: a frame needs 3 bound words and 1 prefix per range but the last")
        out: list[tuple[Bound, Bound | None, Mode]] = []
        lo: Bound = MIN_BOUND
        ms = 0
        for i in range(n - 1):
            ms += self.bounds[3 * i]
            p = self.prefixes[i]
            if len(p) > ID_LEN:
                raise ProtocolError(f"reconcile: a bound's id prefix is at most {ID_LEN} bytes")
            hi = (ms, self.bounds[3 * i + 1], self.bounds[3 * i + 2], p)
            if hi <= lo:
                raise ProtocolError("reconcile: range bounds must increase")
            out.append((lo, hi, self.modes[i]))
            lo = hi
        out.append((lo, None, self.modes[-1]))
        return out


def ids_to_words(ids: Sequence[bytes]) -> tuple[int, ...]:
    """32-byte ids as 4 big-endian u64 words each."""
    out: list[int] = []
    for x in ids:
        out.extend(int.from_bytes(x[i : i + 8], "big") for i in range(0, ID_LEN, 8))
    return tuple(out)


def ids_from_words(words: Sequence[int]) -> list[bytes]:
    """The inverse of ``ids_to_words``."""
    return [
        b"".join(w.to_bytes(8, "big") for w in words[i : i + _WORDS_PER_ID])
        for i in range(0, len(words), _WORDS_PER_ID)
    ]


def _fp_words(fp: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(fp[i : i + 8], "big") for i in range(0, FP_LEN, 8))


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


def _words_len(words: Sequence[int]) -> int:
    return _uint_len(len(words)) + sum(_uint_len(w) for w in words)


def _mode_len(m: Mode) -> int:
    if isinstance(m, Skip):
        return 5
    if isinstance(m, Fp):
        return 10 + _uint_len(m.c) + _words_len(m.f)
    if isinstance(m, Ids):
        return 5 + _words_len(m.ids)
    return 12 + _words_len(m.h) + _bytes_len(m.m)


_FRAME_OVERHEAD = 1 + 7 + 9 + 6 + 3 * 5  # map head, the three keys, three array heads (at most)
_BOUND_MAX = 3 * 9 + 1 + 2 * ID_LEN  # the largest bound


class _Out:
    """The frame being built: ranges in order, adjacent Skips merged, sizes tracked."""

    def __init__(self, limits: ReconcileLimits) -> None:
        self.limits = limits
        self.uppers: list[Bound | None] = []
        self.modes: list[Mode] = []
        self.size = _FRAME_OVERHEAD
        self.ids = 0
        self.full = False

    def room(self, mode_len: int, ids: int) -> bool:
        """Whether a range of that size still fits, keeping room for the closing Fp range."""
        lim = self.limits
        reserve = 2 * (_BOUND_MAX + 40)
        return (
            self.size + _BOUND_MAX + mode_len + reserve <= lim.max_frame
            and self.ids + ids <= lim.max_ids
            and len(self.modes) + 3 <= lim.max_ranges
        )

    def add(self, upper: Bound | None, mode: Mode) -> None:
        if isinstance(mode, Skip) and self.modes and isinstance(self.modes[-1], Skip):
            self.uppers[-1] = upper
            return
        self.uppers.append(upper)
        self.modes.append(mode)
        self.size += _BOUND_MAX + _mode_len(mode)
        if isinstance(mode, Ids):
            self.ids += len(mode.ids) // _WORDS_PER_ID
        elif isinstance(mode, Diff):
            self.ids += len(mode.h) // _WORDS_PER_ID

    def frame(self) -> ReconcileFrame:
        if not self.modes or self.uppers[-1] is not None:
            raise AssertionError("a reconcile frame must end with the range up to +infinity")
        words: list[int] = []
        prefixes: list[bytes] = []
        ms = 0
        for u in self.uppers[:-1]:
            assert u is not None
            words += (u[0] - ms, u[1], u[2])
            ms = u[0]
            prefixes.append(u[3])
        return ReconcileFrame(tuple(words), tuple(prefixes), tuple(self.modes))


def _needs_reply(modes: Sequence[Mode]) -> bool:
    return any(isinstance(m, Fp | Ids) for m in modes)


# --------------------------------------------------------------------------- the session


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
    _need_set: set[bytes] = field(default_factory=set)
    _have_set: set[bytes] = field(default_factory=set)
    _sent_ids: dict[tuple[Bound, Bound | None], int] = field(default_factory=dict)  # our Ids ranges

    # ------------------------------------------------------------------ driving

    def start(self) -> bytes:
        """The initiator's first frame (its whole set, split into buckets, or its ids if few)."""
        if self.frames_sent or self.frames_received:
            raise ValueError("start() is the first call of the initiator only")
        out = _Out(self.limits)
        if not self._split(out, MIN_BOUND, None, 0, len(self.view), peer_count=None):
            self._close_with_fp(out, MIN_BOUND)
        body = self._send(out)
        assert body is not None  # max_rounds >= 1
        return body

    def receive(self, body: bytes) -> bytes | None:
        """Process one frame from the peer; returns the frame body to send, or None when done."""
        if self.done:
            raise ProtocolError("reconcile: a frame after the session ended")
        if len(body) > self.limits.max_frame:
            raise ProtocolError(
                f"reconcile: a {len(body)}-byte frame exceeds the {self.limits.max_frame}-byte limit"
            )
        try:
            frame = ReconcileFrame.decode(body)
        except ProtocolError:
            raise
        except EcacError as e:
            raise ProtocolError(f"reconcile: bad frame: {e}") from None
        ranges = frame.ranges()
        self._check_limits(frame)
        self.frames_received += 1
        self.bytes_received += len(body)
        sent_ids, self._sent_ids = self._sent_ids, {}
        out = _Out(self.limits)
        for lo, hi, mode in ranges:
            if isinstance(mode, Diff):
                self._on_diff(lo, hi, mode, sent_ids)  # knowledge only: answered by a Skip
            if out.full:
                continue  # covered by the closing Fp
            if isinstance(mode, Skip | Diff):
                if out.room(5, 0):
                    out.add(hi, SKIP)
                else:
                    self._close_with_fp(out, lo)
            elif not self._answer(out, lo, hi, mode):
                self._close_with_fp(out, lo)
        if not _needs_reply(frame.modes):
            self.done = self.complete = True
            return None
        return self._send(out)

    def _send(self, out: _Out) -> bytes | None:
        if self.frames_sent >= self.limits.max_rounds:
            self.done = True  # by a limit: complete stays False
            return None
        body = out.frame().encode()
        if len(body) > self.limits.max_frame:  # pragma: no cover - the size estimate is an upper bound
            raise AssertionError(f"reconcile frame of {len(body)} bytes exceeds the limit")
        self.frames_sent += 1
        self.bytes_sent += len(body)
        if not _needs_reply(out.modes):
            self.done = self.complete = True
        return body

    def _check_limits(self, frame: ReconcileFrame) -> None:
        lim = self.limits
        if len(frame.modes) > lim.max_ranges:
            raise ProtocolError(f"reconcile: {len(frame.modes)} ranges exceed the limit of {lim.max_ranges}")
        n = 0
        for m in frame.modes:
            if isinstance(m, Ids):
                n += len(m.ids) // _WORDS_PER_ID
            elif isinstance(m, Diff):
                n += len(m.h) // _WORDS_PER_ID
        if n > lim.max_ids:
            raise ProtocolError(f"reconcile: {n} ids in one frame exceed the limit of {lim.max_ids}")

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

    def _answer(self, out: _Out, lo: Bound, hi: Bound | None, mode: Mode) -> bool:
        """Append the answer to one Fp or Ids range; False when the frame has no room for it."""
        v = self.view
        a, b = v.rank(lo), v.rank(hi)
        if isinstance(mode, Fp):
            if _fp_words(v.fingerprint(a, b)) == mode.f and mode.c == b - a:
                if not out.room(5, 0):
                    return False
                out.add(hi, SKIP)
                return True
            return self._split(out, lo, hi, a, b, peer_count=mode.c)
        assert isinstance(mode, Ids)
        theirs = ids_from_words(mode.ids)
        their_set = set(theirs)
        if len(their_set) != len(theirs):
            raise ProtocolError("reconcile: an id list repeats an id")
        mine = [k[3] for k in v.keys(a, b)]
        my_set = set(mine)
        only_mine = [x for x in mine if x not in their_set]
        bits = bytearray((len(theirs) + 7) // 8)
        for i, x in enumerate(theirs):
            if x not in my_set:
                bits[i >> 3] |= 1 << (i & 7)
        diff = Diff(ids_to_words(only_mine), bytes(bits))
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
        return self._split(out, lo, hi, a, b, peer_count=len(theirs))

    def _split(self, out: _Out, lo: Bound, hi: Bound | None, a: int, b: int, peer_count: int | None) -> bool:
        """Our keys of rank ``[a, b)`` in ``[lo, hi)``: as Ids when few (or the peer holds few), else
        as ``buckets`` fingerprints. False when the frame has no room for it."""
        lim = self.limits
        v = self.view
        n = b - a
        if n <= lim.id_list_max or (peer_count is not None and peer_count <= lim.id_list_max):
            keys = v.keys(a, b)
            ids = [k[3] for k in keys]
            mode = Ids(ids_to_words(ids))
            if out.room(_mode_len(mode), n):
                out.add(hi, mode)
                self._sent_ids[(lo, hi)] = n
                return True
            # as many as fit, then the rest of the key space as one Fp (answered next round)
            spare = (lim.max_frame - out.size - 4 * _BOUND_MAX - 400) // (_WORDS_PER_ID * 9 + 1)
            fit = min(n - 1, lim.max_ids - out.ids, spare)
            if fit <= 0:
                return False
            cut = min_bound(keys[fit - 1], keys[fit])
            out.add(cut, Ids(ids_to_words(ids[:fit])))
            self._sent_ids[(lo, cut)] = fit
            self._close_with_fp(out, cut)
            return True
        k = lim.buckets  # n > id_list_max >= buckets: every bucket holds a key
        if not out.room(k * 60, 0):
            return False
        start = a
        for j in range(k):
            end = a + (n * (j + 1)) // k
            upper = hi if j == k - 1 else min_bound(v.key_at(end - 1), v.key_at(end))
            out.add(upper, Fp(end - start, _fp_words(v.fingerprint(start, end))))
            start = end
        return True

    def _close_with_fp(self, out: _Out, lo: Bound) -> None:
        """Close the frame with one Fp over ``[lo, +infinity)`` (the peer answers it next round)."""
        v = self.view
        a = v.rank(lo)
        out.add(None, Fp(len(v) - a, _fp_words(v.fingerprint(a, len(v)))))
        out.full = True

    def _on_diff(
        self, lo: Bound, hi: Bound | None, mode: Diff, sent: dict[tuple[Bound, Bound | None], int]
    ) -> None:
        n = sent.get((lo, hi))
        if n is None:
            raise ProtocolError("reconcile: a Diff range that answers no id list we sent")
        v = self.view
        a = v.rank(lo)
        mine = v.keys(a, a + n)
        if len(mode.m) != (n + 7) // 8 or (n % 8 and mode.m[-1] >> (n % 8)):
            raise ProtocolError(f"reconcile: a Diff bitmap must have exactly {n} bits")
        theirs = ids_from_words(mode.h)
        if len(set(theirs)) != len(theirs):
            raise ProtocolError("reconcile: an id list repeats an id")
        for i, k in enumerate(mine):
            if mode.m[i >> 3] >> (i & 7) & 1:
                self._found_have(k[3])
        mine_ids = {k[3] for k in mine}
        for x in theirs:
            if x not in mine_ids:
                self._found_need(x)
