"""Operator commands: keys, issuers, credentials, grant and revoke, reads and writes, who has
access and why.

``key new/show``, ``issuer publish``, ``vc issue``, ``grant``, ``revoke``, ``status-list set``,
``write OBJ FIELD VALUE``, ``get``, ``access``, ``explain``, ``ops`` and ``peers``. Every command that signs
takes ``--key FILE`` (``ecac.cli.keyfile``); no secret is ever an argument.

Each command talks to a ``Target``: ``LocalTarget`` over ``--db DIR`` (``ecac.cli.dbopt``) or
``RemoteTarget`` over a running node's gateway (``--node URL``, env ``ECAC_NODE``, with the
token of ``--token-file FILE`` or ``ECAC_CONTROL_TOKEN``): the same six methods, each answer
the JSON of an ``ecac.core.access`` view and every text output rendered from that JSON, so
``--db`` and ``--node`` print the same documents (``peers`` needs a node).

Ops are signed here, on the target's heads, and submitted with their preview: an op whose
preview says it would change nothing (a denied write, a Grant whose VC does not verify, a
Revoke that closes nothing, an issuer key or status list that would be ignored) is **not
stored** and the command fails with the reason; ``--force`` stores such policy ops anyway (for
ops whose effect depends on ops that have not arrived yet). A denied write is stored only on
request (``write --store-denied``), and the command still fails. Through a node the preview
runs on the node's writer against its log at commit time, and stored ops are announced.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import click
from click.core import ParameterSource
from nacl.signing import SigningKey

from ecac.cli.common import (
    gateway,
    node_option,
    one_target,
    read_file,
    shown_key,
    token_file_option,
    wall_clock_ms,
)
from ecac.cli.dbopt import db_option, open_store
from ecac.cli.keyfile import create_key_file, create_private_file, key_option, load_signing_key, read_key_file
from ecac.core import access, policyops
from ecac.core.errors import EcacError, VcError
from ecac.core.hlc import U32_MAX, U64_MAX, Hlc
from ecac.core.keys import parse_hex, public_key
from ecac.core.op import Op
from ecac.core.resources import EDITOR, ISSUER_ADMIN, SET_ADD, SET_FIELD, SET_REM
from ecac.core.vc import cred_hash, editor_claims, mint_vc

if TYPE_CHECKING:  # the store loads only for --db, the client only for --node
    from ecac.net.client import GatewayClient
    from ecac.store.rocks import Store

SUBJECT_ENV = "ECAC_SUBJECT_SK_HEX"  # the reference's writer seed, also accepted by `write`
YEAR_MS = 365 * 86_400_000
DEFAULT_VC_TTL = "30d"
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submission: the preview's JSON (``access.Preview.to_obj()``) and
    whether the ops were stored."""

    preview: dict[str, Any]
    stored: bool


class Target(Protocol):
    """Where an operator command reads and writes (a local store; a node's gateway).

    Reads return the JSON documents of ``ecac.core.access``; ``submit`` previews the ops
    against the target's log and stores them when the preview is ok, or with ``force`` when
    no write is denied (or ``store_denied`` too).
    """

    def heads(self) -> list[bytes]: ...

    def submit(self, ops: Sequence[Op], *, force: bool, store_denied: bool = False) -> Submitted: ...

    def state(self, obj: str | None = None, field: str | None = None) -> dict[str, Any]: ...

    def access(self, now_ms: int) -> dict[str, Any]: ...

    def explain(self, op_id: str | None = None) -> dict[str, Any]: ...

    def ops(self, limit: int) -> dict[str, Any]: ...


class LocalTarget:
    """A ``Target`` over an open store (``--db``); the order is read once per command."""

    def __init__(self, st: Store) -> None:
        self.st = st
        self._order: list[Op] | None = None

    def order(self) -> list[Op]:
        if self._order is None:
            self._order = list(self.st.iter_topo_ops())
        return self._order

    def heads(self) -> list[bytes]:
        return self.st.heads(8)

    def submit(self, ops: Sequence[Op], *, force: bool, store_denied: bool = False) -> Submitted:
        pv = access.preview(self.order(), ops)
        store = pv.storable(force=force, store_denied=store_denied)
        if store:
            self.st.put_many(list(ops))
            self._order = None
        return Submitted(pv.to_obj(), store)

    def state(self, obj: str | None = None, field: str | None = None) -> dict[str, Any]:
        from ecac.store.resume import replay_store

        res = replay_store(self.st, from_checkpoint=True)
        view = access.state_view(res.state, res.digest)
        if obj is None:
            return view.to_obj()
        if field is None:
            return view.object_obj(obj)
        return view.field_obj(obj, field)

    def access(self, now_ms: int) -> dict[str, Any]:
        return access.access_report(self.order(), now_ms).to_obj()

    def explain(self, op_id: str | None = None) -> dict[str, Any]:
        ex = access.explain_order(self.order())
        return ex.to_obj() if op_id is None else ex.find(op_id).to_obj()

    def ops(self, limit: int) -> dict[str, Any]:
        return access.ops_view(self.order(), limit).to_obj()


