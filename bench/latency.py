"""Latency of one small notebook: Noteburst against a floor, papermill, nbclient.

Run with ``uv run python bench/latency.py [--runs N] [--json PATH]``.

One 5-cell trivial notebook is executed, from submission to terminal
result, through these systems in one run of this script:

``embedded-cold``
    Noteburst's embedded default (SQLite, in-process broker and worker)
    with the kernel pool off (``warm_kernels={}``): a fresh kernel per run.
    Served by ``noteburst serve`` in its own process, as deployed (in this
    one it would share the interpreter lock with the script's client).  Timed
    from the ``submitExecution`` HTTP mutation to the terminal event received
    over the graphql-transport-ws subscription (subscribed with
    ``afterSequence: 0`` right after the submission returns), with the
    project's own :class:`noteburst.client.NoteburstClient`.
``embedded-warm``
    The same with a pool of one warm kernel (``warm_kernels={"python3": 1}``,
    the default).
``postgres-warm``
    The same on PostgreSQL (a throwaway database) and Redis (a unique key
    namespace), with an in-process Dramatiq worker on the Redis broker and
    a pool of one warm kernel.
``postgres-split``
    The deployed shape: the same database and Redis, ``noteburst serve``
    with no worker, and a separate ``noteburst worker`` process (so the
    worker does not share an interpreter lock with the API).
``hub-split``
    The same as ``postgres-split`` (its own throwaway database and Redis
    namespace, ``noteburst serve`` and a ``noteburst worker`` process: the
    production backend is deployed so), but on the JupyterHub lab backend:
    a real JupyterHub with configurable-http-proxy, started here with the
    tests' fixture
    (:class:`tests.support.hub.TestHub`), and one bot identity whose lab the
    worker spawns; kernels are reached through the proxy.  It uses the
    configuration's ``warm_kernels`` like the others, so it has a warm pool
    exactly when the hub backend has one.  Its lab is found through the hub
    API (the user's server URL), and runs are settled on that lab's kernel
    list (see :func:`hub_settler`).  ``--skip-hub`` leaves it out.
``*-status`` (``embedded-warm-status``, ``postgres-warm-status``, …)
    The same instance as the variant it is named after, in the same phase
    with runs interleaved, but the client subscribes as a dashboard that
    waits for a result would: ``kinds: [QUEUED, RUNNING, LAB_STARTING]``,
    so it receives the status changes and the terminal event, without the
    ~12 cell events the other variant is sent at the end of each run.
``floor``
    No Noteburst: the 5 cells sent down the websocket of one warm kernel
    (started once, reused for every run) with
    :func:`noteburst.jupyter.execute.execute_notebook`, i.e. what executing
    the notebook on an already started kernel costs at the least.
``papermill``
    ``papermill in.ipynb out.ipynb`` as a subprocess: a cold process and a
    cold kernel per run.
``nbclient``
    ``nbclient.NotebookClient(nb, kernel_name="python3").execute()`` in this
    (warm) process, on a worker thread: a fresh kernel per run, shut down
    before ``execute`` returns.

Every Noteburst instance and the floor kernel use one jupyter_server started
here with :class:`noteburst.jupyter.local.LocalJupyterServer` (what the
embedded default would start itself), so the script can wait, outside the
timed window, until the kernels Noteburst shuts down and starts in the
background have settled: for the cold variant until no kernel is left, for
the warm variants until the pool has refilled (exactly the pool size of
kernels, all idle, the used one gone).

The systems are measured in phases, one per Noteburst instance (only one
Dramatiq worker may run per process).  In each phase the Noteburst variant,
the floor (warm phases), papermill and nbclient are interleaved round by
round (the order rotates), after one warm-up run of each system.  Papermill
and nbclient are slow (~3 s and ~1 s a run), so they get fewer runs
(``--baseline-runs`` in all, spread over the phases), and every ratio is
taken against the medians pooled over all phases.

Everything started here is stopped, and the database and Redis keys are
removed, also on error or Ctrl-C.  Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nbformat
import redis.asyncio as aioredis
from gql import Client
from gql.graphql_request import GraphQLRequest
from gql.transport.websockets import WebsocketsTransport
from nbclient import NotebookClient
from pydantic import SecretStr

from noteburst.client import NoteburstClient
from noteburst.config import Config
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.rest import JupyterRestClient
from noteburst.logs import configure_logging
from noteburst.storage.database import Database
from tests.support.hub import HubInfo, TestHub
from tests.support.waiting import free_port

CELLS = (
    "x = 1",
    "print('hello', x)",
    "x + 1",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))",
    "import sys; sys.version_info[:2]",
)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})

LABELS = {
    "embedded-cold": "noteburst embedded, no pool (fresh kernel)",
    "embedded-warm": "noteburst embedded, pool of 1",
    "postgres-warm": "noteburst postgres + redis, pool of 1",
    "postgres-split": "noteburst postgres + redis, worker process apart",
    "hub-split": "noteburst postgres + redis + JupyterHub lab, worker apart",
    "embedded-warm-status": "  the same, watching status events only",
    "postgres-warm-status": "  postgres-warm, watching status events only",
    "postgres-split-status": "  postgres-split, watching status events only",
    "hub-split-status": "  hub-split, watching status events only",
    "floor": "floor: 5 cells on one warm kernel, no Noteburst",
    "papermill": "papermill CLI (cold process + kernel)",
    "nbclient": "nbclient in-process (fresh kernel)",
}
NOTEBURST = (
    "embedded-cold",
    "embedded-warm",
    "postgres-warm",
    "postgres-split",
    "hub-split",
    "embedded-warm-status",
    "postgres-warm-status",
    "postgres-split-status",
    "hub-split-status",
)
WARM = tuple(name for name in NOTEBURST if name != "embedded-cold")
STATUS_KINDS = ("QUEUED", "RUNNING", "LAB_STARTING")
"""What a ``*-status`` variant subscribes to (the terminal event always comes)."""
POOL_SIZE = 1

# Goals being tracked (printed, never asserted).
GOAL_FLOOR_RATIO = 2.0  # warm p50 within 2x the floor p50
GOAL_NBCLIENT_SPEEDUP = 15.0  # warm p50 at least 15x faster than nbclient

# Cumulative milestones of one Noteburst run, seconds after the submission
# started.  "submit", "subscribed", "total" and "settled" (polled every
# 20 ms after the timed window) are measured by the client; the others are
# the server's createdAt of the matching event (same host, same clock).
MILESTONES = (
    ("submit", "submitExecution round trip returned"),
    ("queued", "QUEUED stored (validated, committed)"),
    ("subscribed", "first event received (subscription up)"),
    ("running", "RUNNING stored (claimed by the worker)"),
    ("first_cell", "first CELL_STARTED stored (kernel ready)"),
    ("last_cell", "last CELL_FINISHED stored"),
    ("finished", "FINISHED stored (result written)"),
    ("total", "terminal event received by the client"),
    ("settled", "kernel gone / pool refilled (background)"),
)

# (label, from, to); "start" is the submission's start (0).
SEGMENTS = (
    ("submit → stored", "start", "queued"),
    ("queue → claim", "queued", "running"),
    ("kernel ready (start, or take from pool)", "running", "first_cell"),
    ("5 cells", "first_cell", "last_cell"),
    ("store result", "last_cell", "finished"),
    ("push to subscriber", "finished", "total"),
    ("shutdown / refill, off the response path", "total", "settled"),
)

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SETTLE_SECONDS = 15.0
SERVE_START_SECONDS = 120.0
"""How long a started ``noteburst serve`` may take to answer ``/healthz``."""
QUIET_SECONDS = 0.2
"""How long a local pool's kernels must show no activity to count as settled."""
HUB_STEADY_SECONDS = 1.5
"""How long a hub lab's kernel list must stay the same to count as steady."""


