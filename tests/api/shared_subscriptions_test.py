"""Subscriptions asking the same thing share one stream, and get what their own would.

The groups' logic is tested with a stand-in stream (an async generator of
results); what a subscriber receives is tested over real websockets
against a served Noteburst, with two users.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from graphql import build_schema
from strawberry.types.execution import ExecutionResult
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from noteburst.api.schema import create_schema
from noteburst.api.shared_subscriptions import (
    MAX_SHARED_QUERY_CHARS,
    RESUME_ARGUMENT,
    SHARED_FIELD,
    SubscriptionGroup,
    SubscriptionGroups,
    next_message_prefix,
    resume_argument,
)
from tests.support.app import make_config, running
from tests.support.notebooks import held_until, notebook
from tests.support.waiting import wait_until

STATUS = """
subscription Status($id: ID!, $after: Int) {
  executionStatus(id: $id, afterSequence: $after,
                  kinds: [QUEUED, RUNNING, LAB_STARTING]) {
    sequence kind status execution { id status owner }
  }
}
"""


# --- Which subscriptions share, and how a late member starts -------------


def test_the_shared_field_and_its_argument_are_the_schemas() -> None:
    schema = build_schema(create_schema().as_str())
    assert schema.subscription_type is not None
    field = schema.subscription_type.fields[SHARED_FIELD]
    assert RESUME_ARGUMENT in field.args


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (STATUS, ("after", False)),
        ("subscription { executionStatus(id: 1) { kind } }", None),
        ("subscription { s: executionStatus(id: 1, afterSequence: 4) { kind } }", 4),
        ("subscription { executionStatus(id: 1, afterSequence: null) { kind } }", None),
        (
            "subscription S($a: Int = 3) "
            "{ executionStatus(id: 1, afterSequence: $a) { kind } }",
            ("a", True),
        ),
    ],
)
def test_shareable_subscriptions_say_where_they_start(
    query: str, expected: object
) -> None:
    source = resume_argument(query, None, None)
    assert source is not None
    assert tuple(source) == (expected if isinstance(expected, tuple) else (expected,))


@pytest.mark.parametrize(
    "query",
    [
        "query { executions { edges { cursor } } }",
        "mutation { cancelExecution(id: 1) { __typename } }",
        "subscription { a: executionStatus(id: 1) { kind } "
        "b: executionStatus(id: 2) { kind } }",
        "subscription { executionStatus(id: 1) @include(if: true) { kind } }",
        "subscription S @deprecated { executionStatus(id: 1) { kind } }",
        "subscription { executionStatus(id: 1, afterSequence: 1.5) { kind } }",
        "subscription { executionStatus(id: 1 { kind } }",
        "subscription { ...F } "
        "fragment F on Subscription { executionStatus(id: 1) { kind } }",
    ],
)
def test_other_operations_run_alone(query: str) -> None:
    assert resume_argument(query, None, None) is None


def test_a_document_past_the_token_limit_is_not_parsed_for_sharing() -> None:
    query = "subscription { executionStatus(id: 1) { kind } }"
    assert resume_argument(query, None, 5) is None
    assert resume_argument(query, None, 50) is not None


def test_keys_are_per_caller_and_ignore_the_order_of_variables() -> None:
    groups = SubscriptionGroups()
    one = groups.key("alice", STATUS, None, {"id": "x", "after": None})
    assert one is not None
    assert not one.replay
    assert groups.key("alice", STATUS, None, {"after": None, "id": "x"}) == one
    assert groups.key("bob", STATUS, None, {"id": "x", "after": None}) != one
    replaying = groups.key("alice", STATUS, None, {"id": "x", "after": 0})
    assert replaying is not None
    assert replaying.replay
    assert groups.key(None, STATUS, None, {"id": "x"}) is None
    padded = STATUS + " " * MAX_SHARED_QUERY_CHARS
    assert groups.key("alice", padded, None, {"id": "x"}) is None
    defaulted = (
        "subscription S($a: Int = 3) "
        "{ executionStatus(id: 1, afterSequence: $a) { kind } }"
    )
    assert groups.key("alice", defaulted, None, {}) is None
    assert groups.key("alice", defaulted, None, {"a": 2}) is not None


def test_a_shared_payload_is_sent_with_each_members_id() -> None:
    payload = '{"data":{"n":1}}'
    text = next_message_prefix('a"b') + payload + "}"
    assert json.loads(text) == {
        "id": 'a"b',
        "type": "next",
        "payload": {"data": {"n": 1}},
    }


# --- Groups, with a stand-in stream ---------------------------------------


class _Stream:
    """Streams that each get every result the test publishes from their start."""

    def __init__(self) -> None:
        self.starts = 0
        self.closed = 0
        self._queues: list[asyncio.Queue[object]] = []

    def start(self) -> Awaitable[AsyncIterator[Any]]:
        self.starts += 1
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queues.append(queue)

        async def results() -> AsyncIterator[Any]:
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                self.closed += 1

        async def started() -> AsyncIterator[Any]:
            return results()

        return started()

    def put(self, n: int) -> None:
        self._publish(ExecutionResult(data={"n": n}, errors=None))

    def fail(self, error: Exception) -> None:
        self._publish(error)

    def end(self) -> None:
        self._publish(None)

    def _publish(self, item: object) -> None:
        for queue in self._queues:
            queue.put_nowait(item)
        self._queues = [] if item is None else self._queues


def _encode(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


async def _collect(
    groups: SubscriptionGroups, key: Any, stream: _Stream, into: list[object]
) -> SubscriptionGroup:
    async with groups.join(key, stream.start, _encode) as group:
        async for shared in group.results():
            into.append(json.loads(shared.payload or "null")["data"]["n"])
    return group


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_late_members_replay_from_the_first_or_start_at_the_newest() -> None:
    groups = SubscriptionGroups()
    replay_key = groups.key("alice", STATUS, None, {"id": "x", "after": 0})
    latest_key = groups.key("alice", STATUS, None, {"id": "x", "after": None})
    replaying, latest = _Stream(), _Stream()
    got: dict[str, list[object]] = {name: [] for name in ("r1", "r2", "l1", "l2", "l3")}

    r1 = asyncio.create_task(_collect(groups, replay_key, replaying, got["r1"]))
    l1 = asyncio.create_task(_collect(groups, latest_key, latest, got["l1"]))
    await _until(lambda: replaying.starts == latest.starts == 1)
    replaying.put(1)
    latest.put(1)
    await _until(lambda: got["r1"] == [1] and got["l1"] == [1])
    replaying.put(2)
    latest.put(2)
    await _until(lambda: got["r1"] == [1, 2] and got["l1"] == [1, 2])
    # Joining now: the replaying member gets 1 and 2, the other the newest.
    r2 = asyncio.create_task(_collect(groups, replay_key, replaying, got["r2"]))
    l2 = asyncio.create_task(_collect(groups, latest_key, latest, got["l2"]))
    await _until(lambda: got["r2"] == [1, 2] and got["l2"] == [2])
    assert len(groups) == 2
    assert groups.members() == 4
    replaying.put(3)
    latest.put(3)
    replaying.end()
    latest.end()
    await asyncio.wait_for(asyncio.gather(r1, r2, l1, l2), 10)
    assert got["r1"] == got["r2"] == [1, 2, 3]
    assert got["l1"] == [1, 2, 3]
    assert got["l2"] == [2, 3]
    # One stream each, ended and closed; the groups are gone.
    assert (replaying.starts, latest.starts) == (1, 1)
    assert (replaying.closed, latest.closed) == (1, 1)
    assert len(groups) == 0
    # A member after the end starts a stream of its own.
    l3 = asyncio.create_task(_collect(groups, latest_key, latest, got["l3"]))
    await _until(lambda: latest.starts == 2)
    latest.put(4)
    latest.end()
    await asyncio.wait_for(l3, 10)
    assert (got["l3"], latest.starts) == ([4], 2)


@pytest.mark.asyncio
async def test_a_group_past_its_history_limit_takes_no_more_replaying_members() -> None:
    groups = SubscriptionGroups(max_history_bytes=10)
    key = groups.key("alice", STATUS, None, {"id": "x", "after": 0})
    stream = _Stream()
    first: list[object] = []
    second: list[object] = []
    one = asyncio.create_task(_collect(groups, key, stream, first))
    await _until(lambda: stream.starts == 1)
    stream.put(1)  # '{"data":{"n":1}}': past 10 bytes
    await _until(lambda: first == [1])
    two = asyncio.create_task(_collect(groups, key, stream, second))
    await _until(lambda: stream.starts == 2)
    stream.put(2)
    stream.end()
    await asyncio.wait_for(asyncio.gather(one, two), 10)
    assert (first, second) == ([1, 2], [2])


async def _members_with_one_result(
    count: int,
) -> tuple[SubscriptionGroups, _Stream, list[object], list[asyncio.Task[Any]]]:
    """``count`` members of one group, each having got the stream's first result."""
    groups = SubscriptionGroups()
    key = groups.key("alice", STATUS, None, {"id": "x"})
    stream = _Stream()
    got: list[object] = []
    members = [
        asyncio.create_task(_collect(groups, key, stream, got)) for _ in range(count)
    ]
    await _until(lambda: stream.starts == 1)
    stream.put(1)
    await _until(lambda: got == [1] * count)
    return groups, stream, got, members


