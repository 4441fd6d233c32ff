"""Live outputs: the runner's CELL_OUTPUTS events rebuild the executed notebook.

Real kernels, real databases (SQLite and Postgres).  Every test replays the
stored events as the GraphQL description tells a client to and compares
the result with the notebook the execution stored.  Flush policies are
chosen so that event counts follow from the policy, not from timing: a
timer of an hour never fires within a test, so only the byte threshold and
the ends of cells flush.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
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
from noteburst.jupyter.execute import execute_notebook
from noteburst.services import runner as runner_module
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.events import LocalEventBus
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.outputs import (
    OUTPUT_CASES,
    UPDATED_LATER,
    notebook_outputs,
    replay_stored,
)
from tests.support.services import CallerServices, services_for

NEVER = 3600.0
"""A flush timer that does not fire during a test."""


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