class BenchError(Exception):
    """A run did not produce the expected notebook."""


@dataclass
class Sample:
    """One timed run."""

    seconds: float
    phase: str
    breakdown: dict[str, float] | None = None
    cells_span: float | None = None


@dataclass
class Results:
    """Every sample, by system."""

    samples: dict[str, list[Sample]] = field(
        default_factory=lambda: {name: [] for name in LABELS}
    )
    service_warnings: list[str] = field(default_factory=list)
    """Warning lines the Noteburst processes logged (slow commits, slow sends)."""

    def seconds(self, system: str, phase: str | None = None) -> list[float]:
        return [
            s.seconds for s in self.samples[system] if phase is None or s.phase == phase
        ]


Measure = Callable[[str, bool], Awaitable[Sample]]
Settle = Callable[[], Awaitable[None]]


# -- the notebook and checks ---------------------------------------------------


def make_notebook() -> nbformat.NotebookNode:
    notebook: nbformat.NotebookNode = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def check_outputs(notebook: Any, system: str) -> None:
    """Check that a system really ran the notebook (done on warm-up runs)."""
    cells = notebook["cells"]
    try:
        outputs = [cell.get("outputs", []) for cell in cells]
        ok = (
            len(cells) == len(CELLS)
            and not outputs[0]
            # A stream may arrive in pieces (ipykernel's flush timer fired
            # between two writes of one print): what a reader sees is the
            # pieces joined.
            and "hello 1" in "".join(_text(o.get("text", "")) for o in outputs[1])
            and _text(outputs[2][0]["data"]["text/plain"]) == "2"
            and outputs[3][0]["output_type"] == "display_data"
            and "<b>hi</b>" in _text(outputs[3][0]["data"]["text/html"])
            and _text(outputs[4][0]["data"]["text/plain"]).startswith("(3, ")
        )
    except (KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"{system}: unexpected outputs ({exc!r})") from exc
    if not ok:
        raise BenchError(f"{system}: unexpected outputs: {outputs}")


def cells_span(notebook: Any) -> float | None:
    """Seconds from the first cell's execute_input to the last cell's reply.

    Read from the ``metadata.execution`` timestamps (kernel clock) that
    nbclient, papermill and Noteburst all record: the time spent running the
    cells, with each system's own work between cells but without kernel
    start and shutdown.
    """
    try:
        first = notebook["cells"][0]["metadata"]["execution"]["iopub.execute_input"]
        last = notebook["cells"][-1]["metadata"]["execution"]["shell.execute_reply"]
    except (KeyError, IndexError, TypeError):
        return None
    return _parse_time(last) - _parse_time(first)


def _parse_time(value: str) -> float:
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


# -- Noteburst -----------------------------------------------------------------


def _stamp(event: dict[str, Any], t0_wall: float) -> float:
    return _parse_time(event["createdAt"]) - t0_wall


@dataclass
class Watched:
    """One submission followed to its end (times after ``t0``, perf_counter)."""

    execution_id: str
    t0: float
    t0_wall: float
    submit: float
    first: float | None = None
    total: float | None = None
    terminal: dict[str, Any] | None = None

    def succeeded(self, system: str) -> tuple[float, float]:
        """Seconds to the first and the terminal event; raise unless SUCCEEDED."""
        if self.terminal is None or self.total is None or self.first is None:
            raise BenchError(
                f"{system}: the subscription ended without a terminal event"
            )
        if self.terminal["status"] != "SUCCEEDED":
            raise BenchError(f"{system}: execution ended {self.terminal['execution']}")
        return self.first, self.total