@pytest.mark.asyncio
async def test_the_stream_stops_when_its_last_member_leaves() -> None:
    groups, stream, _, members = await _members_with_one_result(2)
    members[0].cancel()
    await asyncio.gather(members[0], return_exceptions=True)
    assert stream.closed == 0
    members[1].cancel()
    await asyncio.gather(members[1], return_exceptions=True)
    assert stream.closed == 1
    assert len(groups) == 0


@pytest.mark.asyncio
async def test_a_failing_stream_ends_every_member_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, stream, _, members = await _members_with_one_result(3)
    stream.fail(RuntimeError("boom"))
    ended = await asyncio.wait_for(asyncio.gather(*members), 10)
    assert all(isinstance(group.failure, RuntimeError) for group in ended)
    logged = [r for r in caplog.records if "shared subscription" in r.getMessage()]
    assert len(logged) == 1


# --- Over the wire ---------------------------------------------------------


class _Subscriber:
    """One raw graphql-transport-ws connection, as a user with a proxy header."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        return message

    async def subscribe(self, operation_id: str, query: str, **variables: Any) -> None:
        await self.ws.send(
            json.dumps(
                {
                    "id": operation_id,
                    "type": "subscribe",
                    "payload": {"query": query, "variables": variables},
                }
            )
        )

    async def until_complete(self, operation_id: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            message = await self.receive()
            assert message["id"] == operation_id
            if message["type"] == "complete":
                return messages
            messages.append(message)


async def _connect(url: str, user: str) -> _Subscriber:
    ws = await asyncio.wait_for(
        connect(
            url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            additional_headers={"X-Auth-Request-User": user},
        ),
        30,
    )
    subscriber = _Subscriber(ws)
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert (await subscriber.receive())["type"] == "connection_ack"
    return subscriber


GET_STATUS = "query Get($id: ID!) { execution(id: $id) { status } }"
SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) { __typename ... on Execution { id owner } }
}
"""


