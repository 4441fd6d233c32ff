"""The ``noteburst`` command as a user runs it, in subprocesses.

These run the embedded default exactly as the README's Quickstart does:
no ``NOTEBURST_*`` configuration, so each process starts its own SQLite
database, in-process queue and local Jupyter server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from noteburst.storage import Database
from tests.support.app import CANCEL, Noteburst, make_config, redis_namespace, running
from tests.support.executions import finished_run
from tests.support.notebooks import notebook
from tests.support.waiting import free_port, wait_until

ROOT = Path(__file__).parents[1]
NOTEBURST = [sys.executable, "-m", "noteburst.cli"]


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBURST_")}
    env["HOME"] = str(home)
    return env


def test_commands_start_without_the_iri_grammar(tmp_path: Path) -> None:
    # rfc3987_syntax builds a Lark grammar at import (~1 s); jsonschema
    # imports it under nbformat unless the CLI keeps it out.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "noteburst.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "nbformat" in imported
    assert "jsonschema" in imported
    assert "rfc3987_syntax.syntax_helpers" not in imported


def test_run_executes_the_quickstart_notebook(tmp_path: Path) -> None:
    out = tmp_path / "hello.out.ipynb"
    result = subprocess.run(
        [
            *NOTEBURST,
            "run",
            str(ROOT / "examples" / "hello.ipynb"),
            "-o",
            str(out),
            "--show",
        ],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stderr
    assert "sum(squares)" in result.stdout
    assert "285" in result.stdout
    executed = nbformat.read(out, as_version=4)
    nbformat.validate(executed)
    assert executed.cells[2].outputs[0]["data"]["text/plain"] == "285"
    # Joined per run of one stream: under load, ipykernel's 0.2 s flush
    # timer can fire inside one print and send "step" and " 1\n" apart
    # (seen once in CI), which nbclient and Noteburst both keep as two
    # outputs.  What matters is the order and the text.
    streams = [o for o in executed.cells[4].outputs if o["output_type"] == "stream"]
    runs: list[tuple[str, str]] = []
    for stream in streams:
        if runs and runs[-1][0] == stream["name"]:
            runs[-1] = (stream["name"], runs[-1][1] + stream["text"])
        else:
            runs.append((stream["name"], stream["text"]))
    assert runs == [
        ("stdout", "step 0\n"),
        ("stderr", "step 1\n"),
        ("stdout", "step 2\n"),
    ]


def test_run_exits_non_zero_with_the_error(tmp_path: Path) -> None:
    out = tmp_path / "failing.out.ipynb"
    result = subprocess.run(
        [*NOTEBURST, "run", str(ROOT / "examples" / "failing.ipynb"), "-o", str(out)],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1
    assert "CELL_ERROR" in result.stderr
    assert "this notebook fails on purpose" in result.stderr
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "about to fail\n"
    assert executed.cells[1].outputs[0]["ename"] == "ValueError"


@pytest.mark.parametrize("fork", ["default", "false"])
def test_the_embedded_default_forks_kernels_unless_told_not_to(
    tmp_path: Path, fork: str
) -> None:
    """The setting reaches the Jupyter server Noteburst starts for itself."""
    source = notebook(
        "import os\n"
        "with open(f'/proc/{os.getppid()}/cmdline', 'rb') as f:\n"
        "    print(f.read().replace(b'\\0', b' ').decode())"
    )
    path = tmp_path / "parent.ipynb"
    path.write_text(json.dumps(source))
    out = tmp_path / "parent.out.ipynb"
    env = _clean_env(tmp_path)
    if fork != "default":
        env["NOTEBURST_FORK_KERNELS"] = fork
    result = subprocess.run(
        [*NOTEBURST, "run", str(path), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parent = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"]
    # A forked kernel's parent is the template; a plain one's, the server.
    assert ("noteburst.forkserver.template" in parent) is (fork == "default")
    assert ("jupyter_server" in parent) is (fork != "default"), parent


def test_run_with_parameters_as_papermill_types_them(tmp_path: Path) -> None:
    source = notebook(
        'year = 2000\nratio = 0.5\nlabel = "x"\nflag = False\ncode = "0"',
        "print(repr(year), repr(ratio), repr(label), repr(flag), repr(code))",
    )
    source["cells"][0]["metadata"]["tags"] = ["parameters"]
    path = tmp_path / "params.ipynb"
    path.write_text(json.dumps(source))
    out = tmp_path / "params.out.ipynb"
    common = [*NOTEBURST, "run", str(path), "-o", str(out)]
    given = ["-p", "year", "2026", "-p", "ratio", "1.5", "-p", "label", "hi"]
    result = subprocess.run(
        [*common, *given, "-p", "flag", "True", "-r", "code", "007"],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]
    assert executed.cells[2].outputs[0]["text"] == "2026 1.5 'hi' True '007'\n"

    refused = subprocess.run(
        [*common, "-p", "year", "soon"],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert refused.returncode == 2
    assert "InvalidParameters" in refused.stderr
    assert "'year' expects an integer" in refused.stderr


def test_run_refuses_an_invalid_notebook(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ipynb"
    bad.write_text(
        '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{}]}'
    )
    result = subprocess.run(
        [*NOTEBURST, "run", str(bad)],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 2
    assert "InvalidNotebook" in result.stderr


async def _wait_for_line(stream: Any, needle: str, timeout: float) -> list[str]:
    seen: list[str] = []

    async def read() -> None:
        while True:
            line = await asyncio.to_thread(stream.readline)
            if not line:
                msg = "process ended before it was ready:\n" + "".join(seen)
                raise AssertionError(msg)
            seen.append(line)
            if needle in line:
                return

    await asyncio.wait_for(read(), timeout)
    return seen


@pytest.mark.asyncio
async def test_serve_runs_everything_in_one_process(tmp_path: Path) -> None:
    port = free_port()
    env = _clean_env(tmp_path)
    env["NOTEBURST_DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.Popen(
        [*NOTEBURST, "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    try:
        await _wait_for_line(process.stderr, "Uvicorn running on", 120)
        nb = Noteburst(f"http://127.0.0.1:{port}")
        submitted = await nb.submit(notebook("print('served')"))
        events = await asyncio.wait_for(nb.watch(submitted["id"]), 120)
        assert events[-1]["status"] == "SUCCEEDED"
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            process.wait(timeout=60)
            print(f"shutdown took {time.monotonic() - started:.2f} s")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            tail = process.stderr.read()
            process.stderr.close()  # also when the test failed above
    # uvicorn re-raises the signal after a graceful shutdown.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in tail, tail
    # The local Jupyter server and kernels went with it.
    leftovers = subprocess.run(
        ["pgrep", "-g", str(process.pid)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""


@pytest.mark.asyncio
async def test_separate_worker_process_on_postgres_and_redis(
    tmp_path: Path, jupyter_server: Any, postgres_url: str, redis_url: str
) -> None:
    """The deployed shape: `db upgrade`, an API process, a worker process."""
    env = _clean_env(tmp_path)
    env.update(
        NOTEBURST_DATABASE_URL=postgres_url,
        NOTEBURST_REDIS_URL=redis_url,
        NOTEBURST_REDIS_NAMESPACE=redis_namespace(tmp_path),
        NOTEBURST_DATA_DIR=str(tmp_path / "data"),
        NOTEBURST_JUPYTER_URL=jupyter_server.url,
        NOTEBURST_JUPYTER_TOKEN=jupyter_server.token,
    )
    upgrade = subprocess.run(
        [*NOTEBURST, "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    worker = subprocess.Popen(
        [*NOTEBURST, "worker"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        await _wait_for_line(worker.stderr, "worker running", 120)
        config = make_config(
            tmp_path,
            jupyter_server,
            database_url=postgres_url,
            redis_url=redis_url,
        )
        # The API process runs no worker: events reach it only via NOTIFY.
        async with running(config, run_worker=False) as nb:
            submitted = await nb.submit(notebook("import os; print(os.getpid())"))
            events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
            assert events[-1]["status"] == "SUCCEEDED"
            fetched = await nb.get(submitted["id"])
            assert fetched is not None
            printed = fetched["notebook"]["cells"][0]["outputs"][0]["text"]
            assert int(printed) not in {os.getpid(), worker.pid}

            # A cancellation taken by this process reaches the worker process
            # (NOTIFY on its LISTEN connection) and ends the running cell.
            long = await nb.submit(
                notebook("print('first')", "import time; time.sleep(300)")
            )

            async def first_cell_done() -> bool:
                found = await nb.get(long["id"])
                return found is not None and found["progress"]["cellsDone"] >= 1

            await wait_until(first_cell_done, "the first cell is done", timeout=120)
            cancelled = await nb.execute(CANCEL, id=long["id"])
            assert cancelled["cancelExecution"]["__typename"] == "Execution"
            events = await asyncio.wait_for(nb.watch(long["id"], after=0), 60)
            assert (events[-1]["kind"], events[-1]["status"]) == (
                "FINISHED",
                "CANCELLED",
            )
            assert events[-1]["execution"]["error"]["cellIndex"] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            assert worker.stderr is not None
            worker.stderr.close()
    assert worker.returncode == 0


@pytest.mark.asyncio
async def test_run_against_a_server_uses_the_cache_when_asked(
    tmp_path: Path, jupyter_server: Any
) -> None:
    source = tmp_path / "cached.ipynb"
    nbformat.write(nbformat.from_dict(notebook("print(6 * 7)")), str(source))
    async with running(make_config(tmp_path, jupyter_server)) as nb:

        async def run_cli(*options: str) -> str:
            process = await asyncio.create_subprocess_exec(
                *NOTEBURST,
                "run",
                str(source),
                "--server",
                nb.url,
                *options,
                env=_clean_env(tmp_path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(process.communicate(), 180)
            assert process.returncode == 0, stderr.decode()
            return stderr.decode()

        first = await run_cli("--cache", "use", "--queue", "batch")
        assert "succeeded" in first
        assert "cached result" not in first
        # It links the server's live page of the execution.
        link = re.search(r"live page: (\S+)", first)
        assert link is not None, first
        assert link[1].startswith(nb.url + "/executions/")
        second = await run_cli("--cache", "use", "--max-age", "3600")
        assert "cached result of execution" in second
        assert "succeeded" in second
        third = await run_cli()  # the default bypasses the cache
        assert "cached result" not in third


def _token_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env(data_dir.parent)
    env["NOTEBURST_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [*NOTEBURST, "token", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.asyncio
@pytest.mark.timeout(600)  # seven CLI processes, each importing Noteburst
async def test_token_create_list_revoke_and_expire(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path, jupyter_server, auth_mode="tokens", token_cache_seconds=0
    )
    data_dir = config.data_dir
    async with running(config) as nb:

        async def status(token: str) -> int:
            async with httpx.AsyncClient(timeout=60) as http:
                response = await http.post(
                    nb.url + "/graphql",
                    json={"query": "{ executions { edges { cursor } } }"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                return response.status_code

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(_token_cli, data_dir, *args)

        created = await cli("create", "--user", "alice", "--scope", "exec:notebook")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert token.startswith("nbt_")
        key = token.removeprefix("nbt_").split(".")[0]
        assert f"token {key} for alice (exec:notebook), expires never" in (
            created.stderr
        )
        assert await status(token) == 200

        listed = await cli("list")
        assert listed.returncode == 0, listed.stderr
        (line,) = listed.stdout.splitlines()
        assert line.split("\t")[:4] == [key, "alice", "exec:notebook", "active"]
        assert token.split(".")[1] not in listed.stdout  # never the secret

        revoked = await cli("revoke", key)
        assert revoked.returncode == 0, revoked.stderr
        assert await status(token) == 401
        assert "\trevoked\t" in (await cli("list")).stdout

        short = await cli("create", "--user", "bob", "--expires-in", "3s")
        assert short.returncode == 0, short.stderr
        short_token = short.stdout.strip()
        assert await status(short_token) == 200

        async def refused() -> bool:
            return await status(short_token) == 401

        await wait_until(refused, "the short-lived token expires", timeout=30)
        assert "\texpired\t" in (await cli("list", "--user", "bob")).stdout

        missing = await cli("revoke", "no-such-key")
        assert missing.returncode != 0
        assert "no token with key 'no-such-key'" in missing.stderr
        bad_scope = await cli("create", "--user", "x", "--scope", "admin")
        assert bad_scope.returncode != 0


def _purge_cli(
    database_url: str, home: Path, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = _clean_env(home)
    env["NOTEBURST_DATABASE_URL"] = database_url
    env.update({f"NOTEBURST_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [*NOTEBURST, "db", "purge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # five CLI processes, each importing Noteburst
async def test_db_purge_prints_what_it_removed_and_a_dry_run_removes_nothing(
    tmp_path: Path, database: Database, database_url: str
) -> None:
    now = datetime.now(UTC)
    old = [
        await finished_run(database, at=now - timedelta(days=40)),
        await finished_run(database, at=now - timedelta(days=35), progress=1),
    ]
    young = await finished_run(database, at=now - timedelta(days=1), rendering=False)

    async def purge(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            _purge_cli, database_url, tmp_path, *args, **settings
        )

    async def present() -> list[str]:
        async with database.transaction() as tx:
            return [i for i in [*old, young] if await tx.executions.get(i)]

    off = await purge(retention_days="0")
    assert off.returncode == 0, off.stderr
    assert "retention is off" in off.stderr
    assert await present() == [*old, young]

    dry = await purge("--dry-run")
    assert dry.returncode == 0, dry.stderr
    # Two runs: QUEUED, RUNNING, 3 (then 1) cell events, FINISHED.
    assert dry.stdout.startswith(
        "would purge 2 executions, 10 events, 2 renderings finished before "
    ), dry.stdout
    assert "nothing deleted" in dry.stdout
    assert await present() == [*old, young]

    purged = await purge("--batch-size", "1")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith(
        "purged 2 executions, 10 events, 2 renderings finished before "
    ), purged.stdout
    assert await present() == [young]

    # An explicit age, whatever the setting (0 here: off).
    hour = await purge("--older-than", "1h", retention_days="0")
    assert hour.returncode == 0, hour.stderr
    assert hour.stdout.startswith("purged 1 executions, 6 events, 0 renderings")
    assert await present() == []

    bad = await purge("--older-than", "soon")
    assert bad.returncode != 0
    assert "not a duration" in bad.stderr


def test_db_purge_wants_a_current_schema(tmp_path: Path, sqlite_url: str) -> None:
    result = _purge_cli(sqlite_url, tmp_path)
    assert result.returncode != 0
    assert "noteburst db upgrade" in result.stderr
