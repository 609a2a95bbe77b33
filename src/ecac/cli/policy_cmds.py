"""Policy CLI commands (store §3.3): ``vc-verify``, ``vc-attach``, ``vc-mint-demo``, ``vc-status-set``,
and ``simulate``. The per-op decision lines (also printed by ``replay --explain``) and the file
trust verification live in ``ecac.cli.common``.

Outputs are the reference's, byte for byte, where it defines them. Choices of this
implementation (documented in each command's help):

* ``vc-verify`` uses the file trust store (``--trust``, default ``./trust``) unless a
  store is named with ``--db``/``ECAC_DB``; then it follows the reference: in-band trust
  from the store's ops when they publish any issuer key or status list, else file trust,
  and the result is cached in the store's ``vc_raw``/``vc_verified``. (The reference
  always opens ``ECAC_DB``, default ``.ecac.db``, creating an empty store just to find
  no trust in it; the stdout is the same.)
* ``simulate`` replays the named policy scenarios of ``ecac.testing.scenarios`` (the
  reference's command is a stub).
* Decision lines are ``<op_id hex> <key> ALLOWED`` or ``<op_id hex> <key> DENIED
  <reason>``; a key that contains whitespace or control characters is printed as a JSON
  string so each decision stays one line of three or four fields.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
from nacl.signing import SigningKey

from ecac.cli.common import (
    DEFAULT_TRUST,
    decision_lines,
    echo_attach_result,
    file_trust_verify,
    opened,
    read_file,
    trust_option,
    vc_error_text,
    write_bytes,
)
from ecac.cli.keyfile import KEY_FILE_ARG
from ecac.core import policy, policyops
from ecac.core.errors import EcacError, VcError
from ecac.core.hlc import U32_MAX
from ecac.core.keys import public_key, to_hex
from ecac.core.op import Op
from ecac.core.policyops import set_status_bit
from ecac.core.replay import dag_of_verified, replay_full
from ecac.core.trust import is_safe_list_id
from ecac.core.vc import VerifiedClaims, mint_vc, verify_vc_inband
from ecac.store.rows import verified_vc_persist
from ecac.testing.scenarios import DESCRIPTIONS, SCENARIOS

DEMO_ISSUER = "local-issuer-1"
DEMO_VC_PATH = "vc.jwt"
DAY_MS = 86_400_000
STATUS_VALUES = {"1": 1, "true": 1, "on": 1, "0": 0, "false": 0, "off": 0}

# --------------------------------------------------------------------------- formatting


def pretty_json(obj: Any) -> str:
    """serde_json's pretty printer with sorted keys: 2-space indent, UTF-8 kept."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)


def claims_json(claims: VerifiedClaims) -> str:
    """The ``vc-verify`` stdout document (store §3.3)."""
    return pretty_json(
        {
            "cred_hash_hex": to_hex(claims.cred_hash),
            "cred_id": claims.cred_id,
            "exp_ms": claims.exp_ms,
            "issuer": claims.issuer,
            "nbf_ms": claims.nbf_ms,
            "role": claims.role,
            "scope": sorted(claims.scope),
            "status_index": claims.status_index,
            "status_list_id": claims.status_list_id,
            "subject_pk_hex": to_hex(claims.subject_pk),
        }
    )


# --------------------------------------------------------------------------- verification


def store_verify(token: bytes, db: Path, trust_dir: str) -> VerifiedClaims:
    """The reference's ``vc-verify``: in-band trust from the store's ops, else file trust; then
    cache the VC in ``vc_raw`` and its claims in ``vc_verified`` (store §1.2, §1.11)."""
    with opened(db) as st:
        tv = policy.trust_view_for(list(st.iter_topo_ops()))
        if tv.issuers or tv.status_lists:
            try:
                claims = verify_vc_inband(token, tv)
            except VcError as e:
                raise EcacError(f"VC verify failed (in-band trust): {vc_error_text(e)}") from None
        else:
            claims = file_trust_verify(token, trust_dir)
        st.persist_vc_raw(claims.cred_hash, token)
        st.persist_vc_verified(claims.cred_hash, verified_vc_persist(claims))
    return claims