class RemoteTarget:
    """A ``Target`` over a node's gateway (``--node URL``): the same six calls as ``LocalTarget``,
    answered by the node from its latest snapshot with the same ``ecac.core.access`` JSON
    documents, so every command prints exactly what it prints for ``--db``.

    ``submit`` posts the signed ops' canonical CBOR; the node previews them on its writer
    against its log at commit time, stores them under the same rule and announces them.
    """

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    def _get(self, path: str) -> dict[str, Any]:
        from ecac.net.client import GatewayError

        try:
            doc = self.client.get(path)
        except GatewayError as e:
            if e.status == 404 and path.startswith(("/api/view/", "/api/explain/")):
                raise access.NotFoundError(e.detail) from None  # worded as the local command words it
            raise
        if not isinstance(doc, dict):
            raise EcacError(
                f"node at {self.client.url}: {path} answered {type(doc).__name__}, not a JSON object"
            )
        return doc

    def _bad(self, path: str, what: str) -> EcacError:
        return EcacError(f"node at {self.client.url}: unexpected answer to {path} ({what})")

    def heads(self) -> list[bytes]:
        heads = self._get("/api/heads").get("heads")
        if not isinstance(heads, list) or not all(isinstance(h, str) for h in heads):
            raise self._bad("/api/heads", '"heads" is not a list of hex strings')
        try:
            return [parse_hex(h, 32, "head") for h in heads]
        except EcacError as e:
            raise self._bad("/api/heads", str(e)) from None

    def submit(self, ops: Sequence[Op], *, force: bool, store_denied: bool = False) -> Submitted:
        body = {"ops": [op.cbor.hex() for op in ops], "force": force, "store_denied": store_denied}
        doc = self.client.post_json("/api/submit", body)
        if not isinstance(doc, dict):
            raise self._bad("/api/submit", "not a JSON object")
        preview, stored = doc.get("preview"), doc.get("stored")
        if not isinstance(preview, dict) or not isinstance(preview.get("effects"), list):
            raise self._bad("/api/submit", '"preview" has no "effects"')
        if not isinstance(stored, bool):
            raise self._bad("/api/submit", '"stored" is not a boolean')
        return Submitted(preview, stored)

    def state(self, obj: str | None = None, field: str | None = None) -> dict[str, Any]:
        path = "/api/view/state"
        if obj is not None:
            path += "/" + quote(obj, safe="")
            if field is not None:
                path += "/" + quote(field, safe="")
        return self._get(path)

    def access(self, now_ms: int) -> dict[str, Any]:
        return self._get(f"/api/access?now_ms={now_ms}")

    def explain(self, op_id: str | None = None) -> dict[str, Any]:
        if op_id is None:
            return self._get("/api/explain")
        return self._get("/api/explain/" + quote(op_id, safe=""))

    def ops(self, limit: int) -> dict[str, Any]:
        return self._get(f"/api/ops?limit={limit}")


@contextmanager
def local_target(db: Path, *, create: bool) -> Iterator[LocalTarget]:
    """The ``LocalTarget`` of ``--db`` (or ``ECAC_DB``), checked by ``check_store_dir`` and always closed.

    Commands that write (``create``) open the store for writing, which locks it; reads open it
    read-only, which takes no lock, so they also work on the store of a running node (as of
    the moment they open it).
    """
    with open_store(db, create=create, read_only=not create) as st:
        yield LocalTarget(st)


@dataclass(frozen=True, slots=True)
class Where:
    """The target of one command: exactly one of ``db`` (``--db``/``ECAC_DB``) and ``node_url``
    (``--node``/``ECAC_NODE``), and the ``--token-file`` for a node."""

    db: Path | None
    node_url: str | None
    token_file: Path | None

    @contextmanager
    def open(self, *, create: bool) -> Iterator[Target]:
        """A ``RemoteTarget`` for ``--node``, else the ``LocalTarget`` of ``--db`` (always closed)."""
        if self.node_url is not None:
            yield RemoteTarget(gateway(self.node_url, self.token_file))
            return
        assert self.db is not None
        with local_target(self.db, create=create) as t:
            yield t