async def submit_and_watch(
    client: NoteburstClient,
    notebook: dict[str, Any],
    kinds: tuple[str, ...] | None = None,
) -> Watched:
    """Submit, subscribe (to ``kinds``), and time until the terminal event."""
    t0_wall = time.time()
    t0 = time.perf_counter()
    execution = await client.submit(notebook, timeout_seconds=60)
    watched = Watched(execution["id"], t0, t0_wall, time.perf_counter() - t0)
    async for event in client.watch(execution["id"], after_sequence=0, kinds=kinds):
        now = time.perf_counter() - t0
        if watched.first is None:
            watched.first = now
        if event["status"] in TERMINAL and watched.terminal is None:
            watched.total, watched.terminal = now, event
    return watched


async def noteburst_once(
    client: NoteburstClient,
    url: str,
    notebook: dict[str, Any],
    settle: Settle,
    *,
    check: bool,
    system: str,
    kinds: tuple[str, ...] | None = None,
) -> tuple[float, dict[str, float], float | None]:
    """Submit, subscribe (to ``kinds``), and time until the terminal event."""
    watched = await submit_and_watch(client, notebook, kinds)
    t0_wall, t0 = watched.t0_wall, watched.t0
    # Everything below is outside the timed window.  First wait until the
    # kernels shut down or started in the background have settled, so that
    # this work does not run into the next measurement.
    await settle()
    t_settled = time.perf_counter() - t0
    t_first, t_total = watched.succeeded(system)
    result = await client.result_notebook(watched.execution_id)
    if check:
        check_outputs(result, system)
    events = await replay_events(url, watched.execution_id)

    def first(kind: str) -> dict[str, Any]:
        return next(e for e in events if e["kind"] == kind)

    def last(kind: str) -> dict[str, Any]:
        return next(e for e in reversed(events) if e["kind"] == kind)

    breakdown = {
        "submit": watched.submit,
        "subscribed": t_first,
        "queued": _stamp(first("QUEUED"), t0_wall),
        "running": _stamp(first("RUNNING"), t0_wall),
        "first_cell": _stamp(first("CELL_STARTED"), t0_wall),
        "last_cell": _stamp(last("CELL_FINISHED"), t0_wall),
        "finished": _stamp(last("FINISHED"), t0_wall),
        "total": t_total,
        "settled": t_settled,
    }
    return t_total, breakdown, cells_span(result)


REPLAY = """
subscription Replay($id: ID!) {
  executionStatus(id: $id, afterSequence: 0) { sequence kind status createdAt }
}
"""


async def replay_events(url: str, execution_id: str) -> list[dict[str, Any]]:
    """Read an execution's stored events with their timestamps (untimed).

    The timed path uses the project's client unchanged; this second,
    diagnostic subscription replays the stored events with ``createdAt``,
    using ``gql`` as the tests do.
    """
    transport = WebsocketsTransport(
        url="ws" + url.removeprefix("http") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        connect_timeout=30,
        ack_timeout=30,
    )
    events: list[dict[str, Any]] = []
    async with Client(transport=transport, execute_timeout=60) as session:
        request = GraphQLRequest(REPLAY, variable_values={"id": execution_id})
        async for result in session.subscribe(request):
            events.append(result["executionStatus"])
    return events