@click.command("vc-verify")
@click.argument("jwt_file", metavar="VC_JWT")
@trust_option
@click.option(
    "--db",
    "-d",
    "db",
    envvar="ECAC_DB",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Store (env ECAC_DB): verify with its in-band trust when it has any, and cache the VC in it.",
)
def vc_verify_cmd(jwt_file: str, trust_dir: str, db: Path | None) -> None:
    """Verify a compact-JWT VC and print its claims as JSON.

    Without --db (and without ECAC_DB) only the file trust store is used and nothing is
    written. With a store, its in-band issuer keys and status lists are used when the log
    publishes any (else file trust), and the VC is cached in vc_raw/vc_verified.
    """
    token = read_file(jwt_file)
    claims = file_trust_verify(token, trust_dir) if db is None else store_verify(token, db, trust_dir)
    click.echo(claims_json(claims))


# --------------------------------------------------------------------------- vc-attach


def attach_ops(token: bytes, claims: VerifiedClaims, issuer: SigningKey, admin: SigningKey) -> tuple[Op, Op]:
    """The Credential (issuer, ``{nbf, 0, 1}``, no parents) and its Grant (admin, ``{nbf, 0, 2}``)."""
    return policyops.grant_ops(
        token,
        claims.nbf_ms,
        issuer=issuer,
        grantor=admin,
        subject_pk=claims.subject_pk,
        cred_id=claims.cred_id or "",
    )


