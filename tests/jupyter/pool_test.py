"""KernelPool through LocalLabBackend: fresh warm kernels, refill, failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import nbformat
import pytest
from nbformat import NotebookNode

from noteburst.jupyter.backend import LabBackend, LocalLabBackend
from noteburst.jupyter.exceptions import KernelStartError
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.pool import (
    AHEAD_STARTS,
    DEFAULT_BACKOFF,
    IPYTHON_WARM_UP,
    KernelPool,
)
from noteburst.jupyter.protocol import Message
from tests.jupyter.backend_test import kernel_ids
from tests.jupyter.fidelity_test import (
    EXPECTED_FAILURES,
    NOTEBOOKS,
    normalize,
    read,
    run_with_nbclient,
)
from tests.support.jupyter import JupyterServerInfo

WAIT = 60
PY = "python3"

BackendFactory = Callable[..., AbstractAsyncContextManager[LocalLabBackend]]


@pytest.fixture
def pooled_backend(jupyter_server: JupyterServerInfo, tmp_path: Path) -> BackendFactory:
    """Make a started backend with a pool on the session server; closed after."""

    @asynccontextmanager
    async def make(
        warm_kernels: Mapping[str, int],
        warm_up_code: Mapping[str, str] | None = None,
        **kwargs: object,
    ) -> AsyncIterator[LocalLabBackend]:
        async with httpx.AsyncClient(trust_env=False) as http:
            backend = LocalLabBackend(
                http=http,
                root_dir=tmp_path,
                url=jupyter_server.url,
                token=jupyter_server.token,
                warm_kernels=warm_kernels,
                warm_up_code=warm_up_code,
                **kwargs,  # type: ignore[arg-type]
            )
            assert isinstance(backend, LabBackend)
            await backend.start()
            try:
                yield backend
            finally:
                async with asyncio.timeout(WAIT):
                    await backend.aclose()

    return make


@asynccontextmanager
async def full_pool_of_one(
    pooled_backend: BackendFactory, server: JupyterServerInfo
) -> AsyncIterator[tuple[LocalLabBackend, KernelPool]]:
    """A started backend whose pool of one is full, within ``WAIT``.

    Its refill starts only on a hand-back or a close (``refill_delay`` is
    600 s); on exit, none of its kernels is left on the server.
    """
    async with httpx.AsyncClient(trust_env=False) as http:
        before = await kernel_ids(http, server)
        async with pooled_backend({PY: 1}) as backend:
            pool = pool_of(backend)
            pool.refill_delay = 600
            async with asyncio.timeout(WAIT):
                await pool.wait_full(PY)
                yield backend, pool
        assert await kernel_ids(http, server) <= before


def pool_of(backend: LocalLabBackend) -> KernelPool:
    pool = backend.pool
    assert pool is not None
    return pool


def notebook(*sources: str) -> NotebookNode:
    nb: NotebookNode = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in sources]
    )
    return nb


def text(nb: NotebookNode, index: int) -> str:
    value: str = nb.cells[index].outputs[0].data["text/plain"]
    return value


@pytest.mark.asyncio
async def test_no_kernel_serves_two_executions(
    pooled_backend: BackendFactory,
) -> None:
    async with pooled_backend({PY: 2}) as backend:
        pool = pool_of(backend)
        seen: list[str] = []
        async with asyncio.timeout(WAIT):
            for _ in range(6):
                await pool.wait_full(PY)
                ready = pool.ready_kernel_ids(PY)
                async with backend.kernel(PY) as conn:
                    assert conn.kernel_id == ready[0]  # served from the pool
                    nb = notebook("'leak' in dir()", "leak = 1")
                    assert await execute_notebook(conn, nb) is None
                    assert text(nb, 0) == "False"
                    assert nb.cells[0].execution_count == 1
                seen.append(conn.kernel_id)
                assert conn.kernel_id not in pool.ready_kernel_ids(PY)
        assert len(set(seen)) == 6
        assert pool.handed_out(PY) == 6
        stats = pool.stats(PY)
        assert stats.failed == stats.evicted == 0
        assert stats.error is None


@pytest.mark.asyncio
async def test_pool_refills_and_a_burst_waits_for_the_pools_own_starts(
    pooled_backend: BackendFactory,
) -> None:
    async with pooled_backend({PY: 2}) as backend:
        pool = pool_of(backend)
        pool.refill_delay = 600  # only the closes trigger the refills
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            assert pool.size(PY) == 2
            first = pool.ready_kernel_ids(PY)

            # A burst of 4 while 2 are ready: 2 ready ones, and 2 the pool
            # starts for the 2 that wait, warmed up like every pooled kernel.
            async def run() -> str:
                async with backend.kernel(PY) as conn:
                    assert conn.guard_installed
                    nb = notebook("1 + 1")
                    assert await execute_notebook(conn, nb) is None
                    assert text(nb, 0) == "2"
                    return conn.kernel_id

            ids = await asyncio.gather(*(run() for _ in range(4)))
            assert len(set(ids)) == 4
            assert set(first) <= set(ids)
            assert pool.handed_out(PY) == 4
            assert pool.stats(PY).started == 4
            assert pool.stats(PY).waiting == 0

            await pool.wait_full(PY)
            assert pool.size(PY) == 2
            assert not set(pool.ready_kernel_ids(PY)) & set(ids)
            assert pool.stats(PY).started == 6


@pytest.mark.asyncio
async def test_waiting_requests_are_served_in_order_of_arrival(
    pooled_backend: BackendFactory, jupyter_server: JupyterServerInfo
) -> None:
    async with full_pool_of_one(pooled_backend, jupyter_server) as (backend, pool):
        held = await pool.acquire(PY)  # the ready one
        assert held is not None
        first = asyncio.create_task(pool.acquire(PY))
        await pool.wait_for(lambda: pool.stats(PY).waiting == 1)
        second = asyncio.create_task(pool.acquire(PY))
        await pool.wait_for(lambda: pool.stats(PY).waiting == 2)
        # One start for each request in line, beyond the pool's target.
        assert pool.stats(PY).starting == 2
        done, _ = await asyncio.wait(
            {first, second}, return_when=asyncio.FIRST_COMPLETED
        )
        assert first in done  # the first start to end went to the first
        conns = [held, await first, await second]
        assert all(conn is not None for conn in conns)
        assert len({conn.kernel_id for conn in conns if conn}) == 3
        # Handed out like a ready one: no longer watched as idle in the pool.
        assert not any(getattr(conn, "idle_in_pool", False) for conn in conns)
        assert pool.handed_out(PY) == 3
        assert pool.stats(PY).waiting == 0
        for conn in conns:
            assert conn is not None
            await backend.rest.delete_kernel(conn.kernel_id)
            await conn.aclose()


@pytest.mark.asyncio
async def test_a_cancelled_wait_leaves_the_line_and_no_kernel_behind(
    pooled_backend: BackendFactory, jupyter_server: JupyterServerInfo
) -> None:
    async with (
        full_pool_of_one(pooled_backend, jupyter_server) as (backend, pool),
        backend.kernel(PY),  # holds the ready one
    ):
        waiting = asyncio.create_task(pool.acquire(PY))
        await pool.wait_for(lambda: pool.stats(PY).waiting == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.stats(PY).waiting == 0
        # The kernel started for it is not lost: it joins the pool.
        await pool.wait_for(lambda: pool.size(PY) == 1)
        assert pool.handed_out(PY) == 1


@pytest.mark.asyncio
async def test_a_failing_pool_sends_waiting_requests_off_to_start_their_own(
    pooled_backend: BackendFactory,
) -> None:
    async with pooled_backend(
        {PY: 1}, {PY: "raise RuntimeError('broken warm-up')"}
    ) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            # The first start is under way and will fail: this request waits
            # for it, then is told to start a kernel of its own.
            assert pool.stats(PY).starting == 1
            assert await pool.acquire(PY) is None
            assert pool.stats(PY).failed == 1
            # While the pool is failing, nobody waits at all.
            assert pool.stats(PY).consecutive_failures == 1
            assert await pool.acquire(PY) is None
            assert pool.stats(PY).waiting == 0
            # What the backend does then: a kernel started on demand.
            async with backend.kernel(PY) as conn:
                nb = notebook("'ok'")
                assert await execute_notebook(conn, nb) is None
            assert text(nb, 0) == "'ok'"
            assert pool.handed_out(PY) == 0


@pytest.mark.asyncio
async def test_closing_the_pool_sends_waiting_requests_away(
    pooled_backend: BackendFactory, jupyter_server: JupyterServerInfo
) -> None:
    async with (
        full_pool_of_one(pooled_backend, jupyter_server) as (backend, pool),
        backend.kernel(PY),
    ):
        waiting = asyncio.create_task(pool.acquire(PY))
        await pool.wait_for(lambda: pool.stats(PY).waiting == 1)
        await pool.aclose()
        assert await waiting is None
        assert pool.stats(PY).waiting == 0


@pytest.mark.asyncio
async def test_replacement_starts_only_once_the_taken_kernel_is_closed(
    pooled_backend: BackendFactory,
) -> None:
    """A kernel start must not compete with the execution on the taken kernel."""
    async with pooled_backend({PY: 1}) as backend:
        pool = pool_of(backend)
        pool.refill_delay = 600  # only the close may trigger the refill
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            async with backend.kernel(PY) as conn:
                stats = pool.stats(PY)
                assert (stats.ready, stats.starting, stats.deferred) == (0, 0, 1)
                nb = notebook("1 + 1")
                assert await execute_notebook(conn, nb) is None
                stats = pool.stats(PY)
                assert (stats.starting, stats.deferred, stats.started) == (0, 1, 1)
            await pool.wait_full(PY)
            stats = pool.stats(PY)
            assert (stats.deferred, stats.started, stats.handed_out) == (0, 2, 1)
            assert conn.kernel_id not in pool.ready_kernel_ids(PY)


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [None, 3], ids=["fixed", "following-demand"])
async def test_back_to_back_requests_grow_the_pool_up_to_its_limit(
    pooled_backend: BackendFactory, limit: int | None
) -> None:
    async with pooled_backend({PY: 1}, warm_kernels_max=limit) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            targets = []
            # Requests one after another come faster than a kernel starts:
            # a pool that follows demand grows, within a few requests (how
            # many depends on how fast this machine is at the moment: the
            # target is the arrival rate times the start time, both
            # measured), to its limit and no further.
            for _ in range(12):
                async with backend.kernel(PY) as conn:
                    assert await execute_notebook(conn, notebook("1 + 1")) is None
                targets.append(pool.stats(PY).target)
                if len(targets) >= 4 and targets[-1] == (limit or 1):
                    break
            stats = pool.stats(PY)
            assert stats.limit == (limit or 1)
            assert stats.target == (limit or 1), targets
            assert max(targets) == (limit or 1)
            await pool.wait_full(PY)
            assert pool.size(PY) == (limit or 1)


@pytest.mark.asyncio
async def test_replacement_starts_after_the_refill_delay_for_a_long_run(
    pooled_backend: BackendFactory,
) -> None:
    async with pooled_backend({PY: 1}) as backend:
        pool = pool_of(backend)
        pool.refill_delay = 0.2
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            async with backend.kernel(PY) as conn:
                assert pool.stats(PY).deferred == 1
                # Still held (a long execution): the delay starts the refill.
                await pool.wait_full(PY)
                assert pool.stats(PY).deferred == 0
                assert conn.failure is None
                assert conn.kernel_id not in pool.ready_kernel_ids(PY)
            assert pool.stats(PY).started == 2


@pytest.mark.asyncio
async def test_pooled_kernel_info_is_not_asked_again(
    pooled_backend: BackendFactory, jupyter_backend: LocalLabBackend
) -> None:
    """The start's kernel_info reply gives execute_notebook its language_info."""

    async def requests_of(backend: LocalLabBackend) -> tuple[list[str], NotebookNode]:
        sent: list[str] = []
        async with backend.kernel(PY) as conn:
            real_request = conn.request

            async def request(msg: Message) -> str:
                sent.append(msg["header"]["msg_type"])
                return await real_request(msg)

            conn.request = request  # type: ignore[method-assign]
            nb = notebook("1 + 1")
            assert await execute_notebook(conn, nb) is None
        return sent, nb

    async with pooled_backend({PY: 1}) as backend, asyncio.timeout(WAIT):
        await pool_of(backend).wait_full(PY)
        pooled, nb = await requests_of(backend)
        assert pooled == ["execute_request"]
        assert nb.metadata.language_info.name == "python"
        assert text(nb, 0) == "2"
        # A kernel started on demand has answered too before it is handed
        # out (a kernel that dies before answering is replaced; see
        # backend_test), so the notebook sends the same.
        fresh, nb = await requests_of(jupyter_backend)
        assert fresh == ["execute_request"]
        assert nb.metadata.language_info.name == "python"


