"""Project identity on connect and access-controlled sync (``/ecac/hello/1``; docs/security.md §2 and §5).

Right after a connection is up, each side opens one ``/ecac/hello/1`` stream: it writes its
``Hello`` (``ecac.sync.hello``: profile, genesis id, subject key and the subject's signature
binding this node's PeerId) as one length-prefixed frame and reads the peer's; the responder
reads first, then answers with its own. Two peers that connect at once run two exchanges;
either verified hello admits the peer.

* **Identity.** A verified hello of another profile or genesis is refused on both profiles:
  one log line (``refusing peer …: it is of …, this node is of …``), counted, the connection
  closed. A **strict** node also refuses a peer that sends no valid hello within
  ``HELLO_TIMEOUT`` or does not speak the protocol; until a peer's hello is verified the node
  tells the sync coordinator nothing about it (no fetch, no serve, no reconciliation). A
  **reference** node answers hello but does not require it: Rust and JS reference peers, which
  do not speak it, are served as before.
* **Access (strict).** ``refusal(peer)`` is None when the peer's proven subject is live at this
  node's latest replayed state (``ecac.core.liveness``, recomputed once per published state by
  ``set_live``); otherwise its reason. The node checks it on every ``/ecac/sync/1`` and
  ``/ecac/reconcile/1`` stream (refused: stream reset, counted, one log line per peer and
  reason), before it starts a reconciliation, and on every gossip message a neighbour forwards
  and on the originator of every announce (refused: dropped, not forwarded, counted). So a peer
  whose grant a Revoke kills is refused from the first request after the Revoke was replayed.
* **Refusal notices** (``/ecac/refused/1``, ``ecac.sync.refusal``). Neither refused protocol has
  an error frame, so whenever a strict node logs a refusal of a hello-verified peer (once per
  peer, what and reason: the same bookkeeping), it also opens a stream to that peer and writes
  one ``RefusalNotice`` ``{v, what, reason, subject_pk}`` (the liveness code, never prose). The
  send is a task in the node's nursery (``spawn``), at most ``MAX_NOTICES_IN_FLIGHT`` at once and
  ``NOTICE_TIMEOUT`` each, never to a peer that is not connected or does not speak the protocol;
  a refusal for want of a verified hello sends none. Both profiles accept notices: from a peer
  whose hello is verified only, at most ``MAX_NOTICES_PER_PEER`` per connection (others: reset,
  ``refusal_notice_ignored``). An accepted one is logged (``peer … refuses to serve us sync:
  subject … holds no live role (no_grant)``), counted and shown in ``status()`` (``peer_subjects``
  → ``refused_us``: what → reason, for this connection); a malformed one, or one that judges
  another subject than ours, is one log line and ``refusal_notice_invalid``, nothing else. The
  requester needs no further action: the reset already failed its request, and the sync
  coordinator backs off from that peer as after any reset.

Counters (``/status`` → ``counters``): ``hello_sent``, ``hello_verified``, ``hello_refused``
(another project or profile), ``hello_invalid`` (garbage, bad signature), ``hello_missing``
(strict: none in time, or the protocol not spoken), ``hello_unsupported`` (reference: a peer
without it), ``access_refused_sync``, ``access_refused_reconcile``, ``access_refused_announces``;
notices: ``refusal_notice_sent``, ``refusal_notice_failed`` (not delivered: too many in flight, the
peer gone or without the protocol, a failure or timeout), ``refused_by_peer`` (notices accepted),
``refusal_notice_invalid``, ``refusal_notice_ignored``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from ecac.core.errors import EcacError, ProtocolError
from ecac.core.liveness import NOT_LOADED, LiveSubjects, subject_is_live
from ecac.core.opcodec import decode_op
from ecac.core.profile import Profile
from ecac.sync.hello import (
    HELLO_PROTOCOL_ID,
    MAX_HELLO_FRAME,
    Hello,
    Identity,
    identity_mismatch,
    make_hello,
    verify_hello,
)
from ecac.sync.refusal import (
    MAX_REFUSAL_FRAME,
    REFUSED_PROTOCOL_ID,
    make_notice,
    not_live_text,
    verify_notice,
)
from ecac.sync.wire import FrameReader, encode_frame

__all__ = [
    "HELLO_PROTOCOL_ID",
    "HELLO_TIMEOUT",
    "REFUSED_PROTOCOL_ID",
    "AccessCounters",
    "PeerAccess",
    "identity_of",
    "import_genesis",
]

log = logging.getLogger("ecac.node")

#: a strict node closes a connection whose peer sent no valid hello within this
HELLO_TIMEOUT = 10.0
#: one hello frame (either direction) must arrive within this
HELLO_READ_TIMEOUT = 5.0
NO_HELLO = "no verified hello from this peer"
#: a refusal notice (open, write, the receiver's close) is given up after this
NOTICE_TIMEOUT = 5.0
#: notices being sent at once, to all peers together (beyond: not sent, ``refusal_notice_failed``)
MAX_NOTICES_IN_FLIGHT = 16
#: notices accepted from one peer per connection (what × reason changes; beyond: ignored)
MAX_NOTICES_PER_PEER = 8
#: ``_log_once``'s key for announces ("announce") -> a notice's ``what``
_NOTICE_WHAT = {"sync": "sync", "reconcile": "reconcile", "announce": "announces"}

Spawn = Callable[[Callable[[], Awaitable[None]]], bool]


@dataclass(slots=True)
class AccessCounters:
    """Plain ints, changed on the event loop only; shown in ``/status``."""

    hello_sent: int = 0
    hello_verified: int = 0
    hello_refused: int = 0
    hello_invalid: int = 0
    hello_missing: int = 0
    hello_unsupported: int = 0
    access_refused_sync: int = 0
    access_refused_reconcile: int = 0
    access_refused_announces: int = 0
    refusal_notice_sent: int = 0
    refusal_notice_failed: int = 0
    refused_by_peer: int = 0
    refusal_notice_invalid: int = 0
    refusal_notice_ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Refused(Exception):
    """The peer's hello (or its absence) refuses it; the message says why."""


