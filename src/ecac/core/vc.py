"""JWT verifiable credentials (core §12), parsed and verified by hand.

Off-the-shelf JWT libraries treat ``nbf``/``exp`` as seconds, accept padded or
non-canonical base64 and lenient JSON, so the verdicts would differ from the reference.
Everything here is therefore explicit: strict base64url, strict JSON (with serde_json's
number range and nesting limit), exact claim types, strict Ed25519 (libsodium).

Three verifiers share one parser and differ only in how the issuer key is found:

* ``verify_vc_inband(token, trust_view)``: the write gate's verifier; key chosen by
  ``iss``, optional ``kid`` and the VC's own ``nbf`` from in-band IssuerKey ops (§12.2).
* ``verify_vc_m4(token, author_pk)``: the key is the Credential op's author (§12.3); used
  only for ``issuer_admin`` gating, so any self-signed VC passes.
* ``verify_vc_file(token, trust_store, status_cache)``: the out-of-band file trust store
  (§12.4), used by CLI tools, never by replay.

This module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import blake3
from nacl.signing import SigningKey

from ecac.core.errors import VcError
from ecac.core.sig import sig_ok

# --------------------------------------------------------------------------- error kinds

BAD_FORMAT = "BadFormat"
BAD_BASE64 = "BadBase64"
BAD_JSON = "BadJson"
BAD_ALG = "BadAlg"
MISSING_FIELD = "MissingField"
BAD_KEY_HEX = "BadKeyHex"
BAD_SIG = "BadSig"
UNKNOWN_ISSUER = "UnknownIssuer"
REVOKED = "Revoked"

#: every ``VcError.kind`` this module raises (the reference's variant names, core §12.5)
ERROR_KINDS = frozenset(
    {BAD_FORMAT, BAD_BASE64, BAD_JSON, BAD_ALG, MISSING_FIELD, BAD_KEY_HEX, BAD_SIG, UNKNOWN_ISSUER, REVOKED}
)

# --------------------------------------------------------------------------- constants

ALG_EDDSA = "EdDSA"
U64_LIMIT = 1 << 64
U32_MASK = 0xFFFF_FFFF
SIG_LEN = 64
PK_LEN = 32
#: serde_json's default recursion limit: 128 nested arrays/objects fail, 127 pass
JSON_MAX_DEPTH = 127
#: the literal header of VCs minted by the reference's tools (core §12.1)
REFERENCE_HEADER = b'{"alg":"EdDSA","typ":"JWT"}'

_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Rust's char::is_whitespace (Unicode White_Space), which str::trim uses; Python's
# str.strip also strips U+001C..U+001F, which Rust keeps.
_RUST_WHITESPACE = (
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class VerifiedClaims:
    """The claims of a VC that verified.

    ``issuer`` and ``cred_id`` are None only from the M4 path when the token lacks string
    ``iss``/``jti`` (M4 never needs them). ``status_index`` is already reduced mod 2**32.
    """

    issuer: str | None
    cred_id: str | None
    subject_pk: bytes
    role: str
    scope: frozenset[str]
    nbf_ms: int
    exp_ms: int
    status_list_id: str | None
    status_index: int | None
    cred_hash: bytes


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    """A compact JWS split, decoded and JSON-parsed but not yet verified."""

    header: Any
    payload: Any
    signing_input: bytes
    signature: bytes


# --------------------------------------------------------------------------- trust protocols


class IssuerKeyLike(Protocol):
    """What the in-band verifier needs from a TrustView issuer-key record."""

    @property
    def algo(self) -> str: ...

    @property
    def pubkey(self) -> bytes: ...


class InbandTrust(Protocol):
    """The TrustView surface used by in-band verification (core §11.3 steps 6–7)."""

    def select_key(self, issuer_id: str, kid: str | None, t_ms: int) -> IssuerKeyLike | None: ...

    def is_revoked(self, list_id: str, index: int) -> bool: ...


class FileTrust(Protocol):
    """The file trust store surface (core §13)."""

    def issuer_key(self, issuer_id: str) -> bytes | None: ...

    def schema(self, issuer_id: str) -> str | None: ...


class StatusOracle(Protocol):
    """Anything that answers whether bit ``index`` of status list ``list_id`` is set."""

    def is_revoked(self, list_id: str, index: int) -> bool: ...


#: ``(iss, kid, nbf_ms) -> 32-byte Ed25519 public key``; raises VcError when there is none
KeyResolver = Callable[[str, "str | None", int], bytes]


# --------------------------------------------------------------------------- base64 / JSON


def b64url_encode(data: bytes) -> bytes:
    """base64url without padding (the only form the reference emits and accepts)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode_strict(segment: bytes, what: str = "segment") -> bytes:
    """Decode canonical base64url without padding; reject everything else.

    Rejects ``=``, characters outside ``A-Za-z0-9-_`` (including whitespace), a length
    of 1 mod 4 and non-zero trailing bits, like the reference's ``URL_SAFE_NO_PAD``.
    """
    if _B64URL.fullmatch(segment) is None:
        raise VcError(BAD_BASE64, f"{what}: character outside the base64url alphabet (no padding allowed)")
    if len(segment) % 4 == 1:
        raise VcError(BAD_BASE64, f"{what}: impossible base64 length {len(segment)}")
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise VcError(BAD_BASE64, f"{what}: undecodable base64url") from None
    if b64url_encode(raw) != segment:
        raise VcError(BAD_BASE64, f"{what}: non-canonical base64url (non-zero trailing bits)")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_int(text: str) -> Any:
    # serde_json turns "-0" into a float and fails on numbers beyond the f64 range.
    if text == "-0":
        return -0.0
    if len(text) > 400:
        raise ValueError("number out of range")
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError("number out of range") from None
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _nesting_depth(text: str) -> int:
    """Maximum array/object nesting of a JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            for k, item in v.items():
                if _SURROGATE.search(k):
                    return True
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
    return False


def strict_json_loads(raw: bytes, what: str = "JSON") -> Any:
    """Parse RFC 8259 JSON the way serde_json does; raise ``VcError(BadJson)`` otherwise.

    On top of ``json.loads`` this rejects NaN/Infinity, lone surrogates, ``-0`` as an
    integer (serde_json makes it a float), numbers outside the f64 range and nesting
    deeper than serde_json's limit. Duplicate keys: last wins, as in both.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VcError(BAD_JSON, f"{what}: not UTF-8") from None
    if (text.count("[") + text.count("{")) > JSON_MAX_DEPTH and _nesting_depth(text) > JSON_MAX_DEPTH:
        raise VcError(BAD_JSON, f"{what}: nested deeper than {JSON_MAX_DEPTH} levels")
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float
        )
    except (ValueError, RecursionError) as e:
        raise VcError(BAD_JSON, f"{what}: {e}") from None
    if _has_lone_surrogate(value):
        raise VcError(BAD_JSON, f"{what}: lone UTF-16 surrogate escape")
    return value


