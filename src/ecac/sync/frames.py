"""Strict decoding of ``/ecac/sync/1`` response frames (pure: may run in a worker thread).

The node parses frames out of the stream with ``wire.FrameReader`` and decodes each chunk's
bodies with ``decode_frames`` (in a worker thread for large chunks); the coordinator then
checks order and duplicates (``SyncCoordinator.decoded_received``). No signature is checked
here: the store verifies every op once, when it is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecac.core.errors import EcacError
from ecac.core.op import Op
from ecac.core.opcodec import decode_op
from ecac.sync.wire import End, More, OpBytes, decode_rpc_frame


@dataclass(frozen=True, slots=True)
class DecodedFrames:
    """Response frames decoded strictly, in stream order, up to the first error.

    ``ops``: the ops of the ``OpBytes`` frames before any error. ``trailer``: ``End`` or
    ``More`` if it was among the frames. ``error``: the first violation (bad CBOR,
    non-canonical frame or op, frame after the trailer); frames after it are ignored.
    """

    ops: tuple[Op, ...] = ()
    trailer: End | More | None = None
    error: str | None = None

    @property
    def nbytes(self) -> int:
        """Canonical bytes of the decoded ops."""
        return sum(len(op.cbor) for op in self.ops)


def decode_frames(bodies: Sequence[bytes]) -> DecodedFrames:
    """Decode response frame bodies (no signature check: the store verifies once). Pure, thread-safe."""
    ops: list[Op] = []
    trailer: End | More | None = None
    error: str | None = None
    for body in bodies:
        if trailer is not None:
            error = "frame after the trailer"
            break
        try:
            frame = decode_rpc_frame(body)
        except EcacError as e:
            error = f"bad frame: {e}"
            break
        if isinstance(frame, OpBytes):
            try:
                ops.append(decode_op(frame.data))
            except EcacError as e:
                error = f"bad op: {e}"
                break
        else:
            trailer = frame
    return DecodedFrames(tuple(ops), trailer, error)
