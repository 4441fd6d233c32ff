"""Subscriptions that ask the same question share one GraphQL execution.

A dashboard shown to a class has every viewer subscribed to the same
execution, with the same document and variables.  Strawberry runs each
subscription as an operation of its own: every event goes through
graphql-core's execution of the selection, the schema's extensions, error
masking and JSON encoding once per subscriber.  Profiling the fan-out of one
event to 10,000 subscribers (``bench/fanout.py``; bench/README.md, "Where the
push time goes") put ~55% of the push there, the rest being the websocket
sends themselves.

So the subscriptions of one caller with the same document, operation name
and variables form a :class:`SubscriptionGroup`: one Strawberry stream runs
for the whole group, each of its results is encoded to JSON once, and every
member's websocket gets that text with the member's own operation id
(:func:`next_message_prefix`).  The results are the same ones each member's
own operation would have produced: the same resolvers, extensions, error
masking and logging run, once.

A member that joins a group late gets what a stream of its own would have
given it.  ``executionStatus`` with ``afterSequence`` replays the log after
that event, then goes on live: the member gets the group's results from its
first (the same events, the log being append-only; each with the execution
as it was at that event).  Without it, the stream starts at the current
state: the member gets the group's newest result, then the live ones (the
one difference: that result's execution fields are as of its event, where a
stream of its own would read them afresh; docs/architecture.md).  To
replay, a group holds its results from the first, only while they are small
(:data:`MAX_HISTORY_BYTES`); past that it takes no new members (the next
subscriber starts a group of its own) and lets go of results every member
has sent.  Queries, mutations, and subscriptions that are not
``executionStatus`` over one root field never share: each runs alone.

Each member stays an operation task of its own, which waits for the group's
next result and sends it: a member whose client reads slowly holds up only
itself (the ASGI send waits while uvicorn's buffer to that client is full).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager, suppress
from functools import lru_cache
from typing import Any, Final, NamedTuple, cast

from graphql import (
    FieldNode,
    GraphQLError,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    ValueNode,
    VariableNode,
    parse,
)
from graphql.utilities import get_operation_ast
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage,
    NextMessagePayload,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.utils.aio import aclosing

from ..metrics import SUBSCRIPTIONS_OPEN
from .context import GraphQLContext

__all__ = [
    "MAX_HISTORY_BYTES",
    "MAX_SHARED_QUERY_CHARS",
    "RESUME_ARGUMENT",
    "SHARED_FIELD",
    "GroupKey",
    "SharedResult",
    "SharingTransportWSHandler",
    "SubscriptionGroup",
    "SubscriptionGroups",
    "next_message_prefix",
    "resume_argument",
]

MAX_HISTORY_BYTES: Final = 256 * 1024
"""Encoded results a group keeps for members that join late; past this it
takes no new members.  A status subscription's whole history is a few
hundred bytes; a subscription to every cell's outputs may pass it."""

MAX_SHARED_QUERY_CHARS: Final = 16 * 1024
"""Longer documents run alone: the documents looked at for sharing are
remembered (like parsing, in a bounded cache), and a subscription to
``executionStatus`` is a few hundred characters."""

STREAM_CLOSE_SECONDS: Final = 10.0
"""How long a group waits for its stream to close once its last member left."""

_logger = logging.getLogger("strawberry.ws.task")

StreamStart = Callable[[], Awaitable[AsyncIterator[Any]]]
"""Starts the group's one Strawberry stream (``schema.stream(...)``)."""


def next_message_prefix(operation_id: str) -> str:
    """Return what comes before a shared payload in one member's ``next``.

    The message is this, the payload's JSON text, and a closing ``}``:
    the same JSON as Strawberry's ``{"id": ..., "type": "next", "payload":
    ...}``, without encoding the payload again for every member.
    """
    return f'{{"id":{json.dumps(operation_id)},"type":"next","payload":'


