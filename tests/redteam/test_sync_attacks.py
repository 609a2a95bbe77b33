"""Attacks on the sync protocol and the decoders (issue 10 items 3, 4 and 6), against real nodes.

Each full attack (marked ``redteam``: ``make redteam``) asserts that the target answers
``/status`` within 1 s throughout, that its RSS stays below baseline + 200 MB, that an honest
node dialling in afterwards converges and that ``verify-store`` passes on its store.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ecac.core.op import Op
from ecac.core.opcodec import encode_ops, read_log
from ecac.net.procs import NodeProc
from ecac.sync.coordinator import SyncConfig
from ecac.sync.wire import END, OpBytes, SyncRequest, encode_frame
from ecac.testing.demo_ops import demo_ops

from .harness import Attack, HostilePeer, RedTeam, raw_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MIB = 1024 * 1024
#: generated op chains, kept between runs (signing 126k ops takes a while)
CACHE = Path("/tmp/ecac-redteam-cache")
#: the control API's CBOR upload limit
UPLOAD_LIMIT = 32 * MIB


def empty_maps_body(size: int) -> bytes:
    """A CBOR array (u32 length) of empty maps filling ``size`` bytes."""
    n = size - 5
    return b"\x9a" + n.to_bytes(4, "big") + b"\xa0" * n


def hostile_bodies(size: int) -> dict[str, bytes]:
    """CBOR op-log bodies of about ``size`` bytes that would make a naive decoder allocate a lot."""
    n = size - 16
    return {
        "empty_maps": empty_maps_body(size),
        "empty_arrays": b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n,
        "nested_arrays": b"\x81" * n + b"\x00",
        "huge_declared_lengths": b"\x9b" + b"\xff" * 8 + b"\xbb" + b"\x7f" * 8 + b"\xa0" * (n - 18),
        "one_huge_op_like_item": b"\x81\xa1\x63sig"
        + b"\x9a"
        + (n - 9).to_bytes(4, "big")
        + b"\xa0" * (n - 9),
    }


def append_ops_attack(redteam: RedTeam, size: int, name: str) -> Attack:
    target = redteam.start_node("target")
    answers = {}
    with redteam.attack(name, target) as a:
        for kind, body in hostile_bodies(size).items():
            answers[kind] = raw_request(target, "POST", "/append-ops", body, "application/cbor", timeout=120)
        a.note(http=",".join(sorted({str(st) for st, _ in answers.values()})))
    a.settle_rss()
    for kind, (status, answer) in answers.items():
        assert 400 <= status < 500, (kind, status, answer[:300])
        assert "error" in json.loads(answer), kind
    return a


@pytest.mark.redteam
def test_append_ops_empty_maps(redteam: RedTeam) -> None:
    """32 MiB CBOR bodies of empty maps, nested arrays, huge declared lengths to ``/append-ops``:
    a clear 4xx each, no memory blow-up."""
    a = append_ops_attack(redteam, UPLOAD_LIMIT - 64, "append_ops_decoder_bombs_32MiB")
    assert redteam.honest_peer_converges(a.node)
    assert redteam.stop_and_verify(a.node) == "ok"
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


def test_append_ops_decoder_bombs_fast(redteam: RedTeam) -> None:
    """Fast variant (make test): the same bodies at 4 MiB."""
    a = append_ops_attack(redteam, 4 * MIB, "append_ops_decoder_bombs_4MiB")
    a.figures.check(status_max_s=1.0, rss_budget_mb=100)


# --------------------------------------------------------------------------- decoder bombs over the wire


class BombServer:
    """Answers sync requests with response frames built to blow up a naive decoder: an OpBytes
    frame of 8 MiB of empty maps (where uints belong)."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, stream: Any, body: bytes) -> None:
        n = 8 * MIB - 32
        bomb = b"\xa1\x67OpBytes\x9a" + n.to_bytes(4, "big") + b"\xa0" * n
        self.sent += 1
        await stream.write(encode_frame(bomb))
        await stream.close()