def target_options(
    db_help: str = "Store directory (env ECAC_DB).",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db DIR`` | ``--node URL`` and ``--token-file FILE``, handed to the command as one
    ``where: Where`` (exactly one target, checked by ``common.one_target`` before anything else)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(
            *args: Any, db: Path | None, node_url: str | None, token_file: Path | None, **kw: Any
        ) -> Any:
            db, node_url = one_target(db, node_url)
            if token_file is not None and node_url is None:
                raise click.UsageError("--token-file goes with --node URL")
            return f(*args, where=Where(db, node_url, token_file), **kw)

        g: Callable[..., Any] = token_file_option(wrapper)
        g = node_option("A running node's control URL instead of --db")(g)
        return db_option(db_help)(g)

    return deco


# --------------------------------------------------------------------------- output helpers


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def _effect_line(e: dict[str, Any]) -> str:
    d = e.get("decision")
    if d is not None:
        reason = "" if d["reason"] is None else f" {d['reason']}"
        return f"{e['op_id']} {e['kind']} {shown_key(d['key'])} {d['verdict']}{reason}"
    return f"{e['op_id']} {e['kind']}: {e['detail']}"


def finish_submission(res: Submitted, what: str, as_json: bool, *, can_force: bool = True) -> None:
    """Print what was stored (or fail with the first problem: one line, exit 1)."""
    effects = res.preview["effects"]
    problem = next((e for e in effects if not e["effective"]), None)
    d = None if problem is None else problem.get("decision")
    if not res.stored:
        assert problem is not None
        if d is not None and d["verdict"] == "DENIED":
            raise EcacError(f"{what} denied ({d['reason']}): {d['detail']}; nothing was stored")
        hint = " (--force stores it anyway)" if can_force else ""
        raise EcacError(f"{what} refused: {problem['detail']}; nothing was stored{hint}")
    if problem is not None and d is None:
        click.echo(f"warning: {problem['detail']} (stored anyway: --force)", err=True)
    if as_json:
        echo_json({**res.preview, "stored": res.stored})
    else:
        for e in effects:
            click.echo(_effect_line(e))
    if d is not None and d["verdict"] == "DENIED":  # stored on request (--store-denied), still a failure
        raise EcacError(f"{what} denied ({d['reason']}): {d['detail']}; stored anyway (--store-denied)")


def hlc_now() -> Hlc:
    """The HLC of an op minted by a command: ``{now_ms, 0, 1}`` (store §3.1)."""
    return Hlc(wall_clock_ms(), 0, 1)


force_option = click.option(
    "--force",
    is_flag=True,
    help="Store the op even if it has no effect on this log yet (e.g. its issuer key is still to come).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")


# --------------------------------------------------------------------------- keys


@click.group("key")
def key_group() -> None:
    """Ed25519 secret key files (64 hex chars of the seed + newline, mode 0600)."""


@key_group.command("new")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), metavar="FILE", help="Key file to create."
)
@json_option
def key_new_cmd(out: Path, as_json: bool) -> None:
    """Create a new secret key file (mode 0600; never overwrites) and print its public key hex."""
    sk = SigningKey.generate()
    create_key_file(out, sk)
    pk = public_key(sk).hex()
    if as_json:
        echo_json({"public_key": pk, "key_file": str(out)})
    else:
        click.echo(pk)


@key_group.command("show")
@click.argument("key_file", metavar="FILE", type=click.Path(path_type=Path))
@json_option
def key_show_cmd(key_file: Path, as_json: bool) -> None:
    """Print the public key hex of a secret key file (also reads a node's 32-byte node_key)."""
    sk, warning = read_key_file(key_file, strict_permissions=False)
    if warning is not None:
        click.echo(f"warning: {warning}; signing commands refuse it until `chmod 600 {key_file}`", err=True)
    pk = public_key(sk).hex()
    if as_json:
        echo_json({"public_key": pk, "key_file": str(key_file)})
    else:
        click.echo(pk)


# --------------------------------------------------------------------------- issuers


@click.group("issuer")
def issuer_group() -> None:
    """Credential issuers: publish an issuer's key in the log (in-band trust)."""


@issuer_group.command("publish")
@key_option("The issuer's secret key file (its public key is published)")
@click.option("--issuer-id", required=True, help="Issuer id, the `iss` of its VCs.")
@click.option("--key-id", default=None, help="Key id (default: the first 16 hex chars of the public key).")
@click.option("--valid-from-ms", type=click.IntRange(0, U64_MAX), default=None, help="Default: now.")
@click.option(
    "--valid-until-ms", type=click.IntRange(0, U64_MAX), default=None, help="Default: now + 365 days."
)
@target_options()
@force_option
@json_option
def issuer_publish_cmd(
    key_file: Path | None,
    issuer_id: str,
    key_id: str | None,
    valid_from_ms: int | None,
    valid_until_ms: int | None,
    where: Where,
    force: bool,
    as_json: bool,
) -> None:
    """Publish the issuer's public key as an IssuerKey op.

    A VC verifies only under a key active at the VC's own nbf, so publish before issuing.
    Refused when it would not take effect (the key id is taken by another key: first wins;
    or an issuer_admin holds the trust root).
    """
    sk = load_signing_key(key_file)
    hlc = hlc_now()
    vf = hlc.physical_ms if valid_from_ms is None else valid_from_ms
    vu = min(hlc.physical_ms + YEAR_MS, U64_MAX) if valid_until_ms is None else valid_until_ms
    if vu <= vf:
        raise EcacError(f"valid_until_ms ({vu}) must be > valid_from_ms ({vf})")
    kid = public_key(sk).hex()[:16] if key_id is None else key_id
    with where.open(create=True) as t:
        op = policyops.issuer_key_op(sk, t.heads(), hlc, issuer_id, kid, valid_from_ms=vf, valid_until_ms=vu)
        finish_submission(t.submit([op], force=force), "issuer publish", as_json)


