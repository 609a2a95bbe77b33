"""Wire messages (store §2.1, §2.3.4): vectors byte for byte, strict decoding, announce checks, framing."""

from __future__ import annotations

import json

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import vectors_dir
from ecac.core.codec import b2l, dumps, loads
from ecac.core.errors import DecodeError, EcacError, ProtocolError
from ecac.sync.wire import (
    END,
    MAX_ANNOUNCE_BYTES,
    MAX_FRAME,
    MAX_REQUEST_FRAME,
    MIN_MAX_FRAME,
    MORE,
    SYNC_PROTOCOL_ID,
    Announce,
    End,
    FetchMissing,
    FrameReader,
    More,
    OpBytes,
    SignedAnnounce,
    SyncRequest,
    announce_topic,
    check_max_frame,
    decode_rpc_frame,
    encode_frame,
    gossip_message_id,
    node_id_of,
    op_frame_size,
    validate_signed_announce,
)

VECTORS = vectors_dir()
W = json.loads((VECTORS / "expected.json").read_text())["wire"]
SK = SigningKey(bytes.fromhex(W["announce_signer_seed_hex"]))
OP0 = bytes.fromhex("e3afe639805fd355825f5c4455e957630c765720be79100fdf98b643f0f9ade5")


def vector_announce() -> Announce:
    f = W["announce_fields"]
    return Announce(
        bytes.fromhex(f["node_id"]),
        f["topo_watermark"],
        tuple(bytes.fromhex(h) for h in f["head_ids"]),
        bytes.fromhex(f["bloom16"]),
    )


def signed(announce: Announce, sk: SigningKey = SK) -> bytes:
    return SignedAnnounce.sign(sk, announce).encode()


def own_announce(sk: SigningKey, heads: int = 1, watermark: int = 3) -> Announce:
    vk = bytes(sk.verify_key)
    return Announce(
        node_id_of(vk), watermark, tuple(bytes([i % 256]) * 32 for i in range(heads)), b"\xff\xff"
    )


# --------------------------------------------------------------------------- vectors


def test_vector_keys_and_node_id() -> None:
    assert bytes(SK.verify_key).hex() == W["announce_signer_vk_hex"]
    assert node_id_of(bytes(SK.verify_key)).hex() == W["node_id_hex"]


def test_vector_announce_cbor_and_digest() -> None:
    a = vector_announce()
    assert a.encode().hex() == W["announce_cbor_hex"]
    assert a.digest().hex() == W["announce_signing_digest_hex"]
    assert Announce.decode(bytes.fromhex(W["announce_cbor_hex"])) == a


def test_vector_signed_announce() -> None:
    sa = SignedAnnounce.sign(SK, vector_announce())
    assert sa.sig.hex() == W["announce_sig_hex"]
    data = sa.encode()
    assert len(data) == W["signed_announce_len"] == 371
    assert data.hex() == W["signed_announce_cbor_hex"]
    assert sa.message_id().hex() == W["gossip_message_id_hex"]
    assert gossip_message_id(data) == blake3.blake3(data).digest()
    assert validate_signed_announce(data) == sa
    assert SignedAnnounce.sign(SK, vector_announce()).encode() == data  # deterministic


def test_vector_unsigned_announce_rejected() -> None:
    data = bytes.fromhex(W["unsigned_signed_announce_cbor_hex"])
    sa = SignedAnnounce.decode(data)  # well-formed...
    assert sa.sig == b"" and sa.vk == bytes(32)
    with pytest.raises(ProtocolError, match="sig must be 64 bytes"):
        validate_signed_announce(data)  # ...but rejected


def test_vector_fetch_missing() -> None:
    fm = FetchMissing((OP0,))
    assert fm.encode().hex() == W["fetch_missing_want_op0_hex"]
    assert FetchMissing.decode(bytes.fromhex(W["fetch_missing_want_op0_hex"])) == fm


