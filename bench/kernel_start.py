"""Kernel start, plain against forked from a template (issue 17).

Run with ``uv run python bench/kernel_start.py [--runs N] [--json PATH]``.

Why: every notebook Noteburst runs gets a fresh kernel, and a plain start
is a new interpreter importing ipykernel's stack, then whatever the
notebook imports.  :mod:`noteburst.forkserver` forks kernels from a
template that has imported them once.  This measures what that saves.

What is measured, ``--runs`` times each, one kernel at a time, through
the kernel manager Noteburst's Jupyter servers use
(:class:`~noteburst.jupyter.server_settings.LowLatencyKernelManager`,
jupyter_server's with ipykernel's arguments and without jupyter_client's
10 ms pause after a start, on the same transport: Unix sockets on Linux),
with kernel specs written to a private ``JUPYTER_PATH``:

``start``
    From ``start_kernel()`` to the first ``kernel_info`` reply read off the
    shell channel: ``plain`` (ipykernel's spec), ``forked`` (the same
    command through the forking provisioner, no warm-up), and ``nbclient``
    (``NotebookClient``'s own kernel start, ``async_start_new_kernel`` and
    ``async_start_new_kernel_client``, which waits for the kernel to be
    ready).
``server``
    The same through Noteburst's own Jupyter server (what the embedded
    default starts, :class:`~noteburst.jupyter.local.LocalJupyterServer`,
    plain or forking): from the ``POST /api/kernels`` request to the
    ``kernel_info`` reply on the kernel's websocket
    (:class:`~noteburst.jupyter.kernel.KernelConnection`): what an
    execution that finds no pooled kernel waits for.
``heavy``
    From ``start_kernel()`` to the reply of a cell that imports numpy,
    pandas and matplotlib.pyplot: ``plain`` and ``forked`` with
    ``warmup = "import numpy, pandas, matplotlib.pyplot"``.

``memory``
    Once a kernel has answered (and, for ``heavy``, run the imports), its
    process's resident memory and the part of it that is its own
    (``/proc/PID/smaps_rollup``: Rss, and Private_Clean + Private_Dirty,
    which is what one more kernel costs the machine), and the template's
    resident memory for the forked ones: what copy-on-write shares.

The first start of each variant is not counted (it starts the template,
and fills the disk cache).  Ratios are printed against the plain start
measured in the same run, so the machine's speed cancels out; absolute
milliseconds are printed too, for this machine.  Nothing asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat import v4

from noteburst.forkserver.provisioner import stop_templates, template_for
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import KERNEL_TRANSPORT, LocalJupyterServer
from noteburst.jupyter.rest import JupyterRestClient
from noteburst.jupyter.server_settings import LowLatencyKernelManager

HEAVY_IMPORTS = "import numpy, pandas, matplotlib.pyplot"
WAIT = 120.0


def write_spec(root: Path, name: str, *, warmup: str | None) -> None:
    """Write a python3 spec; ``warmup`` None: plain, else forked with it."""
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "metadata": {},
    }
    if warmup is not None:
        spec["metadata"]["kernel_provisioner"] = {
            "provisioner_name": "noteburst-fork-provisioner",
            "config": {"warmup": warmup},
        }
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


@asynccontextmanager
async def started_kernel(name: str) -> AsyncIterator[tuple[AsyncKernelManager, Any]]:
    """Start kernel ``name`` with its channels; shut it down afterwards."""
    manager = LowLatencyKernelManager(kernel_name=name, transport=KERNEL_TRANSPORT)
    client = None
    try:
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        yield manager, client
    finally:
        if client is not None:
            client.stop_channels()
        if await manager.is_alive():
            await manager.shutdown_kernel(now=True)
        manager.context.destroy(linger=0)


async def time_kernel(name: str, code: str | None) -> float:
    """Seconds from start_kernel() to the kernel_info reply (or ``code``'s)."""
    async with asyncio.timeout(WAIT):
        t0 = time.perf_counter()
        async with started_kernel(name) as (_, client):
            msg_id = client.kernel_info() if code is None else client.execute(code)
            while True:
                reply = await client.get_shell_msg(timeout=WAIT)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            seconds = time.perf_counter() - t0
            if reply["content"]["status"] != "ok":
                msg = f"{name}: {reply['content']}"
                raise RuntimeError(msg)
            return seconds


def memory_mib(pid: int) -> dict[str, float]:
    """Resident and private (unshared) memory of a process, in MiB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
    return {
        "rss_mib": fields["Rss"],
        "private_mib": fields["Private_Clean"] + fields["Private_Dirty"],
    }


async def kernel_memory(
    name: str, code: str | None, warmup: str | None
) -> dict[str, Any]:
    """Memory of a started kernel (after ``code``), and of its template."""
    async with asyncio.timeout(WAIT), started_kernel(name) as (manager, client):
        await client.wait_for_ready(timeout=WAIT)
        if code is not None:
            reply = await client.execute_interactive(code, timeout=WAIT)
            if reply["content"]["status"] != "ok":
                msg = f"{name}: {reply['content']}"
                raise RuntimeError(msg)
        pid = getattr(manager.provisioner, "pid", None)
        assert pid is not None, f"{name}: no kernel pid"
        figures: dict[str, Any] = {"kernel": memory_mib(pid)}
        if warmup is not None:
            process = template_for(sys.executable, warmup).process
            assert process is not None
            figures["template"] = memory_mib(process.pid)
        return figures


async def time_nbclient() -> float:
    """Seconds for nbclient to start a kernel and have it ready."""
    client = NotebookClient(v4.new_notebook(), kernel_name="plain", timeout=60)
    t0 = time.perf_counter()
    async with client.async_setup_kernel():
        return time.perf_counter() - t0


@asynccontextmanager
async def jupyter_server(
    root: Path, fork_kernels: str | None
) -> AsyncIterator[JupyterRestClient]:
    """Noteburst's own Jupyter server, and a REST client of it."""
    server = LocalJupyterServer(
        root_dir=root, start_timeout=WAIT, fork_kernels=fork_kernels
    )
    await server.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            yield JupyterRestClient(
                http=http, base_url=server.url, token=server.token, timeout=WAIT
            )
    finally:
        await server.stop()


async def time_server_kernel(rest: JupyterRestClient) -> float:
    """Seconds from ``POST /api/kernels`` to the ``kernel_info`` reply."""
    async with asyncio.timeout(WAIT):
        t0 = time.perf_counter()
        kernel_id = await rest.create_kernel("python3")
        try:
            async with await KernelConnection.open(rest, kernel_id) as conn:
                await conn.kernel_info()
                return time.perf_counter() - t0
        finally:
            await rest.delete_kernel(kernel_id)


async def measure(runs: int, what: Callable[[], Awaitable[float]]) -> list[float]:
    await what()  # not counted: template start, disk cache
    return [await what() for _ in range(runs)]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(values) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        * 1000,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["JUPYTER_PATH"] = str(root / "jupyter")
        os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
        os.environ["IPYTHONDIR"] = str(root / "ipython")
        write_spec(root / "jupyter", "plain", warmup=None)
        write_spec(root / "jupyter", "forked", warmup="")
        write_spec(root / "jupyter", "forked-heavy", warmup=HEAVY_IMPORTS)
        try:
            cases: dict[str, Callable[[], Awaitable[float]]] = {
                "start/plain": lambda: time_kernel("plain", None),
                "start/forked": lambda: time_kernel("forked", None),
                "start/nbclient": time_nbclient,
            }
            if not args.skip_heavy:
                cases["heavy/plain"] = lambda: time_kernel("plain", HEAVY_IMPORTS)
                cases["heavy/forked"] = lambda: time_kernel(
                    "forked-heavy", HEAVY_IMPORTS
                )
            for case, what in cases.items():
                results[case] = summary(await measure(args.runs, what))
                print_case(case, results[case])
            for case, fork_kernels in (("server/plain", None), ("server/forked", "")):
                server_root = root / case.replace("/", "-")
                server_root.mkdir()
                async with jupyter_server(server_root, fork_kernels) as rest:
                    timed = await measure(args.runs, lambda: time_server_kernel(rest))
                    results[case] = summary(timed)
                print_case(case, results[case])
            kernels: dict[str, tuple[str, str | None, str | None]] = {
                "memory/plain": ("plain", None, None),
                "memory/forked": ("forked", None, ""),
            }
            if not args.skip_heavy:
                kernels["memory/heavy-plain"] = ("plain", HEAVY_IMPORTS, None)
                kernels["memory/heavy-forked"] = (
                    "forked-heavy",
                    HEAVY_IMPORTS,
                    HEAVY_IMPORTS,
                )
            for case, (name, code, warmup) in kernels.items():
                results[case] = await kernel_memory(name, code, warmup)
                kernel = results[case]["kernel"]
                template = results[case].get("template")
                print(
                    f"{case:19} kernel RSS {kernel['rss_mib']:6.1f} MiB, its own "
                    f"{kernel['private_mib']:6.1f} MiB"
                    + (
                        f"; template RSS {template['rss_mib']:6.1f} MiB"
                        if template
                        else ""
                    ),
                    flush=True,
                )
        finally:
            stop_templates()
    report(results)
    return results


def print_case(case: str, figures: dict[str, float]) -> None:
    print(
        f"{case:16} p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms",
        flush=True,
    )


def report(results: dict[str, Any]) -> None:
    def ratio(slow: str, fast: str) -> float:
        return float(results[slow]["p50_ms"] / results[fast]["p50_ms"])

    print()
    plain = ratio("start/plain", "start/forked")
    nbclient = ratio("start/nbclient", "start/forked")
    print(f"forked start: {plain:.1f}x sooner than plain,")
    print(f"              {nbclient:.1f}x sooner than nbclient's")
    forked = results["start/forked"]["p50_ms"]
    print(
        f"goal: forked start p50 <= 50 ms: {'met' if forked <= 50 else 'NOT met'} "
        f"({forked:.0f} ms here)"
    )
    server = ratio("server/plain", "server/forked")
    print(
        f"through Noteburst's Jupyter server: forked "
        f"{results['server/forked']['p50_ms']:.0f} ms, {server:.1f}x sooner than "
        f"plain ({results['server/plain']['p50_ms']:.0f} ms)"
    )
    plain_own = results["memory/plain"]["kernel"]["private_mib"]
    forked_own = results["memory/forked"]["kernel"]["private_mib"]
    print(
        f"memory: a forked kernel's own {forked_own:.1f} MiB against a plain "
        f"one's {plain_own:.1f} MiB (the rest is shared with its template)"
    )
    if "heavy/plain" in results:
        heavy = ratio("heavy/plain", "heavy/forked")
        print(
            f"a kernel that imports numpy, pandas, matplotlib: {heavy:.1f}x sooner "
            f"forked from a template that imported them; goal >= 10x: "
            f"{'met' if heavy >= 10 else 'NOT met'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--skip-heavy", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nAbsolute figures depend on this machine ({os.cpu_count()} CPUs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
