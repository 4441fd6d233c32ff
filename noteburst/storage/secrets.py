"""Encrypting callers' secrets at rest with a server key.

Webhook secrets must be stored (the worker signs with them long after the
submission) but a database dump or backup must not reveal them.  They are
encrypted with ``cryptography``'s Fernet (AES-128-CBC + HMAC-SHA256,
authenticated, with a timestamp) under a server key, through
:class:`~cryptography.fernet.MultiFernet` so keys can rotate: the first key
encrypts, every key decrypts, and an operator adds a new key in front, then
drops the old one once old tokens are gone.

Keys come from ``NOTEBURST_SECRET_KEY`` (comma-separated Fernet keys).
Without it, a key file ``secret.key`` in the data directory is used,
created on first use with mode 0600: the embedded default then works with
no configuration, and a service whose API and workers share no data
directory must set ``NOTEBURST_SECRET_KEY`` instead (otherwise a worker
cannot decrypt what the API stored, and the delivery fails with that
reason).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..exceptions import ConfigurationError

__all__ = ["KEY_FILE_NAME", "SecretBox", "SecretUnreadableError"]

KEY_FILE_NAME = "secret.key"


class SecretUnreadableError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


class SecretBox:
    """Encrypts and decrypts short secrets with the server's keys.

    Parameters
    ----------
    keys
        Fernet keys (url-safe base64 of 32 bytes); the first encrypts.
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            msg = "at least one secret key is needed"
            raise ConfigurationError(msg)
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError as exc:
            msg = "NOTEBURST_SECRET_KEY: each key must be a Fernet key"
            raise ConfigurationError(msg) from exc

    @classmethod
    def from_settings(cls, keys: str | None, data_dir: Path) -> SecretBox:
        """Keys from the setting if given, else from (or into) the key file."""
        if keys:
            return cls([key.strip() for key in keys.split(",") if key.strip()])
        return cls([_key_file(data_dir / KEY_FILE_NAME)])

    def encrypt(self, secret: str) -> str:
        """Return the token to store for ``secret``."""
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Return the secret a stored token holds.

        Raises
        ------
        SecretUnreadableError
            No configured key opens it (the server key changed, or was
            never shared with this process).
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken as exc:
            msg = "the stored secret cannot be decrypted with the server key"
            raise SecretUnreadableError(msg) from exc


def _key_file(path: Path) -> bytes:
    """Read the key file, creating it (0600, atomically) if it is missing.

    The key is written to a private temporary file that is then hard-linked
    into place, so two processes starting at once never read half a key:
    the loser of the link race reads the winner's file.
    """
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(Fernet.generate_key() + b"\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes().strip()
