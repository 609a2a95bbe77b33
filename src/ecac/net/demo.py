"""``ecac demo``: real nodes on 127.0.0.1 converge, split by a partition, and converge again.

The run, for ``n`` nodes named A, B, C, … (each a real ``ecac node`` process with its own
RocksDB store, ephemeral ports, anti-entropy 500 ms):

1. start the nodes unlinked; write *offline-first*: A gets the policy (an IssuerKey and an
   editor Credential + Grant for every node's demo writer), then every node injects
   ``ops`` demo ops as its own writer (``POST /inject-demo-ops``, seed = node number);
2. link them in a line A—B—C (only neighbours are linked, so A's ops reach C through B:
   multi-hop gossip and fetch from a relay) and wait until every node reports the same
   complete ops, heads and state digest;
3. partition, live: the last node and its neighbour block each other (``POST /peers/block``
   on both ends of that link, for longer than the partition lasts). Their connection
   stays up, but no sync request, op or announce crosses it (the nodes keep running, so
   their counters cover the whole run). On the big side the next-to-last node writes
   ``ops`` more ops as its writer; on the cut side the admin revokes that writer
   (``POST /append-ops``) and the cut node writes ``ops`` more ops. The digests differ;
4. heal: both ends lift the block (``POST /peers/block`` with 0 s); we time how long until
   every node reports one digest, and check it against an in-process replay.

Writing before linking makes the whole run deterministic: every node's ops, and so every
digest, are the same on every run and machine. ``plan_ops`` (pure) computes the ops the
nodes will write, so the demo can check each node's digest against ``replay_full`` and
report the policy outcome: the revoke orders before the partition writes of the revoked
writer (same HLC millisecond, HLC node id 0), so after the heal every node denies them.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from nacl.signing import SigningKey
from rich import box
from rich.console import Console
from rich.table import Table

from ecac.core import policy
from ecac.core.dag import Dag
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Op
from ecac.core.opcodec import encode_ops
from ecac.core.replay import replay_full
from ecac.store.memory import MemoryOpStore
from ecac.testing.demo_ops import DEMO_LABEL, demo_ops_for
from ecac.testing.scenarios import ADMIN, grant_pair, issuer_key_op, revoke_op

MAX_NODES = 8
NAMES = "ABCDEFGH"
PROJECT = "ecac-demo"
ANTI_ENTROPY_MS = 500
HEARTBEAT_MS = 200
POLL_S = 0.02
BLOCK_FACTOR = 4  # the partition's block lasts this many --timeout periods (it is lifted long before)
VC_EXP_MS = 2**53  # the writers' VCs never expire within the demo's HLCs


# --------------------------------------------------------------------------- the plan (pure)


def writer_seed(i: int) -> int:
    """Node ``i``'s demo writer: ``inject-demo-ops`` seed ``i + 1`` (author ``key_pair(seed, b"demo")``)."""
    return i + 1


def writer_key(i: int) -> SigningKey:
    return key_pair(writer_seed(i), DEMO_LABEL)


def policy_base(nodes: int) -> list[Op]:
    """The admin's IssuerKey and one editor VC (Credential + Grant, scope ``hv``) per writer.

    All at HLC millisecond 0, so every demo op (millisecond ≥ 1) orders after them.
    """
    ops = [issuer_key_op(ms=0)]
    for i in range(nodes):
        cred, grant = grant_pair(
            writer_key(i), nbf_ms=0, exp_ms=VC_EXP_MS, jti=f"demo-writer-{i + 1}", status=None
        )
        ops += [cred, grant]
    return ops


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """Every op the demo's nodes write, in the order they write them."""

    base: tuple[Op, ...]  # written on node 0 before linking
    initial: tuple[tuple[Op, ...], ...]  # node i's demo ops before linking
    side_writes: tuple[Op, ...]  # node n-2's demo ops during the partition
    revoke: Op  # written on the cut node (n-1) during the partition
    cut_writes: tuple[Op, ...]  # the cut node's demo ops after the revoke

    @property
    def linked(self) -> list[Op]:
        return [*self.base, *(op for ops in self.initial for op in ops)]

    @property
    def side(self) -> list[Op]:
        return [*self.linked, *self.side_writes]

    @property
    def cut(self) -> list[Op]:
        return [*self.linked, self.revoke, *self.cut_writes]

    @property
    def healed(self) -> list[Op]:
        return [*self.linked, *self.side_writes, self.revoke, *self.cut_writes]


