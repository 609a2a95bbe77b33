"""Deterministic op-log generators for benchmarks and tests (store §3.4, §5.1; core §16.2).

Every generator is a pure function of its arguments: keys come from ``key_pair`` and
randomness (random DAGs only) from a ``random.Random`` seeded by the caller. The
``iter_*`` forms yield ops one at a time so a benchmark can keep only their bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from functools import lru_cache

from nacl.signing import SigningKey

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair, public_key
from ecac.core.op import (
    Credential,
    Data,
    Grant,
    IssuerKey,
    IssuerKeyRevoke,
    KeyGrant,
    KeyRotate,
    Op,
    Payload,
    Reserved,
    Revoke,
    StatusListChunk,
    StatusPointer,
    make_op,
)

OFFLINE_REVOCATION_XOR = 0x5EEDCAFE
U64_MASK = 2**64 - 1


@lru_cache(maxsize=256)
def _key(seed: int, label: bytes) -> SigningKey:
    return key_pair(seed, label)


# ---------------------------------------------------------------------- reference workloads


def iter_hb_chain(seed: int, n: int) -> Iterator[Op]:
    """``gen_hb_chain`` one op at a time."""
    sk = _key(seed, b"hb")
    prev: bytes | None = None
    for i in range(n):
        op = make_op(sk, () if prev is None else (prev,), Hlc(1000 + i, 0, i + 1), Data("mv:o:x", b"v%d" % i))
        prev = op.op_id
        yield op


def gen_hb_chain(seed: int, n: int) -> list[Op]:
    """One author ``key_pair(seed, b"hb")``; op i: parents [op i-1], HLC {1000+i, 0, i+1}, mv:o:x = v{i}."""
    return list(iter_hb_chain(seed, n))


def concurrent_authors(peers: int) -> int:
    """``clamp(peers, 2, 8)``."""
    return max(2, min(8, peers))


def iter_concurrent(seed: int, n: int, peers: int) -> Iterator[Op]:
    """``gen_concurrent`` one op at a time."""
    na = concurrent_authors(peers)
    keys = [_key(seed, b"concurrent/%d" % a) for a in range(na)]
    prev: list[bytes | None] = [None] * na
    for i in range(n):
        a = i % na
        p = prev[a]
        op = make_op(keys[a], () if p is None else (p,), Hlc(1000 + i, 0, i + 1), Data("mv:o:x", b"v%d" % i))
        prev[a] = op.op_id
        yield op


def gen_concurrent(seed: int, n: int, peers: int) -> list[Op]:
    """``clamp(peers, 2, 8)`` writers ``key_pair(seed, "concurrent/{a}")``, each on its own chain.

    Op i belongs to writer ``i % writers`` (parent: that writer's previous op), HLC
    {1000+i, 0, i+1}, ``mv:o:x`` = ``v{i}``.
    """
    return list(iter_concurrent(seed, n, peers))


def round_half_away(x: float) -> int:
    """Rust's ``f64::round`` for non-negative values (Python's ``round`` rounds half to even)."""
    i = int(x)
    return i + 1 if x - i >= 0.5 else i


def offline_revocation_cut(n: int) -> int:
    """The number of ops the offline-revocation workload keeps: ``max(1, round(0.7 * n))``."""
    return max(1, round_half_away(0.7 * n))


def iter_offline_revocation(seed: int, n: int) -> Iterator[Op]:
    return iter_hb_chain((seed ^ OFFLINE_REVOCATION_XOR) & U64_MASK, min(n, offline_revocation_cut(n)))


def gen_offline_revocation(seed: int, n: int) -> tuple[list[Op], int]:
    """``gen_hb_chain(seed XOR 0x5EEDCAFE, n)`` truncated to ``cut`` ops; returns (ops, revoke_t_ms).

    No revoke op is generated (reference behaviour): the tail after the cut is dropped and
    ``revoke_t_ms = 1000 + cut`` only labels the timeline.
    """
    cut = offline_revocation_cut(n)
    return list(iter_offline_revocation(seed, n)), 1000 + cut


# ---------------------------------------------------------------------- random DAGs for property tests

RANDOM_DATA_KEYS = ("mv:o:x", "set+:o:s:e", "set-:o:s:e")
OTHER_KINDS = (
    "Credential",
    "Grant",
    "Revoke",
    "KeyGrant",
    "KeyRotate",
    "IssuerKey",
    "IssuerKeyRevoke",
    "StatusListChunk",
    "StatusPointer",
    "_Reserved",
)


def random_payload(rng: random.Random, kind: str, subject: bytes) -> Payload:
    """A payload of ``kind`` with small random content (structurally valid, not a working VC)."""
    tag = rng.choice(("hv", "mech", "confidential"))
    h = rng.randbytes(32)
    if kind == "Credential":
        return Credential(f"cred-{rng.randrange(4)}", rng.randbytes(rng.randrange(1, 8)))
    if kind == "Grant":
        return Grant(subject, h)
    if kind == "Revoke":
        at = Hlc(rng.randrange(200), 0, rng.randrange(3))
        return Revoke(subject, "editor", (tag,), at)
    if kind == "KeyGrant":
        return KeyGrant(subject, tag, rng.randrange(1, 3), h)
    if kind == "KeyRotate":
        return KeyRotate(tag, rng.randrange(1, 3), rng.randbytes(32))
    if kind == "IssuerKey":
        return IssuerKey("issuer-1", f"k{rng.randrange(3)}", "EdDSA", subject, 0, 2**64 - 1)
    if kind == "IssuerKeyRevoke":
        return IssuerKeyRevoke("issuer-1", f"k{rng.randrange(3)}", "test")
    if kind == "StatusListChunk":
        return StatusListChunk("list-0", "issuer-1", 1, 0, h, bytes([rng.randrange(256)]))
    if kind == "StatusPointer":
        return StatusPointer("cred-0", "list-0", rng.randrange(8))
    if kind == "_Reserved":
        return Reserved()
    raise ValueError(f"unknown payload kind {kind!r}")


def gen_random_dag(
    rng: random.Random,
    n: int,
    *,
    keys: Sequence[str] = RANDOM_DATA_KEYS,
    n_values: int = 4,
    max_parents: int = 2,
    n_authors: int = 3,
    random_hlc: bool = False,
    other_kinds: Sequence[str] = (),
    other_fraction: float = 0.0,
) -> list[Op]:
    """``n`` signed ops, each with up to ``max_parents`` random earlier parents (parents first).

    Default HLC is ``{100+i, 0, i%3}`` (core §16.2); with ``random_hlc`` the physical time
    is random, so the total order need not follow generation order and new ops can sort
    before older ones. A fraction ``other_fraction`` of ops gets a random payload from
    ``other_kinds`` instead of a Data op.
    """
    authors = [_key(7, b"random/%d" % a) for a in range(max(1, n_authors))]
    pks = [public_key(sk) for sk in authors]
    ops: list[Op] = []
    for i in range(n):
        k = rng.randint(0, min(max_parents, i))
        parents = [ops[j].op_id for j in rng.sample(range(i), k)] if k else []
        a = rng.randrange(len(authors))
        hlc = Hlc(100 + (rng.randrange(2 * n + 1) if random_hlc else i), 0, i % 3)
        if other_kinds and rng.random() < other_fraction:
            payload = random_payload(rng, rng.choice(list(other_kinds)), pks[rng.randrange(len(pks))])
        else:
            payload = Data(rng.choice(list(keys)), b"v%d" % rng.randrange(n_values))
        ops.append(make_op(authors[a], parents, hlc, payload))
    return ops