# --------------------------------------------------------------------------- credentials


def parse_duration_ms(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``500ms``, ``2w`` → milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|w)\s*", text)
    if m is None:
        raise EcacError(f"bad duration {text!r}: expected a number and a unit (ms, s, m, h, d, w), e.g. 30d")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_status(text: str) -> tuple[str, int]:
    """``LIST:INDEX`` of a VC's status entry."""
    list_id, sep, index = text.rpartition(":")
    if not sep or not list_id or not index.isdigit() or int(index) > U32_MAX:
        raise EcacError(f"bad --status {text!r}: expected LIST:INDEX with INDEX in 0..{U32_MAX}")
    return list_id, int(index)


@click.group("vc")
def vc_group() -> None:
    """Verifiable credentials (compact JWTs signed with Ed25519, times in ms)."""


@vc_group.command("issue")
@key_option("The issuer's secret key file (signs the VC)")
@click.option(
    "--issuer-id", required=True, help="The `iss` claim: an issuer id published with `issuer publish`."
)
@click.option(
    "--subject", "subject_hex", required=True, metavar="PK_HEX", help="Subject public key (64 hex)."
)
@click.option("--role", required=True, help="Role, e.g. editor (writes) or issuer_admin (gates trust ops).")
@click.option(
    "--scope", "scopes", multiple=True, required=True, metavar="TAG", help="Scope tag (repeatable), e.g. hv."
)
@click.option(
    "--nbf", "nbf_ms", type=click.IntRange(0, U64_MAX), default=None, help="Not before, ms (default: now)."
)
@click.option(
    "--exp", "exp_ms", type=click.IntRange(0, U64_MAX), default=None, help="Expiry, ms (exclusive)."
)
@click.option(
    "--ttl", default=None, metavar="DURATION", help=f"Expiry after nbf, e.g. 30d (default {DEFAULT_VC_TTL})."
)
@click.option(
    "--status", "status_text", default=None, metavar="LIST:INDEX", help="Status-list entry of the VC."
)
@click.option("--jti", default=None, help="Credential id (default: vc-<random hex>).")
@click.option("--key-id", default=None, help="Put `kid` in the JWT header (select this issuer key).")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), metavar="FILE", help="VC file to create."
)
@json_option
def vc_issue_cmd(
    key_file: Path | None,
    issuer_id: str,
    subject_hex: str,
    role: str,
    scopes: tuple[str, ...],
    nbf_ms: int | None,
    exp_ms: int | None,
    ttl: str | None,
    status_text: str | None,
    jti: str | None,
    key_id: str | None,
    out: Path,
    as_json: bool,
) -> None:
    """Write a compact-JWT VC (mode 0600, never overwrites) that `vc-verify` and replay accept.

    Times are milliseconds since the Unix epoch (not RFC 7519 seconds). Nothing is stored:
    `grant --vc FILE` puts the VC in a log.
    """
    sk = load_signing_key(key_file)
    subject = parse_hex(subject_hex, 32, "subject public key")
    if exp_ms is not None and ttl is not None:
        raise click.UsageError("give --exp or --ttl, not both")
    if not role:
        raise EcacError("--role must not be empty")
    nbf = wall_clock_ms() if nbf_ms is None else nbf_ms
    exp = exp_ms if exp_ms is not None else min(nbf + parse_duration_ms(ttl or DEFAULT_VC_TTL), U64_MAX)
    if exp <= nbf:
        raise EcacError(f"the VC would expire ({exp}) at or before its nbf ({nbf})")
    status = None if status_text is None else parse_status(status_text)
    scope = tuple(dict.fromkeys(scopes))
    if role not in (EDITOR, ISSUER_ADMIN):
        click.echo(
            f"note: role {role!r} grants nothing (only editor may write; issuer_admin gates trust)", err=True
        )
    cred_id = f"vc-{os.urandom(8).hex()}" if jti is None else jti
    claims = editor_claims(
        subject, nbf_ms=nbf, exp_ms=exp, scope=scope, role=role, iss=issuer_id, jti=cred_id, status=status
    )
    token = mint_vc(sk, claims, kid=key_id)
    create_private_file(out, token, "VC file")
    doc = {
        "vc_path": str(out),
        "cred_hash": cred_hash(token).hex(),
        "jti": cred_id,
        "issuer": issuer_id,
        "subject_pk": subject.hex(),
        "role": role,
        "scope": list(scope),
        "nbf_ms": nbf,
        "exp_ms": exp,
        "status": None if status is None else {"id": status[0], "index": status[1]},
    }
    if as_json:
        echo_json(doc)
    else:
        click.echo(
            f"wrote {out}: {role} {','.join(scope)} for {subject.hex()} by {issuer_id}, "
            f"valid [{nbf}, {exp}) ms, cred_hash {doc['cred_hash']}"
        )


def read_vc(path: str) -> bytes:
    """The VC bytes of a file, surrounding whitespace removed (a trailing newline is common)."""
    token = read_file(path).strip()
    if not token:
        raise EcacError(f"{path}: empty VC file")
    return token


