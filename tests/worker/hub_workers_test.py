"""Bot identity leases across real ``noteburst worker`` processes and a real hub.

The issue asks that two workers never drive the same lab and that a crashed
worker's identity comes back.  The unit tests show the lease rules against
one database; only separate worker processes show them end to end: each
process leases its own identity at boot and runs its executions in that
identity's lab, a worker that finds every identity leased waits, and a
SIGKILLed worker (no clean release) loses its identity, and the execution it
was running, to a newcomer once its leases expire.

Every test starts an API in this process (no worker in it) on the test's
Postgres and Redis, and workers as subprocesses configured through
``NOTEBURST_*`` variables.  Worker output goes to a file whose tail is shown
in every failure message.  Notebooks coordinate through marker files in a
folder the labs share with the test (they run as local processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from noteburst.config import Config
from noteburst.jupyter.hub import JupyterHubClient
from noteburst.storage.database import Database
from tests.support.app import Noteburst, running
from tests.support.hub import HubInfo
from tests.support.notebooks import notebook

NOTEBURST = [sys.executable, "-m", "noteburst.cli"]
SHORT_LEASE = 5.0
"""So a killed worker's identity (and execution) frees up within seconds."""
LONG_LEASE = 300.0
"""So that no recovery sweep sends a queued execution again during a test."""
READY_TIMEOUT = 90.0
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
POLL = 0.05

# Two labs, three worker processes and an API on a shared 2-CPU machine: more
# than the default 120 s, but each wait inside is bounded and says what it
# waited for.
pytestmark = pytest.mark.timeout(300)


@dataclass
class WorkerProcess:
    """One ``noteburst worker`` subprocess, its output in ``log_path``."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*NOTEBURST, "worker"],
            env=self.env,
            cwd=self.log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tail(self, size: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return f"--- {self.name} (pid {self.pid}) output, tail ---\n" + data[
            -size:
        ].decode(errors="replace")

    def has_logged(self, text: str) -> bool:
        try:
            return text in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    async def wait_for_output(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll the output for ``text``; fail if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.has_logged(text):
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.name} exited ({self.process.returncode}) before "
                    f"writing {text!r}\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not write {text!r}\n{self.tail()}")
            await asyncio.sleep(POLL)

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        # The CLI says so once the worker has booted: identity leased, lab up.
        await self.wait_for_output("worker running", timeout)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit in {timeout} s\n{self.tail()}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no lease release (a crash)."""
        assert self.process is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait, STOP_TIMEOUT)

    async def stop(self) -> None:
        """SIGTERM and a bounded wait; SIGKILL (the whole group) as last resort."""
        try:
            process = self.process
            if process is None or process.poll() is not None:
                return
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