@pytest.mark.asyncio
async def test_pooled_kernel_has_the_stop_after_error_guard_already(
    pooled_backend: BackendFactory,
) -> None:
    """The guard is installed while warming up: the notebook's requests are
    its cells alone, and a request after a failure still does not run."""
    async with pooled_backend({PY: 1}) as backend, asyncio.timeout(WAIT):
        await pool_of(backend).wait_full(PY)
        sent: list[str] = []
        async with backend.kernel(PY) as conn:
            assert conn.guard_installed
            real_request = conn.request

            async def request(msg: Message) -> str:
                sent.append(msg["content"]["code"])
                return await real_request(msg)

            conn.request = request  # type: ignore[method-assign]
            nb = notebook("x = 1", "1/0", "x = 2")
            failure = await execute_notebook(conn, nb)
            assert failure is not None
            assert failure.cell_index == 1
            conn.request = real_request  # type: ignore[method-assign]
            # Sent after the error reply came back: ipykernel would run it.
            late = await conn.execute("x = 3")
            while (reply := await conn.receive(late))["msg_type"] != "execute_reply":
                pass
        assert sent == ["x = 1", "1/0", "x = 2"]
        assert reply["content"]["ename"] == "NoteburstSkippedError"
        assert [cell.execution_count for cell in nb.cells[:2]] == [1, 2]


