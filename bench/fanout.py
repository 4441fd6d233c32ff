"""Fan-out: one execution watched by many subscribers on one API process.

Run with ``uv run python bench/fanout.py [--watchers N] [--clients K]``;
``--quick`` is a small run (200 watchers, embedded only) for development.

Why: a dashboard shown to many people (a class, a status wall) has every
viewer subscribed to the same execution.  What counts is how long after the
first viewer the last ones learn that it finished (the spread of the
terminal event), and how much memory each open subscription costs the API
process, since that bounds how many viewers one process can hold.

What is measured, for each backend:

``embedded``
    ``noteburst serve`` on the embedded default (SQLite, in-process broker
    and worker), in its own process, as a user runs it.
``postgres``
    ``noteburst serve`` on a throwaway PostgreSQL database and a unique
    Redis namespace (``NOTEBURST_*`` environment), the worker in the API
    process (``--with-worker``): the watchers are woken by LISTEN/NOTIFY.

One notebook is submitted whose first cell waits until the script creates
a file; while it waits, ``--watchers`` status-only subscriptions
(``executionStatus(id, kinds: [QUEUED, RUNNING, LAB_STARTING])``, as a page
waiting for a result subscribes) are opened by ``--clients`` client
processes, so that the client's CPU is not the bottleneck.  Each
subscription has its own websocket (``--per-connection`` to multiplex
several on one, as :class:`noteburst.client.NoteburstClient` does for one
backend).  Once every subscription has received the current state, the
server's RSS (``/proc/PID/status``) is read again: the growth over the RSS
before subscribing, divided by the watchers, is the memory per subscriber.
Then the file is created, the notebook runs its short cells and finishes,
and every client stamps the arrival of the terminal event with the
system-wide monotonic clock.  The spread is each arrival minus the first.

The figures are absolute milliseconds and kilobytes, as the fan-out goals
are stated: they depend on the machine (its CPUs, and what else runs on
it), so compare runs on one machine.  No papermill or nbclient ratio is
printed: neither has subscribers.  Nothing asserts on the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
from pydantic import SecretStr

from bench.latency import (
    DEFAULT_POSTGRES,
    DEFAULT_REDIS,
    BenchError,
    _noteburst_process,
    _tail,
    migrate,
    postgres_database,
    redis_namespace,
)
from noteburst.config import Config
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.logs import configure_logging
from tests.support.waiting import free_port

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) { __typename ... on Execution { id status } }
}
"""

SERVE_START_SECONDS = 120.0
SUBSCRIBE_SECONDS = 600.0
"""How long the clients may take to open every subscription."""
FINISH_SECONDS = 300.0
"""How long after the release every subscriber must have the terminal event."""


