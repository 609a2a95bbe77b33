"""Encryption CLI commands (store §3.3, core §15): ``write``, ``keyrotate``, ``grant-key``, ``show``.

The adapter half of encrypted fields: wall-clock HLCs ``{now_ms, 0, 1}``, random nonces, the
store's keyring and the signers' keys; the envelope, the log's keys and the read verdict come
from ``ecac.core.enc`` and ``ecac.core.readpath``. Each command opens ``--db`` (env ``ECAC_DB``,
default ``.ecac.db``), creating it if missing.

Differences from the reference: ``keyrotate`` checks its signer before it stores a key, so a
missing admin key leaves the keyring untouched; the keys are read from the KeyRotate ops of
the log (which carry them in clear), so ``show``, ``grant-key`` and ``write data`` work on every
node that holds those ops, and ``keyrotate`` numbers the next version after the highest one in
the log (the keyring is a cache); ``keyrotate`` and ``grant-key`` also take ``--key FILE``.

Strict projects (docs/security.md, "Sealed read keys"): ``keyrotate`` draws a random key and
logs a ``SealedKeyRotate`` that seals it to each reader with a live read grant at the new op's
parents (``readpath.live_readers``), nothing in clear and nothing in the keyring; ``write data``
encrypts under the newest counting version, with the key the writer's own box opens; ``show``
decrypts with the reader's key file (``--key``) and redacts everything without it;
``grant-key`` is refused (the sealed box is the key grant).
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import click
from nacl.signing import SigningKey

from ecac.cli.common import (
    env_db_option,
    file_trust_verify,
    mint,
    opened,
    read_file,
    trust_option,
    wall_clock_ms,
)
from ecac.cli.keyfile import key_option, load_signing_key
from ecac.core.dag import Dag
from ecac.core.enc import (
    CONFIDENTIAL,
    KEY_LEN,
    NONCE_LEN,
    LogKeys,
    aad,
    derive_tag_key,
    encrypt,
    log_keys,
    next_key_version,
    seal_key,
)
from ecac.core.errors import EcacError
from ecac.core.hlc import U32_MAX, Hlc
from ecac.core.keys import parse_hex, to_hex
from ecac.core.op import Data, KeyGrant, KeyRotate, Op, SealedKey, SealedKeyRotate, make_op
from ecac.core.profile import is_strict_order
from ecac.core.readpath import (
    REDACTED,
    live_readers,
    project_field_for_subject,
    rotation_problem,
    sealed_keys,
)
from ecac.core.replay import replay_full
from ecac.core.resources import tags_for
from ecac.core.state import project_field_json
from ecac.core.strict import build_strict_gate
from ecac.core.vc import cred_hash

if TYPE_CHECKING:  # the store is imported when a command opens it (``write`` loads this module)
    from ecac.store.rocks import Store

SUBJECT_ENV = "ECAC_SUBJECT_SK_HEX"
KEYADMIN_ENV = "ECAC_KEYADMIN_SK_HEX"


def env_signing_key(name: str) -> SigningKey:
    """The Ed25519 seed in env ``name``, for the reference's ``write data`` form, which takes no
    ``--key`` (so the error names only the variable)."""
    if not os.environ.get(name, "").strip():
        raise EcacError(f"{name} is not set (64 hex chars of an Ed25519 seed)")
    return load_signing_key(None, hex_env=name)


def store_log_keys(st: Store) -> LogKeys:
    """The keys the KeyRotate ops in the store publish (one pass over its ops)."""
    return log_keys(st.iter_topo_ops())


def strict_log(st: Store) -> tuple[Dag, list[Op]] | None:
    """The store's DAG and total order when it is a strict project's store, else None (read from
    its first op, so a reference store is not loaded)."""
    from ecac.store.resume import load_dag

    if not is_strict_order([op for op in islice(st.iter_topo_ops(), 1)]):
        return None
    dag = load_dag(st)
    order = dag.topo_order()
    return (dag, order) if is_strict_order(order) else None


def tag_key(st: Store, in_log: LogKeys, tag: str, version: int) -> bytes | None:
    """The key of ``(tag, version)``: the keyring's (the cache), else the first the log publishes."""
    cached = st.get_tag_key(tag, version)
    if cached is not None:
        return cached
    published = in_log.candidates(tag, version)
    return published[0] if published else None