@dataclass
class Deployment:
    """An API in this process, and worker processes started on demand."""

    tmp_path: Path
    postgres_url: str
    redis_url: str
    hub: HubInfo
    identities: list[str]
    lease_seconds: float
    api: Noteburst | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    namespace: str = field(default_factory=lambda: f"nbtest-{uuid.uuid4().hex[:8]}")

    def config(self) -> Config:
        """The API's configuration (the same deployment as the workers')."""
        return Config(
            data_dir=self.tmp_path / "api",
            database_url=self.postgres_url,
            redis_url=self.redis_url,
            redis_namespace=self.namespace,
            lab_backend="jupyterhub",
            hub_url=self.hub.hub_url,
            hub_token=self.hub.token,
            hub_identities=self.identities,
            kernel_names=["python3"],
            worker_lease_seconds=self.lease_seconds,
        )

    def start_worker(self, name: str, **settings: str) -> WorkerProcess:
        """Start ``noteburst worker``; ``settings`` override NOTEBURST_* values."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBURST_")}
        folder = self.tmp_path / name
        folder.mkdir()
        values = {
            "DATABASE_URL": self.postgres_url,
            "REDIS_URL": self.redis_url,
            "REDIS_NAMESPACE": self.namespace,
            "DATA_DIR": str(folder / "data"),
            "LAB_BACKEND": "jupyterhub",
            "HUB_URL": self.hub.hub_url,
            "HUB_TOKEN": self.hub.token,
            "HUB_IDENTITIES": json.dumps(self.identities),
            "KERNEL_NAMES": json.dumps(["python3"]),
            "WORKER_THREADS": "1",
            "WORKER_LEASE_SECONDS": str(self.lease_seconds),
            "IDENTITY_WAIT_SECONDS": "90",
            "LOG_LEVEL": "INFO",
            **settings,
        }
        env.update({f"NOTEBURST_{key}": value for key, value in values.items()})
        env["PYTHONUNBUFFERED"] = "1"
        worker = WorkerProcess(name, env, folder / "worker.log")
        self.workers.append(worker)
        worker.start()
        return worker

    def tails(self) -> str:
        return "\n".join(worker.tail() for worker in self.workers)

    async def holders(self) -> dict[str, int | None]:
        """Which worker process (pid) holds each identity, from the database."""
        database = Database.from_url(self.postgres_url)
        try:
            async with database.transaction() as tx:
                found = {
                    name: await tx.identities.holder_of(name)
                    for name in self.identities
                }
        finally:
            await database.aclose()
        # A holder is "host:pid:random".
        return {
            name: int(holder.split(":")[1]) if holder else None
            for name, holder in found.items()
        }

    async def until(
        self, condition: Callable[[], bool], what: str, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.tails()}")
            await asyncio.sleep(POLL)

    def check_succeeded(self, execution: dict[str, Any]) -> None:
        assert execution["status"] == "SUCCEEDED", (
            f"{_summary(execution)}\n{self.tails()}"
        )

    async def finished(self, execution_id: str) -> dict[str, Any]:
        """Follow an execution to its end; return it with its notebook."""
        assert self.api is not None
        try:
            events = await asyncio.wait_for(
                self.api.watch(execution_id, after=0), RUN_TIMEOUT
            )
        except TimeoutError:
            pytest.fail(f"execution {execution_id} did not finish\n{self.tails()}")
        fetched = await self.api.get(execution_id)
        assert fetched is not None
        fetched["events"] = events
        return fetched


def _summary(execution: dict[str, Any]) -> str:
    """The parts of an execution a failure message needs."""
    error = execution.get("error") or {}
    return (
        f"execution {execution['id']}: {execution['status']}, "
        f"attempts {execution['attempts']}, error {error.get('code')}: "
        f"{error.get('message')}"
    )


def _printed(execution: dict[str, Any]) -> str:
    text: str = execution["notebook"]["cells"][0]["outputs"][0]["text"]
    return text.strip()


async def _stop_labs(hub: HubInfo, names: list[str]) -> None:
    """Stop the bot users' labs and remove the users (bounded)."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        client = JupyterHubClient(
            http=http, hub_url=hub.hub_url, token=hub.token, timeout=30
        )
        for name in names:
            deadline = time.monotonic() + STOP_TIMEOUT
            await client.stop_server(name)
            while (user := await client.user(name)) is not None and user.get("servers"):
                if time.monotonic() > deadline:
                    msg = f"lab of {name} still running after {STOP_TIMEOUT} s"
                    raise AssertionError(msg)
                await asyncio.sleep(0.1)
            await client.delete_user(name)


