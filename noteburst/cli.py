"""The ``noteburst`` command: serve, worker, db upgrade, db purge, token, run.

Each command builds its configuration from the environment (see
docs/configuration.md) and hands it to one factory: ``create_app`` for the
web process, ``start_worker`` for a worker.  ``run`` is a client: it submits
a notebook to a server, or to a private embedded instance it starts in this
process when no server is given, and shows progress while it runs.
"""

from __future__ import annotations

import sys

# jsonschema (under nbformat) imports rfc3987_syntax whenever it is
# installed (jupyter_server's jupyter_events asks for it), and that module
# builds a Lark grammar at import: a large share of every command's
# start-up, paid by each `noteburst run` of a documentation CI job and by
# each process start.  It only serves jsonschema's "iri" format checks,
# which nothing in a Noteburst process asks for (nbformat validates without
# a format checker), so this process goes without it: a None entry makes
# `import rfc3987_syntax` fail, and jsonschema skips the optional checker
# as when it is not installed.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

import asyncio
import json
import math
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import nbformat
import uvicorn
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .app import (
    check_config,
    create_app,
    serve_in_background,
    server_options,
    tune_garbage_collector,
)
from .client import NoteburstClient, NoteburstClientError
from .config import Config
from .constants import ADMIN_SCOPE, USER_SCOPE
from .exceptions import ClientError, ConfigurationError
from .factory import CliContext, CliFactory, create_broker
from .logs import configure_logging
from .services.auth import TokenService
from .services.retention import PurgeReport
from .storage.events import LocalEventBus
from .worker.process import start_worker
from .worker.runtime import WorkerStartupError

__all__ = ["main"]

_T = TypeVar("_T")

_stderr = Console(stderr=True)


@click.group()
@click.version_option(package_name="noteburst")
def main() -> None:
    """Run Jupyter notebooks headlessly, on demand, behind a GraphQL API."""


def _load_config(**overrides: Any) -> Config:
    try:
        config = Config(**{k: v for k, v in overrides.items() if v is not None})
        check_config(config)
    except (ConfigurationError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    return config


@main.command()
@click.option("--host", default=None, help="Address to bind [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to bind [default: 8000].")
@click.option(
    "--with-worker/--without-worker",
    default=None,
    help="Run a worker in this process [default: only without Redis].",
)
def serve(host: str | None, port: int | None, with_worker: bool | None) -> None:
    """Serve the GraphQL API (and, by default, everything else in-process)."""
    config = _load_config(host=host, port=port)
    configure_logging(level=config.log_level, fmt=config.log_format)
    app = create_app(config, run_worker=with_worker, freeze_after_startup=True)
    # uvicorn binds host:port through asyncio's create_server, whose socket
    # (from getaddrinfo) is IPPROTO_TCP, so connections get TCP_NODELAY;
    # see app.listening_socket for the socket made by hand elsewhere.
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        timeout_graceful_shutdown=30,
        **server_options(config),
    )