@click.command("write")
@env_db_option
@click.argument("kind")
@click.argument("obj")
@click.argument("field")
@click.argument("value")
def write_cmd(db: Path, kind: str, obj: str, field: str, value: str) -> None:
    """Write VALUE to the MV field OBJ.FIELD, signed with ECAC_SUBJECT_SK_HEX (KIND must be 'data').

    Confidential fields (only o.x) are encrypted under the newest 'confidential' key (the
    highest version in the log or the keyring), with the AAD over the parents in header
    (sorted) order.
    """
    if kind != "data":
        raise EcacError(f"unsupported write kind '{kind}'; only 'data' is implemented")
    sk = env_signing_key(SUBJECT_ENV)
    plaintext = value.encode("utf-8")
    with opened(db) as st:
        parents = sorted(st.heads(8))
        hlc = Hlc(wall_clock_ms(), 0, 1)
        stored = plaintext
        if CONFIDENTIAL in tags_for(obj, field):
            ver, key = write_key(st, sk, CONFIDENTIAL)
            a = aad(bytes(sk.verify_key), hlc, parents, obj, field)
            stored = encrypt(key, os.urandom(NONCE_LEN), plaintext, a, CONFIDENTIAL, ver).to_cbor()
        op = make_op(sk, parents, hlc, Data(f"mv:{obj}:{field}", stored))
        st.put(op)
    click.echo(f"write_op_id={to_hex(op.op_id)}")
    click.echo(f"obj={obj} field={field}")


def write_key(st: Store, sk: SigningKey, tag: str) -> tuple[int, bytes]:
    """The key version a writer encrypts ``tag`` under and its key: reference, the highest in the
    log or the keyring; strict, the newest counting sealed version as the writer's box opens it."""
    strict = strict_log(st)
    if strict is not None:
        return strict_write_key(strict[1], sk, tag)
    in_log = store_log_keys(st)
    versions = [v for v in (in_log.max_version(tag), st.max_key_version_for_tag(tag)) if v is not None]
    ver = max(versions, default=None)
    key = None if ver is None else tag_key(st, in_log, tag, ver)
    if ver is None or key is None:
        raise EcacError(f"no key_version for tag='{tag}'; run `keyrotate {tag}` first")
    return ver, key


def strict_write_key(order: list[Op], sk: SigningKey, tag: str) -> tuple[int, bytes]:
    """Strict: the newest counting key version of ``tag`` and its key as the writer's box opens it."""
    keys = sealed_keys(order)
    ver = keys.max_version(tag)
    if ver is None:
        raise EcacError(f"no sealed key for tag='{tag}'; an admin must run `keyrotate {tag}` first")
    mine = keys.for_reader(sk).candidates(tag, ver)
    if not mine:
        raise EcacError(
            f"the writer {to_hex(bytes(sk.verify_key))} is not a recipient of key version {ver} of "
            f"'{tag}' (it held no live read grant on '{tag}' at that rotation); it cannot encrypt "
            "under the current key"
        )
    return ver, mine[0]


def strict_rotate(st: Store, dag: Dag, order: list[Op], sk: SigningKey, tag: str) -> tuple[Op, int]:
    """Sign a SealedKeyRotate of the next version of ``tag`` on the store's heads: a random key,
    one sealed box per live reader (fresh ephemeral key each), checked to count before it is
    stored. Returns the op and its number of readers."""
    gate = build_strict_gate(order, dag=dag)
    parents = sorted(st.heads(8))
    hlc = Hlc(wall_clock_ms(), 0, 1)
    readers = live_readers(gate, tag, parents, hlc)
    if not readers:
        raise EcacError(
            f"no subject holds a live read grant on '{tag}' (an editor grant with '{tag}' in scope); "
            "a key sealed to nobody would be unusable"
        )
    nxt = next_key_version(tag, sealed_keys(order, gate).max_version(tag), None)
    key = os.urandom(KEY_LEN)
    boxes = tuple(SealedKey(r, seal_key(key, r, os.urandom(32))) for r in readers)
    op = make_op(sk, parents, hlc, SealedKeyRotate(tag, nxt, boxes))
    dag.insert(op)
    after = dag.topo_order()
    why = rotation_problem(build_strict_gate(after, dag=dag), op)
    if why is not None:
        raise EcacError(f"refused: the rotation would not count: {why}")
    st.put(op)
    return op, len(readers)


@click.command("keyrotate")
@env_db_option
@key_option(f"Secret key file of the key admin (else {KEYADMIN_ENV})")
@click.argument("tag")
def keyrotate_cmd(db: Path, key_file: Path | None, tag: str) -> None:
    """Log the next key version of TAG as a KeyRotate op and keep the key in the keyring.

    The version is one past the highest of TAG in the log (or the keyring), so rotating on
    any node continues the same sequence. Signed with --key (else ECAC_KEYADMIN_SK_HEX),
    checked before anything is stored. The key is derived from public inputs and is in the
    log in clear, as in the reference design: it hides nothing from anyone who can read the log.

    Strict project: a random key sealed to each reader with a live read grant on TAG (never in
    clear, not kept in the keyring); only an admin may rotate. A revoked reader is left out.
    """
    sk = load_signing_key(key_file, hex_env=KEYADMIN_ENV)
    with opened(db) as st:
        strict = strict_log(st)
        if strict is not None:
            op, n = strict_rotate(st, strict[0], strict[1], sk, tag)
            assert isinstance(op.payload, SealedKeyRotate)
            click.echo(f"tag={tag} new_version={op.payload.new_version}")
            click.echo(f"sealed_to={n} readers")
            click.echo(f"keyrotate_op_id={to_hex(op.op_id)}")
            return
        nxt = next_key_version(tag, store_log_keys(st).max_version(tag), st.max_key_version_for_tag(tag))
        key = derive_tag_key(st.db_uuid(), tag, nxt)
        st.put_tag_key(tag, nxt, key)
        op = mint(st, sk, wall_clock_ms(), KeyRotate(tag, nxt, key))
    click.echo(f"tag={tag} new_version={nxt}")
    click.echo(f"keyrotate_op_id={to_hex(op.op_id)}")


