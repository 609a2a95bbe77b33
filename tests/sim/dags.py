"""Small deterministic op DAGs for the sync tests."""

from __future__ import annotations

import random

from ecac.core.hlc import Hlc
from ecac.core.keys import key_pair
from ecac.core.op import Data, Op, make_op

SK = key_pair(3, b"sync-tests")


def chain(n: int, label: bytes = b"chain", start: Op | None = None) -> list[Op]:
    """A straight chain of ``n`` ops (optionally continuing after ``start``)."""
    sk = key_pair(5, label)
    ops: list[Op] = []
    prev = [start.op_id] if start is not None else []
    base = start.hlc.physical_ms + 1 if start is not None else 1000
    for i in range(n):
        op = make_op(sk, prev, Hlc(base + i, 0, 1), Data("mv:o:x", b"v%d" % i))
        ops.append(op)
        prev = [op.op_id]
    return ops


def spec_dag_60() -> list[Op]:
    """The two-node DAG of store §2.3.10: op i has parents [i-1] (+ i-2 when i%5==0, + i-3 when i%7==0)."""
    sk = key_pair(1, b"two-node")
    ops: list[Op] = []
    for i in range(60):
        if i == 0:
            parents: list[bytes] = []
        elif i % 5 == 0 and i >= 2:
            parents = [ops[i - 1].op_id, ops[i - 2].op_id]
        elif i % 7 == 0 and i >= 3:
            parents = [ops[i - 1].op_id, ops[i - 3].op_id]
        else:
            parents = [ops[i - 1].op_id]
        key = f"mv:obj{i % 3}:field{i % 2}"
        ops.append(make_op(sk, parents, Hlc(10_000 + i, 0, i % 4), Data(key, f"val{i}".encode())))
    return ops


def random_dag(rng: random.Random, n: int, max_parents: int = 3, authors: int = 3) -> list[Op]:
    """``n`` ops, parent-first, each with up to ``max_parents`` random earlier parents and a random HLC."""
    keys = [key_pair(9, b"dag/%d" % a) for a in range(authors)]
    ops: list[Op] = []
    for i in range(n):
        k = rng.randint(0, min(max_parents, i))
        parents = [ops[j].op_id for j in rng.sample(range(i), k)] if k else []
        hlc = Hlc(1000 + rng.randrange(3 * n + 1), rng.randrange(2), rng.randrange(4))
        ops.append(make_op(keys[rng.randrange(authors)], parents, hlc, Data("mv:o:x", b"%d" % i)))
    return ops


def ancestors_or_self(ops_by_id: dict[bytes, Op], ids: list[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    stack = [x for x in ids if x in ops_by_id]
    while stack:
        x = stack.pop()
        if x in out:
            continue
        out.add(x)
        stack.extend(p for p in ops_by_id[x].parents if p in ops_by_id)
    return out