@click.command("vc-attach")
@click.argument("jwt_file", metavar="VC_JWT")
@click.argument("issuer", metavar="ISSUER_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("admin", metavar="ADMIN_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("out_dir", default=".")
@trust_option
def vc_attach_cmd(jwt_file: str, issuer: SigningKey, admin: SigningKey, out_dir: str, trust_dir: str) -> None:
    """Verify a VC with file trust and write cred.op.cbor (Credential) and grant.op.cbor (Grant).

    The Credential is signed with the key in ISSUER_KEY_FILE and the Grant with the one in
    ADMIN_KEY_FILE (key files as `ecac key new` writes them; the reference's hex seeds on the
    command line are refused).
    """
    token = read_file(jwt_file)
    claims = file_trust_verify(token, trust_dir)
    cred, grant = attach_ops(token, claims, issuer, admin)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise EcacError(f"{out_dir}: cannot create directory: {e.strerror or e}") from None
    cred_path = os.path.join(out_dir, "cred.op.cbor")
    grant_path = os.path.join(out_dir, "grant.op.cbor")
    write_bytes(cred_path, cred.cbor)
    write_bytes(grant_path, grant.cbor)
    echo_attach_result(cred, grant, cred_path, grant_path)


# --------------------------------------------------------------------------- vc-mint-demo


def demo_issuers_toml(issuer_vk: bytes) -> str:
    return f'[issuers]\n{DEMO_ISSUER} = "{to_hex(issuer_vk)}"\n\n[schemas]\n{DEMO_ISSUER} = "standard-v1"\n'


def demo_claims(subject_pk: bytes, now_ms: int) -> dict[str, Any]:
    return {
        "exp": now_ms + DAY_MS,
        "iss": DEMO_ISSUER,
        "jti": f"demo-vc-{now_ms}",
        "nbf": now_ms,
        "role": "confidential_reader",
        "scope": ["confidential"],
        "sub_pk": to_hex(subject_pk),
    }


@click.command("vc-mint-demo")
def vc_mint_demo_cmd() -> None:
    """Mint a demo VC with random keys: writes ./trust/issuers.toml and ./vc.jwt (valid for one day)."""
    issuer, subject = SigningKey.generate(), SigningKey.generate()
    now_ms = time.time_ns() // 1_000_000
    token = mint_vc(issuer, demo_claims(public_key(subject), now_ms))
    trust = Path(DEFAULT_TRUST)
    try:
        trust.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EcacError(f"{trust}: cannot create directory: {e.strerror or e}") from None
    write_bytes(str(trust / "issuers.toml"), demo_issuers_toml(public_key(issuer)).encode("utf-8"))
    write_bytes(DEMO_VC_PATH, token)
    click.echo(
        pretty_json(
            {
                "issuer": DEMO_ISSUER,
                "issuer_vk_hex": to_hex(public_key(issuer)),
                "subject_pk_hex": to_hex(public_key(subject)),
                "vc_path": DEMO_VC_PATH,
            }
        )
    )


# --------------------------------------------------------------------------- vc-status-set


@click.command("vc-status-set")
@click.argument("list_id")
@click.argument("index", type=click.IntRange(0, U32_MAX))
@click.argument("value")
@trust_option
def vc_status_set_cmd(list_id: str, index: int, value: str, trust_dir: str) -> None:
    """Set (1/true/on) or clear (0/false/off) bit INDEX of the status list DIR/status/LIST_ID.bin.

    Bits are LSB-first (byte INDEX/8, bit INDEX%8); the file is created and zero-extended
    as needed. List ids that are not plain file names (/, \\, NUL, '.', '..') are refused.
    """
    v = STATUS_VALUES.get(value.lower())
    if v is None:
        raise EcacError(f"invalid value '{value}'; expected one of: 1,0,true,false,on,off")
    if not is_safe_list_id(list_id):
        raise EcacError(
            f"unsafe status list id {list_id!r}: it must be a plain file name "
            "(no '/', '\\' or NUL, not empty, '.' or '..')"
        )
    status_dir = f"{trust_dir}/status"
    path = f"{status_dir}/{list_id}.bin"
    try:
        os.makedirs(status_dir, exist_ok=True)
        try:
            old = Path(path).read_bytes()
        except FileNotFoundError:
            old = b""
        tmp = f"{path}.tmp"
        Path(tmp).write_bytes(set_status_bit(old, index, v))
        os.replace(tmp, path)
    except OSError as e:
        raise EcacError(f"{path}: cannot update status list: {e.strerror or e}") from None
    click.echo(f"status {list_id}[{index}] = {v}")
    click.echo(f"wrote {path}")


# --------------------------------------------------------------------------- simulate

RUN_ALL = ("both", "all")  # "both" is the reference's default argument


def scenario_result(name: str) -> dict[str, Any]:
    """Build, replay and explain one scenario: decisions, state JSON and digest."""
    dag = dag_of_verified(SCENARIOS[name]())
    state, digest = replay_full(dag)
    order = dag.topo_order()
    return {
        "scenario": name,
        "description": DESCRIPTIONS[name],
        "decisions": [
            {"op_id": to_hex(op.op_id), "key": op.payload.key, "verdict": verdict, "reason": reason}  # type: ignore[union-attr]
            for op, verdict, reason in policy.explain(order)
        ],
        "lines": decision_lines(order),
        "state_json": state.to_json(),
        "digest": to_hex(digest),
    }


def _validate_scenario(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value in SCENARIOS or value in RUN_ALL:
        return value
    raise click.BadParameter(f"unknown scenario {value!r}; valid: {', '.join(SCENARIOS)}", ctx, param)


@click.command("simulate")
@click.argument("scenario", required=False, callback=_validate_scenario)
@click.option("--list", "list_only", is_flag=True, help="List the scenarios with one-line descriptions.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scenario instead of text.")
def simulate_cmd(scenario: str | None, list_only: bool, as_json: bool) -> None:
    """Replay a named policy scenario and show each data op's verdict, the state and its digest.

    Without SCENARIO (or with 'all'/'both') every scenario runs, each under a header
    (with --json: one JSON object per line). Text output per scenario: one line per data
    op '<op_id> <key> ALLOWED' or '<op_id> <key> DENIED <reason>', the state JSON, then
    digest=<hex>.
    """
    if list_only:
        width = max(len(n) for n in SCENARIOS)
        for name in SCENARIOS:
            click.echo(f"{name.ljust(width)}  {DESCRIPTIONS[name]}")
        return
    names = list(SCENARIOS) if scenario is None or scenario in RUN_ALL else [scenario]
    for i, name in enumerate(names):
        res = scenario_result(name)
        if as_json:
            doc = {k: v for k, v in res.items() if k not in ("lines", "state_json")}
            doc["state"] = json.loads(res["state_json"])
            click.echo(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
            continue
        if len(names) > 1:
            if i:
                click.echo("")
            click.echo(f"== {name}: {res['description']} ==")
        for line in res["lines"]:
            click.echo(line)
        click.echo(res["state_json"])
        click.echo(f"digest={res['digest']}")


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    for cmd in (vc_verify_cmd, vc_attach_cmd, vc_mint_demo_cmd, vc_status_set_cmd, simulate_cmd):
        group.add_command(cmd)