def wire_bomb_attack(redteam: RedTeam, name: str, rounds: int) -> Attack:
    target = redteam.start_node("target")
    server = BombServer()
    with redteam.attack(name, target) as a:
        for i in range(rounds):
            with HostilePeer(bytes([0x70 + i]) * 32, serve=server) as mallory:
                mallory.dial(target)
                mallory.announce([bytes([i]) * 32], 1)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and target.status()["counters"]["peers_penalised"] <= i:
                    time.sleep(0.1)
        st = target.status()
        a.note(bombs=server.sent, penalised=st["counters"]["peers_penalised"])
    a.settle_rss()
    assert st["counters"]["peers_penalised"] >= rounds
    assert st["op_count"] == 0
    return a


@pytest.mark.redteam
def test_wire_decoder_bombs(redteam: RedTeam) -> None:
    a = wire_bomb_attack(redteam, "wire_decoder_bombs", rounds=4)
    assert redteam.honest_peer_converges(a.node)
    assert redteam.stop_and_verify(a.node) == "ok"
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


def test_wire_decoder_bomb_fast(redteam: RedTeam) -> None:
    """Fast variant (make test): one 8 MiB bomb frame; the peer is penalised, memory stays bounded."""
    a = wire_bomb_attack(redteam, "wire_decoder_bomb", rounds=1)
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


# --------------------------------------------------------------------------- flooding peer