def test_vector_rpc_frames() -> None:
    assert END.encode().hex() == W["rpcframe_end_hex"] == "63456e64"
    assert MORE.encode().hex() == W["rpcframe_more_hex"] == "644d6f7265"
    assert OpBytes(bytes([1, 2, 3])).encode().hex() == W["rpcframe_opbytes_010203_hex"]
    assert decode_rpc_frame(bytes.fromhex("63456e64")) == End()
    assert decode_rpc_frame(bytes.fromhex("644d6f7265")) == More()
    assert decode_rpc_frame(bytes.fromhex(W["rpcframe_opbytes_010203_hex"])) == OpBytes(b"\x01\x02\x03")


def test_vector_topic_and_protocol_id() -> None:
    assert announce_topic("proj") == W["topic_example"] == "ecac/v1/proj/announce"
    assert SYNC_PROTOCOL_ID == "/ecac/sync/1"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            announce_topic(bad)


# --------------------------------------------------------------------------- announce validation


def test_announce_wrongly_signed_rejected() -> None:
    other = SigningKey(b"\x09" * 32)
    sa = SignedAnnounce.sign(SK, vector_announce())
    forged = SignedAnnounce(sa.announce, other.sign(sa.announce.digest()).signature, sa.vk).encode()
    with pytest.raises(ProtocolError, match="bad signature"):
        validate_signed_announce(forged)
    # a changed field under the original signature also fails
    a2 = Announce(sa.announce.node_id, 4, sa.announce.head_ids, sa.announce.bloom16)
    with pytest.raises(ProtocolError, match="bad signature"):
        validate_signed_announce(SignedAnnounce(a2, sa.sig, sa.vk).encode())


def test_announce_wrong_node_id_rejected() -> None:
    a = vector_announce()
    wrong = Announce(b"\x01" * 32, a.topo_watermark, a.head_ids, a.bloom16)
    with pytest.raises(ProtocolError, match=r"node_id is not BLAKE3\(vk\)"):
        validate_signed_announce(signed(wrong))


def test_announce_invalid_vk_rejected() -> None:
    sa = SignedAnnounce.sign(SK, vector_announce())
    bad_vk = SignedAnnounce(sa.announce, sa.sig, b"\x02" * 32).encode()  # not a curve point
    with pytest.raises(ProtocolError, match="vk is not a valid"):
        validate_signed_announce(bad_vk)
    short_vk = SignedAnnounce(sa.announce, sa.sig, b"\x02" * 31).encode()
    with pytest.raises(ProtocolError, match="vk is not a valid"):
        validate_signed_announce(short_vk)


def test_announce_too_many_heads_rejected() -> None:
    sk = SigningKey(b"\x05" * 32)
    ok = signed(own_announce(sk, 64), sk)
    assert len(validate_signed_announce(ok).announce.head_ids) == 64
    with pytest.raises(ProtocolError, match="65 head_ids exceeds the limit of 64"):
        validate_signed_announce(signed(own_announce(sk, 65), sk))


def test_announce_oversized_rejected() -> None:
    sk = SigningKey(b"\x05" * 32)
    data = signed(own_announce(sk, 1200), sk)
    assert len(data) > MAX_ANNOUNCE_BYTES
    with pytest.raises(ProtocolError, match="exceeds the 65536-byte limit"):
        validate_signed_announce(data)
    with pytest.raises(ProtocolError, match="exceeds the 100-byte limit"):
        validate_signed_announce(bytes.fromhex(W["signed_announce_cbor_hex"]), max_bytes=100)


def test_announce_expected_originator_key() -> None:
    data = bytes.fromhex(W["signed_announce_cbor_hex"])
    assert validate_signed_announce(data, expected_vk=bytes(SK.verify_key)).vk == bytes(SK.verify_key)
    with pytest.raises(ProtocolError, match="originator"):
        validate_signed_announce(data, expected_vk=b"\x00" * 32)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d + b"\x00",  # trailing byte
        lambda d: d[:-1],  # truncated
        lambda d: b"\xbf" + d[1:] + b"\xff",  # indefinite-length map
        lambda d: b"\x80",  # wrong type
        lambda d: b"\xff\xfe",  # garbage
        lambda d: dumps({"sig": [], "vk": []}),  # missing field
    ],
)
def test_announce_malformed_rejected(mutate) -> None:
    data = mutate(bytes.fromhex(W["signed_announce_cbor_hex"]))
    with pytest.raises(ProtocolError, match="announce rejected"):
        validate_signed_announce(data)