class _Truncated(EcacError):
    """The stream ended inside a frame."""


class PeerAccess:
    """Hellos, proven subjects and the access decisions of one node (see the module docstring).

    ``on_admitted(peer)`` is called once a strict node verified a peer's hello (the node then
    reports the peer connected to its coordinator); ``on_refused(peer, reason)`` when the peer
    must be disconnected; ``spawn(fn)`` starts ``fn()`` as a task of the node's nursery (False:
    not started) to send a refusal notice (None: no notices are sent). Event-loop only.
    """

    def __init__(
        self,
        host: Any,
        identity: Identity,
        live: LiveSubjects | None,
        subject: SigningKey,
        on_admitted: Callable[[str], None],
        on_refused: Callable[[str, str], None],
        spawn: Spawn | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.subject = subject
        self.subject_pk = bytes(subject.verify_key)
        self.live = live  # strict: the latest live subjects; None under reference
        self._on_admitted = on_admitted
        self._on_refused = on_refused
        self.counters = AccessCounters()
        self.subjects: dict[str, bytes] = {}  # peer -> its verified subject (a hello of our project)
        self._by_key: dict[bytes, str] = {}  # a peer's node key -> peer (announce originators)
        self._refused: dict[str, str] = {}  # peers refused on this connection -> why
        self._greeting: set[str] = set()
        self._logged: dict[tuple[str, str], str] = {}  # (peer, what) -> the last reason logged
        self._hello: bytes | None = None
        # refusal notices (this connection's): sent, and received
        self._spawn = spawn
        self._notices_in_flight = 0
        self._no_notice: set[str] = set()  # peers that do not speak /ecac/refused/1
        self._notices_got: Counter[str] = Counter()  # peer -> notices it sent us
        self.refused_us: dict[str, dict[str, str]] = {}  # peer -> what -> reason, as it told us

    # ------------------------------------------------------------------ decisions

    @property
    def strict(self) -> bool:
        return self.identity.strict

    def admitted(self, peer: str) -> bool:
        """Whether the coordinator may know ``peer``: always under reference, after its hello under strict."""
        if peer in self._refused:
            return False
        return not self.strict or peer in self.subjects

    def refusal(self, peer: str) -> str | None:
        """Why ``peer`` must not be served ops now (None: serve it). Reference: never refused."""
        if not self.strict:
            return None
        subject = self.subjects.get(peer)
        if subject is None:
            return self._refused.get(peer, NO_HELLO)
        judged = self._not_live(peer)
        return None if judged is None else not_live_text(*judged)

    def _not_live(self, peer: str) -> tuple[bytes, str] | None:
        """``(subject, liveness code)`` when ``peer``'s verified subject holds no live role here
        (strict); None when it does, under reference, and for a peer without a verified hello."""
        subject = self.subjects.get(peer)
        if not self.strict or subject is None:
            return None
        live = self.live
        why = NOT_LOADED if live is None else subject_is_live(live, subject)
        return None if why is None else (subject, why)

    def refuse_stream(self, peer: str, what: str, reason: str) -> None:
        """Count and log (once per peer and reason) a refused ``sync`` or ``reconcile`` stream, and
        tell the peer why (a notice, with the log line)."""
        if what == "sync":
            self.counters.access_refused_sync += 1
        else:
            self.counters.access_refused_reconcile += 1
        self._log_once(peer, what, f"refusing {what} to %s: %s", reason)

    def announce_from(self, forwarder: str) -> bool:
        """The gossip filter: under strict, only messages forwarded by a peer we may serve."""
        if not self.strict or self.refusal(forwarder) is None:
            return True
        self.counters.access_refused_announces += 1
        self._log_once(
            forwarder, "announce", "dropping announces forwarded by %s: %s", self.refusal(forwarder)
        )
        return False

    def originator_ok(self, node_key: bytes) -> bool:
        """Under strict, an announce whose originator is a known peer we may not serve is dropped."""
        if not self.strict:
            return True
        peer = self._by_key.get(bytes(node_key))
        if peer is None or self.refusal(peer) is None:
            return True
        self.counters.access_refused_announces += 1
        self._log_once(peer, "announce", "dropping announces of %s: %s", self.refusal(peer))
        return False

    def set_live(self, live: LiveSubjects) -> None:
        self.live = live

    def set_identity(self, identity: Identity) -> bool:
        """The store took a genesis (it was empty): our identity is now strict. True if it changed;
        every admission is then forgotten (the node reconnects its peers)."""
        if identity == self.identity:
            return False
        log.warning("project identity is now %s (was %s)", identity.describe(), self.identity.describe())
        self.identity = identity
        self._hello = None
        self.subjects.clear()
        self._by_key.clear()
        self.refused_us.clear()
        return True

    def forget(self, peer: str) -> None:
        """The peer disconnected: its hello counts for this connection only."""
        self.subjects.pop(peer, None)
        self._refused.pop(peer, None)
        self._by_key = {k: p for k, p in self._by_key.items() if p != peer}
        self._logged = {k: v for k, v in self._logged.items() if k[0] != peer}
        self._no_notice.discard(peer)
        self._notices_got.pop(peer, None)
        self.refused_us.pop(peer, None)

    def prune(self, connected: Iterable[str]) -> None:
        """Forget the peers no longer connected (their disconnect event may have been missed)."""
        live = set(connected)
        known = {*self.subjects, *self._refused, *self._no_notice, *self._notices_got, *self.refused_us}
        known.update(p for p, _ in self._logged)
        for peer in [p for p in known if p not in live]:
            self.forget(peer)

    def told_us(self, peer: str) -> tuple[tuple[str, str], ...]:
        """``(what, reason)`` of the refusal notices ``peer`` sent us on this connection, sorted."""
        return tuple(sorted(self.refused_us.get(peer, {}).items()))

    def status(self) -> dict[str, Any]:
        """``/status`` → ``identity``: our profile, genesis, subject; the peers' proven subjects."""
        live = self.live
        return {
            "profile": self.identity.profile,
            "genesis": None if self.identity.genesis_id is None else self.identity.genesis_id.hex(),
            "subject": self.subject_pk.hex(),
            "peer_subjects": {
                p: {
                    "subject": s.hex(),
                    "serving": self.refusal(p) is None,
                    "refused_us": dict(self.told_us(p)),
                }
                for p, s in sorted(self.subjects.items())
            },
            "live_subjects": None
            if live is None
            else {"admins": len(live.admins), "granted": len(live.roles), "of_ops": live.ops},
        }

    # ------------------------------------------------------------------ the exchange

    def _own_hello(self) -> bytes:
        if self._hello is None:
            self._hello = make_hello(self.subject, self.host.public_key, self.identity).encode()
        return self._hello

    async def greet(self, peer: str) -> None:
        """Our side of the exchange on a new connection (a task per connection, started by the node).

        A transient failure (the stream reset or not opened while the connection settles) is
        retried with a doubling delay until ``HELLO_TIMEOUT``; the peer's own exchange (our
        handler) may admit it meanwhile. A strict node refuses a peer without a verified hello then.
        """
        from ecac.net.host import P2PError, ProtocolNotSupportedError, StreamResetError

        if peer in self._greeting or peer in self._refused:
            return
        self._greeting.add(peer)
        deadline = trio.current_time() + HELLO_TIMEOUT
        delay = 0.1
        try:
            while not self._decided(peer) and self.host.is_connected(peer):
                stream = None
                try:
                    stream = await self.host.open_stream(peer, HELLO_PROTOCOL_ID, timeout=HELLO_READ_TIMEOUT)
                    await self._write(stream)
                    hello = self._check(peer, await self._read(stream))
                    await stream.close()
                    self._admit(peer, hello)
                    return
                except _Refused as e:
                    self._refuse(peer, str(e))
                    return
                except ProtocolNotSupportedError:
                    if self.strict:
                        self.counters.hello_missing += 1
                        self._refuse(
                            peer, f"it does not speak {HELLO_PROTOCOL_ID} (a reference implementation?)"
                        )
                    else:
                        self.counters.hello_unsupported += 1
                        log.debug("%s does not speak %s: served as a reference peer", peer, HELLO_PROTOCOL_ID)
                    return
                except (P2PError, StreamResetError, EcacError, trio.TooSlowError) as e:
                    log.debug("hello to %s failed: %s", peer, e or type(e).__name__)
                    if stream is not None:
                        await stream.reset()
                if trio.current_time() + delay >= deadline:
                    break
                await trio.sleep(delay)
                delay = min(2 * delay, 2.0)
            if self.strict and not self._decided(peer) and self.host.is_connected(peer):
                self.counters.hello_missing += 1
                self._refuse(peer, f"no valid hello within {HELLO_TIMEOUT:g} s")
        finally:
            self._greeting.discard(peer)

    def _decided(self, peer: str) -> bool:
        return peer in self.subjects or peer in self._refused

    async def handle(self, stream: Any) -> None:
        """The ``/ecac/hello/1`` handler: read the peer's hello, answer with ours, decide."""
        peer = stream.peer_id
        try:
            body = await self._read(stream)
        except ProtocolError as e:  # an over-long frame: a broken or hostile peer
            self.counters.hello_invalid += 1
            await stream.reset()
            self._refuse(peer, f"bad hello ({e})")
            return
        except (EcacError, trio.TooSlowError) as e:  # reset, EOF, slow: our own exchange decides
            log.debug("hello from %s failed: %s", peer, e or "no frame in time")
            await stream.reset()
            return
        try:
            hello = self._check(peer, body)
        except _Refused as e:
            await self._answer(stream)  # the peer gets to log why, too
            self._refuse(peer, str(e))
            return
        self._admit(peer, hello)  # first: the peer may send a request as soon as it has our answer
        await self._answer(stream)

    async def _answer(self, stream: Any) -> None:
        from ecac.net.host import P2PError, StreamResetError

        try:
            await self._write(stream)
            await stream.close()
        except (P2PError, StreamResetError) as e:
            log.debug("hello answer to %s failed: %s", stream.peer_id, e)

    async def _write(self, stream: Any) -> None:
        await stream.write(encode_frame(self._own_hello(), MAX_HELLO_FRAME))
        self.counters.hello_sent += 1

    @staticmethod
    async def _read(stream: Any, limit: int = MAX_HELLO_FRAME, name: str = "hello") -> bytes:
        """One frame of at most ``limit`` bytes, within ``HELLO_READ_TIMEOUT``: ``ProtocolError``
        (over-long, more than one frame), ``_Truncated`` (EOF inside it), ``EcacError`` (reset, EOF
        before it), ``TooSlowError``."""
        from ecac.net.host import StreamResetError

        reader = FrameReader(limit)
        with trio.fail_after(HELLO_READ_TIMEOUT):
            while True:
                try:
                    chunk = await stream.read(limit + 4)
                except StreamResetError as e:
                    raise EcacError(f"stream reset ({e})") from None
                if not chunk:
                    if reader.buffered:
                        raise _Truncated(f"stream ended inside the {name} frame")
                    raise EcacError(f"stream ended before the {name} frame")
                bodies = reader.feed(chunk)
                if bodies:
                    if len(bodies) > 1 or reader.buffered:
                        raise ProtocolError(f"more than one {name} frame")
                    return bodies[0]

    def _check(self, peer: str, body: bytes) -> Hello:
        """Verify a hello for ``peer`` and compare its identity with ours (``_Refused`` if not ours)."""
        from ecac.net.host import public_key_from_peer_id

        try:
            hello = verify_hello(body, public_key_from_peer_id(peer))
        except (EcacError, ValueError) as e:
            self.counters.hello_invalid += 1
            raise _Refused(f"bad hello ({e})") from None
        why = identity_mismatch(self.identity, hello.identity)
        if why is not None:
            self.counters.hello_refused += 1
            raise _Refused(why)
        return hello

    def _admit(self, peer: str, hello: Hello) -> None:
        if peer in self._refused or not self.host.is_connected(peer):
            return
        known = self.subjects.get(peer)
        self.subjects[peer] = hello.subject_pk
        try:
            from ecac.net.host import public_key_from_peer_id

            self._by_key[public_key_from_peer_id(peer)] = peer
        except ValueError:  # pragma: no cover - verified above
            pass
        if known is not None:
            return  # the second exchange of a pair that greeted at once
        self.counters.hello_verified += 1
        why = self.refusal(peer)
        log.info(
            "hello from %s: %s, subject %s%s",
            peer,
            hello.identity.describe(),
            hello.subject_pk.hex()[:16],
            "" if why is None else f" (not served: {why})",
        )
        if self.strict:
            self._on_admitted(peer)

    def _refuse(self, peer: str, reason: str) -> None:
        if peer in self._refused:
            return
        self._refused[peer] = reason
        self.subjects.pop(peer, None)
        log.warning("refusing peer %s: %s; closing the connection", peer, reason)
        self._on_refused(peer, reason)

    def _log_once(self, peer: str, what: str, fmt: str, reason: str | None) -> None:
        """Log a refusal at INFO the first time (per peer and what) it has this reason, else at DEBUG;
        the first time, the peer is also sent a notice of it."""
        key = (peer, what)
        text = reason or ""
        if self._logged.get(key) == text:
            log.debug(fmt, peer, text)
            return
        self._logged[key] = text
        log.info(fmt, peer, text)
        self._notify(peer, _NOTICE_WHAT[what])

    # ------------------------------------------------------------------ refusal notices

    def _notify(self, peer: str, what: str) -> None:
        """Start sending ``peer`` a notice of why we refuse it ``what`` (bounded: module docstring)."""
        judged = self._not_live(peer)
        if self._spawn is None or judged is None or peer in self._no_notice:
            return  # no notices, no verified hello (we cannot tell who it speaks for), or not spoken
        subject, code = judged
        try:
            body = make_notice(what, code, subject).encode()
        except ValueError as e:  # pragma: no cover - NOT_LIVE_REASONS lists every liveness code
            log.warning("no refusal notice to %s: %s", peer, e)
            return
        if self._notices_in_flight >= MAX_NOTICES_IN_FLIGHT:
            self.counters.refusal_notice_failed += 1
            log.debug("no refusal notice to %s: %d notices in flight", peer, self._notices_in_flight)
            return
        self._notices_in_flight += 1
        if not self._spawn(lambda: self._send_notice(peer, body)):
            self._notices_in_flight -= 1
            self.counters.refusal_notice_failed += 1

    async def _send_notice(self, peer: str, body: bytes) -> None:
        """One notice: open ``/ecac/refused/1``, write the frame, half-close, wait for the peer's
        close; all within ``NOTICE_TIMEOUT``. Failures are debug lines (never raised)."""
        from ecac.net.host import P2PError, ProtocolNotSupportedError

        stream = None
        sent = clean = False
        try:
            with trio.move_on_after(NOTICE_TIMEOUT) as scope:
                if not self.host.is_connected(peer):  # never dial a peer to tell it this
                    return
                stream = await self.host.open_stream(peer, REFUSED_PROTOCOL_ID, timeout=NOTICE_TIMEOUT)
                await stream.write(encode_frame(body, MAX_REFUSAL_FRAME))
                await stream.close()
                sent = True
                self.counters.refusal_notice_sent += 1
                while await stream.read(64):
                    pass  # the receiver sends nothing; its EOF closes the stream's both halves
                clean = True
            if scope.cancelled_caught:
                log.debug("refusal notice to %s: no close within %g s", peer, NOTICE_TIMEOUT)
        except ProtocolNotSupportedError:
            self._no_notice.add(peer)
            log.debug("%s does not speak %s: no refusal notices to it", peer, REFUSED_PROTOCOL_ID)
        except (P2PError, EcacError) as e:
            log.debug("refusal notice to %s failed: %s", peer, e or type(e).__name__)
        finally:
            self._notices_in_flight -= 1
            if not sent:
                self.counters.refusal_notice_failed += 1
            if stream is not None and not clean:
                await stream.reset()  # shielded inside

    async def handle_refused(self, stream: Any) -> None:
        """The ``/ecac/refused/1`` handler: one notice from a hello-verified peer, logged and recorded."""
        peer = stream.peer_id
        if peer not in self.subjects or self._notices_got[peer] >= MAX_NOTICES_PER_PEER:
            self.counters.refusal_notice_ignored += 1
            log.debug(
                "ignoring a refusal notice from %s (%s)",
                peer,
                "no verified hello" if peer not in self.subjects else "too many on this connection",
            )
            await stream.reset()
            return
        self._notices_got[peer] += 1
        try:
            body = await self._read(stream, MAX_REFUSAL_FRAME, "refusal notice")
        except (ProtocolError, _Truncated) as e:  # framing: over-long, a second frame, cut short
            self._invalid_notice(peer, str(e))
            await stream.reset()
            return
        except (EcacError, trio.TooSlowError) as e:  # reset, EOF before a frame, slow: no notice
            log.debug("refusal notice from %s: %s", peer, e or "no frame in time")
            await stream.reset()
            return
        try:
            notice = verify_notice(body, self.subject_pk)
        except EcacError as e:  # DecodeError (shape) or ProtocolError (a rule)
            self._invalid_notice(peer, str(e))
            await stream.reset()
            return
        if peer not in self.subjects:
            await stream.reset()  # disconnected (or the identity changed) while reading
            return
        self.refused_us.setdefault(peer, {})[notice.what] = notice.reason
        self.counters.refused_by_peer += 1
        log.warning("peer %s refuses to serve us %s: %s", peer, notice.what, notice.describe())
        await stream.close()

    def _invalid_notice(self, peer: str, why: str) -> None:
        self.counters.refusal_notice_invalid += 1
        log.warning("invalid refusal notice from %s: %s (ignored)", peer, why)


# --------------------------------------------------------------------------- the node's project

#: a genesis file is one op; anything larger is not one (and is not read into memory)
MAX_GENESIS_FILE = 1 << 20


def identity_of(profile: Profile | None) -> tuple[Identity, LiveSubjects | None]:
    """A node's identity from its store's profile (None: an empty store, i.e. a reference node),
    and the live subjects known before the state is loaded (strict: the genesis admins)."""
    if profile is None or not profile.strict or profile.genesis_id is None:
        return Identity("reference"), None
    return Identity("strict", profile.genesis_id), LiveSubjects.admins_only(profile.admins)


def import_genesis(store: Any, path: Path) -> Profile:
    """``ecac node --genesis FILE``: put the genesis op (written by ``ecac init --out``) into an
    empty store, or check that the store is already of that project; the store's profile after.

    One-line ``EcacError`` for an unreadable file, a file that is not one canonical Genesis op,
    and a store of another project or of the reference profile.
    """
    try:
        size = path.stat().st_size
        if size > MAX_GENESIS_FILE:
            raise EcacError(f"--genesis {path}: {size} bytes is not a genesis op")
        data = path.read_bytes()
    except OSError as e:
        raise EcacError(f"--genesis {path}: {e.strerror or e}") from None
    try:
        op = decode_op(data)
        profile = Profile.of_genesis(op)
    except EcacError as e:
        raise EcacError(f"--genesis {path}: not a genesis op ({e})") from None
    have = store.profile
    if have is None:
        store.put(op)
        have = store.profile
    if have is None or have.genesis_id != profile.genesis_id:
        what = (
            "a reference project"
            if have is None or have.genesis_id is None
            else (f"strict project {have.genesis_id.hex()}")
        )
        raise EcacError(
            f"--genesis {path} is genesis {op.op_id.hex()}, but the store holds ops of {what}; "
            "use an empty --db to join that project"
        )
    log.info("project genesis %s (%s)", op.op_id.hex(), path)
    return profile