def notebook(release: Path) -> dict[str, Any]:
    """A short notebook whose first cell waits until ``release`` exists."""
    held = (
        "import os, time\n"
        "deadline = time.monotonic() + 600\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    assert time.monotonic() < deadline, 'never released'\n"
        "    time.sleep(0.005)"
    )
    cells = [held, "x = 1", "print('hello', x)", "x + 1"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    result: dict[str, Any] = json.loads(nbformat.writes(nb))
    return result


def rss_kb(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


# -- the client processes -------------------------------------------------------


@dataclass
class Client:
    """A client process and what it reported."""

    process: asyncio.subprocess.Process
    count: int

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await self.process.stdout.readline()
        if not raw:
            raise BenchError(f"a client process exited ({self.process.returncode})")
        result: dict[str, Any] = json.loads(raw)
        return result


@contextlib.asynccontextmanager
async def clients(
    url: str, execution_id: str, watchers: int, processes: int, per_connection: int
) -> AsyncIterator[list[Client]]:
    """Start the client processes, ``watchers`` subscriptions between them."""
    shares = [
        watchers // processes + (1 if i < watchers % processes else 0)
        for i in range(processes)
    ]
    started: list[Client] = []
    try:
        for share in shares:
            if share == 0:
                continue
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fanout_client",
                "--url",
                url,
                "--id",
                execution_id,
                "--count",
                str(share),
                "--per-connection",
                str(per_connection),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            started.append(Client(process, share))
        yield started
    finally:
        for client in started:
            if client.process.returncode is None:
                client.process.kill()
            await client.process.wait()


# -- one backend -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(config: Config, log_path: Path) -> AsyncIterator[tuple[str, int]]:
    """``noteburst serve --with-worker`` as a user runs it: (URL, pid)."""
    port = free_port()
    async with _noteburst_process(
        config, ["serve", "--port", str(port), "--with-worker"], log_path
    ) as process:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=5) as http:
            async with asyncio.timeout(SERVE_START_SECONDS):
                while True:
                    if process.returncode is not None:
                        raise BenchError(f"Noteburst failed:\n{_tail(log_path)}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(url + "/healthz")).is_success:
                            break
                    await asyncio.sleep(0.05)
        yield url, process.pid


async def submit(http: httpx.AsyncClient, url: str, nb: dict[str, Any]) -> str:
    response = await http.post(
        url + "/graphql",
        json={"query": SUBMIT, "variables": {"input": {"notebook": nb}}},
    )
    response.raise_for_status()
    payload = response.json()["data"]["submitExecution"]
    if payload["__typename"] != "Execution":
        raise BenchError(f"submission refused: {payload}")
    return str(payload["id"])


async def measure(
    name: str, config: Config, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Watch one execution with ``args.watchers`` subscribers; return figures."""
    try:
        return await _measure(name, config, args, tmp)
    except BenchError as exc:
        log = tmp / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        first = max(0, text.find("[error"))
        excerpt = text[first : first + 3000]
        msg = f"{name}: {exc}\nthe server's first error:\n{excerpt}"
        raise BenchError(msg) from exc


async def _measure(
    name: str, config: Config, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    print(f"{name}: starting noteburst serve…", flush=True)
    async with (
        serve(config, tmp / f"{name}.log") as (url, pid),
        httpx.AsyncClient(timeout=60) as http,
    ):
        # A first execution, watched by one client, warms the process up
        # (imports, the kernel pool, the statement caches).
        warm_release = tmp / f"{name}-warm"
        warm_release.touch()
        warm_id = await submit(http, url, notebook(warm_release))
        async with clients(url, warm_id, 1, 1, 1) as warm:
            await warm[0].line()
            await warm[0].line()
        release = tmp / f"{name}-release"
        execution_id = await submit(http, url, notebook(release))
        rss_before = rss_kb(pid)
        print(
            f"{name}: opening {args.watchers} subscriptions from "
            f"{args.clients} processes…",
            flush=True,
        )
        started = time.monotonic()
        async with clients(
            url, execution_id, args.watchers, args.clients, args.per_connection
        ) as running:
            async with asyncio.timeout(SUBSCRIBE_SECONDS):
                ready = await asyncio.gather(*(c.line() for c in running))
            subscribed = time.monotonic() - started
            if sum(r["ready"] for r in ready) != args.watchers:
                raise BenchError(f"not every subscription started: {ready}")
            rss_after = rss_kb(pid)
            release.touch()
            async with asyncio.timeout(FINISH_SECONDS):
                reports = await asyncio.gather(*(c.line() for c in running))
    ends = sorted(t for r in reports for t in r["ends"])
    if len(ends) != args.watchers:
        raise BenchError(f"{len(ends)} of {args.watchers} got the terminal event")
    spread = [(t - ends[0]) * 1000 for t in ends]
    return {
        "backend": name,
        "watchers": args.watchers,
        "clients": args.clients,
        "per_connection": args.per_connection,
        "subscribe_seconds": subscribed,
        "spread_p50_ms": statistics.median(spread),
        "spread_p99_ms": quantile(spread, 0.99),
        "spread_max_ms": spread[-1],
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "kb_per_watcher": (rss_after - rss_before) / args.watchers,
    }


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted ``values``."""
    index = min(len(values) - 1, max(0, round(q * len(values)) - 1))
    return sorted(values)[index]


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fanout-")))
        jupyter = LocalJupyterServer(root_dir=tmp / "jupyter", start_timeout=60)
        stack.push_async_callback(jupyter.stop)
        await jupyter.start()
        common: dict[str, Any] = {
            "jupyter_url": jupyter.url,
            "jupyter_token": SecretStr(jupyter.token),
            "log_level": "WARNING",
            "warm_kernels": {"python3": 1},
        }
        if "embedded" in args.backends:
            config = Config(
                data_dir=tmp / "embedded", database_url=None, redis_url=None, **common
            )
            results.append(await measure("embedded", config, args, tmp))
            print_result(results[-1])
        if "postgres" in args.backends:
            url = await stack.enter_async_context(postgres_database(args.postgres))
            namespace = await stack.enter_async_context(redis_namespace(args.redis))
            await migrate(url)
            config = Config(
                data_dir=tmp / "postgres",
                database_url=url,
                redis_url=args.redis,
                redis_namespace=namespace,
                **common,
            )
            results.append(await measure("postgres", config, args, tmp))
            print_result(results[-1])
    return results


def print_result(result: dict[str, Any]) -> None:
    print(
        f"{result['backend']}: {result['watchers']} watchers "
        f"({result['clients']} client processes, {result['per_connection']} "
        f"per websocket), subscribed in {result['subscribe_seconds']:.1f} s; "
        f"terminal event after the first: p50 {result['spread_p50_ms']:.0f} ms, "
        f"p99 {result['spread_p99_ms']:.0f} ms, max {result['spread_max_ms']:.0f} ms; "
        f"RSS {result['rss_before_kb'] / 1024:.0f} → "
        f"{result['rss_after_kb'] / 1024:.0f} MiB, "
        f"{result['kb_per_watcher']:.0f} KB per watcher",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument(
        "--per-connection", type=int, default=1, help="subscriptions per websocket"
    )
    parser.add_argument(
        "--backends", default="embedded,postgres", help="comma-separated"
    )
    parser.add_argument(
        "--quick", action="store_true", help="200 watchers, embedded only"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    args = parser.parse_args(argv)
    if args.quick:
        args.watchers, args.backends = 200, "embedded"
    args.backends = set(args.backends.split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level="WARNING")
    try:
        results = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(
        "\nAbsolute figures: they depend on this machine "
        f"({os.cpu_count()} CPUs, and whatever else runs on it)."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
