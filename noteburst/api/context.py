"""Per-connection context handed to resolvers.

Strawberry builds the websocket context once per connection, so nothing
per-operation (a session, a transaction) lives here: resolvers ask the
factory for a service, and the service opens its own transactions.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.websockets import WebSocket

from ..factory import Factory

__all__ = ["GraphQLContext"]


@dataclass
class GraphQLContext:
    """What every resolver may use."""

    request: Request | WebSocket
    factory: Factory
