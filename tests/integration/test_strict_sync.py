"""Project identity on connect and access-controlled sync under the strict profile (issue 12 item 5),
with real ``ecac node`` processes on 127.0.0.1 (docs/security.md, attacks "An unauthorised peer
fetching ops" and "A node of another project or profile connecting").

A strict node A holds a project whose admin published an issuer key and granted READER a role.
B joins with ``--genesis FILE --subject-key reader.key`` and is served; M (subject MALLORY, no
grant) connects to the same project and is refused with a log line and a counter, and is told
why (an ``/ecac/refused/1`` notice: M logs, counts and shows it); a reference node and a node of
another strict project are refused on connect. After a Revoke of READER arrives at A, B is no
longer served and is told so. A raw libp2p peer that never sends a hello gets nothing and is
disconnected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from ecac.cli.keyfile import create_key_file
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import Credential, Data, Grant, IssuerKey, Op, Payload, Revoke, make_op
from ecac.core.opcodec import encode_ops
from ecac.core.profile import genesis_op
from ecac.core.vc import cred_hash, editor_claims, mint_vc
from ecac.net.hello import HELLO_TIMEOUT
from ecac.net.host import P2PError, StreamOpenError, StreamResetError
from ecac.net.procs import NodeProc, wait_for
from ecac.store.memory import MemoryOpStore
from ecac.store.rocks import Store
from ecac.sync.wire import SYNC_PROTOCOL_ID, SyncRequest, announce_topic

from .conftest import PROJECT, Nodes
from .handpeer import HandPeer, announce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ADMIN = key_pair(4, b"itest-strict-sync/admin")
ISSUER = key_pair(4, b"itest-strict-sync/issuer")
READER = key_pair(4, b"itest-strict-sync/reader")
MALLORY = key_pair(4, b"itest-strict-sync/mallory")


class Project:
    """A strict project's log: genesis, ADMIN's issuer key for ISSUER, READER granted ``reader``,
    and ``n`` data ops (ADMIN, chained)."""

    def __init__(self, name: str = "itest", n: int = 20) -> None:
        self.ops: list[Op] = [genesis_op(ADMIN, name, [public_key(ADMIN)], Hlc(10_000, 0, 0))]
        self.t = 10_000
        self.genesis = self.ops[0]
        self.add(ADMIN, IssuerKey("iss", "k0", "EdDSA", public_key(ISSUER), 0, U64_MAX))
        claims = editor_claims(
            public_key(READER), nbf_ms=self.t, exp_ms=U64_MAX, role="reader", iss="iss", jti="r1", status=None
        )
        token = mint_vc(ISSUER, claims)
        self.add(ADMIN, Credential("r1", token))
        self.add(ADMIN, Grant(public_key(READER), cred_hash(token)))
        for i in range(n):
            self.add(ADMIN, Data(f"mv:obj{i % 3}:x", f"v{i}".encode()))

    def add(self, sk: SigningKey, payload: Payload) -> Op:
        self.t += 1
        op = make_op(sk, [self.ops[-1].op_id], Hlc(self.t, 0, 0), payload)
        self.ops.append(op)
        return op


def _seed(db: Path, ops: list[Op]) -> None:
    with Store.open(db) as st:
        st.put_many([op.cbor for op in ops])


def _key(path: Path, sk: SigningKey) -> Path:
    create_key_file(path, sk)
    return path


def _genesis_file(path: Path, op: Op) -> Path:
    path.write_bytes(op.cbor)
    return path


def _start_all(nodes: Nodes, specs: dict[str, dict[str, Any]]) -> list[NodeProc]:
    """Start several nodes at once (a node takes seconds to start on a loaded machine)."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(nodes.start, name, **kw) for name, kw in specs.items()]
        return [f.result() for f in futures]


def _log_has(node: NodeProc, *words: str) -> bool:
    return any(all(w in line for w in words) for line in node.log_text().splitlines())


def _counter(node: NodeProc, name: str) -> int:
    return int(node.status()["counters"][name])


def _refused_us(node: NodeProc, server: NodeProc) -> dict[str, str]:
    """What ``server`` told ``node`` it refuses it, and why (``node``'s ``/status``)."""
    entry = node.status()["identity"]["peer_subjects"].get(server.peer_id) or {}
    return dict(entry.get("refused_us") or {})


