"""Op-file tools of the reference CLI (store §3.3): ``op-make-min``, ``op-make-grant``,
``op-corrupt-sig`` and ``op-make-orphan``.

They transform or mint op files for tests and demos; they do not replay, so they do not
filter invalid ops (``op-corrupt-sig`` exists precisely to produce them).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import blake3
import click
from nacl.signing import SigningKey

from ecac.cli.common import echo_attach_result, load_ops, read_file, wall_clock_ms, write_bytes
from ecac.cli.keyfile import KEY_FILE_ARG
from ecac.core.codec import b2l, dumps
from ecac.core.errors import EcacError
from ecac.core.hlc import Hlc
from ecac.core.op import Credential, Grant, Op, make_op
from ecac.core.opcodec import encode_ops


def _with_sig(op: Op, sig: bytes) -> Op:
    """The same op with another signature (and its canonical bytes re-encoded)."""
    cbor = dumps({"header": op.header_obj(), "sig": b2l(sig), "op_id": b2l(op.op_id)})
    return replace(op, sig=sig, cbor=cbor)


def corrupt_sig(op: Op) -> Op:
    """``sig[0] ^= 1``, or ``sig = [0]`` when the signature is empty (reference behaviour)."""
    sig = bytes([op.sig[0] ^ 1]) + op.sig[1:] if op.sig else b"\x00"
    return _with_sig(op, sig)


@click.command("op-make-min")
@click.argument("author", metavar="AUTHOR_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("output", type=click.Path(dir_okay=False))
def op_make_min_cmd(author: SigningKey, output: str) -> None:
    """Write one deterministic op (Credential "min-cred", HLC {0,0,1}) as a 1-element list.

    Signed with the key in AUTHOR_KEY_FILE (a key file; a hex seed on the command line is refused).
    """
    op = make_op(author, (), Hlc(0, 0, 1), Credential("min-cred", b"\x01\x02\x03"))
    write_bytes(output, encode_ops([op]))
    click.echo(f"wrote minimal op to {output}", err=True)


@click.command("op-make-grant")
@click.argument("author", metavar="AUTHOR_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("admin", metavar="ADMIN_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("out_dir", type=click.Path(file_okay=False))
def op_make_grant_cmd(author: SigningKey, admin: SigningKey, out_dir: str) -> None:
    """Write cred.op.cbor (a test Credential by the author) and grant.op.cbor (its Grant by the admin).

    The credential body is a fixed test string, not a VC, so the Grant opens nothing under
    policy; use `ecac vc issue` and `ecac grant` for real credentials. Both arguments are key files.
    """
    body = b"m8-test-credential"
    t = wall_clock_ms()
    cred = make_op(author, (), Hlc(t, 0, 1), Credential("m8:test:cred", body))
    grant = make_op(
        admin, (cred.op_id,), Hlc(t, 0, 2), Grant(bytes(author.verify_key), blake3.blake3(body).digest())
    )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise EcacError(f"{out_dir}: cannot create directory: {e.strerror or e}") from None
    cred_path, grant_path = str(Path(out_dir) / "cred.op.cbor"), str(Path(out_dir) / "grant.op.cbor")
    write_bytes(cred_path, cred.cbor)
    write_bytes(grant_path, grant.cbor)
    echo_attach_result(cred, grant, cred_path, grant_path)


@click.command("op-corrupt-sig")
@click.argument("input_file", metavar="INPUT")
@click.argument("output", type=click.Path(dir_okay=False))
def op_corrupt_sig_cmd(input_file: str, output: str) -> None:
    """Flip bit 0 of every op's signature (for admission tests); writes a list of ops."""
    ops = [corrupt_sig(op) for op in load_ops(input_file)]
    write_bytes(output, encode_ops(ops))
    click.echo(f"wrote corrupted signatures to {output}", err=True)


@click.command("op-make-orphan")
@click.argument("base")
@click.argument("author", metavar="AUTHOR_KEY_FILE", type=KEY_FILE_ARG)
@click.argument("output", type=click.Path(dir_okay=False))
def op_make_orphan_cmd(base: str, author: SigningKey, output: str) -> None:
    """Append an op whose only parent (32 zero bytes) does not exist; payload cloned from the last op.

    Signed with the key in AUTHOR_KEY_FILE (a key file; a hex seed on the command line is refused).
    """
    ops = load_ops(base)
    if not ops:
        raise EcacError(f"{base}: no ops to clone a payload from")
    last = ops[-1]
    hlc = Hlc(max(wall_clock_ms(), last.hlc.physical_ms + 1), 0, last.hlc.logical)
    orphan = make_op(author, (bytes(32),), hlc, last.payload)
    write_bytes(output, encode_ops([*ops, orphan]))
    click.echo(f"appended orphan op → {output}", err=True)


def register(group: click.Group) -> None:
    for cmd in (op_make_min_cmd, op_make_grant_cmd, op_corrupt_sig_cmd, op_make_orphan_cmd):
        group.add_command(cmd)


__all__ = ["corrupt_sig", "read_file", "register"]
