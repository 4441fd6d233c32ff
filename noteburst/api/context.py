"""Per-connection context handed to resolvers.

Strawberry builds the websocket context once per connection, so nothing
per-operation (a session, a transaction) lives here: resolvers ask the
factory for a service, and the service opens its own transactions.  The
caller is per connection too: an HTTP request is authenticated before
Strawberry sees it, a websocket in its ``connection_init`` (see
:mod:`noteburst.api.auth`).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.websockets import WebSocket

from ..domain.auth import Caller
from ..exceptions import AuthenticationError
from ..factory import ApiFactory
from ..services.execution import ExecutionService
from ..services.submission import SubmissionService
from ..services.watch import ExecutionWatcher

__all__ = ["GraphQLContext"]


@dataclass
class GraphQLContext:
    """What every resolver may use."""

    request: Request | WebSocket
    factory: ApiFactory
    caller: Caller | None = None
    """Who is asking; None only before a websocket's connection_init."""
    connection_params: dict[str, object] | None = None
    """A websocket's connection_init payload (Strawberry sets it)."""

    def execution_service(self) -> ExecutionService:
        """Return the service reading and cancelling executions for the caller.

        Raises
        ------
        AuthenticationError
            Raised if there is no caller (never expected: requests without
            one are refused before any resolver runs).
        """
        return self.factory.create_execution_service(self._caller())

    def submission_service(self) -> SubmissionService:
        """Return the submission service acting for the caller (see above)."""
        return self.factory.create_submission_service(self._caller())

    def watcher(self) -> ExecutionWatcher:
        """Return the watcher of executions acting for the caller (see above)."""
        return self.factory.create_watcher(self._caller())

    def _caller(self) -> Caller:
        if self.caller is None:
            msg = "authentication required"
            raise AuthenticationError(msg)
        return self.caller