@pytest.mark.asyncio
async def test_size_zero_means_no_pool(pooled_backend: BackendFactory) -> None:
    async with pooled_backend({PY: 0}) as backend:
        assert backend.pool is None
        async with asyncio.timeout(WAIT), backend.kernel(PY) as conn:
            nb = notebook("6 * 7")
            assert await execute_notebook(conn, nb) is None
        assert text(nb, 0) == "42"


WARM_UP = "import colorsys\n_noteburst_warm = 1\nprint('warming up')\n_noteburst_warm"
PROBE = (
    "import sys\n"
    "('colorsys' in sys.modules, '_noteburst_warm' in dir(), len(In), len(Out))"
)


@pytest.mark.asyncio
async def test_warm_up_has_run_silently(
    pooled_backend: BackendFactory, jupyter_backend: LocalLabBackend
) -> None:
    async with pooled_backend({PY: 1}, {PY: WARM_UP}) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            async with backend.kernel(PY) as conn:
                warm = notebook(PROBE, "print('cell 2')")
                assert await execute_notebook(conn, warm) is None
            assert pool.handed_out(PY) == 1
            async with jupyter_backend.kernel(PY) as conn:
                cold = notebook(PROBE, "print('cell 2')")
                assert await execute_notebook(conn, cold) is None
        # The imports and names of the warm-up are there ...
        assert text(warm, 0) == "(True, True, 2, 0)"
        assert text(cold, 0) == "(False, False, 2, 0)"
        # ... but nothing else: no output, no history, counts start at 1.
        for nb in (warm, cold):
            assert [cell.execution_count for cell in nb.cells] == [1, 2]
            assert len(nb.cells[0].outputs) == 1
            assert nb.cells[1].outputs[0].text == "cell 2\n"
        assert warm.cells[1].outputs == cold.cells[1].outputs
        assert warm.metadata.language_info == cold.metadata.language_info


