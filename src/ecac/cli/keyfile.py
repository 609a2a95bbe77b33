"""Secret key files: the ``--key FILE`` option of every command that signs, and their format.

A key file holds the 32-byte Ed25519 seed as 64 lowercase hex characters and a newline
(``ecac key new`` writes it with mode 0600 and never overwrites). Reading also accepts either
hex case, surrounding whitespace, and a file of exactly 32 raw bytes (the node identity
``<db>/node_key``), so ``ecac key show <db>/node_key`` prints a node's signing key.

Secrets never travel on a command line: ``--key FILE`` names a file, ``ECAC_KEY_FILE`` is the
fallback, and a few commands also accept the reference's hex variables (``ECAC_SUBJECT_SK_HEX``
for ``write``, ``ECAC_KEYADMIN_SK_HEX`` for ``keyrotate`` and ``grant-key``). The reference
commands whose signature has a positional secret take a key file path in that position
(``KEY_FILE_ARG``) and refuse a literal hex seed. A key file that group or others may access
is refused (like ssh), so a copied ``0644`` key does not silently keep working; ``key show``
only warns, since it prints the public half.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from nacl.signing import SigningKey

from ecac.core.errors import EcacError
from ecac.core.keys import signing_key_from_hex

KEY_FILE_ENV = "ECAC_KEY_FILE"
#: key files are tiny; anything larger is not one (and is not read into memory)
MAX_KEY_FILE_BYTES = 4096
_HEX = frozenset("0123456789abcdefABCDEF")


def key_file_text(sk: SigningKey) -> bytes:
    """The key file content: the seed as 64 lowercase hex characters and a newline."""
    return bytes(sk).hex().encode("ascii") + b"\n"


def create_private_file(path: Path, data: bytes, what: str = "file") -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuse to overwrite anything there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EcacError(f"{path} already exists; refusing to overwrite a {what}") from None
    except OSError as e:
        raise EcacError(f"cannot create {what} {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits, but be explicit
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        raise EcacError(f"cannot write {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def create_key_file(path: Path, sk: SigningKey) -> None:
    """Write a new key file (0600, never overwriting)."""
    create_private_file(path, key_file_text(sk), "key file")


def parse_key_bytes(data: bytes, source: str) -> SigningKey:
    """A signing key from key-file bytes: 64 hex characters (whitespace trimmed) or 32 raw bytes."""
    if len(data) == 32:
        return SigningKey(bytes(data))
    text = data.strip()
    if len(text) == 64 and all(chr(c) in _HEX for c in text):
        return signing_key_from_hex(text.decode("ascii"))
    raise EcacError(
        f"{source}: not a key file (expected 64 hex characters of an Ed25519 seed, found {len(data)} bytes)"
    )


def read_key_file(path: Path, *, strict_permissions: bool = True) -> tuple[SigningKey, str | None]:
    """The key in ``path`` and a warning (or None).

    One-line ``EcacError``s for a missing file, a directory, an unreadable or oversized file,
    wrong content, and (with ``strict_permissions``) a file that group or others may access.
    Without ``strict_permissions`` that last problem is the returned warning instead.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise EcacError(
            f"key file {path} does not exist (create one with `ecac key new --out {path}`)"
        ) from None
    except OSError as e:
        raise EcacError(f"key file {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EcacError(f"key file {path} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise EcacError(f"key file {path} is not a regular file")
    warning = None
    if st.st_mode & 0o077:
        text = f"key file {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        if strict_permissions:
            raise EcacError(f"{text}; run `chmod 600 {path}`")
        warning = text
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise EcacError(f"key file {path} is {st.st_size} bytes; not a key file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EcacError(f"key file {path}: cannot read: {e.strerror or e}") from None
    return parse_key_bytes(data, f"key file {path}"), warning


def load_signing_key(key_file: Path | None, *, hex_env: str | None = None) -> SigningKey:
    """The signer of a command: ``--key FILE`` (or ``ECAC_KEY_FILE``, resolved by click), else
    the hex seed in the environment variable ``hex_env`` when the command accepts one."""
    if key_file is not None:
        return read_key_file(key_file)[0]
    if hex_env is not None:
        raw = os.environ.get(hex_env)
        if raw is not None and raw.strip():
            try:
                return signing_key_from_hex(raw)
            except EcacError as e:
                raise EcacError(f"{hex_env}: {e}") from None
    also = f" or {hex_env}" if hex_env is not None else ""
    raise EcacError(f"no signing key: give --key FILE (or set {KEY_FILE_ENV}{also})")


def key_option(
    help_text: str = "Secret key file of the signer.",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--key FILE`` (env ``ECAC_KEY_FILE``) as the ``key_file`` parameter (a Path or None).

    The file is read by ``load_signing_key`` inside the command, so its errors are one-line
    ``Error:`` messages (exit 1) rather than usage errors.
    """
    return click.option(
        "--key",
        "key_file",
        envvar=KEY_FILE_ENV,
        default=None,
        metavar="FILE",
        type=click.Path(dir_okay=True, path_type=Path),
        help=f"{help_text} (env {KEY_FILE_ENV}; 64 hex chars of an Ed25519 seed, mode 0600).",
    )


class KeyFileArgument(click.ParamType):
    """A signing key named by its key file, for the reference commands' positional key arguments.

    The reference takes these secrets as 64 hex characters on the command line, where ``ps``,
    shell history and CI logs see them. Here the same position takes a key FILE path, and a
    literal secret is refused with a message saying how to put it in a file (a path that exists
    is always read as a file, even if its name happens to be 64 hex characters).
    """

    name = "KEY_FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> SigningKey:
        if isinstance(value, SigningKey):
            return value
        text = str(value)
        stripped = text.strip()
        if len(stripped) == 64 and all(c in _HEX for c in stripped) and not Path(text).exists():
            what = param.human_readable_name if param is not None else "key"
            raise EcacError(
                f"{what}: a secret key on the command line is refused (ps and shell history see it); "
                "save it in a file with mode 0600 (or make a new one with `ecac key new --out FILE`) "
                "and give the file's path"
            )
        return read_key_file(Path(text))[0]


KEY_FILE_ARG = KeyFileArgument()
