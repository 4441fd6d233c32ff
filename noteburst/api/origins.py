"""Which web pages may use the API with their users' credentials.

A browser attaches a user's cookies, and the headers an authenticating
ingress adds, to requests any page makes, whichever site the page is on.
CORS only decides whether that page may *read* the answer; the request
itself has run by then.  So a request that carries an ``Origin`` header (a
browser's) is refused outright (HTTP 403) unless it comes from the API's
own origin or one listed in ``NOTEBURST_CORS_ORIGINS``; listed origins get
CORS headers (Starlette's ``CORSMiddleware``, preflight included), and
Strawberry checks websocket handshakes against the same list
(``allowed_origins``).  Requests without ``Origin`` are not a browser's
cross-site requests (command-line and server clients) and pass.

Same-origin is decided as Strawberry decides it for websockets: the
``Origin``'s host and port equal the ``Host`` header, or the browser says
``Sec-Fetch-Site: same-origin``; and the origin of ``NOTEBURST_PUBLIC_URL``
counts as the API's own (an ingress may rewrite ``Host``).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http.websocket_origin import is_same_origin, normalize_origin

__all__ = ["OriginGuard", "origin_allowed"]

ORIGIN_NOT_ALLOWED = "origin_not_allowed"


def origin_allowed(origin: str, headers: Headers, allowed: Collection[str]) -> bool:
    """Whether a browser request from ``origin`` may use the API."""
    if headers.get("sec-fetch-site") == "same-origin":
        return True
    if is_same_origin(origin, headers.get("host")):
        return True
    normalized = normalize_origin(origin)
    return normalized is not None and normalized in allowed


class OriginGuard:
    """ASGI middleware: refuse HTTP requests from origins not allowed.

    Parameters
    ----------
    app
        The application behind it (CORS, then the routes).
    allowed
        Normalized origins (``scheme://host[:port]``) besides the API's own.
    """

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 403 to a disallowed browser request; pass the rest on."""
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not origin_allowed(origin, headers, self.allowed):
                message = (
                    f"requests from pages on {origin} are not allowed; an "
                    "operator lists the origins of trusted front ends in "
                    "NOTEBURST_CORS_ORIGINS"
                )
                body = {
                    "errors": [
                        {"message": message, "extensions": {"code": ORIGIN_NOT_ALLOWED}}
                    ]
                }
                await JSONResponse(body, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
