"""The long-lived network node: one store writer + libp2p host + the sans-I/O sync coordinator.

``Node.run()`` is one trio task tree around three kinds of work:

* **the store writer** (``ecac.store.writer``): a dedicated thread owns every store
  mutation. The node hands it ``CommitOps`` (one FIFO commit worker, so they land in
  emission order), local writes and appends; after each commit the writer publishes an
  immutable ``StoreSnapshot``. The event loop never calls a store method that locks or
  waits for an fsync: it reads ``writer.snapshot`` and the index's monotone facts only.
* **the coordinator** (``ecac.sync``): called from the trio thread only, with the latest
  snapshot; its effects are carried out by ``_apply``. If a coordinator call raises, the
  coordinator is rebuilt from the latest snapshot (its requests are cancelled, connected
  peers reported again) instead of being left half-updated.
* **I/O tasks**: serving ``/ecac/sync/1`` (``ecac.net.serve``), one task per outgoing
  request, the announce publisher, timers, the reconciliation loop, dialling, the digest
  (``ecac.net.digest``) and the control API. Each long-lived one is supervised
  (``ecac.net.supervise``): failures are logged with their traceback, counted in
  ``/status`` and the task restarts; past its restart budget the node exits non-zero.

Bounds: the commit channel holds at most ``COMMIT_CHANNEL`` commits (the coordinator keeps
≤ 1 outstanding per request, so it only fills if requests do; a commit that finds it full
fails as a local error and its request is retried); announces coalesce in one slot (only
the newest matters); writer, serving, decoding and the digest each have their own
``trio.CapacityLimiter`` (nothing uses trio's default one).

Gossip: topic ``ecac/v1/<project>/announce``; the topic validator is
``coord.validate_announce(data, expected_vk=<originator's public key>)``. Dialling, bans
and operator blocks: ``ecac.net.dialer``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from ecac.core.errors import EcacError, ProtocolError
from ecac.core.liveness import LiveSubjects, live_subjects, newest_ms
from ecac.core.op import Op
from ecac.core.replay import Replayer
from ecac.core.snapshot import StoreSnapshot
from ecac.net.api import PeerInfo
from ecac.net.counters import NodeCounters
from ecac.net.dialer import Dialer, check_peer_addr
from ecac.net.digest import DigestState, DigestTracker, DigestUpdate
from ecac.net.hello import HELLO_PROTOCOL_ID, REFUSED_PROTOCOL_ID, PeerAccess, identity_of, import_genesis
from ecac.net.reconcile import RECONCILE_PROTOCOL_ID, ReconcileService
from ecac.net.serve import READ_CHUNK, SyncServer
from ecac.net.supervise import Supervisor
from ecac.net.writeio import AsyncWriter
from ecac.store.memory import IndexedOpStore
from ecac.store.rocks import Store, check_store_dir
from ecac.store.writer import LocalWritten, StoreWriter, WriterFailedError, Written
from ecac.sync.coordinator import SyncConfig, SyncCoordinator
from ecac.sync.effects import (
    CancelRequest,
    CommitOps,
    CommitOutcome,
    Disconnect,
    Effect,
    Penalise,
    PublishAnnounce,
    SendRequest,
)
from ecac.sync.frames import decode_frames
from ecac.sync.hello import Identity
from ecac.sync.wire import SYNC_PROTOCOL_ID, FrameReader, SignedAnnounce, announce_topic

__all__ = [
    "Node",
    "NodeFailure",
    "NodeOptions",
    "check_peer_addr",
    "configure_logging",
    "load_or_create_key",
    "run_node",
]

log = logging.getLogger("ecac.node")

KEY_FILE_NAME = "node_key"
TIMER_MAX_SLEEP = 0.1
RECONCILE_PERIOD = 0.2
JOIN_PULL_DELAY = 0.5  # > announce debounce + gossip latency
DECODE_INLINE_MAX = 16  # frames decoded in the trio thread; more go to a decode thread
#: commits waiting for the writer (one per request at most: the coordinator's back-pressure)
COMMIT_CHANNEL = 256
#: threads decoding sync frames and uploaded op logs, for all requests together
DECODE_THREADS = 2
#: the node process's GIL switch interval (Python's default is 5 ms): when the writer, decode
#: and digest threads run Python, the event loop gets the GIL back within ~1 ms, not 5 ms per wake-up
NODE_SWITCH_INTERVAL = 0.001


class NodeFailure(EcacError):
    """The node stopped because of an unrecoverable failure (the message says which)."""


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


# --------------------------------------------------------------------------- options


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
    # the gateway (--control): POST /api/data allowed, its signing seed (None: the node key),
    # non-loopback listening and Host names (then every request needs the token), site label
    allow_writes: bool = False
    write_seed: bytes | None = None
    allow_remote: bool = False
    site_name: str | None = None
    # project identity (ecac.net.hello): a genesis file to join a strict project with, and the
    # seed of the subject the node speaks for (None: the node key)
    genesis_file: Path | None = None
    subject_seed: bytes | None = None

    def sync_config(self) -> SyncConfig:
        return SyncConfig(anti_entropy_period=self.anti_entropy_ms / 1000.0, **self.sync_overrides)


def _now() -> float:
    return trio.current_time()


def _drop_connect_errors(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to open TCP stream")


def _drop_unsupported_protocol(record: logging.LogRecord) -> bool:
    """basic_host logs an 8-line ERROR when a peer answers ``na``; our callers report it once."""
    msg = str(record.msg)
    return not (msg.startswith("Failed to open stream") and "not supported" in msg)


def _limiter_usage(limiter: trio.CapacityLimiter) -> dict[str, int]:
    return {
        "borrowed": limiter.borrowed_tokens,
        "total": int(limiter.total_tokens),
        "waiting": limiter.statistics().tasks_waiting,
    }


# --------------------------------------------------------------------------- the node


class Node:
    """One ECAC network node (see the module docstring). Construct, then ``await run()``."""

    def __init__(self, opts: NodeOptions, store: IndexedOpStore, seed: bytes) -> None:
        from ecac.net.host import HostConfig, P2PHost

        self.opts = opts
        self.store = store  # owned by the writer thread: the event loop never calls it
        self.seed = seed
        self.sk = SigningKey(seed)
        self.cfg = opts.sync_config()
        self.counters = NodeCounters()
        self.supervisor = Supervisor(self._fatal)
        self.writer: StoreWriter[IndexedOpStore] = StoreWriter(store, on_fatal=self._writer_fatal)
        self.aw = AsyncWriter(self.writer)
        self.decode_limiter = trio.CapacityLimiter(DECODE_THREADS)
        self.digest = DigestTracker(self.aw, trio.CapacityLimiter(1))
        self.server = SyncServer(
            self.cfg, self.writer.facts, self._snap, store.load_ops_cbor, self.counters, self._is_blocked
        )
        self.coord = SyncCoordinator(self.sk, self.writer.facts, self.cfg, self.writer.snapshot)
        self._coord_gen = 0  # bumped when the coordinator is rebuilt
        self._coord_base: dict[str, int] = {}  # counters of the coordinators before this one
        self.topic = announce_topic(opts.project)
        self.host = P2PHost(seed, config=HostConfig(heartbeat_interval=opts.heartbeat_interval))
        self.peer_id = self.host.peer_id
        # project identity on connect and access-controlled sync (ecac.net.hello)
        self.access = PeerAccess(
            self.host,
            *identity_of(getattr(store, "profile", None)),
            SigningKey(opts.subject_seed) if opts.subject_seed else self.sk,
            self._peer_admitted,
            self._peer_refused,
            self._spawn_notice,
        )
        self._access_changed = trio.Event()
        # set reconciliation (/ecac/reconcile/1): what differs from a peer, fed to the coordinator
        self.setrec = ReconcileService(
            self.host,
            self._snap,
            lambda peer, need: self._call(self.coord.reconciled, peer, need, _now()),
            lambda peer: self.coord.peer(peer),
            lambda peer: self._is_blocked(peer) or self.access.refusal(peer) is not None,
            self.cfg.anti_entropy_period,
        )
        if not log.isEnabledFor(logging.DEBUG):
            # libp2p logs every refused TCP connect at ERROR; our dial loop reports it already.
            # A filter, because the host resets libp2p logger levels when it starts.
            logging.getLogger("libp2p.transport.tcp.tcp").addFilter(_drop_connect_errors)
            logging.getLogger("libp2p.host.basic_host").addFilter(_drop_unsupported_protocol)
        self._empty_digest = Replayer().digest
        self.listen_addrs: list[str] = []
        self.control_url: str | None = None
        self.dashboard_url: str | None = None  # control_url + "/#token=…" once the gateway listens
        self.control_token: str | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._fatal_reason: str | None = None
        self._commit_send, self._commit_recv = trio.open_memory_channel[tuple[int, CommitOps]](COMMIT_CHANNEL)
        self._announce: bytes | None = None  # the one announce waiting for the publisher
        self._announce_ready = trio.Event()
        self._req_scopes: dict[int, trio.CancelScope] = {}
        self._changed = trio.Event()
        self._timer_kick = trio.Event()
        self.dialer = Dialer(self.host, self.peer_id, self.counters, self.supervisor)
        self.started_at = time.monotonic()

    def _snap(self) -> StoreSnapshot:
        return self.writer.snapshot

    def snapshot(self) -> StoreSnapshot:
        """The writer's latest snapshot (``NodeApi``)."""
        return self.writer.snapshot

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, on_ready: Callable[[Node], None] | None = None, *, stop_on_signals: bool = True
    ) -> None:
        """Run until cancelled or SIGINT/SIGTERM; ``on_ready`` is called once listening.

        Raises ``NodeFailure`` when a task ran out of restarts or the store became unusable.
        """
        self._token = trio.lowlevel.current_trio_token()
        self.writer.start()
        try:
            await self._run(on_ready, stop_on_signals)
        finally:
            with trio.CancelScope(shield=True):  # queued requests finish; the loop keeps running
                await trio.to_thread.run_sync(self.writer.stop, limiter=trio.CapacityLimiter(1))
        if self._fatal_reason is not None:
            raise NodeFailure(f"node stopped: {self._fatal_reason}")

    async def _run(self, on_ready: Callable[[Node], None] | None, stop_on_signals: bool) -> None:
        host = self.host
        sup = self.supervisor
        host.set_stream_handler(SYNC_PROTOCOL_ID, self._serve)
        host.set_stream_handler(RECONCILE_PROTOCOL_ID, self._reconcile_handle)
        host.set_stream_handler(HELLO_PROTOCOL_ID, self.access.handle)
        host.set_stream_handler(REFUSED_PROTOCOL_ID, self.access.handle_refused)
        host.set_gossip_peer_filter(self.access.announce_from)
        self.digest.listeners.append(self._on_digest)
        host.add_peer_listener(self._on_peer_event)
        await host.subscribe(self.topic, self._on_announce, validator=self._validate)
        async with host.run(list(self.opts.listen)), trio.open_nursery() as nursery:
            self._nursery = self.dialer.nursery = nursery
            self.listen_addrs = host.listen_addrs()
            if self.opts.control is not None:
                ctl_host, _ = self.opts.control
                port = await nursery.start(self._control)
                shown = f"[{ctl_host}]" if ":" in ctl_host else ctl_host
                self.control_url = f"http://{shown}:{port}"
                self.dashboard_url = f"{self.control_url}/#token={self.control_token}"
                log.info("dashboard: %s", self.dashboard_url)
            if stop_on_signals:
                nursery.start_soon(self._signals, nursery.cancel_scope)
            if self.opts.exit_on_stdin_eof:
                nursery.start_soon(self._watch_stdin, nursery.cancel_scope)
            nursery.start_soon(sup.supervise, "digest", self.digest.run)
            nursery.start_soon(sup.supervise, "commit_worker", self._commit_worker, self._rebuild)
            nursery.start_soon(sup.supervise, "publisher", self._publisher)
            nursery.start_soon(sup.supervise, "timer", self._timer_loop, self._rebuild)
            nursery.start_soon(sup.supervise, "reconcile", self._reconcile_loop)
            nursery.start_soon(sup.supervise, "set_reconcile", lambda: self.setrec.run(nursery, self.peer_id))
            nursery.start_soon(sup.supervise, "access", self._access_loop)
            log.info(
                "node %s listening on %s (project %s, anti-entropy %d ms)",
                self.peer_id,
                ", ".join(self.listen_addrs),
                self.opts.project,
                self.opts.anti_entropy_ms,
            )
            self._call(self.coord.start, _now())
            for addr in self.opts.peers:
                self.add_bootstrap(addr)
            if on_ready is not None:
                on_ready(self)
        self._nursery = self.dialer.nursery = None

    def _fatal(self, reason: str) -> None:
        """Stop the node with a non-zero exit (``run`` raises ``NodeFailure``)."""
        if self._fatal_reason is None:
            self._fatal_reason = reason
            log.critical("stopping the node: %s", reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _writer_fatal(self, reason: str) -> None:
        """The writer thread found the store unusable (called on that thread)."""
        token = self._token
        if token is None:
            self._fatal_reason = self._fatal_reason or f"store writer: {reason}"
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._fatal, f"store writer: {reason}")

    async def _control(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The gateway (``ecac.net.gateway``): listen (a failure to bind stops the start), write
        a fresh token to ``<db>/control.token``, then serve, supervised."""
        from ecac.net.gateway import (
            Gateway,
            GatewayConfig,
            new_token,
            open_gateway_listeners,
            serve_gateway,
            write_token_file,
        )

        assert self.opts.control is not None
        ctl_host, ctl_port = self.opts.control
        listeners: list[trio.SocketListener] | None = await open_gateway_listeners(ctl_host, ctl_port)
        assert listeners is not None
        bound = listeners[0].socket.getsockname()[1]
        token = new_token()
        write_token_file(self.opts.db, token)
        self.control_token = token
        gateway = Gateway(
            self,
            GatewayConfig(
                token=token,
                db_path=str(self.opts.db),
                write_key=SigningKey(self.opts.write_seed) if self.opts.write_seed else self.sk,
                allow_writes=self.opts.allow_writes,
                allow_remote=self.opts.allow_remote,
                site_name=self.opts.site_name,
                networking=bool(self.opts.listen),
            ),
        )
        self.digest.listeners.append(gateway.on_digest)
        task_status.started(bound)

        async def serve() -> None:
            nonlocal listeners
            if listeners is None:  # a restart: the same port again
                listeners = await open_gateway_listeners(ctl_host, bound)
            current, listeners = listeners, None
            try:
                await serve_gateway(gateway, current)
            finally:
                for li in current:
                    with trio.CancelScope(shield=True):
                        await li.aclose()

        await self.supervisor.supervise("control", serve)

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

    # ------------------------------------------------------------------ the coordinator

    def _call(self, event: Callable[..., Sequence[Effect]], *args: Any, **kwargs: Any) -> None:
        """Feed one event to the coordinator and carry out its effects.

        A raise means the coordinator may be half-way through a transition: it is counted
        and the coordinator rebuilt from the latest snapshot (``_rebuild``), never used on.
        """
        try:
            effects = event(*args, **kwargs)
        except Exception as e:
            if self.supervisor.record("coordinator", e):
                self.supervisor.restarts["coordinator"] += 1
                self._rebuild()
            return
        self._apply(effects)

    def _rebuild(self) -> None:
        """Replace the coordinator after it raised: ``restarted`` from the latest snapshot.

        The replacement keeps counters, bans, connected peers and id counters (ids never
        repeat); the old requests are cancelled here, and reports still arriving for them or
        for the old commits are dropped (``_coord_gen``). Should ``restarted`` itself fail, a
        blank coordinator is started and told about the connected peers.
        """
        now = _now()
        snap = self._snap()
        old = self.coord
        self._coord_gen += 1
        gen = self._coord_gen
        for scope in self._req_scopes.values():
            scope.cancel()
        self._req_scopes.clear()
        try:
            self.coord, effects = old.restarted(snap, now)
        except Exception as e:
            if not self.supervisor.record("coordinator_restart", e):
                return
            for k, v in old.counters.as_dict().items():
                self._coord_base[k] = self._coord_base.get(k, 0) + v
            self.coord = SyncCoordinator(self.sk, self.writer.facts, self.cfg, snap)
            log.warning("sync coordinator replaced by a blank one at snapshot %d", snap.seq)
            self._call(self.coord.start, now)
            if self._nursery is None:
                return
            subscribed = set(self.host.gossip_peers(self.topic))
            for p in sorted(self.host.connected_peers()):
                if gen != self._coord_gen:
                    return  # replaced again meanwhile
                if self._is_blocked(p) or self.dialer.is_banned(p, now) or not self.access.admitted(p):
                    continue
                self._call(self.coord.peer_connected, p, now)
                if p in subscribed:
                    self._call(self.coord.peer_subscribed, p, now)
            return
        log.warning("sync coordinator restarted from snapshot %d", snap.seq)
        self._apply(effects)

    def _apply(self, effects: Sequence[Effect]) -> None:
        """Carry out the coordinator's effects in order (async ones start tasks or queue)."""
        try:
            for e in effects:
                self._effect(e)
        except Exception as exc:  # an effect lost: the coordinator's view is wrong now
            if self.supervisor.record("effects", exc):
                self.supervisor.restarts["effects"] += 1
                self._rebuild()
        old = self._changed
        self._changed = trio.Event()
        old.set()
        self._timer_kick.set()

    def _effect(self, e: Effect) -> None:
        nursery = self._nursery
        if isinstance(e, SendRequest):
            if nursery is not None:
                nursery.start_soon(self._request, e, self._coord_gen)
        elif isinstance(e, CommitOps):
            try:
                self._commit_send.send_nowait((self._coord_gen, e))
            except trio.WouldBlock:
                self.counters.commits_dropped += 1
                log.warning(
                    "commit queue full (%d): commit %d from %s fails", COMMIT_CHANNEL, e.commit_id, e.peer
                )
                if nursery is not None:
                    outcome = CommitOutcome(e.commit_id, error="the node's commit queue is full")
                    nursery.start_soon(self._report_commit, outcome, self._coord_gen)
        elif isinstance(e, PublishAnnounce):
            if self._announce is not None:
                self.counters.announces_coalesced += 1
            self._announce = e.data
            self._announce_ready.set()
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
                self.dialer.ban(e.peer, e.ban_until)
            log.warning("disconnecting %s: %s", e.peer, e.reason)
            if nursery is not None:
                nursery.start_soon(
                    self.supervisor.run_once, "disconnect", lambda: self.host.disconnect(e.peer)
                )
        else:  # pragma: no cover - the Effect union is closed
            raise TypeError(f"unknown effect {e!r}")

    async def _report_commit(self, outcome: CommitOutcome, gen: int) -> None:
        if gen == self._coord_gen:
            self._call(self.coord.commit_finished, outcome, self._snap(), _now())

    async def _commit_worker(self) -> None:
        """Commits run one at a time, in emission order, on the writer thread."""
        async for gen, commit in self._commit_recv:
            if gen != self._coord_gen:
                self.counters.commits_dropped += 1  # of a coordinator that is gone
                continue
            try:
                done = await self.aw.commit(commit)
            except WriterFailedError:
                await trio.sleep_forever()  # the writer's on_fatal stops the node
            outcome = done.outcome
            if outcome.error is None:
                self.counters.commits += 1
                self.counters.ops_committed += len(outcome.stored)
                log.log(
                    logging.INFO if outcome.stored else logging.DEBUG,
                    "committed %d ops from %s (%d duplicates; %d stored)",
                    len(outcome.stored),
                    commit.peer,
                    outcome.duplicates,
                    done.snapshot.op_count,
                )
            else:
                self.counters.commit_rejections += 1
                log.warning("commit %d from %s refused: %s", commit.commit_id, commit.peer, outcome.error)
            if gen == self._coord_gen:
                self._call(self.coord.commit_finished, outcome, self._snap(), _now())
            else:
                self.counters.commits_dropped += 1
                self._call(self.coord.snapshot_changed, self._snap(), _now())

    async def _publisher(self) -> None:
        """Publish the newest pending announce (older ones were coalesced into it)."""
        while True:
            await self._announce_ready.wait()
            self._announce_ready = trio.Event()
            data, self._announce = self._announce, None
            if data is None:
                continue
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
                self._call(self.coord.timer, now)
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
        try:
            ok = self.coord.validate_announce(data, expected_vk=originator_key) is not None
        except Exception as e:
            self.supervisor.record("validator", e)
            return False
        if not ok:
            log.info("rejected an announce (%d bytes) from key %s", len(data), originator_key.hex()[:16])
        return ok and self.access.originator_ok(originator_key)

    def _on_announce(self, msg: Any) -> None:
        if self.dialer.blocked and (self._is_blocked(msg.originator) or self._is_blocked(msg.forwarder)):
            return
        try:
            sa = SignedAnnounce.decode(msg.data)  # validated already; decode only
        except EcacError:
            return
        self._call(self.coord.announce_received, msg.originator, sa, msg.forwarder or None, _now())

    def _on_peer_event(self, ev: Any) -> None:
        now = _now()
        if ev.kind == "connected":
            if self._is_blocked(ev.peer_id):
                log.info("connected %s (blocked: ignored until the block ends)", ev.peer_id)
                return
            log.info("connected %s", ev.peer_id)
            self._greet(ev.peer_id)
            if self.access.admitted(ev.peer_id):  # strict: once its hello is verified (_peer_admitted)
                self._call(self.coord.peer_connected, ev.peer_id, now)
        elif ev.kind == "disconnected":
            log.info("disconnected %s", ev.peer_id)
            self.access.forget(ev.peer_id)
            self._call(self.coord.peer_disconnected, ev.peer_id, now)
            self.dialer.peer_gone(ev.peer_id)
        elif self._is_blocked(ev.peer_id) or not self.access.admitted(ev.peer_id):
            return
        elif ev.kind == "subscribed" and ev.topic == self.topic:
            log.debug("%s subscribed to %s", ev.peer_id, self.topic)
            self._call(self.coord.peer_subscribed, ev.peer_id, now)
            if self._nursery is not None:
                self._nursery.start_soon(
                    self.supervisor.run_once, "join_pull", lambda: self._pull_if_silent(ev.peer_id)
                )

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
            self._call(self.coord.anti_entropy_tick, _now())

    async def _reconcile_loop(self) -> None:
        """Repair missed peer events and enforce blocks, every ``RECONCILE_PERIOD``.

        The host derives connected/disconnected from per-connection callbacks; a peer that
        reconnects before its old connection's teardown is processed produces neither event.
        The coordinator's view is therefore compared with the live connections regularly.
        """
        while True:
            await trio.sleep(RECONCILE_PERIOD)
            now = _now()
            connected = self.host.connected_peers()
            self.access.prune(connected)  # hellos count per connection: a missed disconnect too
            live = {p for p in connected if not self._is_blocked(p)}
            known = set(self.coord.connected_peers())
            for p in sorted(live - known):
                if not self.access.admitted(p):
                    self._greet(p)  # strict: known to the coordinator once its hello is verified
                    continue
                st = self.coord.peer(p)
                if st is not None and now < st.banned_until:
                    continue  # peer_connected would only re-send the Disconnect
                log.info("connected %s (missed event)", p)
                self._call(self.coord.peer_connected, p, now)
                if p in self.host.gossip_peers(self.topic):
                    self._call(self.coord.peer_subscribed, p, now)
            for p in sorted(known - live):
                log.info("disconnected %s (missed event)", p)
                self._call(self.coord.peer_disconnected, p, now)
            self.dialer.wake_missing(live)

    # ------------------------------------------------------------------ project identity and access

    def _greet(self, peer: str) -> None:
        """Exchange hellos with a newly connected peer (``PeerAccess.greet``, one task per peer)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.supervisor.run_once, "hello", lambda: self.access.greet(peer))

    def _peer_admitted(self, peer: str) -> None:
        """A strict node verified ``peer``'s hello: the coordinator may know it now."""
        now = _now()
        if self._is_blocked(peer) or self.dialer.is_banned(peer, now) or not self.host.is_connected(peer):
            return
        self._call(self.coord.peer_connected, peer, now)
        if peer in self.host.gossip_peers(self.topic):
            self._call(self.coord.peer_subscribed, peer, now)

    def _peer_refused(self, peer: str, reason: str) -> None:
        """``peer`` is of another project or profile (or, under strict, sent no hello): close it."""
        self._call(self.coord.peer_disconnected, peer, _now())
        if self._nursery is not None:
            self._nursery.start_soon(
                self.supervisor.run_once, "disconnect", lambda: self.host.disconnect(peer)
            )

    def _spawn_notice(self, send: Callable[[], Awaitable[None]]) -> bool:
        """Send a refusal notice as a task of the node (``PeerAccess`` bounds how many at once)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(self.supervisor.run_once, "refusal_notice", send)
        return True

    async def _reconcile_handle(self, stream: Any) -> None:
        """``/ecac/reconcile/1``: under strict only with peers we may serve (others: reset)."""
        why = self.access.refusal(stream.peer_id)
        if why is not None:
            self.access.refuse_stream(stream.peer_id, "reconcile", why)
            await stream.reset()
            return
        await self.setrec.handle(stream)

    def _on_digest(self, update: DigestUpdate) -> None:
        self._access_changed.set()

    async def _access_loop(self) -> None:
        """After every published state: the live subjects (and the identity, should an empty store
        have taken a genesis), computed once in the digest thread."""
        while True:
            await self._access_changed.wait()
            self._access_changed = trio.Event()
            identity, live = await self.digest.view(("access",), _access_view)
            if identity is not None and self.access.set_identity(identity):
                for p in self.connected_peers():  # they reconnect and exchange the new hello
                    self._peer_refused(p, "the project identity changed")
            if live is not None:
                self.access.set_live(live)

    # ------------------------------------------------------------------ dialling and blocks

    def add_bootstrap(self, addr: str) -> str:
        """Keep ``addr`` dialled from now on; returns its PeerId (ValueError if malformed)."""
        return self.dialer.add_bootstrap(addr)

    async def dial_now(self, addr: str) -> str:
        """Dial ``addr`` once (raises ``DialError``/ValueError) and keep it dialled afterwards."""
        return await self.dialer.dial_now(addr)

    def connected_peers(self) -> list[str]:
        return self.host.connected_peers() if self._nursery is not None else []

    def known_peers(self) -> list[str]:
        """Connected peers and the peers we keep dialled, sorted."""
        return sorted(set(self.connected_peers()) | set(self.dialer.dialled))

    def peer_infos(self) -> list[PeerInfo]:
        """Every known peer for ``GET /api/peers``: addresses we dial, connection, its last announce."""
        heads = self._snap().heads
        mine = set(heads) if len(heads) < 4096 else None
        now, wall = _now(), time.time()
        out = []
        for p in self.known_peers():
            st = self.coord.peer(p)
            addr = self.dialer.dialled.get(p)
            last: int | None = None
            match: bool | None = None
            if st is not None and st.announced_at is not None:
                last = int((wall - (now - st.announced_at)) * 1000)
                if st.all_heads and mine is not None:
                    match = set(st.heads) == mine
            subject = self.access.subjects.get(p)
            out.append(
                PeerInfo(
                    p,
                    (addr,) if addr else (),
                    p in self.connected_peers(),
                    last,
                    match,
                    None if subject is None else subject.hex(),
                    self.access.refusal(p) is None,
                    self.access.told_us(p),
                )
            )
        return out

    def block_peer(self, peer: str, seconds: float) -> None:
        """Partition from ``peer`` for ``seconds`` (``<= 0`` lifts it): a test and demo tool.

        Application-level, so it does not depend on libp2p tearing connections down
        (py-libp2p 0.8.1 may forget a connection on ``disconnect`` while its streams keep
        working): the coordinator treats the peer as disconnected, its sync streams are
        reset, its announces ignored, and it is not dialled. When the block ends, the
        reconciliation loop reports the peer connected again and sync resumes.
        """
        if seconds <= 0:
            self.dialer.block(peer, None)
            log.info("unblocked %s", peer)
            return
        self.dialer.block(peer, _now() + seconds)
        log.info("blocking %s for %.1f s", peer, seconds)
        self._call(self.coord.peer_disconnected, peer, _now())

    def _is_blocked(self, peer: str) -> bool:
        return self.dialer.is_blocked(peer)

    # ------------------------------------------------------------------ requests (client side)

    async def _request(self, eff: SendRequest, gen: int) -> None:
        """One outgoing request, supervised: an unexpected error fails the request, not the node."""
        await self.supervisor.run_once(
            "request",
            lambda: self._request_io(eff, gen),
            lambda e: self._request_failed(
                eff.request_id, eff.peer, f"internal error: {type(e).__name__}", gen
            ),
        )

    async def _request_io(self, eff: SendRequest, gen: int) -> None:
        from ecac.net.host import P2PError, StreamResetError

        rid = eff.request_id
        if gen != self._coord_gen:
            return  # its coordinator is gone
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
                    self._request_failed(rid, eff.peer, str(e), gen)
                    return
                self._call(self.coord.request_started, rid, _now())
                reader = FrameReader(self.cfg.max_frame)
                while True:
                    while not self.coord.accepting(rid):
                        if gen != self._coord_gen or rid not in self.coord.active_requests():
                            return  # trailer seen (or the request failed): nothing more to read
                        await self._changed.wait()
                    try:
                        chunk = await stream.read(READ_CHUNK)
                    except StreamResetError as e:
                        self._request_failed(rid, eff.peer, str(e), gen)
                        return
                    self.counters.sync_bytes_received += len(chunk)
                    if not chunk:
                        try:
                            reader.eof()
                        except ProtocolError as e:
                            log.info("request %d to %s: %s", rid, eff.peer, e)
                        if rid in self.coord.active_requests():
                            log.info("request %d to %s: stream ended without a trailer", rid, eff.peer)
                        self._call(self.coord.stream_closed, rid, _now())
                        return
                    try:
                        bodies = reader.feed(chunk)
                    except ProtocolError as e:
                        self._request_failed(rid, eff.peer, str(e), gen, violation=True)
                        return
                    if not bodies:
                        continue
                    if len(bodies) > DECODE_INLINE_MAX:
                        decoded = await trio.to_thread.run_sync(
                            decode_frames, bodies, limiter=self.decode_limiter
                        )
                    else:
                        decoded = decode_frames(bodies)
                    if gen != self._coord_gen:
                        return
                    saw_trailer = saw_trailer or (decoded.trailer is not None and decoded.error is None)
                    self._call(self.coord.decoded_received, rid, decoded, _now())
        finally:
            if self._req_scopes.get(rid) is scope:
                del self._req_scopes[rid]
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await self._finish_stream(stream, saw_trailer)

    def _request_failed(self, rid: int, peer: str, reason: str, gen: int, violation: bool = False) -> None:
        if gen != self._coord_gen:
            return
        if rid in self.coord.active_requests():
            log.info("request %d to %s failed: %s", rid, peer, reason)
        self._call(self.coord.request_failed, rid, reason, _now(), violation=violation)

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
        """The host's handler: ``SyncServer.handle``, with failures counted (the host resets the stream).

        Under strict, a peer whose proven subject holds no live role is refused first (reset)."""
        why = self.access.refusal(stream.peer_id)
        if why is not None:
            self.access.refuse_stream(stream.peer_id, "sync", why)
            await stream.reset()
            return
        try:
            await self.server.handle(stream)
        except Exception as e:
            self.supervisor.record("serve", e)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(Exception):
                await stream.reset()  # the stream may be broken already

    # ------------------------------------------------------------------ local writes (control API)

    async def write_local(self, build: Callable[[IndexedOpStore], Sequence[Op]]) -> LocalWritten:
        """Build ops with ``build(store)`` on the writer thread (so its parents are the current
        heads), store them there, and announce."""
        done = await self.aw.local(build)
        if done.result.stored:
            self.counters.local_ops_written += len(done.result.stored)
            self._call(self.coord.snapshot_changed, self._snap(), _now(), local=True)
        return done

    async def append_local(self, ops: Sequence[Op]) -> Written:
        """Store given ops (validated, invalid ones skipped and reported), announce."""
        done = await self.aw.put(list(ops), on_invalid="skip")
        if done.result.stored:
            self.counters.local_ops_written += len(done.result.stored)
            self._call(self.coord.snapshot_changed, self._snap(), _now(), local=True)
        return done

    # ------------------------------------------------------------------ status

    def digest_info(self) -> tuple[bytes, int]:
        snap = self._snap()
        return snap.digest or self._empty_digest, snap.digest_ops

    def status(self) -> dict[str, Any]:
        """``GET /status``: the latest snapshot and counters only (no store call, no lock)."""
        snap = self._snap()
        coord = self.coord
        counters: dict[str, Any] = dict(self._coord_base)
        for k, v in coord.counters.as_dict().items():
            counters[k] = counters.get(k, 0) + v
        counters.update(self.counters.as_dict())
        counters.update(self.supervisor.as_dict())
        counters.update(self.setrec.counters.as_dict())
        counters.update(self.access.counters.as_dict())
        counters["writer_queue_depth"] = self.writer.queue_depth
        counters["writer"] = self.writer.stats.as_dict()
        counters["limiters"] = {
            "writer": _limiter_usage(self.aw.limiter),
            "serve": _limiter_usage(self.server.limiter),
            "decode": _limiter_usage(self.decode_limiter),
            "digest": _limiter_usage(self.digest.limiter),
        }
        counters["digest_pending_ops"] = self.digest.pending_ops
        counters["digest_reloads"] = self.digest.reloads
        counters["conn"] = self.host.conn_stats()  # connection slots, limits, yamux flow control
        running = self._nursery is not None
        now = _now()
        counters.update(self.server.counters_dict(now))  # bad requests, serve quota (issue 10)
        counters["quota_ingest"] = coord.quota_status(now)
        return {
            "peer_id": self.peer_id,
            "listen": list(self.listen_addrs),
            "project": self.opts.project,
            "identity": self.access.status(),
            "op_count": snap.op_count,
            "complete_count": snap.complete_count,
            "pending_ops": snap.pending_count,
            "head_count": snap.head_count,
            "heads": [h.hex() for h in snap.top_heads(8)],
            "topo_watermark": snap.topo_watermark,
            "snapshot_seq": snap.seq,
            "state_digest": (snap.digest or self._empty_digest).hex(),
            "digest_ops": snap.digest_ops,
            "digest_ready": self.digest.ready,
            "peers": self.host.connected_peers() if running else [],
            "gossip_peers": self.host.gossip_peers(self.topic) if running else [],
            "bootstrap": sorted(self.dialer.dialled.values()),
            "banned": self.dialer.banned(now),
            "blocked": self.dialer.blocked_peers(),
            "active_requests": len(coord.active_requests()),
            "sync_idle": coord.idle(),
            "counters": counters,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }


def _access_view(state: DigestState) -> tuple[Identity | None, LiveSubjects | None]:
    """The identity and live subjects of a replayed strict state (``(None, None)`` for a reference one)."""
    from ecac.core.strict import StrictGate

    gate = state.replayer.gate
    if not isinstance(gate, StrictGate) or gate.profile.genesis_id is None:
        return None, None
    identity = Identity("strict", gate.profile.genesis_id)
    return identity, live_subjects(gate, newest_ms(state.order), len(state.order))


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
    """Open the store and the identity, run the node until a signal; always close the store.

    Sets the process's GIL switch interval to ``NODE_SWITCH_INTERVAL`` (``ecac node`` is its
    own process). A ``NodeFailure`` (a task out of restarts, an unusable store) propagates: exit 1.
    """
    sys.setswitchinterval(NODE_SWITCH_INTERVAL)
    check_store_dir(opts.db, create=True)  # never turn a user's directory into a RocksDB database
    store = Store.open(opts.db)
    try:
        if opts.genesis_file is not None:
            import_genesis(store, opts.genesis_file)
        seed = load_or_create_key(opts.key_file or (opts.db / KEY_FILE_NAME))
        node = Node(opts, store, seed)
        try:
            trio.run(node.run, on_ready)
        except BaseExceptionGroup as eg:  # a failure inside the task tree: report its first cause
            failure = _first_failure(eg)
            if failure is None:
                raise
            raise failure from None
    finally:
        store.close()
    log.info("node stopped, store closed")


def _first_failure(eg: BaseExceptionGroup[BaseException]) -> BaseException | None:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            inner = _first_failure(e)
            if inner is not None:
                return inner
        elif isinstance(e, EcacError):
            return e
    return None