def test_announce_non_canonical_rejected() -> None:
    sa = SignedAnnounce.sign(SK, vector_announce())
    obj = sa.to_obj()
    reordered = {"sig": obj["sig"], "announce": obj["announce"], "vk": obj["vk"]}
    with pytest.raises(ProtocolError, match="non-canonical"):
        validate_signed_announce(dumps(reordered))
    extra = dict(obj, extra=1)
    with pytest.raises(ProtocolError, match="non-canonical"):
        validate_signed_announce(dumps(extra))
    # bloom16 as a CBOR byte string instead of an int array
    ann = dict(obj["announce"], bloom16=b"\x28\xa7")
    with pytest.raises(ProtocolError):
        validate_signed_announce(dumps(dict(obj, announce=ann)))
    # a non-minimal integer (topo_watermark 3 as 0x18 0x03)
    data = sa.encode()
    tw = bytes.fromhex("6e746f706f5f77617465726d61726b03")
    assert data.count(tw) == 1
    with pytest.raises(ProtocolError, match="non-canonical"):
        validate_signed_announce(data.replace(tw, tw[:-1] + b"\x18\x03"))


def test_announce_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Announce(b"\x00" * 31, 0, (), b"\x00\x00")
    with pytest.raises(ValueError):
        Announce(b"\x00" * 32, 0, (), b"\x00")
    with pytest.raises(ValueError):
        Announce(b"\x00" * 32, -1, (), b"\x00\x00")
    with pytest.raises(ValueError):
        Announce(b"\x00" * 32, 0, (b"\x00",), b"\x00\x00")


# --------------------------------------------------------------------------- requests and frames


def test_sync_request_roundtrip_and_encoding() -> None:
    req = SyncRequest((OP0,), (b"\x01" * 32, b"\x02" * 32), 1000)
    data = req.encode()
    assert data.startswith(bytes.fromhex("a3") + dumps("want"))
    assert dumps("boundary") in data and dumps("max_ops") + dumps(1000) in data
    assert SyncRequest.decode(data) == req
    assert req.frame() == len(data).to_bytes(4, "big") + data
    assert SyncRequest().encode() == dumps({"want": [], "boundary": [], "max_ops": 0})


def test_sync_request_limits() -> None:
    ids = [i.to_bytes(32, "big") for i in range(257)]
    full = SyncRequest(tuple(ids[:256]), tuple(ids[:256]), 2**32 - 1)
    assert len(full.frame()) <= MAX_REQUEST_FRAME
    assert SyncRequest.decode(full.encode()) == full
    with pytest.raises(ProtocolError, match="257 wanted ids"):
        SyncRequest(tuple(ids))
    with pytest.raises(ProtocolError, match="257 boundary ids"):
        SyncRequest((), tuple(ids))
    with pytest.raises(ProtocolError, match="max_ops"):
        SyncRequest((), (), 2**32)
    with pytest.raises(ProtocolError, match="257 wanted ids"):
        SyncRequest.decode(dumps({"want": [list(i) for i in ids], "boundary": [], "max_ops": 0}))
    with pytest.raises(ProtocolError, match="frame exceeds"):
        SyncRequest.decode(b"\x00" * (MAX_REQUEST_FRAME + 1))


@pytest.mark.parametrize(
    "obj",
    [
        {"want": [], "boundary": [], "max_ops": -1},
        {"want": [], "boundary": [], "max_ops": True},
        {"want": [[1, 2]], "boundary": [], "max_ops": 0},
        {"want": [], "boundary": [], "max_ops": 0, "x": 1},
        {"boundary": [], "want": [], "max_ops": 0},
        {"want": [], "boundary": []},
        {"want": b"", "boundary": [], "max_ops": 0},
    ],
)
def test_sync_request_malformed(obj) -> None:
    with pytest.raises(EcacError):
        SyncRequest.decode(dumps(obj))


