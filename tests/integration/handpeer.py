"""A hand-driven libp2p peer inside the test process (trio): publishes chosen announces and
answers ``/ecac/sync/1`` requests from a ``MemoryOpStore``, optionally with a forged op. It never
sends an ``/ecac/hello/1`` hello: by default it does not speak the protocol at all; with
``silent_hello`` it accepts a hello stream, reads the node's hello and never answers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from nacl.signing import SigningKey

from ecac.core.codec import b2l, dumps
from ecac.core.op import Data, Op, header_obj
from ecac.net.host import HostConfig, P2PHost, P2PStream, StreamResetError
from ecac.store.memory import MemoryOpStore
from ecac.sync.hello import HELLO_PROTOCOL_ID
from ecac.sync.syncserve import plan_response, response_blobs
from ecac.sync.wire import (
    MAX_REQUEST_FRAME,
    SYNC_PROTOCOL_ID,
    Announce,
    FrameReader,
    OpBytes,
    SignedAnnounce,
    SyncRequest,
    encode_frame,
    node_id_of,
)

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


def forged(op: Op) -> bytes:
    """``op`` with a different payload but its original id and signature (canonical CBOR)."""
    return dumps(
        {
            "header": header_obj(op.parents, op.hlc, op.author_pk, Data("mv:obj0:field0", b"forged")),
            "sig": b2l(op.sig),
            "op_id": b2l(op.op_id),
        }
    )


def announce(sk: SigningKey, heads: list[bytes], watermark: int) -> bytes:
    a = Announce(node_id_of(bytes(sk.verify_key)), watermark, tuple(heads), b"\xff\xff")
    return SignedAnnounce.sign(sk, a).encode()


class HandPeer:
    """A P2PHost with a sync server over ``store``; ``forge`` maps op ids to forged bytes to serve."""

    def __init__(
        self, seed: bytes, topic: str, store: MemoryOpStore | None = None, *, silent_hello: bool = False
    ) -> None:
        self.seed = seed
        self.sk = SigningKey(seed)
        self.topic = topic
        self.store = store or MemoryOpStore()
        self.forge: dict[bytes, bytes] = {}
        self.requests: list[SyncRequest] = []
        self.received: list[bytes] = []
        self.host = P2PHost(seed, config=HostConfig(heartbeat_interval=0.2))
        self.host.set_stream_handler(SYNC_PROTOCOL_ID, self._serve)
        self.hellos_heard = 0  # hello streams the peer opened to us (silent_hello)
        if silent_hello:
            self.host.set_stream_handler(HELLO_PROTOCOL_ID, self._silent_hello)

    async def _silent_hello(self, stream: P2PStream) -> None:
        """Read the node's hello to the end (its reset or EOF) and never answer."""
        self.hellos_heard += 1
        try:
            while await stream.read(4096):
                pass
        except StreamResetError:
            pass

    async def _serve(self, stream: P2PStream) -> None:
        reader = FrameReader(MAX_REQUEST_FRAME)
        bodies: list[bytes] = []
        while not bodies:
            chunk = await stream.read(65536)
            if not chunk:
                return
            bodies = reader.feed(chunk)
        req = SyncRequest.decode(bodies[0])
        self.requests.append(req)
        plan = plan_response(self.store.facts, self.store.snapshot(), req)
        out = []
        for blob in response_blobs(plan, self.store.load_ops_cbor):
            if self.forge:
                frames = FrameReader().feed(blob)
                blob = b"".join(encode_frame(self._swap(f)) for f in frames)
            out.append(blob)
        await stream.write(b"".join(out))

    def _swap(self, body: bytes) -> bytes:
        for op_id, data in self.forge.items():
            real = self.store.get_op_bytes(op_id)
            if real is not None and body == OpBytes(real).encode():
                return OpBytes(data).encode()
        return body

    @asynccontextmanager
    async def run(self, on_message: Callable[[Any], None] | None = None) -> Any:
        await self.host.subscribe(self.topic, on_message or (lambda m: self.received.append(m.data)))
        async with self.host.run(LOCAL):
            yield self

    async def wait_mesh(self, peer_id: str, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while peer_id not in self.host.mesh_peers(self.topic):
                await trio.sleep(0.02)
