"""Who is calling, and what Noteburst's API tokens look like.

Every request is made by a :class:`Caller`: a user name and the scopes it
holds.  Executions belong to the user who submitted them; a caller sees
only their own unless it holds the admin scope (see
:meth:`Caller.owner_filter`), so the tenancy rule is written once, here.

An API token is ``nbt_<key>.<secret>``: the key (public, the token's id in
``token list`` and ``token revoke``) finds the stored row by its primary
key, and the secret is checked against a stored SHA-256 hash.  A slow
password hash (bcrypt, argon2) protects low-entropy secrets people choose;
these secrets are 256 random bits, which no offline search can find from a
hash, so a fast hash is the right one (it is what Gafaelfawr and GitHub do
too), and it keeps the check off the request's critical path.  The hash is
compared in constant time.  The ``nbt_`` prefix lets secret scanners spot a
leaked token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from ..constants import ADMIN_SCOPE, LOCAL_USER, TOKEN_PREFIX, USER_SCOPE

__all__ = [
    "LOCAL_CALLER",
    "Caller",
    "NewToken",
    "TokenInfo",
    "hash_secret",
    "new_token",
    "parse_token",
    "secret_matches",
]

_KEY_LENGTH = 16
_KEY_ALPHABET = string.ascii_letters + string.digits
"""A key's characters: letters and digits only (95 bits in 16 characters).

URL-safe base64 would also give ``-`` and ``_``, and a key starting with
``-`` reads as an option on a command line (``noteburst token revoke
-Qc7F…`` failed: one key in 64).  Keys made before accept that alphabet
still (``_TOKEN_RE``); revoke such a key as ``noteburst token revoke -- KEY``.
"""
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(
    rf"^{re.escape(TOKEN_PREFIX)}(?P<key>[A-Za-z0-9_-]{{16}})\.(?P<secret>[A-Za-z0-9_-]{{43}})$"
)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user behind a request."""

    user: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """Whether the caller sees and cancels everyone's executions."""
        return ADMIN_SCOPE in self.scopes

    @property
    def may_use_api(self) -> bool:
        """Whether the caller holds a scope that lets it use the API at all."""
        return self.is_admin or USER_SCOPE in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """The owner executions must have to be visible; None: all (admin)."""
        return None if self.is_admin else self.user


LOCAL_CALLER = Caller(user=LOCAL_USER, scopes=frozenset({USER_SCOPE, ADMIN_SCOPE}))
"""Every request's caller with ``auth_mode=none``: the one local user, an
administrator (so executions from before owners existed stay visible)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is stored about an API token (never its secret)."""

    key: str
    user: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_valid(self, now: datetime) -> bool:
        """Whether the token may authenticate a request at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly generated token: the text to hand out once, and its parts."""

    token: str
    key: str
    secret_hash: str


def new_token() -> NewToken:
    """Generate a token with a random key and a 256-bit random secret."""
    key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return NewToken(
        token=f"{TOKEN_PREFIX}{key}.{secret}", key=key, secret_hash=hash_secret(secret)
    )


def parse_token(token: str) -> tuple[str, str] | None:
    """Split a token into key and secret; None if it is not one of ours."""
    match = _TOKEN_RE.match(token)
    if match is None:
        return None
    return match["key"], match["secret"]


def hash_secret(secret: str) -> str:
    """Return the hex SHA-256 of a token's secret (what is stored)."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Compare a presented secret with a stored hash in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