def test_fetch_missing_strict() -> None:
    with pytest.raises(DecodeError, match="non-canonical"):
        FetchMissing.decode(dumps({"want": [list(OP0)], "x": 0}))
    with pytest.raises(ProtocolError, match="257 wanted ids"):
        FetchMissing.decode(dumps({"want": [list(OP0)] * 257}))


@pytest.mark.parametrize(
    "body",
    [
        dumps("Nope"),
        dumps({"Other": [1]}),
        dumps({"OpBytes": b"\x01"}),  # byte string, not an int array
        dumps({"OpBytes": [1], "End": None}),
        dumps({"OpBytes": [256]}),
        dumps({"OpBytes": [True]}),  # bool where a byte is expected
        dumps({"OpBytes": [1.0]}),
        dumps({"OpBytes": [-1]}),
        bytes.fromhex("a1674f704279746573810101"),  # trailing byte
        bytes.fromhex("a1674f7042797465738118 01".replace(" ", "")),  # non-minimal int
        b"",
    ],
)
def test_rpc_frame_malformed(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_rpc_frame(body)


@given(st.binary(max_size=300))
@settings(max_examples=60, deadline=None)
def test_opbytes_roundtrip_and_size(data: bytes) -> None:
    body = OpBytes(data).encode()
    assert decode_rpc_frame(body) == OpBytes(data)
    assert op_frame_size(data) == 4 + len(body)
    assert op_frame_size(len(data)) >= 4 + len(body)


# --------------------------------------------------------------------------- OpBytes fast path vs CBOR


def reference_opbytes(body: bytes) -> bytes | None:
    """The general strict path: one CBOR item, ``{"OpBytes": [uint 0..255…]}``, re-encoding identical."""
    try:
        obj = loads(body, "frame")
    except DecodeError:
        return None
    if type(obj) is not dict or list(obj) != ["OpBytes"] or type(obj["OpBytes"]) is not list:
        return None
    items = obj["OpBytes"]
    if not all(type(x) is int and 0 <= x <= 255 for x in items):
        return None
    return bytes(items) if dumps({"OpBytes": items}) == body else None


# bytes that matter to the item encoding: small values, the 0x18 marker/value, 0x19, large values
interesting = st.sampled_from([0x00, 0x01, 0x17, 0x18, 0x19, 0x80, 0x98, 0xFF])
op_data = st.one_of(
    st.binary(max_size=600),
    st.lists(interesting, max_size=600).map(bytes),
    st.sampled_from([23, 24, 255, 256, 65535, 65536]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n) | st.just(b"\x18" * n)
    ),
)


@given(op_data)
@settings(max_examples=300, deadline=None)
def test_opbytes_fast_encode_and_decode_match_cbor(data: bytes) -> None:
    body = OpBytes(data).encode()
    assert body == dumps({"OpBytes": b2l(data)})
    assert decode_rpc_frame(body) == OpBytes(data)
    assert reference_opbytes(body) == data


def mutations(body: bytes) -> st.SearchStrategy[bytes]:
    n = len(body)
    pos = st.integers(0, max(0, n - 1))
    return st.one_of(
        st.tuples(pos, st.integers(0, 255)).map(lambda t: body[: t[0]] + bytes([t[1]]) + body[t[0] + 1 :]),
        st.tuples(pos, interesting).map(lambda t: body[: t[0]] + bytes([t[1]]) + body[t[0] :]),
        pos.map(lambda i: body[:i] + body[i + 1 :]),
        pos.map(lambda i: body[:i]),
        st.tuples(pos, st.binary(min_size=1, max_size=3)).map(
            lambda t: body[: t[0]] + t[1] + body[t[0] + 2 :]
        ),
    )