@click.command("grant")
@click.option("--vc", "vc_file", required=True, metavar="FILE", help="The VC (compact JWT) to grant.")
@key_option("Secret key file of the grantor (signs the Credential and Grant ops)")
@target_options()
@force_option
@json_option
def grant_cmd(vc_file: str, key_file: Path | None, where: Where, force: bool, as_json: bool) -> None:
    """Append a VC as a Credential op and its Grant: the subject holds the VC's role from here on.

    Refused when the grant would open no epoch here (the VC does not verify against the
    log's issuer keys and status lists, e.g. its issuer is not published yet).
    """
    sk = load_signing_key(key_file)
    token = read_vc(vc_file)
    try:
        policyops.vc_subject_and_id(token)
    except VcError as e:
        raise EcacError(f"{vc_file}: not a usable VC: {e}") from None
    with where.open(create=True) as t:
        cred, grant = policyops.grant_ops(token, wall_clock_ms(), issuer=sk, grantor=sk, parents=t.heads())
        finish_submission(t.submit([cred, grant], force=force), "grant", as_json)


@click.command("revoke")
@click.option(
    "--subject", "subject_hex", required=True, metavar="PK_HEX", help="Subject public key (64 hex)."
)
@click.option("--role", required=True, help="The role to revoke, e.g. editor.")
@click.option(
    "--scope", "scopes", multiple=True, required=True, metavar="TAG", help="Scope tag (repeatable)."
)
@key_option("Secret key file of the revoker")
@target_options()
@force_option
@json_option
def revoke_cmd(
    subject_hex: str,
    role: str,
    scopes: tuple[str, ...],
    key_file: Path | None,
    where: Where,
    force: bool,
    as_json: bool,
) -> None:
    """Close the subject's open epochs of ROLE whose scope meets a TAG (deny wins from here on).

    Refused when it closes nothing in this log; --force stores it anyway (it then closes
    matching epochs ordered before it once they arrive, never later Grants).
    """
    sk = load_signing_key(key_file)
    subject = parse_hex(subject_hex, 32, "subject public key")
    with where.open(create=True) as t:
        op = policyops.revoke_op(sk, t.heads(), hlc_now(), subject, role, tuple(dict.fromkeys(scopes)))
        finish_submission(t.submit([op], force=force), "revoke", as_json)


@click.group("status-list")
def status_list_group() -> None:
    """In-band status lists: revoke (or reinstate) VCs by their status index."""


@status_list_group.command("set")
@key_option("The issuer's secret key file")
@click.option("--issuer-id", required=True, help="Issuer id recorded on the list.")
@click.option("--list", "list_id", required=True, help="Status list id (the VC's status id).")
@click.option(
    "--index", type=click.IntRange(0, U32_MAX), required=True, help="Bit to set (the VC's status index)."
)
@click.option("--clear", is_flag=True, help="Clear the bit instead (reinstate the VC).")
@target_options()
@force_option
@json_option
def status_list_set_cmd(
    key_file: Path | None,
    issuer_id: str,
    list_id: str,
    index: int,
    clear: bool,
    where: Where,
    force: bool,
    as_json: bool,
) -> None:
    """Publish the next version of a status list with bit INDEX set (or cleared).

    The new version carries every bit of the current one; a set bit voids the VC for the
    whole log, earlier writes included.
    """
    sk = load_signing_key(key_file)
    hlc = hlc_now()
    with where.open(create=True) as t:
        cur = next((s for s in t.access(hlc.physical_ms)["status_lists"] if s["list_id"] == list_id), None)
        bits = set(() if cur is None else cur["revoked"])
        if clear:
            bits.discard(index)
        else:
            bits.add(index)
        version = 1 if cur is None else cur["version"] + 1
        if version > U32_MAX:
            raise EcacError(f"status list {list_id} is at its last version")
        chunk = policyops.status_bits(bits)
        op = policyops.status_chunk_op(sk, t.heads(), hlc, list_id, issuer_id, version, chunk)
        finish_submission(t.submit([op], force=force), "status-list set", as_json)


# --------------------------------------------------------------------------- writes


