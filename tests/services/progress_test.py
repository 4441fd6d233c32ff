"""ProgressWriter and OutputStreamer: a run's cell events and live outputs.

Real kernels, real databases (SQLite and Postgres).

Cell events (CELL_STARTED, CELL_FINISHED) are gathered per
``config.outputs.progress_flush_seconds``: a held-up write delays neither
the cells nor the order of the events, a quick notebook has them written
with its result, and a running cell is still seen live.

Live outputs (CELL_OUTPUTS) rebuild the executed notebook: every test of
them replays the stored events as the GraphQL description tells a client
to and compares the result with the notebook the execution stored.  Flush
policies are chosen so that event counts follow from the policy, not from
timing: a timer of an hour never fires within a test, so only the byte
threshold and the ends of cells flush.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dramatiq.brokers.stub import StubBroker

from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import EventKind, ExecutionEvent, ExecutionStatus
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.jupyter import execute as jupyter_execute
from noteburst.jupyter.execute import execute_notebook
from noteburst.services import runner as runner_module
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.events import LocalEventBus
from noteburst.storage.executions import ClaimStore, EventLogStore, NewEvent
from tests.support.app import make_config
from tests.support.notebooks import held_until as _held_until
from tests.support.notebooks import notebook
from tests.support.outputs import (
    OUTPUT_CASES,
    UPDATED_LATER,
    notebook_outputs,
    replay_stored,
)
from tests.support.runner_harness import Harness
from tests.support.runner_harness import cell_started as _cell_started
from tests.support.runner_harness import stored_events as _events
from tests.support.services import CallerServices, services_for

NEVER = 3600.0
"""A flush timer that does not fire during a test."""


@pytest.mark.asyncio
async def test_progress_events_are_batched_without_holding_up_the_cells(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow event write neither delays the cells nor loses or reorders events.

    The first progress write is held until every cell has run: the cells
    must not wait for it, the backlog must go out in one more write, and a
    watcher must still see every event once, in order, with no gaps.
    """
    cells = 12
    execution = await harness.service.submissions.submit(
        # No outputs, so no CELL_OUTPUTS events: only cell starts and ends.
        notebook(*(f"x{i} = {i} * 2" for i in range(cells)))
    )
    harness.broker.flush_all()
    all_ran = asyncio.Event()
    batches: list[list[EventKind]] = []
    real_append = EventLogStore.append_many

    async def held_append(
        self: EventLogStore, execution_id: str, events: Sequence[NewEvent]
    ) -> list[ExecutionEvent]:
        batches.append([event.kind for event in events])
        if len(batches) == 1:
            await all_ran.wait()
        return await real_append(self, execution_id, events)

    real_finish = ClaimStore.finish

    async def noted_finish(
        self: ClaimStore, execution_id: str, **kwargs: Any
    ) -> ExecutionEvent | None:
        # The end of a run writes what is left with its own statements.
        if kwargs.get("progress"):
            batches.append([event.kind for event in kwargs["progress"]])
        return await real_finish(self, execution_id, **kwargs)

    real_execute = jupyter_execute.execute_notebook

    async def execute_then_release(*args: Any, **kwargs: Any) -> Any:
        result = await real_execute(*args, **kwargs)
        all_ran.set()
        return result

    monkeypatch.setattr(EventLogStore, "append_many", held_append)
    monkeypatch.setattr(ClaimStore, "finish", noted_finish)
    monkeypatch.setattr(runner_module, "execute_notebook", execute_then_release)

    def row(event: ExecutionEvent) -> tuple[int, EventKind, int | None, int]:
        return (event.sequence, event.kind, event.cell_index, event.cells_done)

    async def watch() -> list[tuple[int, EventKind, int | None, int]]:
        stream = harness.service.watcher.watch(execution.id, after_sequence=0)
        return [row(watched.event) async for watched in stream]

    watcher = asyncio.create_task(watch())
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    seen = await asyncio.wait_for(watcher, 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED

    # One write held up, then the whole backlog in one more.
    assert batches[0] == [EventKind.CELL_STARTED]
    assert len(batches) == 2
    assert sum(len(batch) for batch in batches) == 2 * cells

    expected: list[tuple[int, EventKind, int | None, int]] = [
        (1, EventKind.QUEUED, None, 0),
        (2, EventKind.RUNNING, None, 0),
    ]
    for i in range(cells):
        expected.append((len(expected) + 1, EventKind.CELL_STARTED, i, i))
        expected.append((len(expected) + 1, EventKind.CELL_FINISHED, i, i + 1))
    expected.append((len(expected) + 1, EventKind.FINISHED, None, cells))
    assert seen == expected
    stored = await _events(harness, execution.id)
    assert [row(e) for e in stored] == expected
    times = [e.created_at for e in stored]
    assert times == sorted(times)
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.progress.cells_done == cells


def _runner_gathering_progress(harness: Harness, seconds: float) -> ExecutionRunner:
    """The harness's runner, but writing cell events at most every ``seconds``."""
    config = harness.worker.config
    outputs = config.outputs.model_copy(update={"progress_flush_seconds": seconds})
    config = config.model_copy(update={"outputs": outputs})
    return WorkerFactory(
        dataclasses.replace(harness.worker, config=config)
    ).create_runner()


@pytest.mark.asyncio
async def test_a_quick_notebook_has_its_cell_events_written_with_its_result(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the gathering time, no progress write before the end.

    That is the point of gathering (one write and one wake-up of each
    subscriber per small notebook); the events are all there, in order.
    """
    cells = 4
    execution = await harness.service.submissions.submit(
        notebook(*(f"x{i} = {i}" for i in range(cells)))
    )
    harness.broker.flush_all()
    writes: list[tuple[str, int]] = []
    real_append = EventLogStore.append_many
    real_finish = ClaimStore.finish

    async def counted_append(
        self: EventLogStore, execution_id: str, events: Sequence[NewEvent]
    ) -> list[ExecutionEvent]:
        writes.append(("append", len(events)))
        return await real_append(self, execution_id, events)

    async def counted_finish(
        self: ClaimStore, execution_id: str, **kwargs: Any
    ) -> ExecutionEvent | None:
        writes.append(("finish", len(kwargs.get("progress", ()))))
        return await real_finish(self, execution_id, **kwargs)

    monkeypatch.setattr(EventLogStore, "append_many", counted_append)
    monkeypatch.setattr(ClaimStore, "finish", counted_finish)
    runner = _runner_gathering_progress(harness, seconds=3600)
    outcome = await asyncio.wait_for(runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    # One write of all of them: the finish, which stores the result.
    assert writes == [("finish", 2 * cells)]
    stored = await _events(harness, execution.id)
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
    assert [e.kind for e in stored] == [
        EventKind.QUEUED,
        EventKind.RUNNING,
        *[EventKind.CELL_STARTED, EventKind.CELL_FINISHED] * cells,
        EventKind.FINISHED,
    ]


@pytest.mark.asyncio
async def test_a_running_cell_is_seen_live_despite_gathering(
    harness: Harness, tmp_path: Path
) -> None:
    """Gathering delays progress by at most its time, never until the end."""
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(
            "x = 1",
            _held_until(release),
        )
    )
    harness.broker.flush_all()
    runner = _runner_gathering_progress(harness, seconds=0.05)
    run = asyncio.create_task(runner.run(execution.id))
    try:
        await _cell_started(harness, execution.id, 1)
        # The second cell is still waiting for us: its start came out live.
        assert not run.done()
        release.touch()
        outcome = await asyncio.wait_for(run, 60)
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED


class Instance:
    """A service and a runner sharing one database, with a flush policy."""

    def __init__(self, service: CallerServices, runner: ExecutionRunner) -> None:
        self.service = service
        self.runner = runner

    async def run(self, source: dict[str, Any]) -> tuple[list[ExecutionEvent], Any]:
        """Submit and run ``source``; return its stored events and notebook."""
        execution = await self.service.submissions.submit(source)
        outcome = await asyncio.wait_for(self.runner.run(execution.id), 120)
        assert outcome is not None
        events = [
            watched.event
            async for watched in self.service.watcher.watch(
                execution.id, after_sequence=0
            )
        ]
        stored = await self.service.executions.get_notebook(execution.id)
        assert stored is not None
        return events, stored


@pytest_asyncio.fixture
async def make_instance(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Callable[..., Any]]:
    contexts: list[ApiContext | WorkerContext] = []

    async def make(**flush: Any) -> Instance:
        config = make_config(
            tmp_path, jupyter_server, database_url=database_url, **flush
        )
        broker = create_broker(config)
        assert isinstance(broker, StubBroker)
        bus = LocalEventBus()
        api = await ApiContext.build(config, broker=broker, local_bus=bus)
        contexts.append(api)
        worker = await WorkerContext.build(config, broker=broker, bus=bus)
        contexts.append(worker)
        return Instance(
            services_for(ApiFactory(api), LOCAL_CALLER),
            WorkerFactory(worker).create_runner(),
        )

    try:
        yield make
    finally:
        for context in reversed(contexts):
            await context.aclose()


def _outputs_events(events: list[ExecutionEvent]) -> list[ExecutionEvent]:
    return [e for e in events if e.kind is EventKind.CELL_OUTPUTS]


def _check_order(events: list[ExecutionEvent], final: dict[int, list[Any]]) -> None:
    """A cell's outputs come after its start and are complete at its end."""
    started: set[int] = set()
    cells: dict[int, list[Any]] = {}
    for event in events:
        if event.kind is EventKind.CELL_STARTED:
            assert event.cell_index is not None
            started.add(event.cell_index)
        elif event.kind is EventKind.CELL_OUTPUTS:
            assert event.cell_index in started
            assert event.outputs is not None
            assert event.output_start is not None
            cells.setdefault(event.cell_index, [])[event.output_start :] = event.outputs
        elif event.kind is EventKind.CELL_FINISHED:
            assert event.cell_index is not None
            if event.cell_index != UPDATED_LATER:
                assert cells.get(event.cell_index, []) == final.get(
                    event.cell_index, []
                ), event.cell_index


def _nonempty(cells: dict[int, list[Any]]) -> dict[int, list[Any]]:
    return {index: outputs for index, outputs in cells.items() if outputs}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "flush",
    [
        pytest.param({}, id="default"),
        pytest.param(
            {"output_flush_seconds": NEVER, "output_flush_bytes": 1}, id="every-change"
        ),
        pytest.param(
            {"output_flush_seconds": NEVER, "output_flush_bytes": 1 << 30},
            id="cell-ends",
        ),
    ],
)
async def test_replayed_events_rebuild_every_cell(
    make_instance: Callable[..., Any], flush: dict[str, Any]
) -> None:
    instance = await make_instance(**flush)
    events, stored = await instance.run(notebook(*OUTPUT_CASES))
    assert events[-1].status is ExecutionStatus.FAILED
    final = notebook_outputs(stored)
    # Every way of changing outputs was exercised, and the failure stopped it.
    assert set(final) == set(range(len(OUTPUT_CASES) - 1))
    assert [o["output_type"] for o in final[7]] == ["stream", "error"]
    assert final[UPDATED_LATER][0]["data"]["text/plain"] == "'third'"
    assert [o["text"] for o in final[3] if o["output_type"] == "stream"] == [
        "frame 4\n"
    ]
    assert _nonempty(replay_stored(events)) == final
    _check_order(events, final)
    outputs = _outputs_events(events)
    # Replacements happened (clear_output, display updates), not only appends.
    assert any(e.output_start == 0 and e.cell_index == 3 for e in outputs)
    assert any(
        e.cell_index == UPDATED_LATER and e.output_start == 0 for e in outputs[1:]
    )
    if flush.get("output_flush_bytes") == 1 << 30:
        # Only cell ends flush: one event per cell with outputs, plus the
        # earlier cell changed by the display update.
        assert len(outputs) == len(final) + 1


@pytest.mark.asyncio
async def test_pipelined_and_sequential_give_the_same_events(
    make_instance: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = await make_instance(
        output_flush_seconds=NEVER, output_flush_bytes=1 << 30
    )
    source = notebook(*OUTPUT_CASES)

    def content(events: list[ExecutionEvent]) -> list[tuple[Any, ...]]:
        return [
            (e.kind, e.cell_index, e.output_start, e.outputs)
            for e in events
            if e.kind is not EventKind.QUEUED
        ]

    pipelined, pipelined_nb = await instance.run(source)
    monkeypatch.setattr(
        runner_module,
        "execute_notebook",
        functools.partial(execute_notebook, pipelined=False),
    )
    sequential, sequential_nb = await instance.run(source)
    assert content(sequential) == content(pipelined)
    assert notebook_outputs(sequential_nb) == notebook_outputs(pipelined_nb)


@pytest.mark.asyncio
async def test_a_chatty_cell_is_coalesced_by_size(
    make_instance: Callable[..., Any],
) -> None:
    max_bytes = 4096
    instance = await make_instance(
        output_flush_seconds=NEVER, output_flush_bytes=max_bytes
    )
    source = notebook(
        "import time\n"
        "for i in range(400):\n"
        "    print('x' * 40, i, flush=True)\n"
        "    time.sleep(0.002)"
    )
    events, stored = await instance.run(source)
    final = notebook_outputs(stored)
    assert _nonempty(replay_stored(events)) == final
    printed = sum(len(out["text"]) for out in final[0])
    # Flushed each time max_bytes of text gathered, and once at the end.
    bound = printed // max_bytes + 1
    outputs = _outputs_events(events)
    assert 2 <= len(outputs) <= bound, (len(outputs), bound)
    # Many kernel messages went into those few events.
    assert len(final[0]) > 10 * len(outputs)
    # Each event appends: it keeps all the outputs the earlier ones gave.
    held = 0
    for event in outputs:
        assert event.output_start == held
        assert event.outputs is not None
        held += len(event.outputs)


@pytest.mark.asyncio
async def test_outputs_folded_before_a_timeout_are_kept(
    make_instance: Callable[..., Any],
) -> None:
    # Nothing flushes during the cell (no timer, no size, no cell end): the
    # outputs reach the events only through the flush at the attempt's end.
    instance = await make_instance(
        output_flush_seconds=NEVER, output_flush_bytes=1 << 30
    )
    source = notebook(
        "print('fast')", "print('slow', flush=True)\nimport time\ntime.sleep(60)"
    )
    # Ample time for the print to be folded; the sleep outlasts it anyway.
    execution = await instance.service.submissions.submit(source, timeout_seconds=8)
    outcome = await asyncio.wait_for(instance.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    events = [
        watched.event
        async for watched in instance.service.watcher.watch(
            execution.id, after_sequence=0
        )
    ]
    stored = await instance.service.executions.get_notebook(execution.id)
    assert stored is not None
    final = notebook_outputs(stored)
    assert final[1][0]["text"] == "slow\n"
    assert _nonempty(replay_stored(events)) == final
    kinds = [e.kind for e in events]
    last_outputs = len(kinds) - 1 - kinds[::-1].index(EventKind.CELL_OUTPUTS)
    assert kinds[last_outputs + 1 :] == [EventKind.FINISHED]


@pytest.mark.asyncio
async def test_any_text_survives_the_events_table(
    make_instance: Callable[..., Any],
) -> None:
    instance = await make_instance()
    events, stored = await instance.run(
        notebook(
            "print('nul \\x00, bell \\x07, ansi \\x1b[31mred\\x1b[0m, 🎉 ünï', end='')"
        )
    )
    final = notebook_outputs(stored)
    assert final[0][0]["text"] == "nul \x00, bell \x07, ansi \x1b[31mred\x1b[0m, 🎉 ünï"
    assert _nonempty(replay_stored(events)) == final


@pytest.mark.asyncio
async def test_an_animation_stops_resending_live_past_its_budget(
    make_instance: Callable[..., Any],
) -> None:
    budget = 5000
    frame = 1000  # bytes of HTML per frame, at least
    # Every change is flushed at once, so without the budget each of the
    # 40 frames would be an event.
    instance = await make_instance(
        output_flush_seconds=NEVER,
        output_flush_bytes=1,
        output_max_resent_bytes=budget,
    )
    source = notebook(
        "from IPython.display import HTML, clear_output, display\n"
        "for i in range(40):\n"
        "    clear_output(wait=True)\n"
        f"    display(HTML(f'<i>{{i}}</i>' + 'f' * {frame}))",
        "for i in range(5):\n    print(f'{i}\\n', end='', flush=True)",
    )
    events, stored = await instance.run(source)
    final = notebook_outputs(stored)
    assert final[0][0]["data"]["text/html"].startswith("<i>39</i>")
    assert _nonempty(replay_stored(events)) == final
    outputs = _outputs_events(events)
    animation = [e for e in outputs if e.cell_index == 0]
    # The first frame, frames re-sent until the budget is spent, the end.
    assert len(animation) <= 1 + -(-budget // frame) + 1, len(animation)
    assert animation[-1].output_start == 0
    # Appends are not re-sends: the printing cell's events only append.
    held = 0
    for event in (e for e in outputs if e.cell_index == 1):
        assert event.output_start == held
        assert event.outputs is not None
        held += len(event.outputs)
    assert held == len(final[1]) == 5
