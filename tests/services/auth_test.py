"""Authenticator and TokenService: who a request is, on both databases.

The over-the-wire behaviour (HTTP 401/403, websocket 4403, the tenancy
matrix) is in tests/app_auth_test.py; here are the rules themselves: token
validity, the cache's revocation bound, and which proxy headers count.
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network
from typing import Literal

import pytest

from noteburst.config import AuthSettings
from noteburst.constants import ADMIN_SCOPE, LOCAL_USER, USER_SCOPE
from noteburst.domain.auth import Caller, parse_token
from noteburst.exceptions import InvalidInputError, TokenNotFoundError
from noteburst.services.auth import (
    Authenticator,
    TokenCache,
    TokenService,
    bearer_token,
)
from noteburst.storage.database import Database

PROXY = AuthSettings(
    trusted_proxies=[ip_network("10.0.0.0/8"), ip_network("::1/128")],
    proxy_user_header="X-Auth-Request-User",
    proxy_scopes_header="X-Auth-Request-Token-Scopes",
    proxy_default_scopes=[USER_SCOPE],
    proxy_admin_users=["root"],
)


def _authenticator(
    database: Database, mode: Literal["none", "tokens", "proxy"], ttl: float = 0
) -> Authenticator:
    return Authenticator(
        settings=PROXY.model_copy(update={"mode": mode}),
        database=database,
        cache=TokenCache(ttl=ttl),
    )


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.asyncio
async def test_tokens(database: Database) -> None:
    service = TokenService(database=database)
    auth = _authenticator(database, "tokens")
    token, info = await service.create(user="alice", scopes=[USER_SCOPE])
    assert parse_token(token) is not None
    assert info.key in token
    assert info.expires_at is None

    caller = await auth.authenticate(peer="127.0.0.1", headers=_bearer(token))
    assert caller == Caller(user="alice", scopes=frozenset({USER_SCOPE}))
    assert caller is not None
    assert not caller.is_admin
    assert caller.owner_filter == "alice"
    # connection_init's Authorization key wins over the handshake header.
    other, _ = await service.create(user="bob", scopes=[USER_SCOPE, ADMIN_SCOPE])
    bob = await auth.authenticate(
        peer=None, headers=_bearer(token), params={"Authorization": f"Bearer {other}"}
    )
    assert bob is not None
    assert bob.user == "bob"
    assert bob.is_admin
    assert bob.owner_filter is None

    key, secret = token.removeprefix("nbt_").split(".")
    for bad in (
        f"nbt_{key}.{secret[::-1]}",  # wrong secret for a real key
        "nbt_" + "A" * 16 + "." + "B" * 43,  # well-formed, unknown
        "nbt_short.x",
        "",
        token + "x",
    ):
        assert await auth.authenticate(peer=None, headers=_bearer(bad)) is None, bad
    assert await auth.authenticate(peer=None, headers={}) is None
    assert (
        await auth.authenticate(peer=None, headers={"authorization": f"Basic {token}"})
        is None
    )

    await service.revoke(info.key)
    await service.revoke(info.key)  # idempotent
    assert await auth.authenticate(peer=None, headers=_bearer(token)) is None
    listed = await service.list(user="alice")
    assert [t.key for t in listed] == [info.key]
    assert listed[0].revoked_at is not None
    with pytest.raises(TokenNotFoundError):
        await service.revoke("nope")


@pytest.mark.asyncio
async def test_token_checks_refused(database: Database) -> None:
    service = TokenService(database=database)
    with pytest.raises(InvalidInputError, match="scope"):
        await service.create(user="alice", scopes=["read:all"])
    with pytest.raises(InvalidInputError, match="scope"):
        await service.create(user="alice", scopes=[])
    with pytest.raises(InvalidInputError, match="user"):
        await service.create(user=" ", scopes=[USER_SCOPE])
    with pytest.raises(InvalidInputError, match="expires_in"):
        await service.create(user="alice", scopes=[USER_SCOPE], expires_in=timedelta(0))


@pytest.mark.asyncio
async def test_the_cache_bounds_how_long_a_revoked_token_works(
    database: Database,
) -> None:
    service = TokenService(database=database)
    token, info = await service.create(user="alice", scopes=[USER_SCOPE])
    cached = _authenticator(database, "tokens", ttl=3600)
    uncached = _authenticator(database, "tokens", ttl=0)
    assert await cached.authenticate(peer=None, headers=_bearer(token)) is not None
    await service.revoke(info.key)
    # Within the cache's lifetime the process still believes the token (the
    # documented bound, token_cache_seconds); without a cache it is refused.
    assert await cached.authenticate(peer=None, headers=_bearer(token)) is not None
    assert await uncached.authenticate(peer=None, headers=_bearer(token)) is None


def test_token_cache_never_outlives_the_token() -> None:
    cache = TokenCache(ttl=3600)
    caller = Caller(user="alice", scopes=frozenset({USER_SCOPE}))
    cache.put("t", caller, seconds_left=0)
    assert cache.get("t") is None
    cache.put("t", caller, seconds_left=None)
    assert cache.get("t") == caller
    small = TokenCache(ttl=60, max_entries=2)
    for name in ("a", "b", "c"):
        small.put(name, caller, seconds_left=None)
    assert small.get("c") == caller
    assert small.get("a") is None


@pytest.mark.asyncio
async def test_proxy_headers(database: Database) -> None:
    auth = _authenticator(database, "proxy")
    user = {"x-auth-request-user": "alice"}
    assert await auth.authenticate(peer="10.1.2.3", headers=user) == Caller(
        user="alice", scopes=frozenset({USER_SCOPE})
    )
    assert await auth.authenticate(peer="::1", headers=user) is not None
    # Untrusted peers, unparsable peers, no peer: anonymous.
    for peer in ("127.0.0.1", "192.0.2.1", "not-an-address", None):
        assert await auth.authenticate(peer=peer, headers=user) is None, peer
    # No user, an empty one, an absurdly long one: anonymous.
    for name in ("", "   ", "x" * 256):
        headers = {"x-auth-request-user": name}
        assert await auth.authenticate(peer="10.0.0.1", headers=headers) is None
    scoped = await auth.authenticate(
        peer="10.0.0.1",
        headers={**user, "x-auth-request-token-scopes": "read:all,exec:admin"},
    )
    assert scoped is not None
    assert scoped.scopes == frozenset({"read:all", ADMIN_SCOPE})
    root = await auth.authenticate(
        peer="10.0.0.1", headers={"x-auth-request-user": "root"}
    )
    assert root is not None
    assert root.is_admin
    # A bearer token means nothing in proxy mode.
    assert await auth.authenticate(peer="192.0.2.1", headers=_bearer("x")) is None


@pytest.mark.asyncio
async def test_mode_none_is_the_local_admin(database: Database) -> None:
    auth = _authenticator(database, "none")
    caller = await auth.authenticate(peer=None, headers={})
    assert caller is not None
    assert caller.user == LOCAL_USER
    assert caller.is_admin


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None