def test_a_strict_node_refuses_a_reference_node_and_another_strict_project(
    nodes: Nodes, tmp_path: Path
) -> None:
    proj = Project()
    _seed(nodes.db("a"), proj.ops)
    a = nodes.start("a")
    assert a.status()["identity"]["genesis"] == proj.genesis.op_id.hex()
    other = Project("other", n=2)
    other_gen = _genesis_file(tmp_path / "other.genesis", other.genesis)
    ref, s = _start_all(
        nodes,
        {
            "ref": {"peers": [a.addr]},  # an empty store: a reference node
            "s": {"peers": [a.addr], "extra_args": ("--genesis", str(other_gen))},
        },
    )
    assert s.status()["identity"]["genesis"] == other.genesis.op_id.hex()
    wait_for(
        lambda: (
            _log_has(a, "refusing peer", ref.peer_id, "reference project")
            and _log_has(a, "refusing peer", s.peer_id, f"strict project {other.genesis.op_id.hex()}")
        ),
        15,
        what="A's refusal lines",
    )
    # the refused side says why too
    wait_for(lambda: _log_has(ref, "refusing peer", a.peer_id, "strict project"), 10, what="ref's line")
    wait_for(lambda: _log_has(s, "refusing peer", a.peer_id, proj.genesis.op_id.hex()), 10, what="s's line")
    assert _counter(a, "hello_refused") >= 2
    assert a.status()["identity"]["peer_subjects"] == {}
    assert ref.status()["op_count"] == 0 and s.status()["op_count"] == 1  # nothing was exchanged
    assert a.status()["op_count"] == len(proj.ops)


def test_an_unauthorised_subject_is_refused_an_authorised_one_syncs_and_a_revoke_stops_it(
    nodes: Nodes, tmp_path: Path
) -> None:
    proj = Project()
    _seed(nodes.db("a"), proj.ops)
    gen = _genesis_file(tmp_path / "p.genesis", proj.genesis)
    reader_key = _key(tmp_path / "reader.key", READER)
    mallory_key = _key(tmp_path / "mallory.key", MALLORY)
    a = nodes.start("a")
    b, m = _start_all(
        nodes,
        {
            "b": {"peers": [a.addr], "extra_args": ("--genesis", str(gen), "--subject-key", str(reader_key))},
            "m": {
                "peers": [a.addr],
                "extra_args": ("--genesis", str(gen), "--subject-key", str(mallory_key)),
            },
        },
    )
    # the authorised subject syncs everything
    wait_for(lambda: b.status()["op_count"] == len(proj.ops), 20, what="B synced")
    subjects = a.status()["identity"]["peer_subjects"]
    assert subjects[b.peer_id]["subject"] == public_key(READER).hex()
    assert subjects[b.peer_id]["serving"] is True
    # the unauthorised one is refused, counted and logged (once per reason), and gets nothing
    wait_for(lambda: _counter(a, "access_refused_sync") >= 1, 15, what="M refused")
    assert _log_has(a, "refusing sync to", m.peer_id, public_key(MALLORY).hex(), "no_grant")
    assert a.status()["identity"]["peer_subjects"][m.peer_id]["serving"] is False
    assert m.status()["op_count"] == 1  # its genesis only
    # ... and is told why: M logs, counts and shows A's refusal notice
    wait_for(lambda: _refused_us(m, a).get("sync") == "no_grant", 15, what="M told it is refused")
    assert _counter(m, "refused_by_peer") >= 1 and _counter(a, "refusal_notice_sent") >= 1
    assert _log_has(
        m, "peer", a.peer_id, "refuses to serve us sync: subject", public_key(MALLORY).hex(), "(no_grant)"
    )
    assert _counter(m, "refusal_notice_invalid") == 0
    # ... and both sides' peer views (GET /api/peers, `ecac peers`) say so
    (a_seen_by_m,) = [p for p in m.client().get("/api/peers")["peers"] if p["peer_id"] == a.peer_id]
    assert a_seen_by_m["refused_us"]["sync"] == "no_grant"  # (and "announces", once M has announced)
    (m_seen_by_a,) = [p for p in a.client().get("/api/peers")["peers"] if p["peer_id"] == m.peer_id]
    assert m_seen_by_a["subject"] == public_key(MALLORY).hex() and m_seen_by_a["served"] is False
    # the authorised subject was never refused sync for want of a grant (only, if B came before A
    # had replayed its state, for that)
    assert _refused_us(b, a).get("sync") in (None, "state_not_loaded")
    b_told = _counter(b, "refused_by_peer")
    # a Revoke of READER arrives at A: from the next request on, B is not served
    revoke = proj.add(ADMIN, Revoke(public_key(READER), "reader", ("hv",), Hlc(0, 0, 0)))
    assert a.append_ops(encode_ops([revoke]))["stored"] == 1
    wait_for(
        lambda: a.status()["identity"]["peer_subjects"][b.peer_id]["serving"] is False, 10, what="B unserved"
    )
    before = _counter(a, "access_refused_sync")
    later = proj.add(ADMIN, Data("mv:obj0:x", b"after the revoke"))
    assert a.append_ops(encode_ops([later]))["stored"] == 1
    wait_for(lambda: _counter(a, "access_refused_sync") > before, 15, what="B refused after the revoke")
    assert _log_has(a, "refusing sync to", b.peer_id, "revoked")
    # B is told so
    wait_for(lambda: _refused_us(b, a).get("sync") == "revoked", 15, what="B told it is revoked")
    assert _counter(b, "refused_by_peer") > b_told
    assert _log_has(b, "peer", a.peer_id, "refuses to serve us sync:", public_key(READER).hex(), "(revoked)")
    assert b.status()["op_count"] < len(proj.ops)  # the op written after the revoke never reached B
    with pytest.raises(TimeoutError):
        wait_for(lambda: b.status()["op_count"] == len(proj.ops), 2, what="B got the later op")