async def wait_for_kernels(
    http: httpx.AsyncClient,
    jupyter: LocalJupyterServer,
    count: int,
    ignore: frozenset[str],
    gone: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """Wait until the server lists ``count`` kernels, all idle (untimed).

    Kernels in ``ignore`` (the floor's) are left out.  ``count=0``: every
    kernel Noteburst started is shut down.  ``count`` = the pool size: the
    used kernel is gone and its replacement has started and gone idle; the
    kernels in ``gone`` (the pool before the run) must no longer be listed,
    as the pool now starts the replacement only once the used kernel is
    retired, so for a moment the list holds just the used kernel, idle.
    Returns the ids listed at the end.

    A replacement is listed idle before the pool has it ready (its
    websocket, ``kernel_info`` and warm-up follow), and a run that started
    then would find the pool empty and start a kernel itself.  So the
    kernels must also have a websocket open (the pool's) and no activity
    for :data:`QUIET_SECONDS`: the pool's steps follow each other within
    milliseconds.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    headers = {"Authorization": f"token {jupyter.token}"}
    kernels: list[dict[str, Any]] = []
    quiet_since: tuple[Activity, float] | None = None
    while time.monotonic() < deadline:
        response = await http.get(
            jupyter.url + "api/kernels", headers=headers, timeout=5
        )
        if response.status_code == httpx.codes.INTERNAL_SERVER_ERROR:
            # jupyter_server fails the listing while a kernel in it is
            # being deleted; that is "not settled yet".
            await asyncio.sleep(0.02)
            continue
        response.raise_for_status()
        kernels = [k for k in response.json() if k.get("id") not in ignore]
        ids = frozenset(str(k.get("id")) for k in kernels)
        activity = _activity(kernels)
        if (
            len(kernels) == count
            and not ids & gone
            and all(k.get("execution_state") == "idle" for k in kernels)
            and _connected(kernels)
        ):
            now = time.monotonic()
            if quiet_since is None or quiet_since[0] != activity:
                quiet_since = (activity, now)
            elif now - quiet_since[1] >= QUIET_SECONDS:
                return ids
        else:
            quiet_since = None
        await asyncio.sleep(0.02)
    states = [k.get("execution_state") for k in kernels]
    print(
        f"  (warning: expected {count} idle kernel(s) after {SETTLE_SECONDS:g} s, "
        f"found {states})",
        file=sys.stderr,
    )
    return frozenset(str(k.get("id")) for k in kernels)


Activity = tuple[tuple[str, str], ...]
"""Each listed kernel's id and last activity: unchanged while nothing happens."""


def _activity(kernels: list[dict[str, Any]]) -> Activity:
    return tuple(
        sorted((str(k.get("id")), str(k.get("last_activity"))) for k in kernels)
    )


def _connected(kernels: list[dict[str, Any]]) -> bool:
    """Whether every kernel has a websocket open (a pooled one has the pool's)."""
    return all(k.get("connections", 0) >= 1 for k in kernels)


async def lab_kernels(
    http: httpx.AsyncClient, hub: HubInfo, user: str
) -> list[dict[str, Any]] | None:
    """The kernels of ``user``'s lab, or `None` while it has no ready lab.

    The lab's path comes from the hub's user model (usernames are escaped
    in routes), and the service token works on the lab too.
    """
    response = await http.get(
        f"{hub.hub_url}hub/api/users/{user}", headers=hub.auth_headers
    )
    if not response.is_success:
        return None
    server = (response.json().get("servers") or {}).get("")
    if not server or not server.get("ready") or not server.get("url"):
        return None
    lab = hub.proxy_url.rstrip("/") + server["url"]
    response = await http.get(lab + "api/kernels", headers=hub.auth_headers)
    if not response.is_success:  # a kernel being deleted, a lab going away
        return None
    kernels: list[dict[str, Any]] = response.json()
    return kernels


def hub_settler(http: httpx.AsyncClient, hub: HubInfo, user: str) -> Settle:
    """Wait until the hub lab's kernels have settled after a run (untimed).

    The bench cannot see whether the hub backend keeps a pool, so the
    first call (after the warm-up run) learns the steady state: the lab's
    kernel list unchanged and idle for :data:`HUB_STEADY_SECONDS` (no
    kernel without a pool, the pool's otherwise).  Later calls wait for
    that many idle kernels, none of them listed at the previous call (with
    a pool of one, each run uses the pooled kernel).
    """
    expected: int | None = None
    previous: frozenset[str] = frozenset()

    async def settle() -> None:
        nonlocal expected, previous
        deadline = time.monotonic() + SETTLE_SECONDS
        steady: tuple[frozenset[str], float] | None = None
        quiet: tuple[Activity, float] | None = None
        while time.monotonic() < deadline:
            kernels = await lab_kernels(http, hub, user)
            if kernels is not None:
                ids = frozenset(str(k.get("id")) for k in kernels)
                idle = all(k.get("execution_state") == "idle" for k in kernels)
                now = time.monotonic()
                if expected is None:
                    if not idle or steady is None or steady[0] != ids:
                        steady = (ids, now) if idle else None
                    elif now - steady[1] >= HUB_STEADY_SECONDS:
                        expected, previous = len(ids), ids
                        return
                elif (
                    idle
                    and len(ids) == expected
                    and not ids & previous
                    and _connected(kernels)
                ):
                    # Quiet too, as in wait_for_kernels: listed idle comes
                    # before the pool has the kernel ready.
                    activity = _activity(kernels)
                    if quiet is None or quiet[0] != activity:
                        quiet = (activity, now)
                    elif now - quiet[1] >= QUIET_SECONDS:
                        previous = ids
                        return
                else:
                    quiet = None
            await asyncio.sleep(0.02)
        print(
            f"  (warning: the hub lab of {user} did not settle after "
            f"{SETTLE_SECONDS:g} s)",
            file=sys.stderr,
        )

    return settle


@contextlib.asynccontextmanager
async def noteburst_service(
    config: Config, *, run_worker: bool, log_path: Path
) -> AsyncIterator[str]:
    """Run ``noteburst serve`` configured like ``config``; yield its base URL.

    The server runs in its own process, as it is deployed, not in this one:
    here it would share the interpreter lock with this script's client
    (the submit request, the websocket's decoding), charging the client's
    CPU to the server.  A dashboard backend is another process too.
    """
    port = free_port()
    mode = "--with-worker" if run_worker else "--without-worker"
    async with _noteburst_process(
        config, ["serve", "--port", str(port), mode], log_path
    ) as process:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_SECONDS
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                if process.returncode is not None:
                    raise BenchError(f"Noteburst failed to start:\n{_tail(log_path)}")
                try:
                    response = await http.get(url + "/healthz")
                except httpx.TransportError:
                    response = None
                if response is not None and response.is_success:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"Noteburst did not answer within {SERVE_START_SECONDS:g} s"
                    )
                await asyncio.sleep(0.05)
        yield url


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-2000:]


def config_environment(config: Config) -> dict[str, str]:
    """``NOTEBURST_*`` variables that configure another process like ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBURST_")}
    return env | config.environment()


@contextlib.asynccontextmanager
async def worker_process(config: Config, log_path: Path) -> AsyncIterator[None]:
    """Run ``noteburst worker`` configured like ``config``; stop it after."""
    async with _noteburst_process(config, ["worker"], log_path):
        yield


@contextlib.asynccontextmanager
async def _noteburst_process(
    config: Config, arguments: list[str], log_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``noteburst ARGUMENTS`` configured like ``config``; stop it after."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "noteburst.cli",
            *arguments,
            env=config_environment(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            yield process
            if process.returncode is not None:
                raise BenchError(f"noteburst {arguments[0]} exited:\n{_tail(log_path)}")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    await _stop_group(process)


def noteburst_measure(
    url: str,
    notebook: dict[str, Any],
    settle: Settle,
    system: str,
    kinds: tuple[str, ...] | None = None,
) -> Measure:
    # One client for every run, as a dashboard backend keeps one (its
    # HTTP connection is reused; each run opens its own subscription).
    client = NoteburstClient(url, timeout=60)

    async def measure(phase: str, check: bool) -> Sample:
        seconds, breakdown, span = await noteburst_once(
            client, url, notebook, settle, check=check, system=system, kinds=kinds
        )
        return Sample(seconds, phase, breakdown, span)

    return measure


def warm_variants(
    url: str,
    notebook: dict[str, Any],
    settle: Settle,
    name: str,
    runs: int,
) -> dict[str, tuple[Measure, int]]:
    """``name`` (every event) and ``name-status``, each with ``runs`` runs."""
    return {
        name: (noteburst_measure(url, notebook, settle, name), runs),
        f"{name}-status": (
            noteburst_measure(
                url, notebook, settle, f"{name}-status", kinds=STATUS_KINDS
            ),
            runs,
        ),
    }


def settler(
    http: httpx.AsyncClient,
    jupyter: LocalJupyterServer,
    count: int,
    ignore: frozenset[str],
) -> Settle:
    """Wait for ``count`` idle kernels, none of those seen at the last call.

    With a pool of one, each run uses the pooled kernel listed at the end
    of the previous settle; call it once before a phase to prime it.  The
    client ``http`` is shared: building one per call cost ~0.1 s of CPU
    (its TLS context), right while the pool's replacement kernel started.
    """
    previous: frozenset[str] = frozenset()

    async def settle() -> None:
        nonlocal previous
        previous = await wait_for_kernels(http, jupyter, count, ignore, previous)

    return settle


# -- the floor -----------------------------------------------------------------


def floor_measure(conn: KernelConnection) -> Measure:
    """The 5 cells on one warm kernel's websocket, nothing around them."""
    template = make_notebook()

    async def measure(phase: str, check: bool) -> Sample:
        notebook = copy.deepcopy(template)
        t0 = time.perf_counter()
        failure = await execute_notebook(conn, notebook)
        seconds = time.perf_counter() - t0
        if failure is not None:
            raise BenchError(f"floor: a cell failed: {failure}")
        if check:
            check_outputs(notebook, "floor")
        return Sample(seconds, phase, cells_span=cells_span(notebook))

    return measure