# --------------------------------------------------------------------------- parsing


def parse_compact(token: bytes) -> ParsedJwt:
    """Split, decode and parse a compact JWS (core §12.2 step 1), in the reference's order."""
    try:
        text = bytes(token).decode("utf-8")
    except UnicodeDecodeError:
        raise VcError(BAD_FORMAT, "token is not UTF-8") from None
    parts = text.split(".")
    if len(parts) != 3:
        raise VcError(BAD_FORMAT, f"expected 3 dot-separated parts, got {len(parts)}")
    h_seg, p_seg, s_seg = (p.encode("utf-8") for p in parts)
    header_raw = b64url_decode_strict(h_seg, "header")
    payload_raw = b64url_decode_strict(p_seg, "payload")
    signature = b64url_decode_strict(s_seg, "signature")
    if len(signature) != SIG_LEN:
        raise VcError(BAD_SIG, f"signature must be {SIG_LEN} bytes, got {len(signature)}")
    header = strict_json_loads(header_raw, "header")
    payload = strict_json_loads(payload_raw, "payload")
    return ParsedJwt(header, payload, h_seg + b"." + p_seg, signature)


def _check_alg(header: Any) -> None:
    alg = header.get("alg") if isinstance(header, dict) else None
    if alg is None:
        raise VcError(BAD_ALG, "header has no alg")
    if alg != ALG_EDDSA:
        raise VcError(BAD_ALG, f"alg must be {ALG_EDDSA!r}, got {alg!r}")