@click.command("grant-key")
@env_db_option
@trust_option
@key_option(f"Secret key file of the key admin (else {KEYADMIN_ENV})")
@click.argument("subject_pk")
@click.argument("tag")
@click.argument("version", type=click.IntRange(0, U32_MAX))
@click.argument("jwt_file", metavar="VC_JWT")
def grant_key_cmd(
    db: Path, trust_dir: str, key_file: Path | None, subject_pk: str, tag: str, version: int, jwt_file: str
) -> None:
    """Log a KeyGrant of (TAG, VERSION) to SUBJECT_PK, backed by a VC verified with file trust and
    signed with --key (else ECAC_KEYADMIN_SK_HEX). The log (a KeyRotate op) or the keyring must
    hold that key version."""
    sk = load_signing_key(key_file, hex_env=KEYADMIN_ENV)
    subject = parse_hex(subject_pk, 32, "subject_pk")
    with opened(db) as st:
        if strict_log(st) is not None:
            raise EcacError(
                "grant-key has no effect in a strict project: `keyrotate` seals each key to the readers "
                "with a live read grant (grant an editor VC whose scope names the tag with `grant`)"
            )
        if tag_key(st, store_log_keys(st), tag, version) is None:
            raise EcacError(f"no key for tag='{tag}', version={version} in keyring; run keyrotate first")
        token = read_file(jwt_file)
        claims = file_trust_verify(token, trust_dir)
        if claims.subject_pk != subject:
            raise EcacError(
                f"subject_pk_hex does not match VC subject_pk (VC subject is {to_hex(claims.subject_pk)})"
            )
        ch = cred_hash(token)
        op = mint(st, sk, wall_clock_ms(), KeyGrant(subject, tag, version, ch))
    click.echo(f"keygrant_op_id={to_hex(op.op_id)}")
    click.echo(f"subject_pk={subject_pk}")
    click.echo(f"tag={tag} key_version={version}")
    click.echo(f"cred_hash={to_hex(ch)}")


@click.command("show")
@env_db_option
@click.argument("obj")
@click.argument("field")
@click.option("--subject-pk", "subject_pk", metavar="HEX", help="The reader's public key (or give --key).")
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="The reader's secret key file (strict projects: it opens the reader's sealed keys).",
)
def show_cmd(db: Path, obj: str, field: str, subject_pk: str | None, key_file: Path | None) -> None:
    """Print OBJ.FIELD as the reader may read it: the plaintext, or "<redacted>" (with quotes).

    An encrypted value is readable when the reader holds a live role on its tag and a KeyGrant
    for its key version; the key comes from the log's KeyRotate ops (or the keyring), so every
    node that holds those ops shows the same. In a strict project the key comes only from the
    reader's own sealed box, opened with --key FILE: without it every encrypted value is
    redacted, and a reader left out of a rotation cannot read what was written under it.
    """
    reader = None if key_file is None else load_signing_key(key_file)
    if subject_pk is None and reader is None:
        raise click.UsageError("give --subject-pk HEX or --key FILE (the reader)")
    subject = (
        bytes(reader.verify_key) if reader is not None else parse_hex(subject_pk or "", 32, "subject_pk")
    )
    if reader is not None and subject_pk is not None and parse_hex(subject_pk, 32, "subject_pk") != subject:
        raise EcacError("--subject-pk is not the public key of --key")
    with opened(db, must_exist=True) as st:
        from ecac.store.resume import load_dag

        dag = load_dag(st)
        state, _ = replay_full(dag)
        if state.get_field(obj, field) is None:  # the same error objects as `project`
            click.echo(project_field_json(state, obj, field))
            return
        shown = project_field_for_subject(dag, state, subject, st.get_tag_key, obj, field, reader)
    click.echo(REDACTED if shown is None else shown)


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    for cmd in (write_cmd, keyrotate_cmd, grant_key_cmd, show_cmd):
        group.add_command(cmd)
