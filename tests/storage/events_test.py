"""Event buses: cross-thread local wake-ups and Postgres LISTEN/NOTIFY.

No test sleeps to let something happen: each waits for the event it expects
under a timeout, and negative checks use a short timeout only after
everything that could wrongly wake the signal has provably been delivered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from noteburst.constants import EVENTS_CHANNEL
from noteburst.domain.execution import EventKind, ExecutionStatus
from noteburst.storage import (
    Database,
    LocalEventBus,
    NewEvent,
    PostgresEventBus,
    Signal,
    create_event_bus,
)
from noteburst.storage.events import asyncpg_dsn

TIMEOUT = 10.0
NOT_WOKEN = 0.1


async def woken(signal: Signal) -> bool:
    """Whether the signal fires within a short grace period."""
    try:
        async with asyncio.timeout(NOT_WOKEN):
            await signal.wait()
    except TimeoutError:
        return False
    return True


async def add_execution(database: Database, execution_id: str | None = None) -> str:
    execution_id = execution_id or str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text="{}",
            cells_total=1,
            now=datetime.now(UTC),
        )
    return execution_id


async def cell_started(database: Database, execution_id: str) -> int:
    async with database.transaction() as tx:
        event = await tx.events.append(
            execution_id,
            kind=EventKind.CELL_STARTED,
            status=ExecutionStatus.RUNNING,
            cell_index=0,
            now=datetime.now(UTC),
        )
    return event.sequence


async def append_then_fail(database: Database, execution_id: str) -> None:
    async with database.transaction() as tx:
        await tx.events.append(
            execution_id,
            kind=EventKind.RUNNING,
            status=ExecutionStatus.RUNNING,
            now=datetime.now(UTC),
        )
        raise RuntimeError


@pytest.mark.asyncio
async def test_local_bus_wakes_subscriber_from_another_thread() -> None:
    bus = LocalEventBus()
    await bus.start()
    async with bus.subscribe("a") as signal, bus.subscribe("b") as other:
        thread = threading.Thread(target=bus.announce, args=("a", 1))
        thread.start()
        async with asyncio.timeout(TIMEOUT):
            await signal.wait()
        await asyncio.to_thread(thread.join, TIMEOUT)
        assert not await woken(other)
    assert bus.subscriber_count == 0
    await bus.aclose()


@pytest.mark.asyncio
async def test_local_bus_wakes_subscriber_on_another_loop() -> None:
    bus = LocalEventBus()
    subscribed = threading.Event()
    result: list[bool] = []

    async def subscriber() -> None:
        async with bus.subscribe("x") as signal:
            subscribed.set()
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
            result.append(True)

    thread = threading.Thread(target=asyncio.run, args=(subscriber(),))
    thread.start()
    assert await asyncio.to_thread(subscribed.wait, TIMEOUT)
    bus.announce("x", 7)  # from this loop to the thread's loop
    await asyncio.to_thread(thread.join, TIMEOUT)
    assert result == [True]
    assert bus.subscriber_count == 0


@pytest.mark.asyncio
async def test_local_bus_coalesces_announcements() -> None:
    bus = LocalEventBus()
    async with bus.subscribe("a") as signal:

        def flood() -> None:
            for sequence in range(10_000):
                bus.announce("a", sequence)

        # to_thread's completion is scheduled after every wake-up it caused.
        await asyncio.to_thread(flood)
        async with asyncio.timeout(TIMEOUT):
            await signal.wait()
        assert not await woken(signal)
        # Announcing on the subscriber's own loop works too.
        bus.announce("a", 10_000)
        async with asyncio.timeout(TIMEOUT):
            await signal.wait()


@pytest.mark.asyncio
async def test_create_event_bus_picks_by_url(sqlite_url: str) -> None:
    assert isinstance(create_event_bus(sqlite_url), LocalEventBus)
    bus = create_event_bus("postgresql+asyncpg://u@127.0.0.1/db")
    assert isinstance(bus, PostgresEventBus)
    assert asyncpg_dsn("postgresql+asyncpg://u:p%40ss@h:5/db?ssl=disable") == (
        "postgresql://u:p%40ss@h:5/db?ssl=disable"
    )


@pytest.mark.asyncio
async def test_postgres_bus_delivers_committed_events(postgres_url: str) -> None:
    database = Database.from_url(postgres_url)
    bus = PostgresEventBus(postgres_url)
    try:
        await database.upgrade()
        await bus.start()
        assert bus.is_listening
        assert bus.generation == 1
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        async with bus.subscribe(first) as signal, bus.subscribe(second) as other:
            # Adding notifies too.  Wait for both, so that no notification
            # sent before this point is still on its way.
            await add_execution(database, first)
            await add_execution(database, second)
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
                await other.wait()
            # Nothing arrives for a transaction that rolls back.
            with pytest.raises(RuntimeError):
                await append_then_fail(database, first)
            sequence = await cell_started(database, first)
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
            async with database.transaction() as tx:
                events = await tx.events.after(first, 1)
            assert [e.sequence for e in events] == [sequence] == [2]
            # Routed by id: the other subscriber was not woken.
            assert not await woken(other)
            await cell_started(database, second)
            async with asyncio.timeout(TIMEOUT):
                await other.wait()
            assert not await woken(signal)
    finally:
        await bus.aclose()
        await database.aclose()
    assert not bus.is_listening


@pytest.mark.asyncio
async def test_postgres_inserted_events_notify_by_trigger(postgres_url: str) -> None:
    # The store sends no pg_notify of its own for events: the migration's
    # trigger does, on the channel the bus listens to, and once per
    # transaction and execution however many events it inserts.
    database = Database.from_url(postgres_url)
    listener = await asyncpg.connect(asyncpg_dsn(postgres_url), timeout=TIMEOUT)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await database.upgrade()
        await listener.add_listener(
            EVENTS_CHANNEL, lambda *args: received.put_nowait(str(args[-1]))
        )
        execution_id = await add_execution(database)
        other_id = await add_execution(database)
        now = datetime.now(UTC)
        batch = [
            NewEvent(
                kind=kind,
                status=ExecutionStatus.RUNNING,
                cells_done=0,
                created_at=now,
                cell_index=0,
            )
            for kind in (EventKind.CELL_STARTED, EventKind.CELL_FINISHED)
        ]
        async with database.transaction() as tx:
            await tx.events.append_many(execution_id, batch)
            await tx.events.append(
                execution_id,
                kind=EventKind.CELL_STARTED,
                status=ExecutionStatus.RUNNING,
                cell_index=1,
                now=now,
            )
        # Delivered in commit order: had the three inserts above notified
        # three times, the fourth notification would not be this one's.
        await cell_started(database, other_id)
        async with asyncio.timeout(TIMEOUT):
            notifications = [json.loads(await received.get()) for _ in range(4)]
        assert notifications == [
            {"id": execution_id},  # added
            {"id": other_id},  # added
            {"id": execution_id},  # three events, three statements: once
            {"id": other_id},
        ]
    finally:
        await listener.close(timeout=TIMEOUT)
        await database.aclose()


@pytest.mark.asyncio
async def test_postgres_bus_resyncs_after_losing_its_connection(
    postgres_url: str, postgres_admin_url: str
) -> None:
    database = Database.from_url(postgres_url)
    bus = PostgresEventBus(postgres_url, min_backoff=0.02, max_backoff=0.2)
    name = postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(asyncpg_dsn(postgres_admin_url), timeout=TIMEOUT)
    try:
        await database.upgrade()
        await bus.start()
        execution_id = await add_execution(database)
        async with bus.subscribe(execution_id) as signal:
            pid = bus.backend_pid
            generation = bus.generation
            # Keep the listener out while the event is committed, so that
            # its NOTIFY is certainly lost; the store's pooled connection
            # stays open.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            assert await admin.fetchval(
                "SELECT pg_terminate_backend($1, $2)", pid, int(TIMEOUT * 1000)
            )
            sequence = await cell_started(database, execution_id)
            assert bus.generation == generation
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
                await bus.wait_listening(generation=generation + 1)
            assert bus.backend_pid != pid
            async with database.transaction() as tx:
                events = await tx.events.after(execution_id, 1)
            assert [e.sequence for e in events] == [sequence]

            # And the new connection delivers as before.
            sequence = await cell_started(database, execution_id)
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
            assert sequence == 3
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close(timeout=TIMEOUT)
        await bus.aclose()
        await database.aclose()


@pytest.mark.asyncio
async def test_postgres_bus_ignores_malformed_payloads(postgres_url: str) -> None:
    bus = PostgresEventBus(postgres_url)
    sender = await asyncpg.connect(asyncpg_dsn(postgres_url), timeout=TIMEOUT)
    try:
        await bus.start()
        async with bus.subscribe("x") as signal:
            for payload in ("not json", "[]", '{"seq": 1}', '{"id": 5}'):
                await sender.execute(
                    "SELECT pg_notify('noteburst_events', $1)", payload
                )
            await sender.execute(
                "SELECT pg_notify('noteburst_events', $1)", json.dumps({"id": "x"})
            )
            async with asyncio.timeout(TIMEOUT):
                await signal.wait()
    finally:
        await sender.close(timeout=TIMEOUT)
        await bus.aclose()


@pytest.mark.asyncio
async def test_postgres_bus_start_fails_when_unreachable() -> None:
    # Port 1 on loopback refuses connections at once.
    bus = PostgresEventBus(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none",
        connect_timeout=0.2,
        min_backoff=0.01,
        max_backoff=0.05,
    )
    with pytest.raises(TimeoutError):
        await bus.start()
    assert not bus.is_listening