@given(op_data.flatmap(lambda d: mutations(OpBytes(d).encode())))
@settings(max_examples=500, deadline=None)
def test_opbytes_decoder_accepts_exactly_what_the_general_path_accepts(body: bytes) -> None:
    """Byte flips, insertions, deletions, truncations: the fast decoder and the general strict path
    accept the same bodies and return the same bytes; everything else is a DecodeError."""
    want = reference_opbytes(body)
    if want is None:
        if body in (END.encode(), MORE.encode()):
            return
        with pytest.raises(DecodeError):
            decode_rpc_frame(body)
    else:
        assert decode_rpc_frame(body) == OpBytes(want)


@pytest.mark.parametrize(
    "items",
    [
        "1801",  # 1 as 18 01: not shortest
        "18",  # a marker with nothing after it
        "1818 18",  # 24, then a dangling marker
        "19",  # a byte >= 25 without its marker
        "181818",  # 24 then a lone marker
        "1900ff",  # a 16-bit uint (255 would be 18 ff)
        "20",  # a negative int
        "f5",  # true
    ],
)
def test_opbytes_non_canonical_items_rejected(items: str) -> None:
    raw = bytes.fromhex(items.replace(" ", ""))
    for count in (1, 2, 3):
        body = bytes.fromhex("a1674f70427974657380")[:-1] + bytes([0x80 | count]) + raw
        with pytest.raises(DecodeError):
            decode_rpc_frame(body)


def test_opbytes_array_head_must_be_shortest() -> None:
    prefix = bytes.fromhex("a1674f704279746573")
    assert decode_rpc_frame(prefix + b"\x83\x01\x18\x18\x18\xff") == OpBytes(b"\x01\x18\xff")
    for head in (b"\x98\x03", b"\x99\x00\x03", b"\x9a\x00\x00\x00\x03", b"\x9f"):
        with pytest.raises(DecodeError):
            decode_rpc_frame(prefix + head + b"\x01\x18\x18\x18\xff")


def test_frame_reader_splits_and_joins() -> None:
    bodies = [b"", b"a", b"bc" * 100, OpBytes(b"\x01" * 70).encode()]
    stream = b"".join(encode_frame(b) for b in bodies)
    r = FrameReader()
    out = []
    for i in range(len(stream)):  # one byte at a time
        out += r.feed(stream[i : i + 1])
    r.eof()
    assert out == bodies
    r2 = FrameReader()
    assert r2.feed(stream) == bodies
    assert r2.buffered == 0


def test_frame_reader_rejects_oversized_at_header() -> None:
    r = FrameReader(max_frame=MIN_MAX_FRAME)
    assert r.feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(ProtocolError, match=r"frame of 1048577 bytes exceeds the 1048576-byte limit"):
        r.feed((MIN_MAX_FRAME + 1).to_bytes(4, "big"))  # only the prefix: rejected before any body
    with pytest.raises(ProtocolError, match="after a framing error"):
        r.feed(b"\x00")
    big = FrameReader()
    with pytest.raises(ProtocolError, match="8388609 bytes"):
        big.feed((MAX_FRAME + 1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(b"x" * 11, max_frame=10)
    req_reader = FrameReader(MAX_REQUEST_FRAME)
    with pytest.raises(ProtocolError):
        req_reader.feed((MAX_REQUEST_FRAME + 1).to_bytes(4, "big"))


def test_frame_reader_detects_truncation() -> None:
    for cut in (b"\x00\x00", b"\x00\x00\x00\x05ab"):
        r = FrameReader()
        assert r.feed(encode_frame(b"ok") + cut) == [b"ok"]
        with pytest.raises(ProtocolError, match="truncated"):
            r.eof()
    clean = FrameReader()
    clean.feed(encode_frame(b"ok"))
    clean.eof()  # EOF between frames is fine


def test_max_frame_config() -> None:
    assert check_max_frame(MIN_MAX_FRAME) == MIN_MAX_FRAME
    assert check_max_frame(MAX_FRAME) == MAX_FRAME
    for bad in (MIN_MAX_FRAME - 1, 0, 2**32, 1.5e6):
        with pytest.raises(ValueError):
            check_max_frame(bad)  # type: ignore[arg-type]