def cached_chain(count: int, seed: int) -> list[Op]:
    """``count`` chained, validly signed demo ops of one author (cached on disk: signing is slow)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"chain-{count}-{seed}.cbor"
    if path.is_file():
        return read_log(path.read_bytes(), str(path))
    ops = demo_ops([], 0, count, seed)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encode_ops(ops))
    tmp.replace(path)
    return ops


class ChainServer:
    """Serves a chain of ops over ``/ecac/sync/1``: every op of ``ops[:limit]`` after the requester's
    boundary, ignoring ``max_ops`` and the server cap. For a flooding peer that is one response
    of up to the whole chain (fresh, valid, parent-first ops)."""

    def __init__(self, ops: list[Op], limit: int | None = None) -> None:
        self.ops = ops
        self.limit = len(ops) if limit is None else limit
        self.index = {op.op_id: i for i, op in enumerate(ops)}
        self.sent = 0

    async def __call__(self, stream: Any, body: bytes) -> None:
        req = SyncRequest.decode(body)
        start = 1 + max((self.index[b] for b in req.boundary if b in self.index), default=-1)
        stop = self.limit
        for i in range(start, stop, 512):
            chunk = self.ops[i : min(i + 512, stop)]
            await stream.write(b"".join(encode_frame(OpBytes(op.cbor).encode()) for op in chunk))
            self.sent += len(chunk)
        await stream.write(encode_frame(END.encode()))
        await stream.close()


class HonestWriter:
    """An honest peer (in this process, so it does no ingest of its own) that writes one op of its
    chain every ``interval`` s: it serves ``ops[:written]`` and announces the new head. A watcher
    polls ``target``'s ``/status`` heads: ``lags()`` is, per op, the time from its write to its
    arrival at the target (an op still missing counts until ``stop``)."""

    def __init__(
        self, peer: HostilePeer, server: ChainServer, target: NodeProc, interval: float = 0.25
    ) -> None:
        self.peer, self.server, self.target, self.interval = peer, server, target, interval
        self.ops = server.ops
        self.index = {op.op_id.hex(): i for i, op in enumerate(self.ops)}
        self.written: list[float] = []
        self.arrived: dict[int, float] = {}
        self.seen = -1
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        self.stopped_at = 0.0

    def _write(self) -> None:
        for k, op in enumerate(self.ops):
            if self._stop.is_set():
                return
            self.server.limit = k + 1
            self.written.append(time.monotonic())
            self.peer.announce([op.op_id], k + 1)
            self._stop.wait(self.interval)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                heads = self.target.status()["heads"]
            except Exception:  # a slow or failed /status is the status probe's business
                self._stop.wait(0.05)
                continue
            now = time.monotonic()
            top = max((self.index[h] for h in heads if h in self.index), default=-1)
            for k in range(self.seen + 1, top + 1):
                self.arrived[k] = now
            self.seen = max(self.seen, top)
            self._stop.wait(0.05)

    def start(self) -> HonestWriter:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.stopped_at = time.monotonic()

    def lags(self) -> list[float]:
        return [self.arrived.get(k, self.stopped_at) - t for k, t in enumerate(self.written)]


def flood_attack(
    redteam: RedTeam, count: int, name: str, window: float
) -> tuple[Attack, list[float], dict[str, Any]]:
    """A peer floods ``count`` fresh valid ops in one response while an honest peer writes; the
    target's figures, the honest ops' lags and its final ``/status``."""
    flood = cached_chain(count, seed=11)
    honest_ops = cached_chain(400, seed=12)
    target = redteam.start_node("target")
    flooder = ChainServer(flood)
    honest = ChainServer(honest_ops, limit=0)
    with (
        HostilePeer(bytes([0x66]) * 32, serve=flooder) as mallory,
        HostilePeer(bytes([0x48]) * 32, serve=honest) as alice,
        redteam.attack(name, target) as a,
    ):
        alice.dial(target)
        writer = HonestWriter(alice, honest, target).start()
        time.sleep(2.0)  # the honest lag before the flood
        mallory.dial(target)
        mallory.announce([flood[-1].op_id], len(flood))
        deadline = time.monotonic() + window
        while time.monotonic() < deadline and flooder.sent < count:
            time.sleep(0.2)
        time.sleep(2.0)
        writer.stop()
        lags = writer.lags()
        st = target.status()
        a.note(flood_ops=count, flood_sent=flooder.sent, target_ops=st["op_count"])
    a.settle_rss()
    return a, lags, st


#: seconds the flood runs in the full attack (it is cut and slowed by the per-peer ingest quota)
FLOOD_WINDOW = 40.0
#: the per-peer ingest quota of the target (SyncConfig defaults)
QUOTA = SyncConfig()


def check_flood(a: Attack, lags: list[float], st: dict[str, Any], window: float, lag_max: float) -> None:
    c = st["counters"]
    a.note(
        honest_lag_max_s=f"{max(lags):.2f}",
        honest_lag_median_s=f"{statistics.median(lags):.2f}",
        honest_ops=len(lags),
        quota_cuts=c["quota_ingest_cuts"],
    )
    assert c["quota_ingest_cuts"] >= 1 and c["peers_penalised"] == 0
    # cut at the budget: no more than the burst plus the rate over the attack (and the honest ops)
    lim = QUOTA.ingest_limits
    most = lim.ops_per_s * (lim.burst_s + window + 5) + len(lags)
    assert st["op_count"] <= most, (st["op_count"], most)
    assert len(lags) >= window * 2  # the honest peer wrote throughout
    assert max(lags) <= lag_max, lags


@pytest.mark.redteam
@pytest.mark.timeout(400)
def test_flood_of_fresh_valid_ops_in_one_response(redteam: RedTeam) -> None:
    a, lags, st = flood_attack(redteam, 126_000, "sync_flood_126k", FLOOD_WINDOW)
    check_flood(a, lags, st, FLOOD_WINDOW, lag_max=3.0)
    assert redteam.honest_peer_converges(a.node, timeout=120, name="late")
    assert redteam.stop_and_verify(a.node) == "ok"
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


def test_flood_fast(redteam: RedTeam) -> None:
    """Fast variant (make test): 12k ops in one response, cut by the quota; honest ops flow."""
    a, lags, st = flood_attack(redteam, 12_000, "sync_flood_12k", 6.0)
    check_flood(a, lags, st, 6.0, lag_max=3.0)
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)


# --------------------------------------------------------------------------- malformed sync requests

EMPTY_REQUEST = bytes.fromhex("a36477616e748068626f756e6461727980676d61785f6f707300")


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


#: malformed ``/ecac/sync/1`` requests; each must get a stream reset within RESET_WITHIN seconds
MALFORMED = {
    "garbage": frame(b"hello"),
    "utf16_bom_json": frame(b"\xff\xfe" + '{"want": []}'.encode("utf-16-le")),
    "utf8_bom_cbor": frame(b"\xef\xbb\xbf" + EMPTY_REQUEST),
    "json": frame(b'{"want":[],"boundary":[],"max_ops":0}'),
    "oversized_prefix": b"\xff\xff\xff\xff",
    "just_over_limit": (65_537).to_bytes(4, "big") + b"\x00" * 64,
    "empty_body": frame(b""),
    "truncated_then_eof": b"\x00\x00\x01\x00abc",
    "eof_without_request": b"",
    "two_frames": frame(EMPTY_REQUEST) * 2,
    "trailing_byte": frame(EMPTY_REQUEST + b"\x00"),
    "non_canonical_int": frame(EMPTY_REQUEST[:-1] + b"\x18\x00"),
    "huge_declared_array": frame(b"\xa3\x64want\x9b" + b"\xff" * 8),
    "deep_nesting": frame(b"\x81" * 30_000 + b"\x00"),
    "empty_maps": frame(b"\x99\xff\xfa" + b"\xa0" * 65_530),
    "tag": frame(b"\xd9\xd9\xf7" + EMPTY_REQUEST),
    "too_many_ids": frame(
        b"\xa3\x64want\x99\x01\x01" + (b"\x98\x20" + b"\x00" * 32) * 257 + b"\x68boundary\x80\x67max_ops\x00"
    ),
}
#: malformed requests are reset at once; a request frame that never completes after the read
#: timeout (serve.SERVE_READ_TIMEOUT, 15 s)
RESET_WITHIN = 2.0
SLOW_RESET_WITHIN = 17.0


def malformed_requests(redteam: RedTeam, names: list[str], slow: bool) -> tuple[Attack, dict[str, Any]]:
    target = redteam.start_node("target")
    outcomes: dict[str, Any] = {}
    with HostilePeer(bytes([0x42]) * 32) as mallory, redteam.attack("malformed_sync_requests", target) as a:
        mallory.dial(target)
        for name in names:
            outcomes[name] = mallory.raw_sync_stream(target, MALFORMED[name], wait=SLOW_RESET_WITHIN + 5)
        if slow:  # a partial request frame, kept open: reset after the read timeout
            outcomes["partial_kept_open"] = mallory.raw_sync_stream(
                target, b"\x00\x00\x01\x00abc", wait=SLOW_RESET_WITHIN + 5, close=False
            )
        ok = mallory.raw_sync_stream(target, frame(EMPTY_REQUEST), wait=10)
        st = target.status()
        a.note(requests=len(outcomes), bad_requests=st["counters"]["serve_bad_requests"])
    assert ok.outcome == "eof" and ok.received.endswith(frame(b"cEnd")), ok  # a valid one is still served
    return a, outcomes


def check_resets(outcomes: dict[str, Any]) -> None:
    for name, o in outcomes.items():
        limit = SLOW_RESET_WITHIN if name == "partial_kept_open" else RESET_WITHIN
        assert o.outcome == "reset", (name, o)
        assert o.elapsed <= limit, (name, o)
        assert o.received == b"", (name, o)


def test_malformed_sync_requests_fast(redteam: RedTeam) -> None:
    """Fast variant (make test): a few malformed requests, each reset at once and counted."""
    names = ["garbage", "utf16_bom_json", "oversized_prefix", "two_frames", "empty_maps"]
    a, outcomes = malformed_requests(redteam, names, slow=False)
    check_resets(outcomes)
    assert a.figures.extra["bad_requests"] == len(names)


@pytest.mark.redteam
def test_malformed_sync_requests(redteam: RedTeam) -> None:
    a, outcomes = malformed_requests(redteam, list(MALFORMED), slow=True)
    fast = [o.elapsed for n, o in outcomes.items() if n != "partial_kept_open"]
    a.note(max_reset_s=f"{max(fast):.2f}", partial_reset_s=f"{outcomes['partial_kept_open'].elapsed:.1f}")
    check_resets(outcomes)
    assert redteam.honest_peer_converges(a.node)
    assert redteam.stop_and_verify(a.node) == "ok"
    a.figures.check(status_max_s=1.0, rss_budget_mb=200)