# --------------------------------------------------------------------------- a peer without hello


def _blocking(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.anyio
@pytest.mark.parametrize("hello", ["silent", "not spoken"])
async def test_a_peer_that_never_sends_hello_gets_nothing_and_is_disconnected(
    nodes: Nodes, hello: str
) -> None:
    """A raw libp2p peer H (``HandPeer``) that holds ops A lacks and announces them: it either speaks
    ``/ecac/hello/1`` but never answers (refused after ``HELLO_TIMEOUT``) or does not speak it
    (refused at once). Its sync request is reset, A never fetches from it, and A's store is unchanged."""
    proj = Project()
    _seed(nodes.db("a"), proj.ops)
    a = await _blocking(nodes.start, "a")
    for i in range(3):  # ops of the project that only H holds
        proj.add(ADMIN, Data(f"mv:obj{i}:x", b"only H has this"))
    store = MemoryOpStore()
    store.put_many([op.cbor for op in proj.ops])

    def settled() -> dict[str, Any] | None:
        st = a.status()
        return st if st["digest_ready"] and st["digest_ops"] == st["op_count"] else None

    before = await _blocking(wait_for, settled, 15, what="A's digest")
    assert before["op_count"] == len(proj.ops) - 3
    h = HandPeer(bytes([21]) * 32, announce_topic(PROJECT), store, silent_hello=hello == "silent")
    async with h.run():
        t0 = trio.current_time()
        await h.host.dial(a.addr)
        # H asks for everything: nothing comes back. A resets the stream as soon as it is
        # negotiated, so H sees the reset on its first read or already inside the multistream
        # handshake (StreamOpenError). When A closes the connection meanwhile (the protocol not
        # spoken: at once), the stream may also just end or not open.
        got = b""
        ended: P2PError | None = None
        try:
            with trio.fail_after(10):
                stream = await h.host.open_stream(a.peer_id, SYNC_PROTOCOL_ID)
                await stream.write(SyncRequest().frame())
                await stream.close()
                while chunk := await stream.read(65536):
                    got += chunk
        except P2PError as e:
            ended = e
        assert got == b""
        if hello == "silent":  # A keeps the connection for HELLO_TIMEOUT: the request reached A
            assert isinstance(ended, (StreamResetError, StreamOpenError)), ended
            assert await _blocking(_counter, a, "access_refused_sync") >= 1
        # H offers its ops by gossip while it is connected
        heads = [op.op_id for op in proj.ops[-1:]]
        if h.host.is_connected(a.peer_id) and a.peer_id in h.host.gossip_peers(h.topic):
            await h.host.publish(h.topic, announce(h.sk, heads, len(proj.ops)))
        # A closes the connection within HELLO_TIMEOUT (+ slack for a loaded machine)
        with trio.fail_after(HELLO_TIMEOUT + 8):
            while h.host.is_connected(a.peer_id):
                await trio.sleep(0.05)
        took = trio.current_time() - t0
        if hello == "silent":
            assert h.hellos_heard >= 1  # A tried: it opened /ecac/hello/1 and sent its hello
            assert took >= HELLO_TIMEOUT - 1  # no valid hello in time, not an early refusal
        after = await _blocking(
            wait_for,
            lambda: (st := a.status())["counters"]["hello_missing"] >= 1 and st,
            10,
            what="hello_missing",
        )
        assert h.requests == []  # A never asked H for anything
    why = "no valid hello within 10 s" if hello == "silent" else "it does not speak /ecac/hello/1"
    assert await _blocking(_log_has, a, "refusing peer", h.host.peer_id, why)
    assert h.host.peer_id not in after["identity"]["peer_subjects"]
    assert h.host.peer_id not in after["peers"]
    assert after["counters"]["hello_verified"] == 0
    assert after["counters"]["refusal_notice_sent"] == 0  # no notice to a peer that proved no subject
    assert (after["op_count"], after["state_digest"], after["heads"]) == (
        before["op_count"],
        before["state_digest"],
        before["heads"],
    )
