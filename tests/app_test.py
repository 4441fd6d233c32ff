"""End to end over the wire: gql over HTTP and graphql-transport-ws.

Each test runs a real Noteburst (uvicorn on a loopback port) with an
in-process Dramatiq worker, on Postgres + Redis and on the embedded default
(SQLite + in-process broker), executing on the session's real
jupyter_server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from gql.transport.exceptions import TransportQueryError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from noteburst.app import FULL_COLLECTION_SPACING, create_app
from noteburst.storage.database import Database
from tests.support.app import LIST, make_config, running
from tests.support.notebooks import notebook

HELLO = notebook(
    "# md:# Hello",
    "x = 21",
    "print('hello', x)",
    "x * 2",
    "from IPython.display import HTML; display(HTML('<b>hi</b>'))",
    "import sys; sys.version_info[:2] >= (3, 11)",
)


def _kinds(events: list[dict[str, Any]]) -> list[tuple[str, str, int | None]]:
    """Kinds, statuses and cells of the events, CELL_OUTPUTS left out."""
    return [
        (e["kind"], e["status"], e["cellIndex"])
        for e in events
        if e["kind"] != "CELL_OUTPUTS"
    ]


@pytest.mark.asyncio
async def test_submit_subscribe_fetch(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    async with running(config) as nb:
        submitted = await nb.submit(HELLO)
        assert submitted["__typename"] == "Execution"
        assert submitted["status"] in {"QUEUED", "RUNNING"}
        assert submitted["kernelName"] == "python3"
        assert submitted["progress"] == {"cellsTotal": 5, "cellsDone": 0}

        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)

        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        expected: list[tuple[str, str, int | None]] = [
            ("QUEUED", "QUEUED", None),
            ("RUNNING", "RUNNING", None),
        ]
        for index in range(1, 6):
            expected += [
                ("CELL_STARTED", "RUNNING", index),
                ("CELL_FINISHED", "RUNNING", index),
            ]
        expected.append(("FINISHED", "SUCCEEDED", None))
        assert _kinds(events) == expected
        assert [e["cellsDone"] for e in events if e["kind"] == "CELL_FINISHED"] == [
            1,
            2,
            3,
            4,
            5,
        ]
        final = events[-1]["execution"]
        assert final["status"] == "SUCCEEDED"
        assert final["error"] is None
        assert final["attempts"] == 1
        assert final["finishedAt"] >= final["startedAt"] >= final["createdAt"]

        fetched = await nb.get(submitted["id"])
        assert fetched is not None
        result = nbformat.from_dict(fetched["notebook"])
        nbformat.validate(result)
        cells = result.cells
        assert cells[0].cell_type == "markdown"
        assert cells[2].outputs == [
            {"output_type": "stream", "name": "stdout", "text": "hello 21\n"}
        ]
        assert cells[3].outputs[0]["data"]["text/plain"] == "42"
        assert cells[3].execution_count == 3
        assert cells[4].outputs[0]["data"]["text/html"] == "<b>hi</b>"
        assert cells[5].outputs[0]["data"]["text/plain"] == "True"


@pytest.mark.asyncio
async def test_failing_cell_stops_and_is_reported(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    source = notebook("print('before')", "1 / 0", "print('never')")
    async with running(config) as nb:
        submitted = await nb.submit(source)
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
        assert events[-1]["status"] == "FAILED"
        error = events[-1]["execution"]["error"]
        assert error["code"] == "CELL_ERROR"
        assert error["cellIndex"] == 1
        assert error["ename"] == "ZeroDivisionError"
        assert error["evalue"] == "division by zero"
        assert any("ZeroDivisionError" in line for line in error["traceback"])
        fetched = await nb.get(submitted["id"])
        assert fetched is not None
        cells = fetched["notebook"]["cells"]
        assert cells[0]["outputs"][0]["text"] == "before\n"
        assert cells[1]["outputs"][0]["output_type"] == "error"
        assert cells[2]["outputs"] == []
        assert cells[2]["execution_count"] is None


@pytest.mark.asyncio
async def test_late_and_resuming_subscribers_see_each_event_once(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    source = notebook(*[f"print({i})" for i in range(6)])
    async with running(config) as nb:
        submitted = await nb.submit(source)
        execution_id = submitted["id"]
        # A subscriber that drops after three events, then resumes.
        first = await asyncio.wait_for(nb.watch(execution_id, after=0, limit=3), 60)
        rest = await asyncio.wait_for(
            nb.watch(execution_id, after=first[-1]["sequence"]), 120
        )
        together = [e["sequence"] for e in first + rest]
        assert together == list(range(1, len(together) + 1))
        assert rest[-1]["kind"] == "FINISHED"
        everything = await asyncio.wait_for(nb.watch(execution_id, after=0), 60)
        assert [e["sequence"] for e in everything] == together

        # A late subscriber gets the current (terminal) state, then completion.
        late = await asyncio.wait_for(nb.watch(execution_id), 60)
        assert len(late) == 1
        assert late[0]["sequence"] == together[-1]
        assert late[0]["status"] == "SUCCEEDED"
        # Resuming after the last event: nothing, and the stream completes.
        assert (
            await asyncio.wait_for(nb.watch(execution_id, after=together[-1]), 60) == []
        )


@pytest.mark.asyncio
async def test_subscribers_choose_the_event_kinds(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    status_kinds = ["QUEUED", "RUNNING", "LAB_STARTING"]
    async with running(config) as nb:
        submitted = await nb.submit(HELLO)
        execution_id = submitted["id"]
        # A dashboard waiting for the result: status changes and the end.
        statuses, everything = await asyncio.wait_for(
            asyncio.gather(
                nb.watch(execution_id, after=0, kinds=status_kinds),
                nb.watch(execution_id, after=0),
            ),
            120,
        )
        assert [e["kind"] for e in statuses] == ["QUEUED", "RUNNING", "FINISHED"]
        # The same events, with their own sequences (gaps where cells were).
        by_sequence = {e["sequence"]: e for e in everything}
        for event in statuses:
            assert by_sequence[event["sequence"]]["kind"] == event["kind"]
        assert statuses[-1]["execution"]["status"] == "SUCCEEDED"
        assert statuses[-1]["sequence"] == everything[-1]["sequence"]

        # Only cell ends: each cell's, then the terminal event, always sent.
        cell_ends = await asyncio.wait_for(
            nb.watch(execution_id, after=0, kinds=["CELL_FINISHED"]), 60
        )
        assert [(e["kind"], e["cellIndex"]) for e in cell_ends] == [
            *(("CELL_FINISHED", index) for index in range(1, 6)),
            ("FINISHED", None),
        ]
        # An empty list waits for the end alone.
        end = await asyncio.wait_for(nb.watch(execution_id, after=0, kinds=[]), 60)
        assert [e["kind"] for e in end] == ["FINISHED"]
        # Without afterSequence: the current state among the wanted kinds.
        current = await asyncio.wait_for(nb.watch(execution_id, kinds=status_kinds), 60)
        assert [e["kind"] for e in current] == ["FINISHED"]
        with pytest.raises(TransportQueryError, match="EventKind"):
            await nb.watch(execution_id, kinds=["NOT_A_KIND"])


@pytest.mark.asyncio
async def test_queries_list_newest_first_with_cursors(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as nb:
        ids = []
        for i in range(3):
            submitted = await nb.submit(notebook(f"{i}"))
            ids.append(submitted["id"])
        for execution_id in ids:
            await asyncio.wait_for(nb.watch(execution_id, after=0), 60)
        page = (await nb.execute(LIST, first=2))["executions"]
        assert [edge["node"]["id"] for edge in page["edges"]] == ids[::-1][:2]
        assert page["pageInfo"]["hasNextPage"] is True
        rest = (await nb.execute(LIST, first=2, after=page["pageInfo"]["endCursor"]))[
            "executions"
        ]
        assert [edge["node"]["id"] for edge in rest["edges"]] == [ids[0]]
        assert rest["pageInfo"]["hasNextPage"] is False
        failed = (await nb.execute(LIST, status="FAILED"))["executions"]
        assert failed["edges"] == []
        assert await nb.get("00000000-0000-0000-0000-000000000000") is None
        with pytest.raises(TransportQueryError, match="after"):
            await nb.execute(LIST, after="not-a-cursor")
        with pytest.raises(TransportQueryError, match="no execution with id"):
            await nb.watch("00000000-0000-0000-0000-000000000000")


BAD_INPUTS = [
    pytest.param("{not json", "InvalidNotebook", "not JSON", id="not-json"),
    pytest.param([1, 2], "InvalidNotebook", "not a notebook", id="array"),
    pytest.param({"hello": 1}, "InvalidNotebook", "not a notebook", id="not-notebook"),
    pytest.param(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [{"cell_type": "code"}],
        },
        "InvalidNotebook",
        "invalid nbformat at cells/0",
        id="invalid-nbformat",
    ),
    pytest.param(
        {
            "nbformat": 3,
            "nbformat_minor": 0,
            "metadata": {},
            "worksheets": [],
            "cells": [],
        },
        "InvalidNotebook",
        "nbformat 3 is not supported",
        id="nbformat-3",
    ),
    pytest.param(
        notebook("x = '" + "a" * 5000 + "'"),
        "InvalidNotebook",
        "too large: ",
        id="too-large",
    ),
    pytest.param(
        json.dumps(notebook("x = '" + "a" * 5000 + "'")),
        "InvalidNotebook",
        "too large: ",
        id="too-large-string",
    ),
    pytest.param(
        notebook("1", kernel="nope"),
        "UnknownKernel",
        "unknown kernel 'nope'",
        id="kernel",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("raw", "typename", "message"), BAD_INPUTS)
async def test_bad_input_gets_a_typed_error_and_stores_nothing(
    tmp_path: Path, jupyter_server: Any, raw: Any, typename: str, message: str
) -> None:
    config = make_config(tmp_path, jupyter_server, max_notebook_bytes=4096)
    async with running(config, run_worker=False) as nb:
        payload = await nb.submit(raw)
        assert payload["__typename"] == typename
        assert message in payload["message"]
        if typename == "UnknownKernel":
            assert "python3" in payload["availableKernels"]
        listed = (await nb.execute(LIST))["executions"]["edges"]
        assert listed == []


@pytest.mark.asyncio
@pytest.mark.parametrize("timeout", [0, -1, 1e12])
async def test_bad_timeout_is_refused(
    tmp_path: Path, jupyter_server: Any, timeout: float
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        payload = await nb.submit(notebook("1"), timeoutSeconds=timeout)
        assert payload["__typename"] == "InvalidInput"
        assert payload["field"] == "timeoutSeconds"


@pytest.mark.asyncio
async def test_no_request_ends_in_a_500(tmp_path: Path, jupyter_server: Any) -> None:
    config = make_config(tmp_path, jupyter_server, max_notebook_bytes=1024)
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=30) as http,
    ):
        # A body beyond the request limit is refused before parsing.
        huge = b'{"query": "' + b"a" * (3 * 1024 * 1024) + b'"}'
        response = await http.post(
            "/graphql", content=huge, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        response = await http.post(
            "/graphql", content=b"{", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        response = await http.post("/graphql", json={"query": "{ nope }"})
        assert response.status_code == 200
        assert "Cannot query field 'nope'" in response.text
        response = await http.get("/healthz")
        assert response.json()["status"] == "ok"


@pytest.mark.asyncio
async def test_embedded_restart_requeues_unfinished_executions(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    # First life: accept a submission but run no worker, as if the process
    # died before (or while) running it.
    async with running(config, run_worker=False) as nb:
        submitted = await nb.submit(notebook("print('survived')"))
        mid_run = await nb.submit(notebook("print('ran again')"))
    # The second one was being run, its lease still live, when we "died".
    database = Database.from_url(config.effective_database_url)
    try:
        async with database.transaction() as tx:
            now = datetime.now(UTC)
            assert await tx.claims.claim(
                mid_run["id"],
                now=now,
                lease_until=now + timedelta(hours=1),
                max_attempts=3,
            )
    finally:
        await database.aclose()
    # Second life: the embedded default queues both again at start.
    async with running(config) as nb:
        for execution, text in ((submitted, "survived\n"), (mid_run, "ran again\n")):
            events = await asyncio.wait_for(nb.watch(execution["id"], after=0), 120)
            assert events[-1]["status"] == "SUCCEEDED"
            fetched = await nb.get(execution["id"])
            assert fetched is not None
            assert fetched["notebook"]["cells"][0]["outputs"][0]["text"] == text
        again = await nb.get(mid_run["id"])
        assert again is not None
        assert again["attempts"] == 2


@pytest.mark.asyncio
async def test_only_graphql_transport_ws_is_spoken(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        async with connect(
            nb.ws_url, subprotocols=[Subprotocol("graphql-ws")], open_timeout=30
        ) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4406


@pytest.mark.asyncio
async def test_websockets_are_not_compressed(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """Offered permessage-deflate (as browsers offer it), the server declines.

    Each accepted offer costs the server a zlib compressor and decompressor
    per connection, about 40 KB, to deflate small events (bench/fanout.py).
    """
    config = make_config(tmp_path, jupyter_server)
    async with (
        running(config, run_worker=False) as nb,
        connect(
            nb.ws_url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            compression="deflate",
            open_timeout=30,
        ) as ws,
    ):
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


@pytest.mark.asyncio
async def test_warm_kernels_are_fresh_and_warmed_up(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        warm_kernels={"python3": 1},
        warm_up_code={"python3": "import colorsys\n_warmed = True"},
    )
    source = notebook(
        "import os, sys; leaked = 'mine' in globals(); mine = 1",
        "print(os.getpid(), 'colorsys' in sys.modules, "
        "globals().get('_warmed', False), leaked)",
    )
    async with running(config) as nb:
        seen = []
        for run in range(3):
            submitted = await nb.submit(source)
            events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
            assert events[-1]["status"] == "SUCCEEDED", events[-1]
            fetched = await nb.get(submitted["id"])
            assert fetched is not None
            cells = fetched["notebook"]["cells"]
            assert cells[0]["execution_count"] == 1
            pid, warmed_import, warmed, leaked = cells[1]["outputs"][0]["text"].split()
            assert leaked == "False"
            if run == 0:
                # The worker waited for its pool at start, so the first
                # execution surely got a warmed-up kernel; later ones may
                # race the refill and start cold, by design.
                assert (warmed_import, warmed) == ("True", "True")
            seen.append(pid)
    assert len(set(seen)) == 3, "a kernel served two executions"


def _server_side_nodelay(server_port: int, client: socket.socket) -> int:
    """TCP_NODELAY of this process's accepted end of ``client``'s connection."""
    peer = client.getsockname()
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        with candidate:
            try:
                if (
                    candidate.family in {socket.AF_INET, socket.AF_INET6}
                    and candidate.type == socket.SOCK_STREAM
                    and candidate.getsockname()[1] == server_port
                    and candidate.getpeername() == peer
                ):
                    return candidate.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                continue  # listening or unconnected
    msg = "the server's end of the connection was not found"
    raise AssertionError(msg)


@pytest.mark.asyncio
async def test_served_connections_do_not_wait_for_delayed_acks(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """Accepted connections have Nagle's algorithm off (see listening_socket).

    Without it, a small write following another waits for the client's
    delayed ACK (40 ms), e.g. a subscription's ``complete`` after its last
    ``next``.
    """
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as app:
        port = int(app.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            client = writer.get_extra_info("socket")
            nodelay = await asyncio.to_thread(_server_side_nodelay, port, client)
        finally:
            writer.close()
            await writer.wait_closed()
    assert nodelay == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("freeze", [False, True])
async def test_startup_objects_are_frozen_only_when_asked(
    tmp_path: Path, jupyter_server: Any, freeze: bool
) -> None:
    """`noteburst serve` asks: its full collections then skip start-up's objects."""
    app = create_app(
        make_config(tmp_path, jupyter_server),
        run_worker=False,
        freeze_after_startup=freeze,
    )
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        async with asyncio.timeout(60), app.router.lifespan_context(app):
            assert (gc.get_freeze_count() > 0) is freeze
            spacing = gc.get_threshold()[2]
            assert (spacing == FULL_COLLECTION_SPACING) is freeze
            assert gc.get_threshold()[:2] == thresholds[:2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