def plan_ops(nodes: int, ops: int) -> DemoPlan:
    """The ops of a demo run with ``nodes`` nodes and ``ops`` demo ops per write, as the nodes make them.

    ``demo_ops_for`` over an in-memory store with the node's op set gives exactly the ops
    ``POST /inject-demo-ops`` creates on the node (same heads, same largest HLC).
    """
    if not 2 <= nodes <= MAX_NODES:
        raise EcacError(f"--nodes must be between 2 and {MAX_NODES}")
    base = policy_base(nodes)
    initial = tuple(
        tuple(demo_ops_for(MemoryOpStore(base if i == 0 else []), ops, writer_seed(i))) for i in range(nodes)
    )
    linked = [*base, *(op for chunk in initial for op in chunk)]
    store = MemoryOpStore(linked)
    side = nodes - 2
    side_writes = tuple(demo_ops_for(store, ops, writer_seed(side)))
    # the revoke is stamped like the next local op of the cut node would be ({max + 1, 0}), as the admin
    # (HLC node id 0): it ties on the millisecond with the side's concurrent writes and sorts before them
    top = max(op.hlc.physical_ms for op in linked)
    heads = [next(op for op in linked if op.op_id == h) for h in store.heads(1)]
    revoke = revoke_op(heads[0], Hlc(top + 1, 0, 0), subject=writer_key(side), revoker=ADMIN)
    cut_store = MemoryOpStore([*linked, revoke])
    cut_writes = tuple(demo_ops_for(cut_store, ops, writer_seed(nodes - 1)))
    return DemoPlan(tuple(base), initial, side_writes, revoke, cut_writes)


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """What the deny-wins gate did to the revoked writer's partition writes in the healed order."""

    partition_writes: int
    denied: int
    reasons: tuple[tuple[str, int], ...]
    allowed_total: int
    denied_total: int


def policy_outcome(plan: DemoPlan) -> PolicyOutcome:
    order = Dag.from_ops(plan.healed).topo_order()
    decisions = policy.explain(order)
    ids = {op.op_id for op in plan.side_writes}
    mine = [(v, r) for op, v, r in decisions if op.op_id in ids]
    reasons: Counter[str] = Counter(r for v, r in mine if v == policy.DENIED and r is not None)
    verdicts: Counter[str] = Counter(v for _, v, _ in decisions)
    return PolicyOutcome(
        len(mine),
        sum(reasons.values()),
        tuple(sorted(reasons.items())),
        verdicts[policy.ALLOWED],
        verdicts[policy.DENIED],
    )


# --------------------------------------------------------------------------- options and output


@dataclass(frozen=True, slots=True)
class DemoOptions:
    nodes: int = 3
    ops: int = 500
    workdir: Path | None = None
    keep: bool = False
    timeout: float = 60.0
    anti_entropy_ms: int = ANTI_ENTROPY_MS


@dataclass(frozen=True, slots=True)
class DemoResult:
    nodes: int
    ops: int
    digest: str
    link_ms: float
    heal_ms: float


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


class _Interrupted(Exception):
    """SIGINT or SIGTERM while the demo runs (an exception, so that the nodes get stopped)."""