@pytest.mark.asyncio
async def test_watchers_of_one_execution_share_and_each_gets_its_own_answer(
    tmp_path: Path, jupyter_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups_started: list[SubscriptionGroup] = []
    original_init = SubscriptionGroup.__init__

    def counting_init(self: SubscriptionGroup, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        groups_started.append(self)

    monkeypatch.setattr(SubscriptionGroup, "__init__", counting_init)
    config = make_config(
        tmp_path, jupyter_server, auth_mode="proxy", trusted_proxies=["127.0.0.0/8"]
    )
    async with running(config) as nb:
        try:
            await _share_and_answer(nb.ws_url, tmp_path, groups_started)
        finally:
            (tmp_path / "release").touch()  # nothing held past the test


async def _share_and_answer(
    url: str, tmp_path: Path, groups_started: list[SubscriptionGroup]
) -> None:
    release = tmp_path / "release"
    held = notebook(held_until(release), "'done'")
    alice = [await _connect(url, "alice") for _ in range(4)]
    bob = await _connect(url, "bob")
    # Mutations over a websocket never share: the same one twice runs twice.
    for operation_id in ("m1", "m2"):
        await alice[0].subscribe(operation_id, SUBMIT, input={"notebook": held})
    submitted = [
        (await alice[0].until_complete(operation_id))[0]["payload"]["data"]
        for operation_id in ("m1", "m2")
    ]
    ids = [s["submitExecution"]["id"] for s in submitted]
    assert ids[0] != ids[1]
    execution_id = ids[0]
    # The watchers below must all find it running: on a busy machine it may
    # still be queued now (and its start would reach them as a second event).
    polls = 0

    async def running() -> bool:
        nonlocal polls
        polls += 1
        await alice[0].subscribe(f"q{polls}", GET_STATUS, id=execution_id)
        [answer] = await alice[0].until_complete(f"q{polls}")
        return bool(answer["payload"]["data"]["execution"]["status"] == "RUNNING")

    await wait_until(running, "the first execution runs", timeout=60)

    # Three of Alice's pages watch the status, one at a time: each gets
    # the current state first.
    firsts = []
    for index, subscriber in enumerate(alice[:3]):
        await subscriber.subscribe(f"s{index}", STATUS, id=execution_id)
        first = await subscriber.receive()
        assert first["id"] == f"s{index}"
        firsts.append(first["payload"])
        assert first["payload"]["data"]["executionStatus"]["kind"] == "RUNNING"
    assert firsts[0] == firsts[1] == firsts[2]
    # A fourth replays from the start; Bob asks exactly what Alice asked,
    # about an execution that is not his.
    await alice[3].subscribe("r", STATUS, id=execution_id, after=0)
    await bob.subscribe("s0", STATUS, id=execution_id)
    refused = await bob.until_complete("s0")
    assert refused[0]["payload"]["data"] is None
    assert refused[0]["payload"]["errors"][0]["extensions"]["code"] == (
        "execution_not_found"
    )
    # One group for the three, one for the replay, one for Bob.
    assert len(groups_started) == 3

    release.touch()
    rest = [
        await subscriber.until_complete(f"s{index}")
        for index, subscriber in enumerate(alice[:3])
    ]
    replayed = await alice[3].until_complete("r")
    assert (
        rest[0]
        == [{**message, "id": "s0"} for message in rest[1]]
        == [{**message, "id": "s0"} for message in rest[2]]
    )
    last = rest[0][-1]["payload"]["data"]["executionStatus"]
    assert (last["kind"], last["status"]) == ("FINISHED", "SUCCEEDED")
    assert [m["payload"]["data"]["executionStatus"]["kind"] for m in replayed] == [
        "QUEUED",
        "RUNNING",
        "FINISHED",
    ]
    for subscriber in [*alice, bob]:
        await subscriber.ws.close()
    assert len(groups_started) == 3
