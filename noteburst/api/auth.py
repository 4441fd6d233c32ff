"""Authenticating GraphQL requests and websockets at the edge.

Anonymous and badly authenticated HTTP requests get an HTTP error before
GraphQL runs (401 with ``WWW-Authenticate: Bearer``; 403 for a caller
without a Noteburst scope), with a GraphQL-shaped JSON body so clients that
only read ``errors`` still see why.  An HTTP status rather than a GraphQL
error because nothing of the operation ran and a retry with the same
credentials cannot succeed, which is what 401/403 say to every HTTP client
and proxy.  GraphiQL's page itself stays public: it holds no data, and it
lets a user paste a token into its Headers tab.

A websocket authenticates in ``connection_init``: its payload's
``Authorization`` key (which GraphiQL fills from its Headers tab) or, if
absent, the handshake's ``Authorization`` header.  A refusal closes the
socket with 4403 Forbidden, as the graphql-transport-ws protocol asks of a
server that rejects a connection.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.status import HTTP_401_UNAUTHORIZED, HTTP_403_FORBIDDEN

from ..domain.auth import Caller
from ..exceptions import AuthenticationError, ClientError, PermissionDeniedError
from ..factory import ApiFactory

__all__ = ["authenticate", "error_response", "wants_graphiql_page"]

_MESSAGES = {
    "tokens": (
        "authentication required: send an API token as "
        "'Authorization: Bearer <token>'; it is missing, unknown, expired or "
        "revoked"
    ),
    "proxy": "authentication required: sign in through the site's login",
}


async def authenticate(
    factory: ApiFactory,
    connection: HTTPConnection,
    *,
    mode: str,
    params: Mapping[str, object] | None = None,
) -> Caller:
    """Return the caller of a request or websocket.

    Raises
    ------
    AuthenticationError
        Raised if the request is anonymous or its credentials are not valid.
    PermissionDeniedError
        Raised if the caller holds neither Noteburst scope.
    """
    peer = connection.client.host if connection.client is not None else None
    caller = await factory.create_authenticator().authenticate(
        peer=peer, headers=connection.headers, params=params
    )
    if caller is None:
        raise AuthenticationError(_MESSAGES.get(mode, "authentication required"))
    if not caller.may_use_api:
        msg = "this token or user has no Noteburst scope (exec:notebook)"
        raise PermissionDeniedError(msg)
    return caller


def error_response(error: ClientError) -> JSONResponse:
    """Return the HTTP response refusing a request for ``error``."""
    if isinstance(error, PermissionDeniedError):
        status, headers = HTTP_403_FORBIDDEN, None
    else:
        status, headers = HTTP_401_UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}
    body = {"errors": [{"message": error.message, "extensions": {"code": error.code}}]}
    return JSONResponse(body, status_code=status, headers=headers)


def wants_graphiql_page(
    method: str, headers: Mapping[str, str], query_params: Mapping[str, object]
) -> bool:
    """Whether a request is for GraphiQL's page rather than a GraphQL GET.

    A browser asking for HTML gets the page, with or without a ``query``:
    ``/graphql?query=...`` is how GraphiQL links are shared, and the page
    opens with that query (and ``variables``, ``operationName``) in its
    editors instead of a JSON answer (or a 400 for a mutation, which GET
    may not run).  Clients that do not ask for HTML keep GraphQL over GET;
    one accepting anything (``*/*``, as curl and ``fetch`` send) gets the
    page only without a query, which is Strawberry's own rule.  `noteburst.app`
    applies this both to skip authentication (the page holds no data) and
    to choose the page over execution, so the two cannot disagree.
    """
    if method != "GET":
        return False
    accept = headers.get("accept", "")
    if "text/html" in accept:
        return True
    return query_params.get("query") is None and "*/*" in accept
