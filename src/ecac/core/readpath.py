"""The subject read path (core §11.8): what one subject may see of one field.

Pure: the caller passes the replayed DAG and state and a keyring lookup; the verdict comes
from the read index of ``policy`` (role epochs with the tag in scope plus a KeyGrant for the
key version) and AEAD decryption over the writer op's AAD.

The keys come from the log: every KeyRotate op carries its key in clear (core §15), so any
replica holding it can decrypt, not only the one whose keyring minted it. The keyring lookup
is tried first, as a cache; then each key the log publishes for that ``(tag, version)``.
"""

from __future__ import annotations

from collections.abc import Callable

from ecac.core.crdt import ORSet
from ecac.core.dag import Dag
from ecac.core.enc import EncV1, LogKeys, aad, decrypt, log_keys, try_decode_enc
from ecac.core.errors import EcacError
from ecac.core.policy import EpochIndex, build_read_index
from ecac.core.state import State

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


def _decrypted(
    dag: Dag,
    idx: EpochIndex,
    subject_pk: bytes,
    key_lookup: KeyLookup,
    in_log: LogKeys,
    op_id: bytes,
    enc: EncV1,
    obj: str,
    field: str,
) -> bytes | None:
    """The plaintext of an encrypted winner, or None when this subject is denied it."""
    op = dag.get(op_id)
    try:
        pos = dag.position(op_id)
    except KeyError:
        return None
    if op is None or not idx.can_read_tag_version(subject_pk, enc.tag, enc.key_version, pos, op.hlc):
        return None
    cached = key_lookup(enc.tag, enc.key_version)
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
    dag: Dag, state: State, subject_pk: bytes, key_lookup: KeyLookup, obj: str, field: str
) -> str | None:
    """The field as ``subject_pk`` may read it; None when missing or when any winner examined was denied.

    MV winners are walked in op_id byte order: a readable encrypted winner or a plaintext
    winner (before any denial) ends the walk, as in the reference (so an earlier plaintext
    winner hides later encrypted ones). An encrypted winner opens with the keyring's key or
    any key a KeyRotate op of the log publishes for its ``(tag, key_version)``. Sets are not
    redacted and are formatted without JSON escaping of element keys (reference quirk).
    """
    f = state.get_field(obj, field)
    if f is None:
        return None
    if isinstance(f, ORSet):
        return "[" + ",".join(f'{{"key":"{k}","value":"{v.hex()}"}}' for k, v in f.iter_present()) + "]"
    idx: EpochIndex | None = None
    in_log = LogKeys({})
    denied = False
    for op_id, value in f.winners_with_tags():
        if not value:
            continue
        enc = try_decode_enc(value)
        if enc is not None:
            if idx is None:  # built once, and only when an encrypted winner needs it
                order = dag.topo_order()
                idx, in_log = build_read_index(order), log_keys(order)
            pt = _decrypted(dag, idx, subject_pk, key_lookup, in_log, op_id, enc, obj, field)
            if pt is None:
                denied = True
                continue
            return None if denied else display(pt)
        if denied:
            continue
        return display(value)
    return None
