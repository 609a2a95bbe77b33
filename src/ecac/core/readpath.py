"""The subject read path (core §11.8): what one subject may see of one field.

Pure: the caller passes the replayed DAG and state and a keyring lookup; the verdict comes
from the read index of ``policy`` (role epochs with the tag in scope plus a KeyGrant for the
key version) and AEAD decryption over the writer op's AAD.

The keys come from the log: every KeyRotate op carries its key in clear (core §15), so any
replica holding it can decrypt, not only the one whose keyring minted it. The keyring lookup
is tried first, as a cache; then each key the log publishes for that ``(tag, version)``.

Strict profile (docs/security.md, "Sealed read keys"): keys are never in clear. A
``SealedKeyRotate`` counts when its author is an admin at the op and the op is not void
(``counting_rotations``); it seals the key to the readers that hold a live read grant in its
causal past (``live_readers``). The key source of a read is the reader's own signing key, which
opens that reader's boxes (``SealedKeys.for_reader``); clear ``KeyRotate`` ops, ``KeyGrant`` ops
and the keyring count for nothing. Readability is then cryptographic, not a policy verdict:
what the key opens is shown, and without the reader's key every encrypted value is redacted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType

from nacl.signing import SigningKey

from ecac.core.crdt import ORSet
from ecac.core.dag import Dag
from ecac.core.enc import EncV1, LogKeys, aad, decrypt, log_keys, open_sealed, try_decode_enc
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.op import Op, SealedKeyRotate
from ecac.core.policy import EpochIndex, build_read_index
from ecac.core.profile import is_strict_order
from ecac.core.resources import role_read_tags
from ecac.core.state import State
from ecac.core.strict import StrictGate, build_strict_gate

#: ``(tag, key_version) -> 32-byte key or None`` (the store's keyring in the CLI)
KeyLookup = Callable[[str, int], "bytes | None"]

#: what ``show`` prints when something was denied (quotes included)
REDACTED = '"<redacted>"'


def display(value: bytes) -> str:
    """UTF-8 text when the bytes decode as UTF-8, else lowercase hex (core §11.8)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()


# --------------------------------------------------------------------------- strict: sealed keys


def _in_past(gate: StrictGate, op_id: bytes, parents: Sequence[bytes]) -> bool:
    """Whether ``op_id`` is in the causal past of an op with these parents (one of them or an ancestor)."""
    hb = gate.state.hb
    return any(op_id == p or hb(op_id, p) for p in parents)


def live_readers(gate: StrictGate, tag: str, parents: Sequence[bytes], hlc: Hlc) -> tuple[bytes, ...]:
    """The subjects a rotation of ``tag`` with these parents and HLC seals its key to, sorted.

    A reader holds a counting Grant (``ecac.core.strict``: VC verified against the admins' trust
    root, not self-issued, not void) whose role reads ``tag`` (core §7.3: ``editor``) with ``tag``
    in its scope, that is in the rotation's causal past, whose VC window contains the rotation's
    time, and none of whose counting Revokes is in the rotation's causal past. A Revoke the
    rotator had not seen does not exclude the reader (causal, as the write gate): the next
    rotation that has it in its past does. A pure function of the rotation's past.
    """
    st = gate.state
    t = hlc.physical_ms
    out = []
    for subject, grants in st.grants.items():
        for g in grants:
            if tag not in g.scope or tag not in role_read_tags(g.role) or not g.nbf_ms <= t < g.exp_ms:
                continue
            if not _in_past(gate, g.op_id, parents):
                continue
            k = st.kills.get(g.op_id)
            if k is not None and any(_in_past(gate, r, parents) for r in k.revokes):
                continue
            out.append(bytes(subject))
            break
    return tuple(sorted(out))


def rotation_problem(gate: StrictGate, op: Op) -> str | None:
    """Why a SealedKeyRotate ``op`` of the gate's log does not count (None: it counts).

    It counts when its author is an admin at the op (genesis admin, or appointed in its past),
    the op is not void (HLC regression or a void ancestor), and its boxes are in strictly
    ascending ``reader_pk`` order (one box per reader: the canonical form). Who it is sealed to is
    the rotator's choice (``live_readers`` is what the CLI seals to); an admin can leak a key in
    any case, so the recipients are not checked against the log.
    """
    p = op.payload
    if not isinstance(p, SealedKeyRotate):
        return f"a {p.NAME} op is not a sealed key rotation"
    why = gate.void_reason(op.op_id)
    if why is not None:
        return f"the op is void ({why})"
    if not gate.is_admin(op.author_pk, op.op_id):
        return "only the project's admins may rotate keys under strict (the signer is not one)"
    pks = [b.reader_pk for b in p.boxes]
    if any(a >= b for a, b in pairwise(pks)):
        return "its boxes are not in strictly ascending reader_pk order"
    return None