def _claim(payload: Any, name: str) -> Any:
    return payload.get(name) if isinstance(payload, dict) else None


def _str_claim(payload: Any, name: str) -> str:
    v = _claim(payload, name)
    if not isinstance(v, str):
        raise VcError(MISSING_FIELD, name)
    return v


def is_u64(v: Any) -> TypeGuard[int]:
    """A JSON integer in [0, 2**64-1]; bools and floats (``1e4``, ``10000.0``, ``-0``) fail."""
    return type(v) is int and 0 <= v < U64_LIMIT


def _u64_claim(payload: Any, name: str) -> int:
    v = _claim(payload, name)
    if not is_u64(v):
        raise VcError(MISSING_FIELD, name)
    return v


def _scope_claim(payload: Any) -> frozenset[str]:
    v = _claim(payload, "scope")
    if not isinstance(v, list):
        raise VcError(MISSING_FIELD, "scope")
    if not all(isinstance(x, str) for x in v):
        raise VcError(MISSING_FIELD, "scope")
    return frozenset(v)


def rust_trim(text: str) -> str:
    """``str::trim`` of Rust: strip Unicode White_Space only."""
    return text.strip(_RUST_WHITESPACE)


def parse_pk_hex(text: str) -> bytes:
    """Exactly 64 hex digits (either case) → 32 bytes, else ``BadKeyHex``."""
    if len(text) != 2 * PK_LEN or not all(c in _HEX_DIGITS for c in text):
        raise VcError(BAD_KEY_HEX, "sub_pk must be exactly 64 hex digits")
    return bytes.fromhex(text)


def _status_claim(payload: Any) -> tuple[str | None, int | None]:
    """``(list_id, index mod 2**32)``; a present ``status`` key must be well-formed."""
    if not isinstance(payload, dict) or "status" not in payload:
        return None, None
    status = payload["status"]
    list_id = status.get("id") if isinstance(status, dict) else None
    index = status.get("index") if isinstance(status, dict) else None
    if not isinstance(list_id, str):
        raise VcError(MISSING_FIELD, "status.id")
    if not is_u64(index):
        raise VcError(MISSING_FIELD, "status.index")
    return list_id, index & U32_MASK


# --------------------------------------------------------------------------- signatures


_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