@main.command()
def worker() -> None:
    """Run a worker: take executions from Redis and run them."""
    config = _load_config()
    if config.redis_url is None:
        msg = "a separate worker needs NOTEBURST_REDIS_URL (and Postgres)"
        raise click.ClickException(msg)
    configure_logging(level=config.log_level, fmt=config.log_format)
    broker = create_broker(config)
    # Events go out through NOTIFY in each transaction; this bus has no
    # subscribers and only satisfies the announce-after-commit interface.
    try:
        running = start_worker(config, broker, bus=LocalEventBus(), embedded=False)
    except WorkerStartupError as exc:
        raise click.ClickException(f"the worker could not start: {exc}") from exc
    tune_garbage_collector()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    click.echo("noteburst worker running; Ctrl-C to stop", err=True)
    stop.wait()
    grace = config.workers.shutdown_grace_seconds
    click.echo(
        f"noteburst worker stopping: running executions get {grace:g} s to finish",
        err=True,
    )
    running.stop()
    click.echo("noteburst worker stopped", err=True)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the current version."""
    config = _load_config()
    configure_logging(level=config.log_level, fmt=config.log_format)

    async def upgrade() -> None:
        context = await CliContext.build(config)
        try:
            await context.database.upgrade()
        finally:
            await context.aclose()

    asyncio.run(upgrade())
    click.echo("database schema is current", err=True)


@db.command("purge")
@click.option(
    "--older-than",
    default=None,
    help=(
        "Purge executions that finished longer ago than this, e.g. 90s, 30m, "
        "12h, 7d [default: NOTEBURST_RETENTION_DAYS days]."
    ),
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help=(
        "Executions deleted per transaction [default: NOTEBURST_RETENTION_BATCH_SIZE]."
    ),
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be purged; delete nothing."
)
def db_purge(older_than: str | None, batch_size: int | None, dry_run: bool) -> None:
    """Delete finished executions older than the retention, with their events.

    Queued and running executions are never deleted, nor one whose webhook
    is still being delivered.  Runs in small batches, each its own
    transaction, so the service can keep running meanwhile.
    """
    age = None if older_than is None else _parse_duration(older_than)
    config = _load_config()
    configure_logging(level=config.log_level, fmt=config.log_format)
    if age is None and config.retention.days == 0:
        click.echo(
            "retention is off (NOTEBURST_RETENTION_DAYS=0): nothing purged; "
            "pass --older-than to purge anyway",
            err=True,
        )
        return

    async def purge() -> PurgeReport:
        context = await CliContext.build(config)
        try:
            if not await context.database.is_current():
                msg = "the database schema is not current: run `noteburst db upgrade`"
                raise click.ClickException(msg)
            service = CliFactory(context).create_retention_service()
            return await service.purge(
                older_than=age, batch_size=batch_size, dry_run=dry_run
            )
        finally:
            await context.aclose()

    report = asyncio.run(purge())
    removed = report.removed
    counts = (
        f"{removed.executions} executions, {removed.events} events, "
        f"{removed.renderings} renderings"
    )
    before = (
        "" if report.cutoff is None else f" finished before {report.cutoff.isoformat()}"
    )
    if dry_run:
        click.echo(f"would purge {counts}{before} (dry run: nothing deleted)")
    else:
        click.echo(f"purged {counts}{before}")


@main.group()
def token() -> None:
    """Manage API tokens (for NOTEBURST_AUTH_MODE=tokens)."""


def _with_tokens(work: Callable[[TokenService], Awaitable[_T]]) -> _T:
    """Run ``work`` with a token service on the configured database."""
    config = _load_config()
    # Logs go to stderr: stdout carries only the new token (for scripts).
    configure_logging(level=config.log_level, fmt=config.log_format)

    async def go() -> _T:
        context = await CliContext.build(config)
        try:
            if not await context.database.is_current():
                msg = "the database schema is not current: run `noteburst db upgrade`"
                raise click.ClickException(msg)
            return await work(CliFactory(context).create_token_service())
        finally:
            await context.aclose()

    try:
        return asyncio.run(go())
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc


def _parse_duration(value: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``12h``, ``7d`` or a number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    factor = units.get(text[-1:])
    number = text[:-1] if factor is not None else text
    try:
        seconds = float(number) * (factor or 1)
    except ValueError as exc:
        msg = f"not a duration: {value!r} (e.g. 90s, 30m, 12h, 7d)"
        raise click.BadParameter(msg) from exc
    if not math.isfinite(seconds) or seconds <= 0:
        msg = f"must be positive: {value!r}"
        raise click.BadParameter(msg)
    try:
        return timedelta(seconds=seconds)
    except OverflowError as exc:
        msg = f"too long: {value!r}"
        raise click.BadParameter(msg) from exc


@token.command("create")
@click.option("--user", required=True, help="User the token acts as.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice([USER_SCOPE, ADMIN_SCOPE]),
    default=[USER_SCOPE],
    show_default=True,
    help=f"Scope to grant; repeatable ({ADMIN_SCOPE} sees everyone's executions).",
)
@click.option(
    "--expires-in",
    default=None,
    help="Lifetime, e.g. 90s, 30m, 12h, 7d [default: never expires].",
)
def token_create(user: str, scopes: tuple[str, ...], expires_in: str | None) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    lifetime = None if expires_in is None else _parse_duration(expires_in)
    secret, info = _with_tokens(
        lambda service: service.create(user=user, scopes=scopes, expires_in=lifetime)
    )
    click.echo(secret)
    expiry = info.expires_at.isoformat() if info.expires_at else "never"
    click.echo(
        f"token {info.key} for {info.user} ({' '.join(info.scopes)}), expires {expiry}",
        err=True,
    )


@token.command("list")
@click.option("--user", default=None, help="Only this user's tokens.")
def token_list(user: str | None) -> None:
    """List tokens (keys and metadata, never secrets)."""
    tokens = _with_tokens(lambda service: service.list(user=user))
    now = datetime.now(UTC)
    for info in tokens:
        if info.revoked_at is not None:
            state = "revoked"
        elif not info.is_valid(now):
            state = "expired"
        else:
            state = "active"
        expiry = info.expires_at.isoformat() if info.expires_at else "never"
        click.echo(
            f"{info.key}\t{info.user}\t{' '.join(info.scopes)}\t{state}\t"
            f"created {info.created_at.isoformat()}\texpires {expiry}"
        )


@token.command("revoke")
@click.argument("key")
def token_revoke(key: str) -> None:
    """Revoke the token KEY (as `token list` shows it)."""
    info = _with_tokens(lambda service: service.revoke(key))
    click.echo(f"token {info.key} of {info.user} revoked", err=True)


@main.command()
@click.argument(
    "notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the executed notebook [default: NOTEBOOK.out.ipynb].",
)
@click.option(
    "--server", default=None, help="Noteburst URL; default: run one in-process."
)
@click.option("--kernel", default=None, help="Kernel name [default: the notebook's].")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=float,
    default=None,
    help="Whole-execution timeout (s).",
)
@click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help=(
        "A parameter, typed as papermill's -p types it (True, False, None, "
        "integers, floats, else a string); repeatable."
    ),
)
@click.option(
    "-r",
    "--parameter-raw",
    "raw_parameters",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A parameter passed as a string, whatever it looks like; repeatable.",
)
@click.option(
    "--queue",
    type=click.Choice(["interactive", "batch"], case_sensitive=False),
    default=None,
    help="Queue to wait in [default: the server's, interactive].",
)
@click.option(
    "--cache",
    "cache_mode",
    type=click.Choice(["use", "refresh", "bypass"], case_sensitive=False),
    default=None,
    help=(
        "Result cache: reuse a stored success or share an identical run "
        "(use), run and store (refresh), or neither [default: bypass]."
    ),
)
@click.option(
    "--max-age",
    "max_age_seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="With --cache use: reuse only a result at most this many seconds old.",
)
@click.option("--show", is_flag=True, help="Print each cell's text outputs at the end.")
@click.option(
    "--token",
    envvar="NOTEBURST_TOKEN",
    default=None,
    help="API token for --server [env: NOTEBURST_TOKEN].",
)
def run(
    *,
    notebook: Path,
    output: Path | None,
    server: str | None,
    kernel: str | None,
    timeout_seconds: float | None,
    parameters: tuple[tuple[str, str], ...],
    raw_parameters: tuple[tuple[str, str], ...],
    queue: str | None,
    cache_mode: str | None,
    max_age_seconds: float | None,
    show: bool,
    token: str | None,
) -> None:
    """Execute NOTEBOOK, show live progress, and write the executed notebook."""
    try:
        content = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"cannot read {notebook}: {exc}") from exc
    values: dict[str, Any] = {name: _papermill_type(v) for name, v in parameters}
    values.update(dict(raw_parameters))
    request = _Request(
        content=content,
        target=output or notebook.with_suffix(".out.ipynb"),
        kernel=kernel,
        timeout_seconds=timeout_seconds,
        parameters=values,
        queue=queue,
        cache_mode=cache_mode,
        max_age_seconds=max_age_seconds,
    )
    sys.exit(asyncio.run(_run(request, server, show=show, token=token)))


def _papermill_type(value: str) -> Any:
    """Type a ``-p`` value exactly as papermill's command line does.

    papermill keeps this rule in a private function of its CLI module, so
    it is restated here rather than imported.
    """
    literals: dict[str, Any] = {"True": True, "False": False, "None": None}
    if value in literals:
        return literals[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


@dataclass(frozen=True)
class _Request:
    """What ``noteburst run`` submits, and where the result goes."""

    content: dict[str, Any]
    target: Path
    kernel: str | None
    timeout_seconds: float | None
    parameters: dict[str, Any]
    queue: str | None = None
    cache_mode: str | None = None
    max_age_seconds: float | None = None


async def _run(
    request: _Request, server: str | None, *, show: bool, token: str | None = None
) -> int:
    if server is not None:
        return await _submit_and_follow(
            server, request, show=show, token=token, page_base=server
        )
    configure_logging(level="WARNING")
    with tempfile.TemporaryDirectory(prefix="noteburst-run-") as data_dir:
        # A private instance: its own data folder, so it can never pick up
        # (and "recover") executions of a `noteburst serve` on this machine.
        # One notebook: a warm kernel would only be started to be thrown away.
        config = Config(
            data_dir=Path(data_dir),
            database_url=None,
            redis_url=None,
            warm_kernels={},
            # Loopback only, and this process is its only client.
            auth_mode="none",
            host="127.0.0.1",
        )
        _stderr.print("[dim]starting an embedded Noteburst…[/dim]")
        async with serve_in_background(config) as (url, server_task):
            client = asyncio.create_task(_submit_and_follow(url, request, show=show))
            done, _ = await asyncio.wait(
                {client, server_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if client not in done:
                client.cancel()
                _stderr.print("[red]the embedded Noteburst stopped unexpectedly[/red]")
                return 2
            return client.result()


async def _submit_and_follow(
    url: str,
    request: _Request,
    *,
    show: bool,
    token: str | None = None,
    page_base: str | None = None,
) -> int:
    async with NoteburstClient(url, timeout=120, token=token) as client:
        return await _follow(client, request, show=show, page_base=page_base)


async def _follow(
    client: NoteburstClient,
    request: _Request,
    *,
    show: bool,
    page_base: str | None = None,
) -> int:
    """Submit and follow; with ``page_base`` (a server's URL), link its live page."""
    target = request.target
    try:
        execution = await client.submit(
            request.content,
            kernel_name=request.kernel,
            timeout_seconds=request.timeout_seconds,
            parameters=request.parameters,
            queue=request.queue,
            cache_mode=request.cache_mode,
            max_age_seconds=request.max_age_seconds,
        )
    except NoteburstClientError as exc:
        _stderr.print(f"[red]refused:[/red] {exc}")
        return 2
    execution_id = execution["id"]
    if page_base is not None:
        # The server's own page of the execution (noteburst.api.live); not
        # for the embedded instance, which is gone when this command ends.
        page = f"{page_base.rstrip('/')}/executions/{quote(execution_id, safe='')}"
        _stderr.print(f"[dim]live page: {page}[/dim]", soft_wrap=True)
    if execution.get("cacheHit"):
        _stderr.print(
            f"[dim]cached result of execution {execution['cachedFrom']}[/dim]"
        )
    elif execution.get("sharesRunOf"):
        _stderr.print(
            f"[dim]sharing the run of execution {execution['sharesRunOf']}[/dim]"
        )
    total = execution["progress"]["cellsTotal"]
    final: dict[str, Any] | None = None
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr,
    ) as progress:
        task = progress.add_task("queued", total=total)
        async for event in client.follow(execution_id):
            status = event["status"].lower()
            description = status
            if event["kind"] == "CELL_STARTED":
                description = f"running cell {event['cellIndex']}"
            elif event["kind"] == "LAB_STARTING" and event.get("message"):
                description = event["message"]
            progress.update(task, description=description, completed=event["cellsDone"])
            final = event["execution"]
    notebook = await client.result_notebook(execution_id)
    if notebook is not None:
        nbformat.write(nbformat.from_dict(notebook), str(target))
        if show:
            _show_outputs(notebook)
        _stderr.print(f"wrote {target}")
    if final is None:
        _stderr.print("[red]the event stream ended without a result[/red]")
        return 1
    if final["status"] == "SUCCEEDED":
        _stderr.print(f"[green]succeeded[/green] ({execution_id})")
        return 0
    error = final.get("error") or {}
    _stderr.print(
        f"[red]{final['status'].lower()}[/red]: {error.get('code', '?')}: "
        f"{error.get('message', '')}"
    )
    if error.get("traceback"):
        sys.stderr.write("\n".join(error["traceback"]) + "\n")
    return 1


def _show_outputs(notebook: dict[str, Any]) -> None:
    """Print each code cell's source and text outputs, like a console."""
    console = Console()
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code" or cell.get("execution_count") is None:
            continue
        console.print(f"[bold cyan]In \\[{cell['execution_count']}]:[/] ", end="")
        console.print(cell["source"], markup=False, highlight=False)
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                console.print(out["text"], end="", markup=False, highlight=False)
            elif kind in {"execute_result", "display_data"}:
                data = out.get("data", {})
                text = data.get("text/markdown") or data.get("text/plain", "")
                prefix = "Out: " if kind == "execute_result" else ""
                console.print(prefix + text, markup=False, highlight=False)
            elif kind == "error":
                console.print(f"[red]{out['ename']}: {out['evalue']}[/red]")


if __name__ == "__main__":
    main()
