"""Time limits, cancellation and output caps through the GraphQL API.

Both deployments: Postgres + Redis (the cancellation reaches the worker by
NOTIFY on its own channel) and the embedded default (in-process bus).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from noteburst.jupyter.protocol import TRUNCATION_MARKER
from tests.support.app import CANCEL, Noteburst, make_config, running
from tests.support.notebooks import notebook
from tests.support.waiting import wait_until


async def _cancel(nb: Noteburst, execution_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = (await nb.execute(CANCEL, id=execution_id))[
        "cancelExecution"
    ]
    return payload


@pytest.mark.asyncio
async def test_cancel_a_running_execution(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    source = notebook(
        "print('first')",
        "import time\nprint('waiting', flush=True)\ntime.sleep(120)",
        "print('never')",
    )
    async with running(config) as nb:
        submitted = await nb.submit(source)
        watching = asyncio.create_task(nb.watch(submitted["id"], after=0))

        async def second_cell_running() -> bool:
            found = await nb.get(submitted["id"])
            return found is not None and found["progress"]["cellsDone"] >= 1

        await wait_until(second_cell_running, "the first cell is done", timeout=120)
        payload = await _cancel(nb, submitted["id"])
        assert payload["__typename"] == "Execution"
        assert payload["status"] in {"RUNNING", "CANCELLED"}
        assert payload["cancelRequested"] or payload["status"] == "CANCELLED"

        events = await asyncio.wait_for(watching, 60)
        assert (events[-1]["kind"], events[-1]["status"]) == ("FINISHED", "CANCELLED")
        error = events[-1]["execution"]["error"]
        assert (error["code"], error["cellIndex"]) == ("CANCELLED", 1)
        fetched = await nb.get(submitted["id"])
        assert fetched is not None
        cells = fetched["notebook"]["cells"]
        assert cells[0]["outputs"][0]["text"] == "first\n"
        assert cells[1]["outputs"][0]["text"] == "waiting\n"
        assert cells[2]["outputs"] == []

        # Idempotent: a finished execution comes back unchanged.
        again = await _cancel(nb, submitted["id"])
        assert (again["__typename"], again["status"]) == ("Execution", "CANCELLED")
        unknown = await _cancel(nb, "00000000-0000-0000-0000-000000000000")
        assert unknown["__typename"] == "ExecutionNotFound"
        assert unknown["id"] == "00000000-0000-0000-0000-000000000000"

        # The lab stays usable.
        after = await nb.submit(notebook("print('next')"))
        final = await asyncio.wait_for(nb.watch(after["id"], after=0), 120)
        assert final[-1]["status"] == "SUCCEEDED"


@pytest.mark.asyncio
async def test_a_queued_execution_is_cancelled_before_any_worker_sees_it(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        submitted = await nb.submit(notebook("print('never')"))
        payload = await _cancel(nb, submitted["id"])
        assert (payload["status"], payload["error"]["code"]) == (
            "CANCELLED",
            "CANCELLED",
        )
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 60)
        assert [(e["kind"], e["status"]) for e in events] == [
            ("QUEUED", "QUEUED"),
            ("FINISHED", "CANCELLED"),
        ]


@pytest.mark.asyncio
async def test_cell_timeouts_are_shown_validated_and_enforced(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path, jupyter_server, default_no_output_timeout_seconds=300
    )
    async with running(config) as nb:
        bad = await nb.submit(notebook("1"), cellTimeoutSeconds=-5)
        assert (bad["__typename"], bad["field"]) == (
            "InvalidInput",
            "cellTimeoutSeconds",
        )
        bad = await nb.submit(notebook("1"), noOutputTimeoutSeconds=0)
        assert bad["field"] == "noOutputTimeoutSeconds"

        submitted = await nb.submit(
            notebook("print('ok')", "import time; time.sleep(120)"),
            cellTimeoutSeconds=2,
        )
        assert submitted["cellTimeoutSeconds"] == 2
        assert submitted["noOutputTimeoutSeconds"] == 300  # the configured default
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
        final = events[-1]["execution"]
        assert final["status"] == "TIMED_OUT"
        assert final["error"]["code"] == "TIMEOUT"
        assert final["error"]["cellIndex"] == 1
        assert final["error"]["message"] == "cell 1 exceeded its cell timeout of 2 s"


@pytest.mark.asyncio
async def test_output_caps_cut_a_flood_and_say_so(
    tmp_path: Path, jupyter_server: Any
) -> None:
    per_output, budget = 256 * 1024, 1024 * 1024
    config = make_config(
        tmp_path,
        jupyter_server,
        max_output_bytes=per_output,
        max_notebook_output_bytes=budget,
    )
    flood_mib = 256
    source = notebook(
        "import sys\nchunk = 'x' * (1 << 20)\n"
        f"for _ in range({flood_mib}):\n    sys.stdout.write(chunk)\n"
        "    sys.stdout.flush()",
        "print('after')",
    )
    async with running(config) as nb:
        # The worker runs in this process: its peak memory is this process's.
        peak_before = await asyncio.to_thread(_reset_peak_rss)
        submitted = await nb.submit(source)
        assert submitted["outputsTruncated"] is False
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 300)
        final = events[-1]["execution"]
        assert final["status"] == "SUCCEEDED"
        assert final["outputsTruncated"] is True
        fetched = await nb.get(submitted["id"])
        assert fetched is not None
        cells = fetched["notebook"]["cells"]
        assert TRUNCATION_MARKER in cells[0]["outputs"][-1]["text"]
        stored = sum(
            len(out.get("text", "")) for cell in cells for out in cell["outputs"]
        )
        assert stored < budget + 64 * 1024
        growth = await asyncio.to_thread(_peak_rss) - peak_before
        # Far below the flood: excess output was dropped as it arrived.
        assert growth < flood_mib * (1 << 20) // 4, growth


def _peak_rss() -> int:
    """This process's peak resident set size (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak to the current RSS (Linux clear_refs 5); return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss()