class _Signals:
    """SIGINT/SIGTERM handlers for the run: the first signal raises ``_Interrupted`` (unless the
    nodes are already being stopped); every signal is remembered, because it may land in another
    thread while the main thread waits on a node that the same Ctrl-C just stopped."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopping = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = signal.Signals(signum).name
        if first and not self.stopping:
            raise _Interrupted(self.received)

    @contextmanager
    def installed(self) -> Iterator[None]:
        try:
            old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------- the run


class Demo:
    """One demo run: owns the node processes and always stops them (SIGTERM, then SIGKILL)."""

    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.names = [NAMES[i] for i in range(opts.nodes)]
        self.procs: list[Any] = []  # NodeProc, index = node number
        self.root = Path()

    # ------------------------------------------------------------------ helpers

    def say(self, text: str = "") -> None:
        self.console.print(text, highlight=False)

    def _start(self, i: int) -> Any:
        from ecac.net.procs import start_node

        return start_node(
            self.root / self.names[i].lower(),
            project=PROJECT,
            anti_entropy_ms=self.opts.anti_entropy_ms,
            extra_args=("--heartbeat-ms", str(HEARTBEAT_MS)),
            log_path=self.root / f"{self.names[i].lower()}.log",
        )

    def _statuses(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        return [self.procs[i].status() for i in idx]

    def _wait(self, idx: Sequence[int], want_ops: int, what: str) -> tuple[list[dict[str, Any]], float]:
        """Poll ``/status`` of nodes ``idx`` until they agree on ``want_ops`` complete ops and one digest."""
        from ecac.net.procs import converged

        t0 = time.monotonic()
        deadline = t0 + self.opts.timeout
        while True:
            sts = self._statuses(idx)
            if converged(sts) and sts[0]["complete_count"] == want_ops:
                return sts, time.monotonic() - t0
            if time.monotonic() > deadline:
                seen = ", ".join(
                    f"{self.names[i]}: {s['complete_count']} ops, digest {s['state_digest'][:16]}"
                    for i, s in zip(idx, sts, strict=True)
                )
                raise EcacError(
                    f"{what}: nodes did not converge within {self.opts.timeout:g} s "
                    f"(want {want_ops} ops; {seen})"
                )
            time.sleep(POLL_S)

    def _table(self, idx: Sequence[int], sts: Sequence[dict[str, Any]], links: dict[int, str]) -> None:
        t = Table(header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
        for col in ("node", "links", "op_count", "head_count", "state digest", "fetched"):
            t.add_column(col, justify="right" if col in ("op_count", "head_count", "fetched") else "left")
        digests = Counter(s["state_digest"] for s in sts)
        for i, s in zip(idx, sts, strict=True):
            d = s["state_digest"][:16]
            style = "green" if len(digests) == 1 else ("yellow" if digests[s["state_digest"]] > 1 else "red")
            t.add_row(
                self.names[i],
                links.get(i, "-"),
                str(s["op_count"]),
                str(s["head_count"]),
                f"[{style}]{d}[/]",
                str(s["counters"].get("ops_fetched", 0)),
            )
        self.console.print(t)

    def _check_inject(self, i: int, reply: dict[str, Any], expected: Sequence[Op]) -> None:
        want = [expected[0].op_id.hex(), expected[-1].op_id.hex()]
        if reply.get("stored") != len(expected) or reply.get("op_ids") != want:
            raise EcacError(f"node {self.names[i]} wrote other demo ops than expected: {reply}")

    def _append(self, i: int, ops: Sequence[Op]) -> None:
        reply = self.procs[i].append_ops(encode_ops(list(ops)))
        if not reply.get("ok") or reply.get("stored") != len(ops):
            raise EcacError(f"node {self.names[i]} refused ops: {reply}")

    def _block(self, i: int, j: int, seconds: float) -> None:
        """Block (``seconds`` > 0) or unblock (0) the link between nodes ``i`` and ``j``, at both ends."""
        for a, b in ((i, j), (j, i)):
            reply = self.procs[a].block_peer(self.procs[b].peer_id, seconds)
            if not reply.get("ok"):
                raise EcacError(f"node {self.names[a]} refused to block {self.names[b]}: {reply}")

    def _line_links(self, cut: bool = False) -> dict[int, str]:
        n = len(self.names)
        out = {}
        for i in range(n):
            nb = [self.names[j] for j in (i - 1, i + 1) if 0 <= j < n and not (cut and n - 1 in (i, j))]
            out[i] = "—".join(nb) if nb else "none"
        return out

    # ------------------------------------------------------------------ steps

    def run(self) -> DemoResult:
        o = self.opts
        n = o.nodes
        names = self.names
        cut, side = n - 1, n - 2
        big = list(range(n - 1))
        line = "—".join(names)
        self.say(f"[bold]ecac demo[/]: {n} nodes on 127.0.0.1, linked in a line {line}")
        self.say(
            "  only neighbours are linked: ops reach the far end through a relay (multi-hop gossip + fetch)"
        )
        self.say(
            f"  anti-entropy {o.anti_entropy_ms} ms; workdir {self.root} (a RocksDB store and a log per node)"
        )
        plan = plan_ops(n, o.ops)

        # 1. start, unlinked
        t = time.monotonic()
        with ThreadPoolExecutor(n) as ex:
            futures = [ex.submit(self._start, i) for i in range(n)]
        errors = [f.exception() for f in futures if f.exception() is not None]
        self.procs = [f.result() for f in futures if f.exception() is None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        self.say(f"\n[bold]1. start[/]  {n} node processes up in {_ms(time.monotonic() - t)}, not linked yet")
        for i, p in enumerate(self.procs):
            self.say(f"  {names[i]}  {p.addr}")

        # 2. offline-first writes
        self._append(0, plan.base)
        with ThreadPoolExecutor(n) as ex:
            replies = list(ex.map(lambda i: self.procs[i].inject(o.ops, writer_seed(i)), range(n)))
        for i, r in enumerate(replies):
            self._check_inject(i, r, plan.initial[i])
        self.say("\n[bold]2. write, offline-first[/]  each node alone, before any link")
        self.say(
            f"  {names[0]}: the admin's issuer key and an editor grant per writer ({len(plan.base)} ops)"
        )
        self.say(
            f"  {', '.join(f'{x}: {o.ops} ops as writer {writer_seed(i)}' for i, x in enumerate(names))}"
        )

        # 3. link and converge
        t = time.monotonic()
        for i in range(1, n):
            self.procs[i].add_peer(self.procs[i - 1].addr)
        sts, _ = self._wait(range(n), len(plan.linked), "after linking")
        link_s = time.monotonic() - t
        self._check_digest(sts, plan.linked, "after linking")
        self.say(
            f"\n[bold]3. link {line}[/]  every node has the same {len(plan.linked)} ops and digest "
            f"[bold]{_ms(link_s)}[/] after linking"
        )
        self._table(range(n), sts, self._line_links())

        # 4. partition (live: the B—C link is blocked at both ends, the nodes keep running)
        block_s = BLOCK_FACTOR * o.timeout
        self._block(side, cut, block_s)
        self.say(
            f"\n[bold]4. partition[/]  {names[side]} and {names[cut]} block each other "
            f"(POST /peers/block on both ends for {block_s:g} s; the heal lifts it)"
        )
        self.say("  the connection stays up, the nodes keep running: no request, op or announce crosses it")
        r = self.procs[side].inject(o.ops, writer_seed(side))
        self._check_inject(side, r, plan.side_writes)
        self._append(cut, [plan.revoke])
        r = self.procs[cut].inject(o.ops, writer_seed(cut))
        self._check_inject(cut, r, plan.cut_writes)
        hlc = plan.revoke.hlc
        self.say(f"  {names[side]}: {o.ops} more ops as writer {writer_seed(side)}")
        self.say(
            f"  {names[cut]}: the admin revokes writer {writer_seed(side)} "
            f"(HLC {hlc.physical_ms}.{hlc.logical}, concurrent with those ops), "
            f"then {o.ops} ops as writer {writer_seed(cut)}"
        )
        sts_side, _ = self._wait(big, len(plan.side), "partition (big side)")
        sts_cut, _ = self._wait([cut], len(plan.cut), "partition (cut node)")
        for i, j, st in ((side, cut, sts_side[side]), (cut, side, sts_cut[0])):
            if st["blocked"] != [self.procs[j].peer_id]:
                raise EcacError(
                    f"node {names[i]} should block exactly {names[j]} during the partition: {st['blocked']}"
                )
        self._check_digest(sts_side, plan.side, "big side of the partition")
        self._check_digest(sts_cut, plan.cut, f"{names[cut]} during the partition")
        self.say(f"  digests differ: {'='.join(names[:-1])} ≠ {names[cut]}")
        self._table([*big, cut], [*sts_side, *sts_cut], self._line_links(cut=True))

        # 5. heal
        t = time.monotonic()
        self._block(side, cut, 0)
        sts, _ = self._wait(range(n), len(plan.healed), "after the heal")
        heal_s = time.monotonic() - t
        digest = self._check_digest(sts, plan.healed, "after the heal")
        self.say(
            f"\n[bold]5. heal[/]  {names[side]} and {names[cut]} lift the block: every node has the same "
            f"{len(plan.healed)} ops and digest [bold]{_ms(heal_s)}[/] after the heal"
        )
        self._table(range(n), sts, self._line_links())
        out = policy_outcome(plan)
        reasons = ", ".join(r for r, _ in out.reasons) or "no reason"
        self.say(f"  check: each digest equals an in-process replay of the same {len(plan.healed)} ops")
        self.say(
            f"  policy: {'+'.join(names[:-1])} had applied writer {writer_seed(side)}'s "
            f"{out.partition_writes} partition ops;"
        )
        self.say(
            f"          the revoke orders before them: every node now denies {out.denied} of them ({reasons})"
        )
        self.say("  (fetched = ops the node fetched from its peers during the whole run)\n")
        return DemoResult(n, len(plan.healed), digest, link_s * 1000, heal_s * 1000)

    def _check_digest(self, sts: Sequence[dict[str, Any]], ops: list[Op], what: str) -> str:
        want = replay_full(ops)[1].hex()
        got = {s["state_digest"] for s in sts}
        if got != {want}:
            raise EcacError(
                f"{what}: node digests {sorted(d[:16] for d in got)} differ from the in-process replay "
                f"of the same {len(ops)} ops ({want[:16]})"
            )
        return want

    def stop_all(self) -> None:
        for p in self.procs:
            try:
                p.stop(timeout=5.0)
            except Exception:  # cleanup must reach every node
                p.kill()


def run_demo(opts: DemoOptions, console: Console) -> DemoResult:
    """Run the demo; nodes are always stopped; a temporary workdir is removed unless kept or failed."""
    if opts.ops < 1:
        raise EcacError("--ops must be at least 1")
    if opts.workdir is not None:
        root = opts.workdir
        if root.exists() and any(root.iterdir()):
            raise EcacError(f"workdir {root} is not empty; give an empty or new directory")
        root.mkdir(parents=True, exist_ok=True)
        temp = False
    else:
        root = Path(tempfile.mkdtemp(prefix="ecac-demo-"))
        temp = True
    demo = Demo(opts, console)
    demo.root = root
    sig = _Signals()
    ok = False
    try:
        with sig.installed():
            try:
                result = demo.run()
            finally:
                sig.stopping = True
                demo.stop_all()
        ok = True
    except (KeyboardInterrupt, _Interrupted):
        raise EcacError(f"interrupted; every node was stopped (stores and logs in {root})") from None
    except Exception as e:
        if sig.received is not None:
            raise EcacError(
                f"interrupted ({sig.received}); every node was stopped (logs in {root})"
            ) from None
        if isinstance(e, EcacError):
            raise EcacError(f"{e} (node logs in {root})") from None
        raise EcacError(f"demo failed: {type(e).__name__}: {e} (node logs in {root})") from None
    finally:
        if temp and ok and not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    return result