@contextlib.asynccontextmanager
async def _deployment(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    hub: HubInfo,
    *,
    identities: int,
    lease_seconds: float,
) -> AsyncIterator[Deployment]:
    deployment = Deployment(
        tmp_path=tmp_path,
        postgres_url=postgres_url,
        redis_url=redis_url,
        hub=hub,
        identities=[f"nbtest-{uuid.uuid4().hex[:8]}" for _ in range(identities)],
        lease_seconds=lease_seconds,
    )
    try:
        # Migrates the database before any worker looks for its leases.
        async with running(deployment.config(), run_worker=False) as api:
            deployment.api = api
            yield deployment
    finally:
        try:
            results = await asyncio.gather(
                *(worker.stop() for worker in deployment.workers),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        finally:
            await _stop_labs(hub, deployment.identities)


CONCURRENT = """\
import os, pathlib, time
markers = pathlib.Path({markers!r})
(markers / {token!r}).write_text(os.environ["JUPYTERHUB_USER"])
deadline = time.monotonic() + 60
while len(list(markers.iterdir())) < 2:
    if time.monotonic() > deadline:
        raise RuntimeError("the other execution never ran alongside this one")
    time.sleep(0.05)
print(os.environ["JUPYTERHUB_USER"])
"""


@pytest.mark.asyncio
async def test_two_workers_run_at_once_as_distinct_identities(
    tmp_path: Path, postgres_url: str, redis_url: str, jupyterhub: HubInfo
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    async with _deployment(
        tmp_path,
        postgres_url,
        redis_url,
        jupyterhub,
        identities=2,
        lease_seconds=LONG_LEASE,
    ) as nb:
        assert nb.api is not None
        # Both queued before any worker runs, and A starts first: A must
        # take only what it can run (one), or the other would wait behind
        # the first, which waits for it (no sweep sends it again meanwhile).
        submitted = [
            await nb.api.submit(
                notebook(CONCURRENT.format(markers=str(markers), token=token))
            )
            for token in ("one", "two")
        ]
        a = nb.start_worker("worker-a")
        await a.wait_ready()
        b = nb.start_worker("worker-b")
        await b.wait_ready()

        holders = await nb.holders()
        assert sorted(p for p in holders.values() if p) == sorted([a.pid, b.pid]), (
            f"{holders}\n{nb.tails()}"
        )

        results = await asyncio.gather(*(nb.finished(s["id"]) for s in submitted))
        for result in results:
            nb.check_succeeded(result)
        # Each ran in the lab of one of the two identities, not the same one.
        assert sorted(_printed(r) for r in results) == sorted(nb.identities)
        assert {p.read_text() for p in markers.iterdir()} == set(nb.identities)

        # A third worker finds both identities held by live workers: it
        # waits as long as configured, then refuses to start, saying why.
        c = nb.start_worker("worker-c", IDENTITY_WAIT_SECONDS="2")
        started = time.monotonic()
        code = await c.wait_exit(60)
        assert code == 1, c.tail()
        assert time.monotonic() - started >= 2
        assert c.has_logged(
            "Error: the worker could not start: all 2 bot identities are held "
            "by live workers (waited 2 s"
        ), c.tail()
        assert await nb.holders() == holders


TAKE_OVER = """\
import os, pathlib, time
markers = pathlib.Path({markers!r})
if not (markers / "first-attempt").exists():
    (markers / "first-attempt").write_text(str(os.getpid()))
    # Holds its worker here; only a second attempt (elsewhere) ends the wait.
    deadline = time.monotonic() + 120
    while not (markers / "second-attempt").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError("the first attempt was not cut off")
(markers / "second-attempt").write_text(str(os.getpid()))
print(os.environ["JUPYTERHUB_USER"])
"""


@pytest.mark.asyncio
async def test_a_killed_workers_identity_and_execution_are_taken_over(
    tmp_path: Path, postgres_url: str, redis_url: str, jupyterhub: HubInfo
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    async with _deployment(
        tmp_path,
        postgres_url,
        redis_url,
        jupyterhub,
        identities=1,
        lease_seconds=SHORT_LEASE,
    ) as nb:
        assert nb.api is not None
        (identity,) = nb.identities
        a = nb.start_worker("worker-a")
        await a.wait_ready()
        assert await nb.holders() == {identity: a.pid}

        blocked = await nb.api.submit(notebook(TAKE_OVER.format(markers=str(markers))))
        await nb.until(
            (markers / "first-attempt").exists,
            "worker A to start the execution",
            RUN_TIMEOUT,
        )

        # B starts while A lives: the only identity is leased, so B waits.
        b = nb.start_worker("worker-b")
        await b.wait_for_output("Every bot identity is leased; waiting for one")
        assert await nb.holders() == {identity: a.pid}

        await a.kill()
        killed = time.monotonic()
        await b.wait_ready()
        take_over = time.monotonic() - killed
        assert await nb.holders() == {identity: b.pid}, nb.tails()
        # Not before A's lease ran out (it was renewed up to a third before).
        assert take_over >= SHORT_LEASE * 2 / 3 - 0.5, take_over

        # A's execution comes back to B (its lease expired) and succeeds on
        # the second attempt, in the same identity's lab.
        recovered = await nb.finished(blocked["id"])
        nb.check_succeeded(recovered)
        assert recovered["attempts"] == 2
        assert _printed(recovered) == identity
        kinds = [event["kind"] for event in recovered["events"]]
        assert kinds.count("CELL_OUTPUTS") >= 1, kinds  # the print, live
        kinds = [kind for kind in kinds if kind != "CELL_OUTPUTS"]
        assert kinds[:3] == ["QUEUED", "RUNNING", "CELL_STARTED"], kinds
        assert kinds[3:] == [
            "QUEUED",  # A's lease expired: queued again
            "RUNNING",
            "CELL_STARTED",
            "CELL_FINISHED",
            "FINISHED",
        ], kinds

        # And B goes on running new work as that identity.
        fresh = await nb.api.submit(
            notebook("import os; print(os.environ['JUPYTERHUB_USER'])")
        )
        result = await nb.finished(fresh["id"])
        nb.check_succeeded(result)
        assert result["attempts"] == 1
        assert _printed(result) == identity
        print(f"identity taken over {take_over:.1f} s after the kill")