def write_command(legacy: click.Command | None) -> click.Command:
    """``write``: the reference's ``write data OBJ FIELD VALUE`` (``legacy``, unchanged), and
    ``write OBJ FIELD VALUE [--set-add|--set-remove] --key FILE --db DIR``."""

    @click.command("write", context_settings={"ignore_unknown_options": False})
    @click.argument("args", nargs=-1, metavar="[data] OBJ FIELD VALUE")
    @click.option("--set-add", "set_add", is_flag=True, help="Add element VALUE to the set OBJ.FIELD.")
    @click.option(
        "--set-remove", "set_remove", is_flag=True, help="Remove element VALUE from the set OBJ.FIELD."
    )
    @key_option(f"Secret key file of the writer (else {SUBJECT_ENV})")
    @db_option("Store directory (env ECAC_DB; `write data` defaults to .ecac.db).")
    @node_option("A running node's control URL instead of --db: the write goes through it")
    @token_file_option
    @click.option(
        "--store-denied",
        is_flag=True,
        help="Store the write even when the gate denies it (it replicates; explain shows it DENIED); exit 1.",
    )
    @json_option
    @click.pass_context
    def write_cmd(
        ctx: click.Context,
        args: tuple[str, ...],
        set_add: bool,
        set_remove: bool,
        key_file: Path | None,
        db: Path | None,
        node_url: str | None,
        token_file: Path | None,
        store_denied: bool,
        as_json: bool,
    ) -> None:
        """Sign a write on the store's current heads; stored only if the write gate allows it.

        `write OBJ FIELD VALUE` writes the UTF-8 text VALUE to the register OBJ.FIELD in
        plaintext (with --set-add/--set-remove: adds/removes the set element VALUE). It prints
        the op id and its verdict; a write the gate denies is not stored and the command exits
        1 with the deny reason (revoked_cred, expired_cred, out_of_scope, deny_wins); with
        --store-denied it is stored all the same (so every node's explain shows it DENIED).

        `write data OBJ FIELD VALUE` is the reference's form: signed with
        ECAC_SUBJECT_SK_HEX, o.x encrypted under the keyring's newest `confidential` key,
        stored without a verdict, output `write_op_id=…`.
        """
        if len(args) == 4:
            if legacy is None:
                raise click.UsageError("`write KIND OBJ FIELD VALUE` is not available")
            if set_add or set_remove or key_file is not None or as_json or store_denied:
                raise click.UsageError(
                    f"`write data OBJ FIELD VALUE` is the reference's form (signed with {SUBJECT_ENV}); "
                    "--key, --json, --set-add, --set-remove and --store-denied belong to "
                    "`write OBJ FIELD VALUE`"
                )
            if ctx.get_parameter_source("node_url") is ParameterSource.COMMANDLINE or token_file is not None:
                raise click.UsageError(
                    "`write data OBJ FIELD VALUE` writes to a store (--db); --node is not for it"
                )
            path = db if db is not None else Path(".ecac.db")
            from ecac.store.rocks import check_store_dir

            check_store_dir(path, create=True)
            kind, obj, field, value = args
            ctx.invoke(legacy, db=path, kind=kind, obj=obj, field=field, value=value)
            return
        if len(args) != 3:
            raise click.UsageError("expected OBJ FIELD VALUE (or the reference's `data OBJ FIELD VALUE`)")
        if set_add and set_remove:
            raise click.UsageError("give --set-add or --set-remove, not both")
        db, node_url = one_target(db, node_url)
        if token_file is not None and node_url is None:
            raise click.UsageError("--token-file goes with --node URL")
        where = Where(db, node_url, token_file)
        obj, field, value = args
        action = SET_ADD if set_add else SET_REM if set_remove else SET_FIELD
        key = policyops.data_key(action, obj, field, None if action == SET_FIELD else value)
        sk = load_signing_key(key_file, hex_env=SUBJECT_ENV)
        payload = b"" if action == SET_REM else value.encode("utf-8")
        with where.open(create=True) as t:
            op = policyops.data_op(sk, t.heads(), hlc_now(), key, payload)
            res = t.submit([op], force=store_denied, store_denied=store_denied)
            finish_submission(res, "write", as_json, can_force=False)

    return write_cmd


# --------------------------------------------------------------------------- reads: get


def render_value(v: dict[str, Any]) -> str:
    """One value of a ``ValueView`` JSON for people: text as is (quoted when it would be
    ambiguous), binary as ``0x… (binary)``, an encrypted envelope by its key."""
    if v["kind"] == "text":
        t = v["text"]
        return (
            t
            if t and t.isprintable() and t == t.strip() and " | " not in t
            else json.dumps(t, ensure_ascii=False)
        )
    if v["kind"] == "encrypted":
        return f"<redacted: {v['tag']} v{v['key_version']}>"
    return f"0x{v['hex']} (binary)"


def render_field(f: dict[str, Any]) -> str:
    if f["type"] == "mv":
        vals = [render_value(v) for v in f["values"]]
        return vals[0] if len(vals) == 1 else " | ".join(vals) + f"  ({len(vals)} concurrent values)"
    items = []
    for e in f["elements"]:
        v = e["value"]
        same = v["kind"] == "text" and v["text"] in ("", e["elem"])
        items.append(e["elem"] if same else f"{e['elem']}={render_value(v)}")
    return "{" + ", ".join(items) + "}"