class SharedResult:
    """One result of a group's stream, and its ``next`` payload as JSON text.

    ``payload`` is None for anything but an :class:`ExecutionResult` (a
    pre-execution error, which each member answers as Strawberry would).
    Results form a chain (:meth:`following`) that every member walks; a
    group's chain starts at an empty anchor.
    """

    __slots__ = ("_following", "_ready", "payload", "result")

    def __init__(self, result: object, payload: str | None) -> None:
        self.result = result
        self.payload = payload
        self._following: SharedResult | None = None
        self._ready = asyncio.Event()

    @property
    def is_anchor(self) -> bool:
        """Whether this is a chain's start rather than a result."""
        return self.result is _ANCHOR

    async def following(self) -> SharedResult | None:
        """Wait for the next result; None once the stream has ended."""
        await self._ready.wait()
        return self._following

    def link(self, following: SharedResult | None) -> None:
        """Make ``following`` the next result (None: the end), waking members."""
        self._following = following
        self._ready.set()


_ANCHOR: Final = object()


class SubscriptionGroup:
    """The subscriptions sharing one stream, and where its results are.

    ``replay``: each member gets every result from the first (otherwise the
    newest, then the live ones: see the module's docstring).
    """

    def __init__(
        self,
        start: StreamStart,
        encode: Callable[[NextMessagePayload], str],
        *,
        replay: bool,
        max_history_bytes: int = MAX_HISTORY_BYTES,
    ) -> None:
        self.replay = replay
        self.finished = False
        """Whether the stream has ended (see ``failure`` for how)."""
        self.failure: BaseException | None = None
        """What ended the stream, if it did not end normally."""
        self.members = 0
        self._newest = SharedResult(_ANCHOR, None)
        self._first: SharedResult | None = self._newest if replay else None
        """The anchor, while a member that joins now may replay from it."""
        self._history_bytes = 0
        self._max_history_bytes = max_history_bytes
        self._encode = encode
        self._task = asyncio.create_task(self._pump(start))

    @property
    def joinable(self) -> bool:
        """Whether a new member would get what a stream of its own would."""
        return not self.finished and (not self.replay or self._first is not None)

    async def results(self) -> AsyncIterator[SharedResult]:
        """Yield a member's results, from when it joined, to the stream's end."""
        link = self._first if self.replay else self._newest
        assert link is not None, "joined a group that replays no more"
        if not link.is_anchor:
            yield link
        while (following := await link.following()) is not None:
            link = following
            yield link

    async def stop(self) -> None:
        """Cancel the stream (its last member left) and wait for it to close.

        ``asyncio.wait``, not awaiting the task: a cancellation of the
        member calling this must still reach it, not be taken for the
        stream's.
        """
        self._task.cancel()
        await asyncio.wait([self._task], timeout=STREAM_CLOSE_SECONDS)

    async def _pump(self, start: StreamStart) -> None:
        try:
            source = await start()
            async with aclosing(cast("Any", source)):
                async for result in source:
                    self._append(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Strawberry logs an operation's unexpected failure this way; a
            # group's is logged once, not once per member.
            _logger.exception("Exception in a shared subscription", exc_info=exc)
            self.failure = exc
        finally:
            self.finished = True
            self._newest.link(None)

    def _append(self, result: object) -> None:
        payload = None
        if isinstance(result, ExecutionResult):
            payload = self._encode(_next_payload(result))
            self._history_bytes += len(payload)
            if self._history_bytes > self._max_history_bytes:
                self._first = None  # results every member sent may go now
        shared = SharedResult(result, payload)
        newest, self._newest = self._newest, shared
        newest.link(shared)


def _next_payload(result: ExecutionResult) -> NextMessagePayload:
    """Build a ``next`` payload exactly as Strawberry's ``Operation.send_next``."""
    payload: NextMessagePayload = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload


class GroupKey(NamedTuple):
    """What the members of a group all asked, and whether they replay."""

    caller: Hashable
    query: str
    operation_name: str | None
    variables: str
    """The variables as canonical JSON."""
    replay: bool


class SubscriptionGroups:
    """The groups of one API process, by what their members asked."""

    def __init__(
        self,
        *,
        max_tokens: int | None = None,
        max_history_bytes: int = MAX_HISTORY_BYTES,
    ) -> None:
        self._groups: dict[GroupKey, SubscriptionGroup] = {}
        self._max_tokens = max_tokens
        self._max_history_bytes = max_history_bytes

    def key(
        self,
        caller: Hashable | None,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> GroupKey | None:
        """Return the key of the group a subscription may join; None: runs alone.

        Only ``executionStatus`` subscriptions share (see
        :func:`resume_argument`), and only among subscriptions of one
        caller (what a caller may see depends on who it is).
        """
        if caller is None or len(query) > MAX_SHARED_QUERY_CHARS:
            return None
        resume = resume_argument(query, operation_name, self._max_tokens)
        if resume is None:
            return None
        variables = variables or {}
        if isinstance(resume, _Variable):
            if resume.name not in variables and resume.has_default:
                return None  # rare: not worth resolving the default here
            value = variables.get(resume.name)
        else:
            value = resume.value
        try:
            canonical = json.dumps(variables, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            return None
        return GroupKey(caller, query, operation_name, canonical, value is not None)

    @asynccontextmanager
    async def join(
        self,
        key: GroupKey,
        start: StreamStart,
        encode: Callable[[NextMessagePayload], str],
    ) -> AsyncIterator[SubscriptionGroup]:
        """Join (or start) the group of ``key`` for as long as the block runs."""
        group = self._groups.get(key)
        if group is None or not group.joinable:
            group = self._groups[key] = SubscriptionGroup(
                start,
                encode,
                replay=key.replay,
                max_history_bytes=self._max_history_bytes,
            )
        group.members += 1
        try:
            yield group
        finally:
            group.members -= 1
            if group.members == 0:
                if self._groups.get(key) is group:
                    del self._groups[key]
                await group.stop()

    def __len__(self) -> int:
        return len(self._groups)

    def members(self) -> int:
        """Return how many subscriptions the groups hold together."""
        return sum(group.members for group in self._groups.values())


SHARED_FIELD: Final = "executionStatus"
"""The subscription field whose subscriptions share."""
RESUME_ARGUMENT: Final = "afterSequence"
"""Its argument choosing between replay (a sequence) and the current state."""


class _Literal(NamedTuple):
    value: object


class _Variable(NamedTuple):
    name: str
    has_default: bool


@lru_cache(maxsize=128)
def resume_argument(
    query: str, operation_name: str | None, max_tokens: int | None
) -> _Literal | _Variable | None:
    """Where a shareable subscription's ``afterSequence`` comes from; None: alone.

    Shareable: a subscription whose one root field is ``executionStatus``,
    without directives (``@skip`` or ``@include`` would make what runs
    depend on more than the key).  A document that does not parse, or
    names no operation of it, is not: it runs alone, and Strawberry answers
    it as any other.  The token limit is the schema's, so that a document
    too big to be parsed there is not parsed here either.  Cached like
    Strawberry's own parsing: clients send the same few documents.
    """
    try:
        document = parse(query, max_tokens=max_tokens)
    except GraphQLError:
        return None
    operation = get_operation_ast(document, operation_name)
    field = _shared_field(operation) if operation is not None else None
    if operation is None or field is None:
        return None
    for argument in field.arguments or ():
        if argument.name.value == RESUME_ARGUMENT:
            return _argument_source(operation, argument.value)
    return _Literal(None)


def _shared_field(operation: OperationDefinitionNode) -> FieldNode | None:
    """Return the operation's one root ``executionStatus`` field, if that is all."""
    if operation.operation != OperationType.SUBSCRIPTION or operation.directives:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1:
        return None
    field = selections[0]
    if (
        not isinstance(field, FieldNode)
        or field.name.value != SHARED_FIELD
        or field.directives
    ):
        return None
    return field


def _argument_source(
    operation: OperationDefinitionNode, value: ValueNode
) -> _Literal | _Variable | None:
    if isinstance(value, VariableNode):
        name = value.name.value
        has_default = any(
            definition.variable.name.value == name
            and definition.default_value is not None
            for definition in operation.variable_definitions or ()
        )
        return _Variable(name, has_default)
    if isinstance(value, IntValueNode):
        return _Literal(int(value.value))
    if isinstance(value, NullValueNode):
        return _Literal(None)
    return None  # not an Int: validation answers it, alone


class SharingTransportWSHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """graphql-transport-ws where subscriptions asking the same thing share.

    The view (the ASGI app) holds the process's :class:`SubscriptionGroups`
    as ``subscription_groups``.  Everything else (connection init, pings,
    queries and mutations, limits) is Strawberry's.
    """

    async def run_operation(self, operation: Operation[GraphQLContext, None]) -> None:
        """Run a subscription in its group, anything else as Strawberry does."""
        with SUBSCRIPTIONS_OPEN.track_inprogress():
            await self._run_operation(operation)

    async def _run_operation(self, operation: Operation[GraphQLContext, None]) -> None:
        groups: SubscriptionGroups = cast("Any", self.view).subscription_groups
        key = groups.key(
            self.context.caller,
            operation.query,
            operation.operation_name,
            operation.variables,
        )
        if key is None:
            await super().run_operation(operation)
            return

        def start() -> Awaitable[AsyncIterator[Any]]:
            return cast(
                "Awaitable[AsyncIterator[Any]]",
                self.schema.stream(
                    operation.query,
                    variable_values=operation.variables,
                    context_value=self.context,
                    root_value=self.root_value,
                    operation_name=operation.operation_name,
                ),
            )

        def encode(payload: NextMessagePayload) -> str:
            return cast("str", self.view.encode_json(payload))

        async with groups.join(key, start, encode) as group:
            await self._send_shared(operation, group)
        # The members were woken together for the last result: yielding
        # once puts this member's complete behind the others' last results
        # (a page waits for the result, not for the protocol's complete),
        # which halves the time until the last of them is sent.
        await asyncio.sleep(0)
        if group.failure is not None:
            # As Strawberry ends an operation that failed unexpectedly (the
            # group logged the failure once).
            with suppress(Exception):
                await operation.send_operation_message(
                    {"id": operation.id, "type": "complete"}
                )
            self.operations.pop(operation.id, None)
            return
        await operation.send_operation_message(
            CompleteMessage(id=operation.id, type="complete")
        )

    async def _send_shared(
        self, operation: Operation[GraphQLContext, None], group: SubscriptionGroup
    ) -> None:
        """Send a group's results to one member, from the first.

        Each ``next`` goes straight to the Starlette websocket as the text
        of :func:`next_message_prefix` and the shared payload, not through
        Strawberry's message layers and ``encode_json``: with the GraphQL
        work shared, those layers were a good part of what is left per
        member of the push.
        """
        send_text = cast("ASGIWebSocketAdapter", self.websocket).ws.send_text
        prefix = next_message_prefix(operation.id)
        first = True
        async with aclosing(group.results()) as results:
            async for shared in results:
                if first and isinstance(shared.result, PreExecutionError):
                    # Validation errors.  Documents that do not parse, or
                    # have no such operation, never share (resume_argument),
                    # so there is no close reason here, just the errors.
                    await operation.send_initial_errors(shared.result.errors or [])
                    return
                if shared.payload is None:
                    await self._reject_incremental_delivery(operation)
                    return
                await send_text(prefix + shared.payload + "}")
                first = False
