"""Deciding who a request comes from, and managing API tokens.

:class:`Authenticator` turns what a request carries (its peer address,
headers, or a websocket's ``connection_init`` payload, handed over as plain
values by the API layer) into a :class:`~noteburst.domain.auth.Caller`, or
None for anonymous.  Which sources it believes depends on the mode:

``none``
    Every request is :data:`~noteburst.constants.LOCAL_USER` with both
    scopes (the embedded Quickstart needs no set-up).
``tokens``
    ``Authorization: Bearer nbt_...``; one primary-key read per token, then
    a short in-process cache (:class:`TokenCache`).
``proxy``
    The user (and optionally scopes) from headers set by an authenticating
    ingress, believed only when the TCP peer is in the trusted networks: a
    client that reaches Noteburst directly could send any header.

:class:`TokenService` creates, lists and revokes tokens (the CLI's
``noteburst token``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import structlog

from ..config import AuthSettings
from ..constants import ADMIN_SCOPE, USER_SCOPE
from ..domain.auth import (
    LOCAL_CALLER,
    Caller,
    TokenInfo,
    new_token,
    parse_token,
    secret_matches,
)
from ..exceptions import InvalidInputError, TokenNotFoundError
from ..storage.database import Database

__all__ = [
    "Authenticator",
    "TokenCache",
    "TokenService",
    "bearer_token",
]

_logger = structlog.get_logger("noteburst.auth")

_MAX_USER_LENGTH = 255


def bearer_token(value: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer ...`` value, if any."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass
class TokenCache:
    """Recently checked tokens of one process: token text -> (caller, until).

    A cached answer is used for at most ``ttl`` seconds (and never past the
    token's expiry), so a revocation takes effect in every process within
    ``ttl`` seconds.  Only valid tokens are cached: a wrong guess is always
    read from the database, and cannot fill the cache.  The size is bounded
    by dropping everything when it is full (simple, and tokens in use come
    back at the cost of one read each).
    """

    ttl: float
    max_entries: int = 10_000
    _entries: dict[str, tuple[Caller, float]] = field(default_factory=dict)

    def get(self, token: str) -> Caller | None:
        """Return the cached caller of a token, if still fresh."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        caller, until = entry
        if time.monotonic() >= until:
            self._entries.pop(token, None)
            return None
        return caller

    def put(self, token: str, caller: Caller, *, seconds_left: float | None) -> None:
        """Remember a valid token for ``ttl`` (or until it expires, if sooner)."""
        lifetime = self.ttl if seconds_left is None else min(self.ttl, seconds_left)
        if lifetime <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[token] = (caller, time.monotonic() + lifetime)


class Authenticator:
    """Identify the caller of a request.

    Parameters
    ----------
    settings
        The mode (``none``, ``tokens`` or ``proxy``) and, for ``proxy``,
        the trusted networks and which headers to read.
    database
        Where tokens are stored (mode ``tokens``).
    cache
        This process's token cache.
    """

    def __init__(
        self,
        *,
        settings: AuthSettings,
        database: Database,
        cache: TokenCache,
    ) -> None:
        self._settings = settings
        self._db = database
        self._cache = cache

    async def authenticate(
        self,
        *,
        peer: str | None,
        headers: Mapping[str, str],
        params: Mapping[str, object] | None = None,
    ) -> Caller | None:
        """Return the caller, or None if the request is anonymous.

        Parameters
        ----------
        peer
            The TCP peer's address.
        headers
            Request (or websocket handshake) headers, with case-insensitive
            look-up.
        params
            A websocket's ``connection_init`` payload: its ``Authorization``
            key (what GraphiQL sends) wins over the handshake header.
        """
        if self._settings.mode == "none":
            return LOCAL_CALLER
        if self._settings.mode == "proxy":
            return self._from_proxy(peer, headers)
        value: object = None
        if params is not None:
            value = params.get("Authorization", params.get("authorization"))
        if value is None:
            value = headers.get("authorization")
        token = bearer_token(value) if isinstance(value, str) else None
        return None if token is None else await self.check_token(token)

    async def check_token(self, token: str) -> Caller | None:
        """Return the caller a token stands for; None if unknown or invalid."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        parsed = parse_token(token)
        if parsed is None:
            return None
        key, secret = parsed
        async with self._db.transaction() as tx:
            found = await tx.tokens.get_with_hash(key)
        if found is None:
            return None
        info, stored_hash = found
        now = datetime.now(UTC)
        if not secret_matches(secret, stored_hash) or not info.is_valid(now):
            return None
        caller = Caller(user=info.user, scopes=frozenset(info.scopes))
        left = (
            None if info.expires_at is None else (info.expires_at - now).total_seconds()
        )
        self._cache.put(token, caller, seconds_left=left)
        return caller

    def _from_proxy(
        self, peer: str | None, headers: Mapping[str, str]
    ) -> Caller | None:
        if peer is None or not self._is_trusted(peer):
            return None
        settings = self._settings
        user = (headers.get(settings.proxy_user_header.lower()) or "").strip()
        if not user or len(user) > _MAX_USER_LENGTH:
            return None
        scopes: set[str] = set(settings.proxy_default_scopes)
        if settings.proxy_scopes_header is not None:
            raw = headers.get(settings.proxy_scopes_header.lower())
            if raw is not None:
                scopes = set(raw.replace(",", " ").split())
        if user in settings.proxy_admin_users:
            scopes.add(ADMIN_SCOPE)
        return Caller(user=user, scopes=frozenset(scopes))

    def _is_trusted(self, peer: str) -> bool:
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._settings.trusted_proxies)


class TokenService:
    """Create, list and revoke API tokens.

    Parameters
    ----------
    database
        Where tokens are stored.
    """

    def __init__(self, *, database: Database) -> None:
        self._db = database

    async def create(
        self,
        *,
        user: str,
        scopes: Sequence[str],
        expires_in: timedelta | None = None,
    ) -> tuple[str, TokenInfo]:
        """Create a token; return its text (shown once, never stored) and info.

        Raises
        ------
        InvalidInputError
            Raised if the user name is empty or too long, a scope is unknown,
            or the lifetime is not positive.
        """
        user = user.strip()
        if not user or len(user) > _MAX_USER_LENGTH:
            raise InvalidInputError(
                "user", f"must be 1 to {_MAX_USER_LENGTH} characters"
            )
        unknown = sorted(set(scopes) - {USER_SCOPE, ADMIN_SCOPE})
        if unknown or not scopes:
            msg = f"must be one or both of {USER_SCOPE}, {ADMIN_SCOPE}"
            raise InvalidInputError("scope", msg)
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInputError("expires_in", "must be positive")
        now = datetime.now(UTC)
        token = new_token()
        async with self._db.transaction() as tx:
            info = await tx.tokens.add(
                key=token.key,
                secret_hash=token.secret_hash,
                user=user,
                scopes=sorted(set(scopes)),
                now=now,
                expires_at=None if expires_in is None else now + expires_in,
            )
        _logger.info("API token created", key=info.key, user=user, scopes=info.scopes)
        return token.token, info

    async def list(self, *, user: str | None = None) -> list[TokenInfo]:
        """Every token (of one user, if given), oldest first; never secrets."""
        async with self._db.transaction() as tx:
            return await tx.tokens.list(user=user)

    async def revoke(self, key: str) -> TokenInfo:
        """Revoke a token by key; idempotent.

        Raises
        ------
        TokenNotFoundError
            Raised if no token has this key.
        """
        async with self._db.transaction() as tx:
            info = await tx.tokens.revoke(key, now=datetime.now(UTC))
        if info is None:
            raise TokenNotFoundError(key)
        _logger.info("API token revoked", key=key, user=info.user)
        return info