@click.command("get")
@click.argument("obj", required=False)
@click.argument("field", required=False)
@target_options()
@json_option
def get_cmd(obj: str | None, field: str | None, where: Where, as_json: bool) -> None:
    """The replayed state, decoded: every field, one object's fields, or one field's value.

    Values print as UTF-8 text when valid, else as 0x<hex> (binary); concurrent register
    writes are all shown. With --json: {"digest", "processed_count", "objects"} (or the
    object's / field's part of it).
    """
    with where.open(create=False) as t:
        doc = t.state(obj, field)
    if as_json:
        echo_json(doc)
    elif obj is None:
        if not doc["objects"]:
            click.echo(f"(no objects; {doc['processed_count']} ops replayed)", err=True)
        for o, fields in doc["objects"].items():
            for name, f in fields.items():
                click.echo(f"{o}.{name} = {render_field(f)}")
    elif field is None:
        for name, f in doc.items():
            click.echo(f"{obj}.{name} = {render_field(f)}")
    elif doc["type"] == "mv" and len(doc["values"]) == 1 and doc["values"][0]["kind"] == "text":
        click.echo(doc["values"][0]["text"])  # one text value: exactly the text, for scripts
    else:
        click.echo(render_field(doc))


# --------------------------------------------------------------------------- reads: access


def _epoch_text(e: dict[str, Any]) -> str:
    end = "open" if e["end_pos"] is None else f"closed at {e['end_pos']} by revoke {e['revoke_op_id'][:16]}"
    return (
        f"{e['status']:<8} scope {{{', '.join(e['scope'])}}}  positions [{e['start_pos']}, "
        f"{'∞' if e['end_pos'] is None else e['end_pos']}) ({end}), VC [{e['nbf_ms']}, {e['exp_ms']}) ms, "
        f"grant {e['grant_op_id'][:16]}"
    )


def render_access(rep: dict[str, Any]) -> list[str]:
    out = []
    if rep["policy_active"]:
        out.append("policy: active (deny wins: only live epochs may write)")
    else:
        out.append("policy: off (no Grant or Revoke in the log: every write is applied)")
    out.append("subjects:" if rep["subjects"] else "subjects: none")
    for s in rep["subjects"]:
        out.append(f"  {s['subject_pk']} {s['role']}")
        out.extend(f"    {_epoch_text(e)}" for e in s["epochs"])
    if rep["ineffective_grants"]:
        out.append("grants without effect:")
        out.extend(
            f"  {g['grant_op_id'][:16]} for {g['subject_pk']}: {g['problem']}"
            for g in rep["ineffective_grants"]
        )
    out.append("issuers:" if rep["issuers"] else "issuers: none")
    for i in rep["issuers"]:
        for k in i["keys"]:
            rev = "" if k["revoked_at_ms"] is None else f", revoked at {k['revoked_at_ms']}"
            out.append(
                f"  {i['issuer_id']} key {k['key_id']} {k['algo']} {k['pubkey']} active from "
                f"{k['activated_at_ms']} until {k['valid_until_ms']}{rev}"
            )
    if rep["status_lists"]:
        out.append("status lists:")
        for sl in rep["status_lists"]:
            revoked = ", ".join(map(str, sl["revoked"])) or "none"
            out.append(f"  {sl['list_id']} v{sl['version']} by {sl['issuer_id']}: revoked indices {revoked}")
    strict_admins = [s for s in rep["trust_admins"] if s["role"] == "admin"]  # a strict log's admins
    if strict_admins:
        out.append("admins (strict: only their trust ops count; each since its genesis or appointment op):")
        for s in strict_admins:
            since = ", ".join(f"{e['grant_op_id'][:16]} at {e['start_pos']}" for e in s["epochs"])
            out.append(f"  {s['subject_pk']} since {since}")
    elif rep["trust_admins"]:
        out.append("trust admins (issuer_admin; while one is live only admins' trust ops count):")
        for s in rep["trust_admins"]:
            out.append(f"  {s['subject_pk']}")
            out.extend(f"    {_epoch_text(e)}" for e in s["epochs"])
    return out


@click.command("access")
@target_options()
@json_option
def access_cmd(where: Where, as_json: bool) -> None:
    """Who may write: every subject with its role, scope and epochs (live, expired, not yet,
    revoked), grants that do nothing and why, the trusted issuers and keys, status lists."""
    with where.open(create=False) as t:
        rep = t.access(wall_clock_ms())
    if as_json:
        echo_json(rep)
    else:
        for line in render_access(rep):
            click.echo(line)


# --------------------------------------------------------------------------- reads: explain, ops


def _decision_line(d: dict[str, Any]) -> str:
    reason = "" if d["reason"] is None else f" {d['reason']}"
    return f"{d['op_id']} {shown_key(d['key'])} {d['verdict']}{reason}"


@click.command("explain")
@click.argument("op_id", required=False, metavar="[OP_ID]")
@target_options()
@json_option
def explain_cmd(op_id: str | None, where: Where, as_json: bool) -> None:
    """ALLOWED/DENIED and the reason for each data op (or the one OP_ID, a unique id prefix
    of at least 4 hex chars), each followed by why, from the epochs the write gate used."""
    with where.open(create=False) as t:
        doc = t.explain(op_id)
    if as_json:
        echo_json(doc)
        return
    if op_id is not None:
        click.echo(_decision_line(doc))
        click.echo(f"  position {doc['pos']}, author {doc['author']}, time {doc['hlc']['physical_ms']} ms")
        click.echo(f"  resource {doc['obj']}.{doc['field']} tags {{{', '.join(doc['tags'])}}}")
        click.echo(f"  why: {doc['detail']}")
        return
    if not doc["policy_active"]:
        click.echo("policy: off (no Grant or Revoke in the log: every write is applied)")
    for d in doc["decisions"]:
        click.echo(_decision_line(d))
        click.echo(f"    {d['detail']}")


