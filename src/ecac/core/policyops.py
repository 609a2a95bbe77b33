"""Builders of policy and trust ops: one way to turn keys, parents and an HLC into an op.

IssuerKey, Credential + Grant, Revoke, StatusListChunk and Data ops (core §3.3), the data-key
grammar in the writing direction (core §7.1) and LSB-first status bitsets (core §11.3 step 7).
Used by the operator commands (``ecac issuer publish``, ``grant``, ``revoke``, ``status-list
set``, ``write``), ``vc-attach`` and the scenario library, so they all build identical ops from
identical inputs.

Pure: no clock, no randomness, no store. Callers pass the parents (a store's heads) and the
HLC; nothing is validated against a log here (``ecac.core.access.preview`` does that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from nacl.signing import SigningKey

from ecac.core.errors import EcacError, VcError
from ecac.core.hlc import U64_MAX, Hlc
from ecac.core.op import Credential, Data, Grant, IssuerKey, Op, Revoke, StatusListChunk, make_op
from ecac.core.resources import SET_ADD, SET_FIELD, SET_REM
from ecac.core.vc import ALG_EDDSA, MISSING_FIELD, cred_hash, parse_compact, parse_pk_hex, rust_trim

# --------------------------------------------------------------------------- trust ops


def issuer_key_op(
    signer: SigningKey,
    parents: Iterable[bytes],
    hlc: Hlc,
    issuer_id: str,
    key_id: str,
    *,
    pubkey: bytes | None = None,
    valid_from_ms: int = 0,
    valid_until_ms: int = U64_MAX,
    prev_key_id: str | None = None,
    algo: str = ALG_EDDSA,
) -> Op:
    """Publish ``pubkey`` (default: the signer's own key) as ``issuer_id``/``key_id``."""
    key = bytes(signer.verify_key) if pubkey is None else pubkey
    payload = IssuerKey(issuer_id, key_id, algo, key, valid_from_ms, valid_until_ms, prev_key_id)
    return make_op(signer, parents, hlc, payload)


def set_status_bit(data: bytes, index: int, value: int) -> bytes:
    """``data`` zero-extended to hold bit ``index`` (LSB-first), with that bit set to ``value``."""
    byte, bit = divmod(index, 8)
    buf = bytearray(data)
    if len(buf) <= byte:
        buf.extend(bytes(byte + 1 - len(buf)))
    if value:
        buf[byte] |= 1 << bit
    else:
        buf[byte] &= ~(1 << bit) & 0xFF
    return bytes(buf)


def status_bits(indices: Iterable[int]) -> bytes:
    """The shortest LSB-first bitset with exactly ``indices`` set (one byte for an empty set).

    One byte rather than none: a status list whose chunk 0 is empty revokes nothing and its
    later chunks could never be read (core §11.3 step 7), so a list always has a byte.
    """
    bits = b"\x00"
    for i in sorted(set(indices)):
        bits = set_status_bit(bits, i, 1)
    return bits


def status_chunk_op(
    signer: SigningKey,
    parents: Iterable[bytes],
    hlc: Hlc,
    list_id: str,
    issuer_id: str,
    version: int,
    chunk: bytes,
    *,
    chunk_index: int = 0,
    bitset_sha256: bytes | None = None,
) -> Op:
    """One chunk of a status list; ``bitset_sha256`` defaults to the SHA-256 of ``chunk`` (a
    one-chunk list, which is complete on its own)."""
    sha = hashlib.sha256(chunk).digest() if bitset_sha256 is None else bitset_sha256
    payload = StatusListChunk(list_id, issuer_id, version, chunk_index, sha, chunk)
    return make_op(signer, parents, hlc, payload)


# --------------------------------------------------------------------------- credentials and grants


def credential_op(signer: SigningKey, parents: Iterable[bytes], hlc: Hlc, token: bytes, cred_id: str) -> Op:
    """The Credential op carrying the compact JWT ``token`` (its exact bytes)."""
    return make_op(signer, parents, hlc, Credential(cred_id, bytes(token)))


def grant_op(signer: SigningKey, parents: Iterable[bytes], hlc: Hlc, subject_pk: bytes, token: bytes) -> Op:
    """The Grant naming ``token`` by its ``cred_hash`` for ``subject_pk``."""
    return make_op(signer, parents, hlc, Grant(subject_pk, cred_hash(token)))


def vc_subject_and_id(token: bytes) -> tuple[bytes, str]:
    """``(sub_pk, jti)`` of a VC as it is written, *not verified* (for building its Grant).

    Raises ``VcError`` when the token is not a parsable compact JWT or lacks a usable
    ``sub_pk``; a missing ``jti`` gives ``""`` (the Credential's ``cred_id`` is never checked).
    """
    payload = parse_compact(token).payload
    sub = payload.get("sub_pk") if isinstance(payload, dict) else None
    if not isinstance(sub, str):
        raise VcError(MISSING_FIELD, "sub_pk")
    jti = payload.get("jti")
    return parse_pk_hex(rust_trim(sub)), jti if isinstance(jti, str) else ""


def grant_ops(
    token: bytes,
    physical_ms: int,
    *,
    issuer: SigningKey,
    grantor: SigningKey,
    parents: Sequence[bytes] = (),
    subject_pk: bytes | None = None,
    cred_id: str | None = None,
) -> tuple[Op, Op]:
    """``(Credential, Grant)`` of a VC, the reference's layout (``vc-attach``, core §16.2).

    The Credential (by ``issuer``) has ``parents`` and HLC ``{ms, 0, 1}``; the Grant (by
    ``grantor``) is its only child at ``{ms, 0, 2}``. ``subject_pk`` and ``cred_id`` default
    to the token's ``sub_pk`` and ``jti``.
    """
    if subject_pk is None or cred_id is None:
        sub, jti = vc_subject_and_id(token)
        subject_pk = sub if subject_pk is None else subject_pk
        cred_id = jti if cred_id is None else cred_id
    cred = credential_op(issuer, parents, Hlc(physical_ms, 0, 1), token, cred_id)
    grant = grant_op(grantor, (cred.op_id,), Hlc(physical_ms, 0, 2), subject_pk, token)
    return cred, grant


def revoke_op(
    signer: SigningKey,
    parents: Iterable[bytes],
    hlc: Hlc,
    subject_pk: bytes,
    role: str,
    scope: Sequence[str],
    at: Hlc | None = None,
) -> Op:
    """A Revoke of ``(subject_pk, role)`` for ``scope``; ``at`` (ignored by policy) defaults to ``hlc``."""
    return make_op(signer, parents, hlc, Revoke(subject_pk, role, tuple(scope), hlc if at is None else at))


# --------------------------------------------------------------------------- data ops


def data_key(action: str, obj: str, field: str, elem: str | None = None) -> str:
    """The data key of a write (core §7.1): ``mv:o:f``, ``set+:o:f:e`` or ``set-:o:f:e``.

    The grammar has no escaping, so a ``:`` in ``obj``, ``field`` or ``elem`` would address
    another resource; that is an ``EcacError`` naming the part.
    """
    parts = [("object", obj), ("field", field)]
    if action != SET_FIELD:
        if elem is None:
            raise EcacError(f"a {action} write needs a set element")
        parts.append(("set element", elem))
    for what, text in parts:
        if ":" in text:
            raise EcacError(f"{what} {text!r} contains ':', which the data-key grammar cannot express")
    if action == SET_FIELD:
        return f"mv:{obj}:{field}"
    if action == SET_ADD:
        return f"set+:{obj}:{field}:{elem}"
    if action == SET_REM:
        return f"set-:{obj}:{field}:{elem}"
    raise EcacError(f"unknown data action {action!r}")


def data_op(signer: SigningKey, parents: Iterable[bytes], hlc: Hlc, key: str, value: bytes) -> Op:
    """A Data op writing ``value`` under ``key``."""
    return make_op(signer, parents, hlc, Data(key, value))
