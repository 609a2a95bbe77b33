"""The long-lived network node: RocksDB store + libp2p host + the sans-I/O sync coordinator.

``Node.run()`` is one trio task tree. It carries out the ``SyncCoordinator``'s effects in
order, feeds it host events, and follows ``ecac.sync.peersync``'s integration guide:

* gossip: topic ``ecac/v1/<project>/announce``; the topic validator is
  ``coord.validate_announce(data, expected_vk=<originator's public key>)`` (rejected ones
  are counted by the coordinator and never delivered or forwarded);
* ``/ecac/sync/1``: one request frame (≤ 64 KiB) per stream, answered with
  ``syncserve`` (the paint-down walk and op reads run in worker threads), one stream
  write per batch of 512 frames;
* requests: one task per ``SendRequest``; frames are decoded in a worker thread, and the
  reader stops while ``coord.accepting`` is false (back-pressure on commits);
* commits: ``CommitOps`` go through one FIFO worker (``apply_commit`` in a thread) so they
  land in emission order; ``commit_finished`` then reports back;
* timers: ``coord.timer`` whenever ``coord.next_wakeup()`` passes (checked ≥ every 100 ms);
* dialling: every bootstrap peer is dialled at start and re-dialled with 500 ms doubling
  backoff (max 30 s) while disconnected; a peer the coordinator banned is not re-dialled
  before its ban ends;
* the state digest: a ``Dag`` plus ``replay.Replayer`` updated incrementally after each
  commit or local write, in one worker thread that alone touches the DAG.

The coordinator is not thread-safe: it is only ever called from the trio thread. The
store is (writes take its lock); worker threads only read their arguments and the store.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from ecac.core.errors import EcacError, ProtocolError
from ecac.core.op import Op
from ecac.store.memory import PutResult
from ecac.store.rocks import Store
from ecac.sync.peersync import (
    CancelRequest,
    CommitOps,
    CommitOutcome,
    Disconnect,
    Effect,
    Penalise,
    PublishAnnounce,
    SendRequest,
    SyncConfig,
    SyncCoordinator,
    apply_commit,
    decode_frames,
)
from ecac.sync.syncserve import plan_response, response_blobs
from ecac.sync.wire import (
    MAX_REQUEST_FRAME,
    SYNC_PROTOCOL_ID,
    FrameReader,
    SignedAnnounce,
    SyncRequest,
    announce_topic,
)

log = logging.getLogger("ecac.node")

KEY_FILE_NAME = "node_key"
DIAL_BACKOFF_BASE = 0.5
DIAL_BACKOFF_MAX = 30.0
SERVE_READ_TIMEOUT = 15.0  # the request frame must arrive within this
TIMER_MAX_SLEEP = 0.1
READ_CHUNK = 256 * 1024  # = yamux's receive window: one read takes all that is buffered
RECONCILE_PERIOD = 0.2
STABLE_CONNECTION = 2.0  # a connection that dropped sooner counts as a failed dial
JOIN_PULL_DELAY = 0.5  # > announce debounce + gossip latency
DECODE_INLINE_MAX = 16  # frames decoded in the trio thread; more go to a worker thread


# --------------------------------------------------------------------------- identity


def load_or_create_key(path: Path) -> bytes:
    """The node's 32-byte Ed25519 seed from ``path``, created (mode 0600, OS CSPRNG) if missing.

    The file holds the 32 raw bytes; a file of 64 hex characters is accepted too (for keys
    written by hand). Anything else is an error: a node must never silently change identity.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        seed = os.urandom(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: use theirs
            return load_or_create_key(path)
        except OSError as e:
            raise EcacError(f"cannot create node key {path}: {e.strerror or e}") from None
        try:
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        return seed
    except OSError as e:
        raise EcacError(f"cannot read node key {path}: {e.strerror or e}") from None
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise EcacError(f"node key {path} must hold 32 raw bytes or 64 hex characters (found {len(data)} bytes)")


# --------------------------------------------------------------------------- options and counters


@dataclass(frozen=True)
class NodeOptions:
    """Everything ``ecac node`` takes on its command line."""

    db: Path
    listen: tuple[str, ...]
    project: str
    peers: tuple[str, ...] = ()
    control: tuple[str, int] | None = None
    anti_entropy_ms: int = 5000
    key_file: Path | None = None
    heartbeat_interval: float = 0.5
    sync_overrides: dict[str, Any] = field(default_factory=dict)
    exit_on_stdin_eof: bool = False  # for nodes started by ecac.net.procs: die with the parent

    def sync_config(self) -> SyncConfig:
        return SyncConfig(anti_entropy_period=self.anti_entropy_ms / 1000.0, **self.sync_overrides)


@dataclass(slots=True)
class NodeCounters:
    """I/O-level counters (the coordinator keeps the sync ones)."""

    requests_served: int = 0
    ops_served: int = 0
    serve_errors: int = 0
    commits: int = 0
    ops_committed: int = 0
    commit_rejections: int = 0
    local_ops_written: int = 0
    penalties: int = 0
    dials: int = 0
    dial_failures: int = 0
    announces_published: int = 0
    announces_dropped_no_peer: int = 0
    # payload bytes of /ecac/sync/1 streams, both roles (requests and responses), and gossip
    # announces (received: every message the topic validator saw; sent: our own publishes)
    sync_bytes_sent: int = 0
    sync_bytes_received: int = 0
    gossip_messages_in: int = 0
    gossip_bytes_in: int = 0
    gossip_messages_out: int = 0
    gossip_bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def _now() -> float:
    return trio.current_time()


def _dial_backoff(failures: int) -> float:
    return min(DIAL_BACKOFF_MAX, DIAL_BACKOFF_BASE * 2 ** min(failures - 1, 30))


def _drop_connect_errors(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to open TCP stream")


def check_peer_addr(addr: str) -> str:
    """Validate a bootstrap multiaddr (``…/p2p/<PeerId>``); returns its PeerId or raises ValueError."""
    import multiaddr

    peer = _peer_of(addr)
    try:
        multiaddr.Multiaddr(addr)
    except Exception as e:
        raise ValueError(f"invalid multiaddr {addr!r}: {e}") from None
    return peer


def _peer_of(addr: str) -> str:
    """The ``/p2p/<PeerId>`` part of a multiaddr (ValueError when absent)."""
    parts = addr.rstrip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] in ("p2p", "ipfs"):
            return parts[i + 1]
    raise ValueError(f"multiaddr {addr!r} must end with /p2p/<peer-id>")


# --------------------------------------------------------------------------- digest maintenance


class DigestTracker:
    """State digest of the store's complete ops, kept up to date incrementally.

    ``add(ops)`` queues newly stored ops (any order; the DAG holds orphans back until
    their parents arrive); ``run`` applies them in one worker thread with
    ``Replayer.apply``, which continues from the live state when the new ops only append
    to the order (the usual case) and replays otherwise.
    """

    def __init__(self, store: Store) -> None:
        from ecac.core.dag import Dag
        from ecac.core.replay import Replayer

        self._store = store
        self._dag = Dag()
        self._replayer = Replayer(max_points=2, auto_every=50_000)
        self._queue: list[Op] = []
        self._wake = trio.Event()
        self.digest: bytes = self._replayer.digest
        self.ops = 0  # complete ops the digest covers
        self.ready = False
        self.updates = 0
        self.update_ms_total = 0.0

    def add(self, ops: Sequence[Op]) -> None:
        if ops:
            self._queue.extend(ops)
            self._wake.set()

    def _load(self) -> None:
        from ecac.store.resume import load_dag

        dag = load_dag(self._store)
        pending = self._store.index.pending_ids()
        if pending:
            dag.insert_many(self._store.ops_for(pending))
        self._dag = dag
        self._apply()

    def _apply_ops(self, ops: list[Op]) -> None:
        before = len(self._dag)
        self._dag.insert_many(ops)
        if len(self._dag) != before:
            self._apply()

    def _apply(self) -> None:
        t0 = time.perf_counter()
        _, digest = self._replayer.apply(self._dag)
        self.digest = digest
        self.ops = len(self._dag)
        self.updates += 1
        self.update_ms_total += (time.perf_counter() - t0) * 1000

    async def run(self) -> None:
        await trio.to_thread.run_sync(self._load)
        self.ready = True
        log.info("state digest %s over %d ops", self.digest.hex()[:16], self.ops)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue, []
            if batch:
                await trio.to_thread.run_sync(self._apply_ops, batch)


# --------------------------------------------------------------------------- the node


class Node:
    """One ECAC network node (see the module docstring). Construct, then ``await run()``."""

    def __init__(self, opts: NodeOptions, store: Store, seed: bytes) -> None:
        from ecac.net.host import HostConfig, P2PHost

        self.opts = opts
        self.store = store
        self.seed = seed
        self.sk = SigningKey(seed)
        self.cfg = opts.sync_config()
        self.coord = SyncCoordinator(store, self.sk, self.cfg)
        self.topic = announce_topic(opts.project)
        self.host = P2PHost(seed, config=HostConfig(heartbeat_interval=opts.heartbeat_interval))
        self.peer_id = self.host.peer_id
        if not log.isEnabledFor(logging.DEBUG):
            # libp2p logs every refused TCP connect at ERROR; our dial loop reports it already.
            # A filter, because the host resets libp2p logger levels when it starts.
            logging.getLogger("libp2p.transport.tcp.tcp").addFilter(_drop_connect_errors)
        self.counters = NodeCounters()
        self.digest = DigestTracker(store)
        self.listen_addrs: list[str] = []
        self.control_url: str | None = None
        self._nursery: trio.Nursery | None = None
        self._commit_send, self._commit_recv = trio.open_memory_channel[CommitOps](math.inf)
        self._publish_send, self._publish_recv = trio.open_memory_channel[bytes](math.inf)
        self._req_scopes: dict[int, trio.CancelScope] = {}
        self._changed = trio.Event()
        self._timer_kick = trio.Event()
        self._bans: dict[str, float] = {}  # coordinator bans (penalties)
        self._blocked: dict[str, float] = {}  # operator blocks (POST /peers/block)
        self._dialled: dict[str, str] = {}  # peer id -> address we keep dialled
        self._disconnected: dict[str, trio.Event] = {}
        self._write_lock = trio.Lock()
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, on_ready: Callable[[Node], None] | None = None, *, stop_on_signals: bool = True
    ) -> None:
        """Run until cancelled or SIGINT/SIGTERM; ``on_ready`` is called once listening."""
        host = self.host
        host.set_stream_handler(SYNC_PROTOCOL_ID, self._serve)
        host.add_peer_listener(self._on_peer_event)
        await host.subscribe(self.topic, self._on_announce, validator=self._validate)
        async with host.run(list(self.opts.listen)), trio.open_nursery() as nursery:
            self._nursery = nursery
            self.listen_addrs = host.listen_addrs()
            if self.opts.control is not None:
                from ecac.net.control import serve_control

                ctl_host, ctl_port = self.opts.control
                port = await nursery.start(serve_control, self, ctl_host, ctl_port)
                shown = f"[{ctl_host}]" if ":" in ctl_host else ctl_host
                self.control_url = f"http://{shown}:{port}"
            if stop_on_signals:
                nursery.start_soon(self._signals, nursery.cancel_scope)
            if self.opts.exit_on_stdin_eof:
                nursery.start_soon(self._watch_stdin, nursery.cancel_scope)
            nursery.start_soon(self.digest.run)
            nursery.start_soon(self._commit_worker)
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._reconcile_loop)
            log.info(
                "node %s listening on %s (project %s, anti-entropy %d ms)",
                self.peer_id,
                ", ".join(self.listen_addrs),
                self.opts.project,
                self.opts.anti_entropy_ms,
            )
            self._apply(self.coord.start(_now()))
            for addr in self.opts.peers:
                self.add_bootstrap(addr)
            if on_ready is not None:
                on_ready(self)
        self._nursery = None

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    @staticmethod
    async def _watch_stdin(scope: trio.CancelScope) -> None:
        """Stop when stdin reaches EOF: the parent that holds the pipe's other end is gone."""
        async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
            while await stdin.receive_some(4096):
                pass
        log.info("stdin closed (parent process gone?), shutting down")
        scope.cancel()

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: Sequence[Effect]) -> None:
        """Carry out the coordinator's effects in order (async ones start tasks or queue)."""
        nursery = self._nursery
        for e in effects:
            if isinstance(e, SendRequest):
                if nursery is not None:
                    nursery.start_soon(self._request, e)
            elif isinstance(e, CommitOps):
                self._commit_send.send_nowait(e)
            elif isinstance(e, PublishAnnounce):
                self._publish_send.send_nowait(e.data)
            elif isinstance(e, CancelRequest):
                scope = self._req_scopes.get(e.request_id)
                log.info("request %d to %s cancelled: %s", e.request_id, e.peer, e.reason)
                if scope is not None:
                    scope.cancel()
            elif isinstance(e, Penalise):
                self.counters.penalties += 1
                log.warning("peer %s penalised: %s", e.peer, e.reason)
            elif isinstance(e, Disconnect):
                if e.ban_until is not None:
                    self._bans[e.peer] = e.ban_until
                log.warning("disconnecting %s: %s", e.peer, e.reason)
                if nursery is not None:
                    nursery.start_soon(self.host.disconnect, e.peer)
        old = self._changed
        self._changed = trio.Event()
        old.set()
        self._timer_kick.set()

    async def _commit_worker(self) -> None:
        """Commits run one at a time, in emission order, in a worker thread."""
        async for commit in self._commit_recv:
            outcome: CommitOutcome = await trio.to_thread.run_sync(apply_commit, self.store, commit)
            if outcome.error is None:
                self.counters.commits += 1
                self.counters.ops_committed += len(outcome.stored)
                if outcome.stored:
                    stored = set(outcome.stored)
                    self.digest.add([op for op in commit.ops if op.op_id in stored])
                log.log(
                    logging.INFO if outcome.stored else logging.DEBUG,
                    "committed %d ops from %s (%d duplicates; %d stored)",
                    len(outcome.stored),
                    commit.peer,
                    outcome.duplicates,
                    self.store.op_count(),
                )
            else:
                self.counters.commit_rejections += 1
                log.warning("commit %d from %s refused: %s", commit.commit_id, commit.peer, outcome.error)
            self._apply(self.coord.commit_finished(outcome, _now()))

    async def _publisher(self) -> None:
        async for data in self._publish_recv:
            if not self.host.gossip_peers(self.topic):
                self.counters.announces_dropped_no_peer += 1
                continue
            try:
                if await self.host.publish(self.topic, data):
                    self.counters.announces_published += 1
                    self.counters.gossip_messages_out += 1
                    self.counters.gossip_bytes_out += len(data)
            except Exception as e:  # a dying connection must not end the node
                log.warning("publishing the announce failed: %s", e)

    async def _timer_loop(self) -> None:
        while True:
            wake = self.coord.next_wakeup()
            now = _now()
            if wake is not None and now >= wake:
                self._apply(self.coord.timer(now))
                await trio.lowlevel.checkpoint()  # never spin without yielding
                continue
            deadline = now + TIMER_MAX_SLEEP if wake is None else min(wake, now + TIMER_MAX_SLEEP)
            self._timer_kick = trio.Event()
            with trio.move_on_at(deadline):
                await self._timer_kick.wait()

    # ------------------------------------------------------------------ gossip and peers

    def _validate(self, data: bytes, originator_key: bytes) -> bool:
        self.counters.gossip_messages_in += 1
        self.counters.gossip_bytes_in += len(data)
        ok = self.coord.validate_announce(data, expected_vk=originator_key) is not None
        if not ok:
            log.info("rejected an announce (%d bytes) from key %s", len(data), originator_key.hex()[:16])
        return ok

    def _on_announce(self, msg: Any) -> None:
        if self._blocked and (self._is_blocked(msg.originator) or self._is_blocked(msg.forwarder)):
            return
        try:
            sa = SignedAnnounce.decode(msg.data)  # validated already; decode only
        except EcacError:
            return
        self._apply(self.coord.announce_received(msg.originator, sa, msg.forwarder or None, _now()))

    def _on_peer_event(self, ev: Any) -> None:
        now = _now()
        if ev.kind == "connected":
            if self._is_blocked(ev.peer_id):
                log.info("connected %s (blocked: ignored until the block ends)", ev.peer_id)
                return
            log.info("connected %s", ev.peer_id)
            self._apply(self.coord.peer_connected(ev.peer_id, now))
        elif ev.kind == "disconnected":
            log.info("disconnected %s", ev.peer_id)
            self._apply(self.coord.peer_disconnected(ev.peer_id, now))
            waiter = self._disconnected.get(ev.peer_id)
            if waiter is not None:
                waiter.set()
        elif self._is_blocked(ev.peer_id):
            return
        elif ev.kind == "subscribed" and ev.topic == self.topic:
            log.debug("%s subscribed to %s", ev.peer_id, self.topic)
            self._apply(self.coord.peer_subscribed(ev.peer_id, now))
            if self._nursery is not None:
                self._nursery.start_soon(self._pull_if_silent, ev.peer_id)

    async def _pull_if_silent(self, peer: str) -> None:
        """A peer joined the topic: pull from it soon unless its announce arrived meanwhile.

        Its forced announce may never come: gossip drops bytes the peer published in the last
        ``seen_ttl`` (120 s), and an unchanged state gives identical announce bytes. Without
        this, a node joining a quiet peer would wait up to a whole anti-entropy period.
        """
        await trio.sleep(JOIN_PULL_DELAY)
        st = self.coord.peer(peer)
        if st is not None and st.connected and st.last_announce_id is None and not st.requests:
            log.debug("no announce from %s since it joined: anti-entropy round now", peer)
            self._apply(self.coord.anti_entropy_tick(_now()))

    async def _reconcile_loop(self) -> None:
        """Repair missed peer events and enforce blocks, every ``RECONCILE_PERIOD``.

        The host derives connected/disconnected from per-connection callbacks; a peer that
        reconnects before its old connection's teardown is processed produces neither event.
        The coordinator's view is therefore compared with the live connections regularly.
        """
        while True:
            await trio.sleep(RECONCILE_PERIOD)
            now = _now()
            live = {p for p in self.host.connected_peers() if not self._is_blocked(p)}
            known = set(self.coord.connected_peers())
            for p in sorted(live - known):
                st = self.coord.peer(p)
                if st is not None and now < st.banned_until:
                    continue  # peer_connected would only re-send the Disconnect
                log.info("connected %s (missed event)", p)
                self._apply(self.coord.peer_connected(p, now))
                if p in self.host.gossip_peers(self.topic):
                    self._apply(self.coord.peer_subscribed(p, now))
            for p in sorted(known - live):
                log.info("disconnected %s (missed event)", p)
                self._apply(self.coord.peer_disconnected(p, now))
            for p, waiter in list(self._disconnected.items()):
                if p not in live and not waiter.is_set():
                    waiter.set()  # wake its dial loop, which may have missed the disconnect

    # ------------------------------------------------------------------ dialling

    def add_bootstrap(self, addr: str) -> str:
        """Keep ``addr`` dialled from now on; returns its PeerId (ValueError if malformed)."""
        peer = _peer_of(addr)
        if peer == self.peer_id:
            raise ValueError("refusing to dial ourselves")
        known = self._dialled.get(peer)
        self._dialled[peer] = addr
        if known is None and self._nursery is not None:
            self._nursery.start_soon(self._keep_dialled, peer)
        elif known is not None and known != addr:
            waiter = self._disconnected.get(peer)
            if waiter is not None:
                waiter.set()  # dial the new address now
        return peer

    def known_peers(self) -> list[str]:
        """Connected peers and the peers we keep dialled, sorted."""
        connected = self.host.connected_peers() if self._nursery is not None else []
        return sorted(set(connected) | set(self._dialled))

    async def dial_now(self, addr: str) -> str:
        """Dial ``addr`` once (raises ``DialError``/ValueError) and keep it dialled afterwards."""
        peer = _peer_of(addr)
        await self.host.dial(addr)
        self.add_bootstrap(addr)
        return peer

    async def _keep_dialled(self, peer: str) -> None:
        """Dial ``peer`` while it is disconnected: 500 ms doubling backoff (max 30 s) after failed
        dials and after connections that dropped within ``STABLE_CONNECTION`` (refused, banned,
        blocked or flapping); at once after a connection that lasted."""
        from ecac.net.host import DialError

        failures = 0
        while True:
            addr = self._dialled[peer]
            hold = max(self._bans.get(peer, 0.0), self._blocked.get(peer, 0.0))
            if _now() < hold:
                await trio.sleep(min(hold - _now(), 0.5))  # re-checked: a block may be lifted early
                continue
            waiter = self._disconnected[peer] = trio.Event()
            if not self.host.is_connected(peer):
                self.counters.dials += 1
                try:
                    await self.host.dial(addr)
                    log.info("dialled %s", addr)
                except (DialError, ValueError) as e:
                    failures += 1
                    self.counters.dial_failures += 1
                    delay = _dial_backoff(failures)
                    log.log(
                        logging.INFO if failures <= 3 else logging.DEBUG,
                        "dial %s failed (%s); retry in %.1f s",
                        addr,
                        e,
                        delay,
                    )
                    with trio.move_on_after(delay):
                        await waiter.wait()  # an address change skips the wait
                    continue
            up_since = _now()
            if self.host.is_connected(peer):
                await waiter.wait()
            if _now() - up_since >= STABLE_CONNECTION:
                failures = 0
            else:
                failures += 1
                await trio.sleep(_dial_backoff(failures))

    def block_peer(self, peer: str, seconds: float) -> None:
        """Partition from ``peer`` for ``seconds`` (``<= 0`` lifts it): a test and demo tool.

        Application-level, so it does not depend on libp2p tearing connections down
        (py-libp2p 0.8.1 may forget a connection on ``disconnect`` while its streams keep
        working): the coordinator treats the peer as disconnected, its sync streams are
        reset, its announces ignored, and it is not dialled. When the block ends, the
        reconciliation loop reports the peer connected again and sync resumes.
        """
        if seconds <= 0:
            self._blocked.pop(peer, None)
            log.info("unblocked %s", peer)
            return
        self._blocked[peer] = _now() + seconds
        log.info("blocking %s for %.1f s", peer, seconds)
        self._apply(self.coord.peer_disconnected(peer, _now()))

    def _is_blocked(self, peer: str) -> bool:
        until = self._blocked.get(peer)
        if until is None:
            return False
        if _now() >= until:
            del self._blocked[peer]
            return False
        return True

    # ------------------------------------------------------------------ requests (client side)

    async def _request(self, eff: SendRequest) -> None:
        from ecac.net.host import P2PError, StreamResetError

        rid = eff.request_id
        coord = self.coord
        scope = trio.CancelScope()
        self._req_scopes[rid] = scope
        stream = None
        saw_trailer = False
        log.log(
            logging.INFO if eff.request.want else logging.DEBUG,  # anti-entropy rounds are frequent
            "request %d to %s: want %d, boundary %d",
            rid,
            eff.peer,
            len(eff.request.want),
            len(eff.request.boundary),
        )
        try:
            with scope:
                try:
                    stream = await self.host.open_stream(eff.peer, SYNC_PROTOCOL_ID)
                    frame = eff.frame()
                    await stream.write(frame)
                    self.counters.sync_bytes_sent += len(frame)
                    await stream.close()
                except P2PError as e:
                    self._request_failed(rid, eff.peer, str(e))
                    return
                self._apply(coord.request_started(rid, _now()))
                reader = FrameReader(self.cfg.max_frame)
                while True:
                    while not coord.accepting(rid):
                        if rid not in coord.active_requests():
                            return  # trailer seen (or the request failed): nothing more to read
                        await self._changed.wait()
                    try:
                        chunk = await stream.read(READ_CHUNK)
                    except StreamResetError as e:
                        self._request_failed(rid, eff.peer, str(e))
                        return
                    self.counters.sync_bytes_received += len(chunk)
                    if not chunk:
                        try:
                            reader.eof()
                        except ProtocolError as e:
                            log.info("request %d to %s: %s", rid, eff.peer, e)
                        if rid in coord.active_requests():
                            log.info("request %d to %s: stream ended without a trailer", rid, eff.peer)
                        self._apply(coord.stream_closed(rid, _now()))
                        return
                    try:
                        bodies = reader.feed(chunk)
                    except ProtocolError as e:
                        self._request_failed(rid, eff.peer, str(e), violation=True)
                        return
                    if not bodies:
                        continue
                    if len(bodies) > DECODE_INLINE_MAX:
                        decoded = await trio.to_thread.run_sync(decode_frames, bodies)
                    else:
                        decoded = decode_frames(bodies)
                    saw_trailer = saw_trailer or (decoded.trailer is not None and decoded.error is None)
                    self._apply(coord.decoded_received(rid, decoded, _now()))
        finally:
            self._req_scopes.pop(rid, None)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await self._finish_stream(stream, saw_trailer)

    def _request_failed(self, rid: int, peer: str, reason: str, violation: bool = False) -> None:
        if rid in self.coord.active_requests():
            log.info("request %d to %s failed: %s", rid, peer, reason)
        self._apply(self.coord.request_failed(rid, reason, _now(), violation=violation))

    @staticmethod
    async def _finish_stream(stream: Any, clean: bool) -> None:
        """After a complete response, read the server's EOF so both halves close; else reset."""
        from ecac.net.host import StreamResetError

        if clean and not stream.at_eof:
            with trio.move_on_after(1.0):
                try:
                    while await stream.read(READ_CHUNK):
                        pass
                except StreamResetError:
                    return
        if clean and stream.at_eof:
            await stream.close()
        else:
            await stream.reset()

    # ------------------------------------------------------------------ serving /ecac/sync/1

    async def _serve(self, stream: Any) -> None:
        from ecac.net.host import StreamResetError

        peer = stream.peer_id
        if self._is_blocked(peer):
            await stream.reset()
            return
        reader = FrameReader(MAX_REQUEST_FRAME)
        body: bytes | None = None
        try:
            with trio.fail_after(SERVE_READ_TIMEOUT):
                while body is None:
                    chunk = await stream.read(READ_CHUNK)
                    self.counters.sync_bytes_received += len(chunk)
                    if not chunk:
                        raise ProtocolError("stream ended before the request frame")
                    bodies = reader.feed(chunk)
                    if len(bodies) > 1:
                        raise ProtocolError("more than one request frame")
                    if bodies:
                        body = bodies[0]
            request = SyncRequest.decode(body)
        except (ProtocolError, EcacError, trio.TooSlowError, StreamResetError) as e:
            self.counters.serve_errors += 1
            log.info("bad sync request from %s: %s", peer, e or "timeout")
            await stream.reset()
            return
        cfg = self.cfg
        plan = await trio.to_thread.run_sync(plan_response, self.store, request, cfg.server_max_ops)
        self.counters.requests_served += 1
        log.log(
            logging.INFO if plan.ids else logging.DEBUG,
            "serving %s: want %d, boundary %d -> %d ops (%s, visited %d)",
            peer,
            len(request.want),
            len(request.boundary),
            len(plan.ids),
            plan.trailer.NAME,
            plan.visited,
        )
        blobs = response_blobs(self.store, plan, cfg.batch_ops, cfg.max_frame)
        sent = 0
        try:
            while True:
                blob = await trio.to_thread.run_sync(next, blobs, None)
                if blob is None:
                    break
                await stream.write(blob)
                self.counters.sync_bytes_sent += len(blob)
                sent += 1
        except (ProtocolError, StreamResetError) as e:
            self.counters.serve_errors += 1
            log.info("response to %s aborted: %s", peer, e)
            await stream.reset()
            return
        self.counters.ops_served += len(plan.ids)
        await stream.close()

    # ------------------------------------------------------------------ local writes (control API)

    async def write_local(self, make: Callable[[], list[Op]]) -> tuple[list[Op], PutResult]:
        """Build ops with ``make`` (in a thread, serialised with other local writes), store, announce."""
        async with self._write_lock:
            ops = await trio.to_thread.run_sync(make)
            result = await trio.to_thread.run_sync(self.store.put_many, [op.cbor for op in ops])
        if result.stored:
            stored = set(result.stored)
            self.counters.local_ops_written += len(stored)
            self.digest.add([op for op in ops if op.op_id in stored])
            self._apply(self.coord.local_write(_now()))
        return ops, result

    async def append_local(self, ops: list[Op]) -> PutResult:
        """Store given ops (validated, invalid ones skipped and reported), announce."""
        async with self._write_lock:
            result = await trio.to_thread.run_sync(
                lambda: self.store.put_many([op.cbor for op in ops], on_invalid="skip")
            )
        if result.stored:
            stored = set(result.stored)
            self.counters.local_ops_written += len(stored)
            self.digest.add([op for op in ops if op.op_id in stored])
            self._apply(self.coord.local_write(_now()))
        return result

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        st = self.store
        counters = self.coord.counters.as_dict()
        counters.update(self.counters.as_dict())
        return {
            "peer_id": self.peer_id,
            "listen": list(self.listen_addrs),
            "project": self.opts.project,
            "op_count": st.op_count(),
            "complete_count": st.complete_count(),
            "pending_ops": st.pending_count(),
            "head_count": st.index.head_count(),
            "heads": [h.hex() for h in st.heads(8)],
            "topo_watermark": st.complete_count(),
            "state_digest": self.digest.digest.hex(),
            "digest_ops": self.digest.ops,
            "digest_ready": self.digest.ready,
            "peers": self.host.connected_peers() if self._nursery is not None else [],
            "gossip_peers": self.host.gossip_peers(self.topic) if self._nursery is not None else [],
            "bootstrap": sorted(self._dialled.values()),
            "banned": sorted(p for p, t in self._bans.items() if t > _now()),
            "blocked": sorted(p for p in list(self._blocked) if self._is_blocked(p)),
            "active_requests": len(self.coord.active_requests()),
            "sync_idle": self.coord.idle(),
            "counters": counters,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }


# --------------------------------------------------------------------------- entry point


def configure_logging(level: str) -> None:
    """stderr logging at ``level`` for ecac; libp2p stays at WARNING (its INFO is very chatty)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise EcacError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)")
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=None,  # stderr
        force=True,
    )
    logging.getLogger("libp2p").setLevel(max(numeric, logging.WARNING))


def run_node(opts: NodeOptions, on_ready: Callable[[Node], None] | None = None) -> None:
    """Open the store and the identity, run the node until a signal; always close the store."""
    store = Store.open(opts.db)
    try:
        seed = load_or_create_key(opts.key_file or (opts.db / KEY_FILE_NAME))
        node = Node(opts, store, seed)
        trio.run(node.run, on_ready)
    finally:
        store.close()
    log.info("node stopped, store closed")