def _op_summary(v: dict[str, Any]) -> str:
    p = v["payload"]
    kind = v["payload_type"]
    if kind == "Data":
        return f"{shown_key(p['key'])} = {json.dumps(p['value'], ensure_ascii=False)}"
    if kind == "Grant":
        return f"subject {p['subject_pk']} cred_hash {p['cred_hash'][:16]}"
    if kind == "Revoke":
        return f"subject {p['subject_pk']} role {p['role']} scope {{{', '.join(p['scope_tags'])}}}"
    if kind == "Credential":
        return f"cred_id {p['cred_id']!r} ({p['bytes_len']} bytes)"
    if kind == "IssuerKey":
        return f"{p['issuer_id']}/{p['key_id']} {p['algo']} {p['pubkey']}"
    return ""


@click.command("ops")
@target_options()
@click.option("--limit", default=access.DEFAULT_OPS_LIMIT, show_default=True, type=click.IntRange(0, None))
@json_option
def ops_cmd(where: Where, limit: int, as_json: bool) -> None:
    """The most recent ops of the total order, newest first: position, id, kind, author, HLC.

    With --json: {"ops": [OpView…], "total": n}, the document of the gateway's GET /api/ops.
    """
    with where.open(create=False) as t:
        doc = t.ops(limit)
    if as_json:
        echo_json(doc)
        return
    total = doc["total"]
    click.echo(f"{len(doc['ops'])} of {total} ops, newest first")
    for i, v in enumerate(doc["ops"]):
        click.echo(
            f"{total - 1 - i:>6} {v['op_id']} {v['payload_type']:<10} by {v['author'][:16]} "
            f"hlc {v['hlc_ms']}.{v['hlc_logical']}  {_op_summary(v)}".rstrip()
        )


# --------------------------------------------------------------------------- peers


def _ago(now_ms: int, at_ms: int | None) -> str:
    if at_ms is None:
        return "never"
    age = max(0, now_ms - at_ms)
    return f"{age} ms ago" if age < 1000 else f"{age / 1000:.1f} s ago"


def render_peers(doc: dict[str, Any], now_ms: int) -> list[str]:
    """``GET /api/peers`` for people: this node, then one line per known peer."""
    me = doc.get("self") or {}
    out = [f"self {me.get('peer_id', '?')}  ops {me.get('op_count', '?')}  digest {me.get('digest', '?')}"]
    peers = doc.get("peers", [])
    if not peers:
        out.append("no known peers")
    for p in peers:
        match = {True: "heads match", False: "heads differ", None: "heads unknown"}.get(
            p.get("heads_match"), "?"
        )
        state = "connected" if p.get("connected") else "disconnected"
        addrs = ", ".join(p.get("addrs") or []) or "no known address"
        out.append(
            f"{p.get('peer_id', '?')}  {state}  last sync {_ago(now_ms, p.get('last_sync_ms'))}  {match}"
        )
        out.append(f"    {addrs}")
        subject = p.get("subject")
        access = f"subject {subject}" if subject else "no verified hello"
        access += "  served" if p.get("served", True) else "  not served by us"
        refused = p.get("refused_us") or {}
        if refused:
            access += "  refuses us " + ", ".join(f"{w} ({r})" for w, r in sorted(refused.items()))
        out.append(f"    {access}")
    return out


@click.command("peers")
@node_option("The node's control URL")
@token_file_option
@json_option
def peers_cmd(node_url: str | None, token_file: Path | None, as_json: bool) -> None:
    """A running node's peers: peer id, addresses, connected or not, last sync, whether their
    heads match ours, the subject each proved, whether we serve it and what it refuses us (strict).
    With --json: the gateway's GET /api/peers document."""
    if node_url is None:
        raise click.UsageError("give --node URL (or set ECAC_NODE)")
    doc = gateway(node_url, token_file).peers()
    if as_json:
        echo_json(doc)
    else:
        for line in render_peers(doc, wall_clock_ms()):
            click.echo(line)


# --------------------------------------------------------------------------- registration


def register(group: click.Group) -> None:
    """Add the operator commands. ``write`` replaces the reference's ``write`` registered before
    (``enc_cmds``) and hands its ``write data …`` form to it unchanged."""
    legacy = group.commands.get("write")
    legacy = getattr(legacy, "ecac_legacy", legacy)  # registering twice must not wrap our own command
    write = write_command(legacy)
    write.ecac_legacy = legacy  # type: ignore[attr-defined]
    for cmd in (
        key_group,
        issuer_group,
        vc_group,
        grant_cmd,
        revoke_cmd,
        status_list_group,
        write,
        get_cmd,
        access_cmd,
        explain_cmd,
        ops_cmd,
        peers_cmd,
    ):
        group.add_command(cmd)