NAMESPACE_PROBE = (
    "sorted(name for name in dir() if not name.startswith('__'))",
    "(_, __, ___, _i, _ii, len(In), len(Out), get_ipython().execution_count)",
    "print('first')",
)


@pytest.mark.asyncio
async def test_primer_runs_like_cells_and_leaves_no_trace(
    pooled_backend: BackendFactory,
    jupyter_backend: LocalLabBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[tuple[str, bool]] = []
    warm_up = KernelPool._warm_up

    async def spy(
        pool: KernelPool, conn: object, lane: object, code: str, *, silent: bool = True
    ) -> None:
        runs.append((code, silent))
        await warm_up(pool, conn, lane, code, silent=silent)  # type: ignore[arg-type]

    monkeypatch.setattr(KernelPool, "_warm_up", spy)
    async with pooled_backend({PY: 1}) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            async with backend.kernel(PY) as conn:
                primed = notebook(*NAMESPACE_PROBE)
                assert await execute_notebook(conn, primed) is None
            async with jupyter_backend.kernel(PY) as conn:
                fresh = notebook(*NAMESPACE_PROBE)
                assert await execute_notebook(conn, fresh) is None
    # Run as cells are (not silent), once per kernel, with the guard in the
    # same request (the pool's replacement was primed too) ...
    assert runs
    assert all(run == (IPYTHON_WARM_UP, False) for run in runs)
    # ... yet the notebook sees what a kernel nobody used shows it.
    assert text(primed, 0) == text(fresh, 0)
    assert text(primed, 1) == text(fresh, 1)
    assert [cell.execution_count for cell in primed.cells] == [1, 2, 3]
    assert [len(cell.outputs) for cell in primed.cells] == [1, 1, 1]
    assert primed.cells[2].outputs[0].text == "first\n"


async def run_pooled(backend: LocalLabBackend, nb: NotebookNode) -> object:
    pool = pool_of(backend)
    await pool.wait_full(PY)
    async with backend.kernel(PY) as conn:
        assert pool.handed_out(PY) == 1
        return await execute_notebook(conn, nb, cell_timeout=30)


@pytest.mark.asyncio
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
async def test_pooled_kernel_gives_nbclient_outputs(
    pooled_backend: BackendFactory, nbclient_runtime: Path, path: Path
) -> None:
    reference, pooled = read(path), read(path)
    async with (
        pooled_backend({PY: 1}, {PY: "import json, decimal"}) as backend,
        asyncio.timeout(90),
        asyncio.TaskGroup() as tasks,
    ):
        nbclient_run = tasks.create_task(run_with_nbclient(reference, nbclient_runtime))
        pooled_run = tasks.create_task(run_pooled(backend, pooled))
    assert normalize(pooled) == normalize(reference)
    nbformat.validate(pooled)
    failure = pooled_run.result()
    if path.stem in EXPECTED_FAILURES:
        assert nbclient_run.result() is not None
        assert failure is not None
    else:
        assert nbclient_run.result() is None
        assert failure is None


@pytest.mark.asyncio
async def test_failing_warm_up_is_retried_with_backoff_then_given_up(
    pooled_backend: BackendFactory,
    jupyter_server: JupyterServerInfo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="noteburst.jupyter.pool")
    async with httpx.AsyncClient(trust_env=False) as http:
        before = await kernel_ids(http, jupyter_server)
        async with pooled_backend(
            {PY: 1},
            {PY: "raise RuntimeError('broken warm-up')"},
            warm_up_max_failures=3,
        ) as backend:
            pool = pool_of(backend)
            began = time.monotonic()
            async with asyncio.timeout(WAIT):
                with pytest.raises(KernelStartError, match="gave up after 3"):
                    await pool.wait_full(PY)
            elapsed = time.monotonic() - began
            # Two pauses (after the 1st and 2nd failure), none after the 3rd.
            assert elapsed >= sum(DEFAULT_BACKOFF[:2])
            stats = pool.stats(PY)
            assert (stats.failed, stats.started, stats.ready) == (3, 0, 0)
            assert stats.starting == 0  # no further attempt
            assert stats.error is not None
            assert "broken warm-up" in str(stats.error)
            assert pool.take(PY) is None

            # The kernel name still works: kernels are started on demand.
            async with asyncio.timeout(WAIT), backend.kernel(PY) as conn:
                nb = notebook("'ok'")
                assert await execute_notebook(conn, nb) is None
            assert text(nb, 0) == "'ok'"
            assert pool.handed_out(PY) == 0
        assert await kernel_ids(http, jupyter_server) <= before
    failures = [r for r in caplog.records if "in a row), replacing" in r.getMessage()]
    assert len(failures) == 2
    assert "RuntimeError: broken warm-up" in failures[0].getMessage()
    assert any(r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.asyncio
async def test_idle_kernel_killed_behind_the_pools_back_is_replaced(
    pooled_backend: BackendFactory,
) -> None:
    async with pooled_backend({PY: 1}) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            (victim,) = pool.ready_kernel_ids(PY)
            await backend.rest.delete_kernel(victim)
            await pool.wait_for(lambda: pool.stats(PY).evicted == 1)
            await pool.wait_full(PY)
            (replacement,) = pool.ready_kernel_ids(PY)
            assert replacement != victim
            async with backend.kernel(PY) as conn:
                assert conn.kernel_id == replacement
                assert conn.failure is None
                nb = notebook("1 + 1")
                assert await execute_notebook(conn, nb) is None
        assert text(nb, 0) == "2"
        assert pool.handed_out(PY) == 1


@pytest.mark.asyncio
async def test_take_skips_a_failed_connection(
    pooled_backend: BackendFactory,
) -> None:
    """take() checks conn.failure even if the watcher has not run yet."""
    async with pooled_backend({PY: 2}) as backend:
        pool = pool_of(backend)
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            victim, survivor = pool.ready_kernel_ids(PY)
            # Silence the first one's watcher, then break its connection:
            # only the take-time check of conn.failure can catch it now.
            pooled = pool._lanes[PY].ready[0]  # white box
            assert pooled.conn.kernel_id == victim
            assert pooled.watcher is not None
            pooled.watcher.cancel()
            pooled.watcher = None
            await pooled.conn.aclose()
            assert pooled.conn.failure is not None
            assert pool.size(PY) == 2
            conn = pool.take(PY)
            assert conn is not None
            assert conn.kernel_id == survivor
            assert conn.failure is None
            assert pool.stats(PY).evicted == 1  # and retired (shut down)
            assert pool.handed_out(PY) == 1
            await conn.aclose()
            await backend.rest.delete_kernel(conn.kernel_id)


@pytest.mark.asyncio
async def test_aclose_leaves_no_kernels_on_the_server(
    jupyter_server: JupyterServerInfo, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        before = await kernel_ids(http, jupyter_server)
        backend = LocalLabBackend(
            http=http,
            root_dir=tmp_path,
            url=jupyter_server.url,
            token=jupyter_server.token,
            warm_kernels={PY: 2},
            warm_up_code={PY: "import json"},
        )
        await backend.start()
        pool = pool_of(backend)
        try:
            async with asyncio.timeout(WAIT):
                await pool.wait_full()
                ours = set(pool.ready_kernel_ids(PY))
                assert ours <= await kernel_ids(http, jupyter_server) - before
                async with backend.kernel(PY) as conn:
                    ours.add(conn.kernel_id)
                # The replacement starts once the background shutdown has
                # closed the connection; aclose must catch it mid-start.
                await pool.wait_for(lambda: pool.stats(PY).starting == 1)
        finally:
            async with asyncio.timeout(WAIT):
                await backend.aclose()
        assert backend.pool is None
        assert backend.pending_shutdowns == 0
        assert pool.size(PY) == 0
        assert await kernel_ids(http, jupyter_server) <= before
        with pytest.raises(KernelStartError, match="closed"):
            await pool.wait_full(PY)


async def _gone_within(
    http: httpx.AsyncClient, server: JupyterServerInfo, kernel_id: str, seconds: float
) -> bool:
    """Whether the server stops listing ``kernel_id`` within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while kernel_id in await kernel_ids(http, server):
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False
    return True


def _closed(conn: KernelConnection) -> bool:
    return conn.failure is not None


@pytest.mark.asyncio
async def test_used_kernel_is_left_alone_for_the_retire_delay(
    pooled_backend: BackendFactory, jupyter_server: JupyterServerInfo
) -> None:
    """The used kernel waits, not the pool's refill; closing cuts the wait short."""
    async with httpx.AsyncClient(trust_env=False) as http:
        async with asyncio.timeout(WAIT):
            async with pooled_backend({PY: 1}, retire_delay=300) as backend:
                pool = pool_of(backend)
                pool.refill_delay = 300  # only the hand-back may start the refill
                await pool.wait_full(PY)
                async with backend.kernel(PY) as used:
                    assert await execute_notebook(used, notebook("1 + 1")) is None
                    assert pool.stats(PY).deferred == 1  # in use: no refill yet
                # Handed back: its replacement starts now, not after the delay.
                await pool.wait_full(PY)
                assert pool.stats(PY).deferred == 0
                assert pool.stats(PY).started == 2
                # Without the delay the kernel is deleted at once (~0.1 s).
                assert not await _gone_within(http, jupyter_server, used.kernel_id, 1.0)
                assert backend.pending_shutdowns == 1
                assert not _closed(used)  # its websocket is still open
            # Closed by the fixture within WAIT, not 300 s: closing ends the delay.
            assert backend.pending_shutdowns == 0
            assert _closed(used)
            assert used.kernel_id not in await kernel_ids(http, jupyter_server)


@pytest.mark.asyncio
async def test_starts_ahead_of_demand_run_one_at_a_time(
    pooled_backend: BackendFactory,
) -> None:
    """Filling the pool: one start at a time; waiting requests: one each."""
    async with pooled_backend({PY: 3}) as backend:
        pool = pool_of(backend)
        assert pool.stats(PY).starting == AHEAD_STARTS == 1
        async with asyncio.timeout(WAIT):
            await pool.wait_full(PY)
            assert pool.stats(PY).started == 3
            # Three requests take the three, three more wait: a start each,
            # while the refill of the pool's target waits its turn.
            pool.refill_delay = 600
            held = [await pool.acquire(PY) for _ in range(3)]
            waiting = [asyncio.create_task(pool.acquire(PY)) for _ in range(3)]
            await pool.wait_for(lambda: pool.stats(PY).waiting == 3)
            assert pool.stats(PY).starting == 3
            conns = [*held, *await asyncio.gather(*waiting)]
            assert all(conn is not None for conn in conns)
            for conn in conns:
                assert conn is not None
                pool.hand_back(conn)
                await backend.rest.delete_kernel(conn.kernel_id)
                await conn.aclose()
            await pool.wait_full(PY)