def ed25519_point_decompresses(pk: bytes) -> bool:
    """Whether 32 bytes decompress to a curve point, with curve25519-dalek's leniency.

    Like dalek, the y coordinate is reduced mod p and ``x = 0`` with the sign bit set is
    accepted; only "no square root" fails. (libsodium's ``is_valid_point`` is stricter.)
    """
    if len(pk) != PK_LEN:
        return False
    y = (int.from_bytes(pk, "little") & ((1 << 255) - 1)) % _P
    y2 = y * y % _P
    u = (y2 - 1) % _P
    v = (_D * y2 + 1) % _P
    w = u * pow(v, _P - 2, _P) % _P
    return w == 0 or pow(w, (_P - 1) // 2, _P) == 1


def _verify_signature(pubkey: bytes, parsed: ParsedJwt) -> None:
    """Strict Ed25519 (libsodium); a key that does not decompress can never verify."""
    if len(pubkey) != PK_LEN:
        raise VcError(BAD_SIG, f"Ed25519 public key must be {PK_LEN} bytes, got {len(pubkey)}")
    if not sig_ok(pubkey, parsed.signature, parsed.signing_input):
        # the point check is slow pure Python, so it only refines the message
        if not ed25519_point_decompresses(pubkey):
            raise VcError(BAD_SIG, "the verifying key is not a valid Ed25519 point")
        raise VcError(BAD_SIG, "Ed25519 signature does not verify")


# --------------------------------------------------------------------------- verifiers


def cred_hash(token: bytes) -> bytes:
    """``blake3`` of the exact compact-JWT bytes: how Grants and KeyGrants name a VC."""
    return blake3.blake3(bytes(token)).digest()


def verify_vc_with(
    token: bytes,
    resolve_key: KeyResolver,
    status: StatusOracle | None,
    schema_of: Callable[[str], str | None] | None = None,
) -> VerifiedClaims:
    """The shared in-band/file verification sequence (core §12.2, §12.4).

    ``resolve_key(iss, kid, nbf_ms)`` returns the issuer's 32-byte key or raises
    ``VcError``. ``status`` answers status-list lookups; ``schema_of`` (file path only)
    gives the configured schema of an issuer, which must be ``"standard-v1"`` when set.
    """
    parsed = parse_compact(token)
    _check_alg(parsed.header)
    payload = parsed.payload
    iss = _str_claim(payload, "iss")
    schema = schema_of(iss) if schema_of is not None else None
    if schema is not None and schema != "standard-v1":
        raise VcError(BAD_JSON, f"issuer {iss!r} has unsupported schema {schema!r} (expected 'standard-v1')")
    jti = _str_claim(payload, "jti")
    role = _str_claim(payload, "role")
    sub_pk = _str_claim(payload, "sub_pk")
    nbf = _u64_claim(payload, "nbf")
    exp = _u64_claim(payload, "exp")
    scope = _scope_claim(payload)
    kid_v = parsed.header.get("kid") if isinstance(parsed.header, dict) else None
    kid = kid_v if isinstance(kid_v, str) else None
    pubkey = resolve_key(iss, kid, nbf)
    _verify_signature(pubkey, parsed)
    subject = parse_pk_hex(rust_trim(sub_pk))
    list_id, index = _status_claim(payload)
    if list_id is not None and index is not None and status is not None and status.is_revoked(list_id, index):
        raise VcError(REVOKED, f"status list {list_id!r} index {index}")
    return VerifiedClaims(iss, jti, subject, role, scope, nbf, exp, list_id, index, cred_hash(token))


def inband_resolver(trust: InbandTrust) -> KeyResolver:
    """Key selection from a TrustView at the VC's own ``nbf`` (core §12.2 steps 4–5)."""

    def resolve(iss: str, kid: str | None, nbf_ms: int) -> bytes:
        rec = trust.select_key(iss, kid, nbf_ms)
        if rec is None:
            raise VcError(UNKNOWN_ISSUER, iss)
        if rec.algo != ALG_EDDSA:
            raise VcError(BAD_ALG, f"issuer key algo must be {ALG_EDDSA!r}, got {rec.algo!r}")
        if len(rec.pubkey) != PK_LEN:
            raise VcError(BAD_KEY_HEX, f"issuer {iss!r}: selected key is {len(rec.pubkey)} bytes, not 32")
        return bytes(rec.pubkey)

    return resolve


def file_resolver(store: FileTrust) -> KeyResolver:
    """Key lookup by ``iss`` only: no kid, no validity window (core §12.4)."""

    def resolve(iss: str, kid: str | None, nbf_ms: int) -> bytes:
        key = store.issuer_key(iss)
        if key is None:
            raise VcError(UNKNOWN_ISSUER, iss)
        return key

    return resolve


def verify_vc_inband(token: bytes, trust: InbandTrust) -> VerifiedClaims:
    """The write gate's verifier: in-band issuer keys and status lists (core §12.2)."""
    return verify_vc_with(token, inband_resolver(trust), trust)


def verify_vc_file(token: bytes, store: FileTrust, status: StatusOracle) -> VerifiedClaims:
    """Out-of-band verification against ``issuers.toml`` and status files (core §12.4)."""
    return verify_vc_with(token, file_resolver(store), status, store.schema)


def verify_vc_m4(token: bytes, author_pk: bytes) -> VerifiedClaims:
    """M4 verification under the Credential op's author (core §12.3).

    No trust store, no status, no ``iss``/``jti``/``kid``; ``sub_pk`` is not trimmed. Any
    self-signed VC passes, which is how anyone can become ``issuer_admin`` (core §18.1).
    """
    parsed = parse_compact(token)
    _check_alg(parsed.header)
    _verify_signature(bytes(author_pk), parsed)
    payload = parsed.payload
    role = _str_claim(payload, "role")
    nbf = _u64_claim(payload, "nbf")
    exp = _u64_claim(payload, "exp")
    subject = parse_pk_hex(_str_claim(payload, "sub_pk"))
    scope = _scope_claim(payload)
    iss = _claim(payload, "iss")
    jti = _claim(payload, "jti")
    return VerifiedClaims(
        iss if isinstance(iss, str) else None,
        jti if isinstance(jti, str) else None,
        subject,
        role,
        scope,
        nbf,
        exp,
        None,
        None,
        cred_hash(token),
    )


def try_verify(verify: Callable[[], VerifiedClaims]) -> VerifiedClaims | None:
    """Run a verifier, mapping any ``VcError`` to None (replay only needs the verdict)."""
    try:
        return verify()
    except VcError:
        return None


# --------------------------------------------------------------------------- memoised verdicts (replay)

#: default bound on each table of a ``VcMemo`` (entries; the least recently used go first)
MEMO_MAX_ENTRIES = 65_536


@dataclass(frozen=True, slots=True)
class KeyAnswer:
    """All the in-band verifier sees of a selected issuer key (``inband_resolver``)."""

    algo: str
    pubkey: bytes


def _key_answer(rec: IssuerKeyLike | None) -> KeyAnswer | None:
    return None if rec is None else KeyAnswer(rec.algo, bytes(rec.pubkey))


@dataclass(frozen=True, slots=True)
class KeyQuery:
    """``select_key(issuer_id, kid, t_ms)`` was asked and answered ``answer``."""

    issuer_id: str
    kid: str | None
    t_ms: int
    answer: KeyAnswer | None

    def holds(self, trust: InbandTrust) -> bool:
        return _key_answer(trust.select_key(self.issuer_id, self.kid, self.t_ms)) == self.answer


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """``is_revoked(list_id, index)`` was asked and answered ``answer``."""

    list_id: str
    index: int
    answer: bool

    def holds(self, trust: InbandTrust) -> bool:
        return trust.is_revoked(self.list_id, self.index) == self.answer


TrustQuery = KeyQuery | StatusQuery


class _RecordingTrust:
    """An ``InbandTrust`` that answers from ``trust``, records each query with its answer, and
    shows the verifier only a ``KeyAnswer`` of a key, so nothing unrecorded can reach the verdict."""

    __slots__ = ("_trust", "queries")

    def __init__(self, trust: InbandTrust) -> None:
        self._trust = trust
        self.queries: list[TrustQuery] = []

    def select_key(self, issuer_id: str, kid: str | None, t_ms: int) -> KeyAnswer | None:
        answer = _key_answer(self._trust.select_key(issuer_id, kid, t_ms))
        self.queries.append(KeyQuery(issuer_id, kid, t_ms, answer))
        return answer

    def is_revoked(self, list_id: str, index: int) -> bool:
        answer = bool(self._trust.is_revoked(list_id, index))
        self.queries.append(StatusQuery(list_id, index, answer))
        return answer


class VcMemo:
    """Credential verdicts for replay, remembered across incremental applies.

    Owned by one replayer (``policy.GateBuilder``), never module-level; not thread-safe.

    * ``m4(token, author_pk)``: the M4 verdict depends on nothing else (core §12.3), so that
      pair is the key.
    * ``inband(token, trust)``: the in-band verdict depends on the token and on the answers
      of the trust it asks: ``select_key`` at the VC's own ``nbf``, then ``is_revoked``
      (core §12.2). Per token the memo keeps the queries the verifier made with the answers
      it saw, and reuses the verdict only when ``trust`` gives the same answers to the same
      queries: the verifier is a deterministic function of the token and those answers, so
      it would take the same path to the same verdict. An issuer key added, replaced or
      revoked, or a status bit set, changes an answer, and the token is verified again.

    Each table holds at most ``max_entries`` (least recently used first out; 0 disables the
    memo): eviction costs a re-verification, it never changes a verdict.
    """

    __slots__ = ("_inband", "_m4", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int = MEMO_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries}")
        self.max_entries = max_entries
        self._m4: OrderedDict[tuple[bytes, bytes], VerifiedClaims | None] = OrderedDict()
        self._inband: OrderedDict[bytes, tuple[tuple[TrustQuery, ...], VerifiedClaims | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._m4) + len(self._inband)

    def clear(self) -> None:
        self._m4.clear()
        self._inband.clear()

    def m4(self, token: bytes, author_pk: bytes) -> VerifiedClaims | None:
        """``verify_vc_m4(token, author_pk)``, None when it fails."""
        key = (bytes(token), bytes(author_pk))
        table = self._m4
        if key in table:
            table.move_to_end(key)
            self.hits += 1
            return table[key]
        self.misses += 1
        vc = try_verify(lambda: verify_vc_m4(key[0], key[1]))
        self._keep(table, key, vc)
        return vc

    def inband(self, token: bytes, trust: InbandTrust) -> VerifiedClaims | None:
        """``verify_vc_inband(token, trust)``, None when it fails."""
        tok = bytes(token)
        table = self._inband
        entry = table.get(tok)
        if entry is not None and all(q.holds(trust) for q in entry[0]):
            table.move_to_end(tok)
            self.hits += 1
            return entry[1]
        self.misses += 1
        rec = _RecordingTrust(trust)
        vc = try_verify(lambda: verify_vc_inband(tok, rec))
        self._keep(table, tok, (tuple(rec.queries), vc))
        return vc

    def _keep(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)


# --------------------------------------------------------------------------- minting


def _compact_json(obj: Any) -> bytes:
    """serde_json's compact output with sorted keys (UTF-8, not ASCII-escaped)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"claims are not JSON-serialisable the way the reference writes them: {e}") from None


def mint_vc(signing_key: SigningKey, claims: Mapping[str, Any], kid: str | None = None) -> bytes:
    """A compact JWT in the reference's layout (core §12.1).

    Header ``{"alg":"EdDSA","typ":"JWT"}`` (with ``kid`` inserted in sorted position when
    given), payload = compact JSON of ``claims`` with sorted keys, EdDSA over ``h.p``.
    Used by tests, scenarios and CLI tools; the claims are not validated, so invalid
    credentials can be minted on purpose.
    """
    with_kid = {"alg": ALG_EDDSA, "kid": kid, "typ": "JWT"}
    header = REFERENCE_HEADER if kid is None else _compact_json(with_kid)
    signing_input = b64url_encode(header) + b"." + b64url_encode(_compact_json(dict(claims)))
    signature = signing_key.sign(signing_input).signature
    return signing_input + b"." + b64url_encode(signature)


def editor_claims(
    subject_pk: bytes,
    *,
    nbf_ms: int,
    exp_ms: int,
    scope: tuple[str, ...] = ("hv",),
    role: str = "editor",
    iss: str = "issuer-1",
    jti: str = "test-cred-1",
    status: tuple[str, int] | None = ("list-0", 0),
) -> dict[str, Any]:
    """Claims in the shape the reference's tests use (core §16.2); a convenience for minting."""
    claims: dict[str, Any] = {
        "exp": exp_ms,
        "iss": iss,
        "jti": jti,
        "nbf": nbf_ms,
        "role": role,
        "scope": list(scope),
        "sub_pk": subject_pk.hex(),
    }
    if status is not None:
        claims["status"] = {"id": status[0], "index": status[1]}
    return claims