# -- baselines -----------------------------------------------------------------


def _papermill_path() -> str:
    candidate = Path(sys.executable).parent / "papermill"
    if not candidate.exists():
        raise BenchError(f"papermill not found beside {sys.executable}")
    return str(candidate)


def papermill_measure(workdir: Path) -> Measure:
    executable = _papermill_path()
    source = workdir / "in.ipynb"
    nbformat.write(make_notebook(), source)
    counter = 0

    async def measure(phase: str, check: bool) -> Sample:
        nonlocal counter
        counter += 1
        out = workdir / f"out-{counter}.ipynb"
        # One log per run: bench/load.py runs several at once.
        log = workdir / f"papermill-{counter}.log"
        with log.open("wb") as log_file:
            t0 = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                executable,
                str(source),
                str(out),
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # we stop it (and its kernel) ourselves
            )
            try:
                code = await process.wait()
                seconds = time.perf_counter() - t0
            finally:
                if process.returncode is None:
                    await _stop_group(process)
        if code != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"papermill exited {code}:\n{tail}")
        executed = nbformat.read(out, as_version=4)
        if check:
            check_outputs(executed, "papermill")
        out.unlink()
        return Sample(seconds, phase, cells_span=cells_span(executed))

    return measure


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), timeout=5)
        except TimeoutError:
            continue
        else:
            return