@dataclass(frozen=True, slots=True)
class SealedKeys:
    """The counting SealedKeyRotate ops of a strict log, in log order."""

    rotations: tuple[Op, ...]

    def max_version(self, tag: str) -> int | None:
        """The highest counting version of ``tag`` (None when no counting rotation has it)."""
        return max(
            (op.payload.new_version for op in self.rotations if op.payload.tag == tag),  # type: ignore[union-attr]
            default=None,
        )

    def for_reader(self, reader_sk: SigningKey) -> LogKeys:
        """The keys ``reader_sk`` opens: its box in each counting rotation, first published first."""
        me = bytes(reader_sk.verify_key)
        found: dict[tuple[str, int], list[bytes]] = {}
        for op in self.rotations:
            p = op.payload
            assert isinstance(p, SealedKeyRotate)
            for box in p.boxes:
                if box.reader_pk != me:
                    continue
                key = open_sealed(box.sealed, reader_sk)
                seen = found.setdefault((p.tag, p.new_version), [])
                if key is not None and key not in seen:
                    seen.append(key)
        return LogKeys(MappingProxyType({k: tuple(v) for k, v in found.items() if v}))


def sealed_keys(order: Sequence[Op], gate: StrictGate | None = None) -> SealedKeys:
    """The counting sealed rotations of a strict log given in total order (``gate``: its strict gate)."""
    if gate is None:
        gate = build_strict_gate(order)
    return SealedKeys(
        tuple(
            op for op in order if type(op.payload) is SealedKeyRotate and rotation_problem(gate, op) is None
        )
    )


# --------------------------------------------------------------------------- the read


def _decrypted(
    dag: Dag,
    idx: EpochIndex | None,
    subject_pk: bytes,
    key_lookup: KeyLookup | None,
    in_log: LogKeys,
    op_id: bytes,
    enc: EncV1,
    obj: str,
    field: str,
) -> bytes | None:
    """The plaintext of an encrypted winner, or None when this subject is denied it.

    ``idx`` None (strict): no policy verdict and no keyring, only the keys the reader opened."""
    op = dag.get(op_id)
    try:
        pos = dag.position(op_id)
    except KeyError:
        return None
    if op is None:
        return None
    if idx is not None and not idx.can_read_tag_version(subject_pk, enc.tag, enc.key_version, pos, op.hlc):
        return None
    cached = None if key_lookup is None else key_lookup(enc.tag, enc.key_version)
    keys = ([] if cached is None else [cached]) + [
        k for k in in_log.candidates(enc.tag, enc.key_version) if k != cached
    ]
    a = aad(op.author_pk, op.hlc, op.parents, obj, field)
    for key in keys:
        try:
            return decrypt(key, enc, a)
        except EcacError:
            continue
    return None


def project_field_for_subject(
    dag: Dag,
    state: State,
    subject_pk: bytes,
    key_lookup: KeyLookup,
    obj: str,
    field: str,
    reader_sk: SigningKey | None = None,
) -> str | None:
    """The field as ``subject_pk`` may read it; None when missing or when any winner examined was denied.

    MV winners are walked in op_id byte order: a readable encrypted winner or a plaintext
    winner (before any denial) ends the walk, as in the reference (so an earlier plaintext
    winner hides later encrypted ones). An encrypted winner opens with the keyring's key or
    any key a KeyRotate op of the log publishes for its ``(tag, key_version)``. Sets are not
    redacted and are formatted without JSON escaping of element keys (reference quirk).

    Strict log: an encrypted winner opens only with a key ``reader_sk`` (the subject's own
    signing key) unseals from a counting SealedKeyRotate; without ``reader_sk`` it is denied.
    """
    if reader_sk is not None and bytes(reader_sk.verify_key) != bytes(subject_pk):
        raise EcacError("the reader's key file does not belong to subject_pk")
    f = state.get_field(obj, field)
    if f is None:
        return None
    if isinstance(f, ORSet):
        return "[" + ",".join(f'{{"key":"{k}","value":"{v.hex()}"}}' for k, v in f.iter_present()) + "]"
    idx: EpochIndex | None = None
    lookup: KeyLookup | None = key_lookup
    in_log: LogKeys | None = None
    denied = False
    for op_id, value in f.winners_with_tags():
        if not value:
            continue
        enc = try_decode_enc(value)
        if enc is not None:
            if in_log is None:  # built once, and only when an encrypted winner needs it
                order = dag.topo_order()
                if is_strict_order(order):
                    lookup = None
                    in_log = LogKeys({}) if reader_sk is None else sealed_keys(order).for_reader(reader_sk)
                else:
                    idx, in_log = build_read_index(order), log_keys(order)
            pt = _decrypted(dag, idx, subject_pk, lookup, in_log, op_id, enc, obj, field)
            if pt is None:
                denied = True
                continue
            return None if denied else display(pt)
        if denied:
            continue
        return display(value)
    return None
