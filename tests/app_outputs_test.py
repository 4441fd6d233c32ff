"""Live outputs over the wire: the subscription draws the notebook as it runs.

A real Noteburst (Postgres + Redis, and the embedded default) on a real
jupyter_server; the events are received with ``gql`` over
graphql-transport-ws and replayed as the schema describes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_config, running
from tests.support.notebooks import notebook
from tests.support.outputs import OUTPUT_CASES, notebook_outputs, replay_graphql

WAIT = 120


def _content(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["sequence"], e["kind"], e["cellIndex"], e["outputStart"], e["outputs"])
        for e in events
    ]


def _nonempty(cells: dict[int, list[Any]]) -> dict[int, list[Any]]:
    return {index: outputs for index, outputs in cells.items() if outputs}


@pytest.mark.asyncio
async def test_outputs_arrive_while_running_and_replay_for_late_subscribers(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    release = tmp_path / "release"
    # The first cell prints, then waits for the test, which releases it only
    # once that print reached the subscriber: outputs arrive mid-run.
    source = notebook(
        "import pathlib, time\n"
        "print('waiting\\n', end='', flush=True)\n"
        f"release = pathlib.Path({str(release)!r})\n"
        "deadline = time.monotonic() + 120\n"
        "while not release.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print('released\\n', end='')",
        *OUTPUT_CASES,
    )
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    async with running(config) as nb:
        submitted = await nb.submit(source)
        execution_id = submitted["id"]
        seen_while_running: list[dict[str, Any]] = []

        async def release_on_first_output(event: dict[str, Any]) -> None:
            if event["kind"] == "CELL_OUTPUTS" and not release.exists():
                seen_while_running.append(event)
                release.touch()

        live = await asyncio.wait_for(
            nb.watch(execution_id, after=0, on_event=release_on_first_output), WAIT
        )
        assert seen_while_running, "no outputs before the end"
        assert seen_while_running[0]["cellIndex"] == 0
        assert seen_while_running[0]["outputStart"] == 0
        assert seen_while_running[0]["outputs"] == [
            {"output_type": "stream", "name": "stdout", "text": "waiting\n"}
        ]
        assert seen_while_running[0]["status"] == "RUNNING"
        assert live[-1]["kind"] == "FINISHED"
        assert live[-1]["status"] == "FAILED"  # OUTPUT_CASES ends in 1 / 0

        fetched = await nb.get(execution_id)
        assert fetched is not None
        final = notebook_outputs(fetched["notebook"])
        assert final[0][-1]["text"] == "released\n"
        assert _nonempty(replay_graphql(live)) == final

        # Subscribing after the end, from the start: the same events.
        late = await asyncio.wait_for(nb.watch(execution_id, after=0), WAIT)
        assert _content(late) == _content(live)

        # Resuming from the middle: the rest, applied on what was seen.
        outputs = [e for e in live if e["kind"] == "CELL_OUTPUTS"]
        assert len(outputs) >= 4
        middle = outputs[len(outputs) // 2]["sequence"]
        rest = await asyncio.wait_for(nb.watch(execution_id, after=middle), WAIT)
        assert _content(rest) == _content(live[middle:])
        seen = replay_graphql(live[:middle])
        assert _nonempty(replay_graphql(rest, seen)) == final