def _nbclient_run() -> tuple[float, nbformat.NotebookNode]:
    notebook = make_notebook()
    t0 = time.perf_counter()
    # stderr=DEVNULL only silences the kernel's start-up warnings, which
    # papermill's and the jupyter_server's kernels write to their logs.
    NotebookClient(notebook, kernel_name="python3", timeout=60).execute(
        stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t0, notebook


def nbclient_measure() -> Measure:
    async def measure(phase: str, check: bool) -> Sample:
        # On a worker thread: nbclient installs SIGINT handlers on the main
        # thread's loop otherwise, and would take Ctrl-C away from us.
        seconds, notebook = await asyncio.to_thread(_nbclient_run)
        if check:
            check_outputs(notebook, "nbclient")
        return Sample(seconds, phase, cells_span=cells_span(notebook))

    return measure


# -- phases --------------------------------------------------------------------


async def run_phase(
    phase: str,
    systems: dict[str, tuple[Measure, int]],
    results: Results,
    warmed: set[str],
) -> None:
    """Interleave the systems round by round, each for its number of runs.

    A system with fewer runs than the phase has rounds runs in evenly
    spread rounds.  Each system gets one checked warm-up run, the first
    time it appears.
    """
    names = [name for name, (_, runs) in systems.items() if runs > 0]
    fresh = [name for name in names if name not in warmed]
    if fresh:
        print(f"[{phase}] warm-up: {', '.join(fresh)}", flush=True)
    for name in fresh:
        await systems[name][0](phase, True)
        warmed.add(name)
    rounds = max(systems[name][1] for name in names)
    for i in range(rounds):
        due = [
            name
            for name in names
            if (i + 1) * systems[name][1] // rounds > i * systems[name][1] // rounds
        ]
        shift = i % len(due)
        line = []
        for name in due[shift:] + due[:shift]:
            sample = await systems[name][0](phase, False)
            results.samples[name].append(sample)
            line.append(f"{name} {sample.seconds:.3f}")
        print(f"[{phase}] run {i + 1}/{rounds}: " + ", ".join(line), flush=True)


def spread(total: int, parts: int) -> list[int]:
    """Split ``total`` runs over ``parts`` phases as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.asynccontextmanager
async def postgres_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create a throwaway database; yield its SQLAlchemy URL; drop it."""
    name = f"nbbench_{secrets.token_hex(6)}"

    async def execute(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await connection.execute(sql, timeout=30)
        finally:
            await connection.close(timeout=10)

    await execute(f'CREATE DATABASE "{name}"')
    try:
        base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "", 1)
        yield f"postgresql+asyncpg://{base}/{name}"
    finally:
        await execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def redis_namespace(redis_url: str) -> AsyncIterator[str]:
    """Yield a unique Dramatiq namespace; delete its keys afterwards."""
    namespace = f"nbbench-{secrets.token_hex(6)}"
    try:
        yield namespace
    finally:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            keys = [k async for k in client.scan_iter(match=f"{namespace}*")]
            if keys:
                await client.delete(*keys)
        except aioredis.RedisError as exc:
            # Do not hide the error that brought us here (e.g. no Redis).
            print(f"could not delete Redis keys {namespace}*: {exc}", file=sys.stderr)
        finally:
            await client.aclose()


async def migrate(url: str) -> None:
    database = Database.from_url(url)
    try:
        await database.upgrade()
    finally:
        await database.aclose()


# -- report --------------------------------------------------------------------


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _faster(system_p50: float, baseline_p50: float, baseline: str) -> str:
    if system_p50 <= baseline_p50:
        return f"{baseline_p50 / system_p50:.1f}x faster than {baseline}"
    return f"{system_p50 / baseline_p50:.1f}x slower than {baseline}"


def _median_of(results: Results, name: str) -> float | None:
    values = results.seconds(name)
    return statistics.median(values) if values else None


def report(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    print()
    print(f"{'system':<50} {'n':>4} {'p50':>8} {'p95':>8} {'min':>8}")
    for name, label in LABELS.items():
        values = results.seconds(name)
        if not values:
            continue
        row = {
            "n": len(values),
            "p50": statistics.median(values),
            "p95": p95(values),
            "min": min(values),
        }
        summary[name] = row
        print(
            f"{label:<50} {row['n']:>4} {row['p50']:>7.3f}s "
            f"{row['p95']:>7.3f}s {row['min']:>7.3f}s"
        )
    print(
        f"(papermill and nbclient: {args.baseline_runs} timed runs each in all,"
        "\n fewer than the others as each costs seconds, interleaved with the"
        "\n others and spread over the phases; the floor runs in the warm phases;"
        "\n every ratio below is against medians pooled over all phases)"
    )

    ratios = report_ratios(results)
    breakdown = report_breakdown(results)
    client_setup = http_client_setup_seconds()
    print(
        f"\n(Each variant reuses one NoteburstClient, as a dashboard backend"
        f"\n would; building an httpx.AsyncClient costs {1000 * client_setup:.0f} ms"
        "\n here (median of 5), which a client made per request would add.)"
    )

    print(
        "\nThe 5 cells alone (first execute_input → last execute_reply, from the"
        "\nexecuted notebook's metadata.execution; median, milliseconds):"
    )
    spans: dict[str, float] = {}
    for name in LABELS:
        values = [s.cells_span for s in results.samples[name] if s.cells_span]
        if values:
            spans[name] = statistics.median(values)
    print("  " + ", ".join(f"{name} {1000 * v:.0f} ms" for name, v in spans.items()))
    warnings = results.service_warnings
    print(f"\nWarnings the Noteburst processes logged: {len(warnings)}")
    for line in warnings[:30]:
        print(f"  {line}")
    if len(warnings) > 30:
        print(f"  … and {len(warnings) - 30} more (all in the JSON output)")
    return {
        "runs": args.runs,
        "cold_runs": args.cold_runs,
        "baseline_runs": args.baseline_runs,
        "summary": summary,
        "ratios": ratios,
        "breakdown": breakdown,
        "cells_span_median": spans,
        "client_http_setup_median": client_setup,
        "service_warnings": warnings,
    }


def service_warnings(folder: Path) -> list[str]:
    """The warning and error lines in the Noteburst processes' logs.

    A stall the service saw (``Slow database commit``, ``Slow queue send``)
    then stands beside the runs it slowed down.
    """
    lines = []
    for log in sorted(folder.rglob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "[warning" in line or "[error" in line:
                lines.append(f"{log.stem}: {line.strip()}")
    return lines


def http_client_setup_seconds() -> float:
    """Median time to build an ``httpx.AsyncClient`` (untimed diagnostic)."""
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        httpx.AsyncClient()  # nothing to close: no connection is made
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _goal(name: str, met: bool, text: str) -> str:
    if name not in WARM:
        return ""
    return f" [goal {text}: {'met' if met else 'NOT met'}]"


def report_ratios(results: Results) -> dict[str, Any]:
    floor = _median_of(results, "floor")
    nbc = _median_of(results, "nbclient")
    paper = _median_of(results, "papermill")
    print(
        f"\nRatios (p50s) — goals for the warm variants: p50 within "
        f"{GOAL_FLOOR_RATIO:g}x the floor, ≥ {GOAL_NBCLIENT_SPEEDUP:g}x faster "
        "than nbclient in-process:"
    )
    ratios: dict[str, Any] = {}
    for name in NOTEBURST:
        median = _median_of(results, name)
        if median is None:
            continue
        entry: dict[str, Any] = {"p50": median}
        parts = [f"{median * 1000:.0f} ms p50"]
        if floor is not None:
            met = median / floor <= GOAL_FLOOR_RATIO
            entry["times_floor"] = median / floor
            goal = _goal(name, met, f"≤ {GOAL_FLOOR_RATIO:g}x")
            parts.append(f"{median / floor:.1f}x the floor{goal}")
        if nbc is not None:
            met = nbc / median >= GOAL_NBCLIENT_SPEEDUP
            entry["speedup_vs_nbclient"] = nbc / median
            goal = _goal(name, met, f"≥ {GOAL_NBCLIENT_SPEEDUP:g}x")
            parts.append(_faster(median, nbc, "nbclient in-process") + goal)
        if paper is not None:
            entry["speedup_vs_papermill"] = paper / median
            parts.append(_faster(median, paper, "papermill CLI"))
        ratios[name] = entry
        print(f"  {name}: " + "; ".join(parts))
    if floor is not None:
        print(f"  (floor p50 {floor * 1000:.0f} ms", end="")
        if nbc is not None:
            print(f", nbclient p50 {nbc * 1000:.0f} ms", end="")
        if paper is not None:
            print(f", papermill p50 {paper * 1000:.0f} ms", end="")
        print(")")
    return ratios


def report_breakdown(results: Results) -> dict[str, Any]:
    variants = [name for name in NOTEBURST if results.samples[name]]
    print("\nWhere Noteburst's time goes (medians, seconds after the submission):")
    breakdown: dict[str, Any] = {}
    header = "".join(f"{name:>15}" for name in variants)
    print(f"  {'milestone':<44}{header}")
    for key, text in MILESTONES:
        cells = []
        for name in variants:
            values = [s.breakdown[key] for s in results.samples[name] if s.breakdown]
            value = statistics.median(values)
            breakdown.setdefault(name, {})[key] = value
            cells.append(f"{value:>14.3f}s")
        print(f"  {text:<44}{''.join(cells)}")
    print(f"  {'segment (median of per-run differences)':<44}{header}")
    for text, start, end in SEGMENTS:
        cells = []
        for name in variants:
            values = [
                s.breakdown[end] - s.breakdown.get(start, 0.0)
                for s in results.samples[name]
                if s.breakdown
            ]
            value = statistics.median(values)
            breakdown.setdefault(name, {})[f"segment {text}"] = value
            cells.append(f"{value:>14.3f}s")
        print(f"  {text:<44}{''.join(cells)}")
    return breakdown


# -- main ----------------------------------------------------------------------


@dataclass
class Run:
    """What the phases share: options, cleanup, and the baselines' shares."""

    args: argparse.Namespace
    stack: contextlib.AsyncExitStack
    http: httpx.AsyncClient
    tmp: Path
    results: Results
    notebook: dict[str, Any]
    common: dict[str, Any]
    baselines: dict[str, Measure]
    baseline_share: Iterator[int]
    warmed: set[str] = field(default_factory=set)

    def with_baselines(
        self, systems: dict[str, tuple[Measure, int]]
    ) -> dict[str, tuple[Measure, int]]:
        """Add papermill and nbclient with this phase's share of their runs."""
        share = next(self.baseline_share)
        return systems | {name: (m, share) for name, m in self.baselines.items()}

    async def phase(self, name: str, systems: dict[str, tuple[Measure, int]]) -> None:
        await run_phase(name, self.with_baselines(systems), self.results, self.warmed)

    async def service_storage(self) -> dict[str, Any]:
        """A throwaway PostgreSQL database and Redis namespace, as Config fields."""
        args = self.args
        url = await self.stack.enter_async_context(postgres_database(args.postgres))
        namespace = await self.stack.enter_async_context(redis_namespace(args.redis))
        await migrate(url)
        return {
            "database_url": url,
            "redis_url": args.redis,
            "redis_namespace": namespace,
        }


def hermetic_jupyter_dirs(home: Path) -> None:
    """Point this process's Jupyter/IPython user dirs into ``home``.

    For nbclient and papermill, and every process started after (the
    local jupyter_server sets its own); kernelspecs in the venv stay.
    """
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ):
        (home / sub).mkdir(parents=True)
        os.environ[var] = str(home / sub)


async def measure_all(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, results: Results
) -> None:
    """Start everything (registering its cleanup on ``stack``) and measure."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nbbench-")))
    # Runs before the folder goes: the processes' logs are in it.
    stack.callback(lambda: results.service_warnings.extend(service_warnings(tmp)))
    hermetic_jupyter_dirs(tmp / "home")
    (tmp / "papermill").mkdir()

    print("starting jupyter_server…", flush=True)
    jupyter = LocalJupyterServer(root_dir=tmp / "jupyter", start_timeout=60)
    stack.push_async_callback(jupyter.stop)
    await jupyter.start()

    # The floor's kernel: started once, reused by every floor run, and left
    # out of the kernel counts that decide when Noteburst has settled.
    http = await stack.enter_async_context(httpx.AsyncClient())
    rest = JupyterRestClient(
        http=http, base_url=jupyter.url, token=jupyter.token, timeout=30
    )
    floor_kernel = await rest.create_kernel("python3")
    stack.push_async_callback(rest.delete_kernel, floor_kernel)
    conn = await KernelConnection.open(rest, floor_kernel)
    stack.push_async_callback(conn.aclose)
    ignore = frozenset({floor_kernel})
    no_kernels = settler(http, jupyter, 0, ignore)
    floor = floor_measure(conn)

    phases = 2 + 2 * (not args.skip_postgres) + (not args.skip_hub)
    run = Run(
        args=args,
        stack=stack,
        http=http,
        tmp=tmp,
        results=results,
        notebook=json.loads(nbformat.writes(make_notebook())),
        common={
            "jupyter_url": jupyter.url,
            "jupyter_token": SecretStr(jupyter.token),
            "log_level": "WARNING",
        },
        baselines={
            "papermill": papermill_measure(tmp / "papermill"),
            "nbclient": nbclient_measure(),
        },
        baseline_share=iter(spread(args.baseline_runs, phases)),
    )

    # Phase 1: the embedded default without a pool (a fresh kernel per run).
    cold = Config(
        data_dir=tmp / "embedded-cold",
        database_url=None,
        redis_url=None,
        warm_kernels={},
        **run.common,
    )
    async with noteburst_service(
        cold, run_worker=True, log_path=tmp / "embedded-cold.log"
    ) as url:
        measure = noteburst_measure(url, run.notebook, no_kernels, "embedded-cold")
        await run.phase("embedded-cold", {"embedded-cold": (measure, args.cold_runs)})
    await no_kernels()

    # Phase 2: the embedded default with a pool of one warm kernel.
    warm = Config(
        data_dir=tmp / "embedded-warm",
        database_url=None,
        redis_url=None,
        warm_kernels={"python3": POOL_SIZE},
        **run.common,
    )
    async with noteburst_service(
        warm, run_worker=True, log_path=tmp / "embedded-warm.log"
    ) as url:
        pool_full = settler(http, jupyter, POOL_SIZE, ignore)
        await pool_full()
        systems = warm_variants(
            url, run.notebook, pool_full, "embedded-warm", args.runs
        )
        await run.phase(
            "embedded-warm",
            systems | {"floor": (floor, args.runs)},
        )
    await no_kernels()

    # Phase 3: PostgreSQL + Redis, worker in-process on the Redis broker.
    if not args.skip_postgres:
        service = Config(
            data_dir=tmp / "service",
            warm_kernels={"python3": POOL_SIZE},
            **(await run.service_storage()),
            **run.common,
        )
        async with noteburst_service(
            service, run_worker=True, log_path=tmp / "postgres-warm.log"
        ) as url:
            pool_full = settler(http, jupyter, POOL_SIZE, ignore)
            await pool_full()
            systems = warm_variants(
                url, run.notebook, pool_full, "postgres-warm", args.runs
            )
            await run.phase(
                "postgres-warm",
                systems | {"floor": (floor, args.runs)},
            )
        await no_kernels()

        # Phase 3b: the same with the worker in its own process.
        split = Config(
            data_dir=tmp / "split",
            warm_kernels={"python3": POOL_SIZE},
            **(await run.service_storage()),
            **run.common,
        )
        async with (
            noteburst_service(
                split, run_worker=False, log_path=tmp / "split-api.log"
            ) as url,
            worker_process(split, tmp / "split-worker.log"),
        ):
            pool_full = settler(http, jupyter, POOL_SIZE, ignore)
            await pool_full()
            systems = warm_variants(
                url, run.notebook, pool_full, "postgres-split", args.runs
            )
            await run.phase(
                "postgres-split",
                systems | {"floor": (floor, args.runs)},
            )
        await no_kernels()

    # Phase 4: the same on JupyterHub labs (a real hub and proxy).
    if not args.skip_hub:
        await hub_phase(run, floor)


async def hub_phase(run: Run, floor: Measure) -> None:
    """Start a JupyterHub (stopped by the run's stack) and measure ``hub-split``."""
    print("starting JupyterHub…", flush=True)
    hub = TestHub(run.tmp / "hub")
    # Registered first: stop() is a no-op before start() and after a
    # failed start (which stops what it began itself).
    run.stack.push_async_callback(asyncio.to_thread, hub.stop)
    await asyncio.to_thread(hub.start)
    info = hub.info()
    user = f"nbbench-{secrets.token_hex(4)}"
    config = Config(
        data_dir=run.tmp / "hub-service",
        warm_kernels={"python3": POOL_SIZE},
        lab_backend="jupyterhub",
        hub_url=info.hub_url,
        hub_token=SecretStr(info.token),
        hub_identities=[user],
        kernel_names=["python3"],
        **(await run.service_storage()),
        **run.common,
    )
    try:
        # The deployed shape of the production backend: API and worker in
        # their own processes (as postgres-split; postgres-warm shows what
        # sharing one interpreter lock costs).
        async with (
            noteburst_service(
                config, run_worker=False, log_path=run.tmp / "hub-api.log"
            ) as url,
            worker_process(config, run.tmp / "hub-worker.log"),
        ):
            systems = warm_variants(
                url,
                run.notebook,
                hub_settler(run.http, info, user),
                "hub-split",
                run.args.runs,
            )
            await run.phase("hub-split", systems | {"floor": (floor, run.args.runs)})
    except Exception:
        print(f"JupyterHub log (end):\n{hub.log_tail()}", file=sys.stderr)
        raise


@dataclass
class Interrupts:
    """Ctrl-C (or SIGTERM) handling: cancel the work once, never the cleanup.

    uvicorn takes SIGINT while it serves, shuts the server down and raises
    the signal again afterwards; the in-flight measurement then fails, and
    this handler turns that into an orderly stop.
    """

    requested: bool = False
    cleaning: bool = False

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if not self.requested:
                print("\ninterrupted: stopping what was started…", file=sys.stderr)
            self.requested = True
            if not self.cleaning and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)


async def bench(args: argparse.Namespace, interrupts: Interrupts) -> dict[str, Any]:
    interrupts.install()
    results = Results()
    stack = contextlib.AsyncExitStack()
    try:
        await measure_all(args, stack, results)
    finally:
        interrupts.cleaning = True
        await stack.aclose()
    output = report(results, args)
    output["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    output["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    output["raw"] = {
        name: [
            {
                "seconds": s.seconds,
                "phase": s.phase,
                "breakdown": s.breakdown,
                "cells_span": s.cells_span,
            }
            for s in samples
        ]
        for name, samples in results.samples.items()
    }
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=50,
        help="timed runs of each warm Noteburst variant, and of the floor per phase",
    )
    parser.add_argument(
        "--cold-runs", type=int, default=10, help="timed runs of embedded-cold"
    )
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=10,
        help="timed runs of papermill and of nbclient, in all (spread over phases)",
    )
    parser.add_argument("--json", type=Path, help="write raw numbers here")
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="admin DSN for CREATE DATABASE"
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL")
    parser.add_argument(
        "--skip-postgres", action="store_true", help="leave out postgres-warm"
    )
    parser.add_argument(
        "--skip-hub", action="store_true", help="leave out hub-split (no JupyterHub)"
    )
    args = parser.parse_args(argv)
    for option in ("runs", "cold_runs", "baseline_runs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


BenchFunction = Callable[
    [argparse.Namespace, Interrupts], Coroutine[Any, Any, dict[str, Any]]
]


def run_main(args: argparse.Namespace, bench: BenchFunction, what: str) -> int:
    """Run ``bench`` as a command: exit codes, interrupts, ``--json``.

    Shared by the benchmarks that stop what they started on Ctrl-C
    (:class:`Interrupts`); ``what`` names the figures ``--json`` writes.
    """
    interrupts = Interrupts()
    try:
        output = asyncio.run(bench(args, interrupts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        if interrupts.requested:
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except Exception:
        if interrupts.requested:
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
        raise
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
        print(f"\n{what} written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level="WARNING")
    return run_main(args, bench, "raw numbers")


if __name__ == "__main__":
    sys.exit(main())
