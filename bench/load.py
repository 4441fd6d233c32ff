"""Load: many small notebooks at once, and one right after another.

Run with ``uv run python bench/load.py [--mode concurrent|back-to-back|both]``;
``--quick`` is a small run (8 notebooks, 4 in flight; 4 back to back) for
development.

Why (issue 17): a dashboard is not one visitor at a time.  When several
people open pages at once, Noteburst must start a fresh kernel for each
notebook, and the warm figures of ``bench/latency.py`` (tens of ms) hold
only while requests arrive slower than a kernel starts: that benchmark waits
for the pool to refill between runs.  Here nothing waits: under concurrent
load, or with no pause between requests, the pool of one is empty and every
request pays a kernel start.  This script shows what a user then sees, and
compares it with the obvious alternatives under the same load, in one run.

What is measured, with the 5-cell trivial notebook of ``bench/latency.py``
(:func:`bench.latency.make_notebook`):

``noteburst``
    ``noteburst serve`` on the embedded default, in its own process, as a
    user runs it: SQLite in a fresh data directory, the in-process queue
    and worker (4 threads), the local Jupyter server it starts itself, the
    default pool (one warm ``python3`` kernel).  Each notebook is submitted
    with :class:`noteburst.client.NoteburstClient` (one client for all, as
    a dashboard backend keeps one) and followed over its subscription
    (``afterSequence: 0``, every event); its latency is from the
    ``submitExecution`` request to the terminal event received.  After the
    timed window every execution must be SUCCEEDED and its executed
    notebook have the expected outputs.
``nbclient``
    ``NotebookClient(nb, kernel_name="python3").execute()`` in this process
    on worker threads: a fresh kernel per notebook, shut down before
    ``execute`` returns (:func:`bench.latency.nbclient_measure`).
``papermill``
    ``papermill in.ipynb out.ipynb`` as a subprocess per notebook: a cold
    process and a cold kernel each (:func:`bench.latency.papermill_measure`).
``floor`` (back-to-back only)
    The same cells on one kernel already running (started once on a
    jupyter_server this script starts, reused for every run), sent with
    :func:`noteburst.jupyter.execute.execute_notebook`: what the notebook
    costs at the least (:func:`bench.latency.floor_measure`).

Two loads:

``concurrent``
    ``--notebooks`` (30) notebooks, ``--in-flight`` (4) at a time: each of
    K lanes starts its next notebook as soon as its previous one is done
    (K threads for nbclient, K processes for papermill, K submissions
    followed at once for Noteburst, whose worker runs 4 at a time).
    Throughput is N / wall time (first start to last end); latency p50/p95
    are over the N notebooks.
``back-to-back``
    ``--runs`` (15) notebooks one after another, the next started the moment
    the previous one ended, no pause: p50/p95.

Each system gets one untimed warm-up run (outputs checked), and each timed
block starts after :data:`IDLE_SECONDS` of idle, so that Noteburst's pool
has refilled: a burst arrives at an idle server.  The systems are measured
one after another (Noteburst, nbclient, papermill, floor), not interleaved:
interleaving would put pauses between a system's own requests.  Ratios are
taken between figures of the same run; the goals of issue 17 are printed as
met / not met.  Nothing asserts on the figures.  Everything started is
stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nbformat

from bench.latency import (
    BenchError,
    Interrupts,
    Measure,
    Sample,
    check_outputs,
    floor_measure,
    hermetic_jupyter_dirs,
    make_notebook,
    nbclient_measure,
    noteburst_service,
    p95,
    papermill_measure,
    run_main,
    service_warnings,
    submit_and_watch,
)
from noteburst.client import NoteburstClient
from noteburst.config import Config
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.rest import JupyterRestClient
from noteburst.logs import configure_logging

MODES = ("concurrent", "back-to-back")
SYSTEMS = ("noteburst", "nbclient", "papermill", "floor")
LABELS = {
    "noteburst": "Noteburst (embedded, noteburst serve)",
    "nbclient": "nbclient, a fresh kernel each, in threads",
    "papermill": "papermill CLI, one process each",
    "floor": "floor: the cells on one running kernel",
}
IDLE_SECONDS = 5.0
"""Idle time before each timed block (Noteburst's pool refills meanwhile)."""

# Issue 17's goals (printed, never asserted).
GOAL_NBCLIENT_THROUGHPUT = 3.0  # concurrent: ≥ 3x nbclient's nb/s
GOAL_PAPERMILL_THROUGHPUT = 8.0  # concurrent: ≥ 8x papermill's nb/s
GOAL_P95_SECONDS = 0.5  # concurrent: Noteburst latency p95 under 0.5 s
GOAL_FLOOR_RATIO = 3.0  # back-to-back: Noteburst p50 within 3x the floor


@dataclass
class Figures:
    """One system under one load: each notebook's latency, and the wall time."""

    latencies: list[float]
    wall: float
    cpu: CpuUse | None = None
    failures: list[str] = field(default_factory=list)
    """Why the notebooks that failed did (baselines only; see under_load)."""

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        return p95(self.latencies)

    def summary(self) -> dict[str, float | int]:
        return {
            "n": len(self.latencies),
            "throughput": self.throughput,
            "p50": self.p50,
            "p95": self.p95,
            "min": min(self.latencies),
            "max": max(self.latencies),
            "wall": self.wall,
            "failures": len(self.failures),
        } | ({} if self.cpu is None else self.cpu.summary(len(self.latencies)))


@dataclass
class CpuUse:
    """CPU seconds spent during a block: the machine's, and this benchmark's.

    ``ours`` is this script's process and every process under it (Noteburst,
    its Jupyter server and kernels, nbclient's kernels, papermill and its
    kernels), the ones that ended included; ``busy - ours`` is every other
    process on the machine (another agent's tests, say).
    """

    ours: float
    busy: float
    total: float
    roles: dict[str, float] = field(default_factory=dict)
    """``ours`` split by what each process is (see :func:`process_role`)."""

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU time used by other processes."""
        return max(0.0, self.busy - self.ours) / self.total

    def summary(self, notebooks: int) -> dict[str, float]:
        return {
            "cpu_seconds_per_notebook": self.ours / notebooks,
            "machine_busy_share": self.busy / self.total,
            "others_share": self.others_share,
        } | {
            f"cpu_seconds_per_notebook_{role}": seconds / notebooks
            for role, seconds in self.roles.items()
        }


@dataclass
class Results:
    """Figures by mode and system, and what the run noticed on the side."""

    figures: dict[str, dict[str, Figures]] = field(
        default_factory=lambda: {mode: {} for mode in MODES}
    )
    load: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    """The machine's load average at each step (``os.getloadavg()``)."""
    service_warnings: list[str] = field(default_factory=list)

    def note_load(self, when: str) -> None:
        self.load.append((when, os.getloadavg()))


# -- running a load ------------------------------------------------------------


async def under_load(
    measure: Measure, mode: str, count: int, lanes: int, *, tolerate: bool = False
) -> Figures:
    """Run ``count`` notebooks, ``lanes`` at a time, each lane without pause.

    ``lanes=1`` is back-to-back.  Wall time runs from the first start to
    the last end.  ``tolerate``: a notebook that fails is counted and
    reported, and its lane goes on (for the baselines: nbclient's own
    kernels sometimes die at start under concurrent threads, a port race
    in jupyter_client); otherwise the first failure ends the block.
    Throughput counts the notebooks that succeeded.
    """
    latencies: list[float] = []
    failures: list[str] = []
    todo = iter(range(count))  # shared: each lane takes the next notebook

    async def lane() -> None:
        for _ in todo:
            try:
                sample = await measure(mode, True)
            except Exception as exc:
                if not tolerate:
                    raise
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(sample.seconds)

    cpu0 = cpu_times()
    roles0 = cpu_by_role()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(lane()) for _ in range(min(lanes, count))]
    try:
        await asyncio.gather(*tasks)  # the first failure, as it is
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    cpu1 = cpu_times()
    roles1 = cpu_by_role()
    cpu = None
    if cpu0 is not None and cpu1 is not None and cpu1[2] > cpu0[2]:
        ours, busy, total = (end - start for start, end in zip(cpu0, cpu1, strict=True))
        roles = {
            role: seconds - roles0.get(role, 0.0)
            for role, seconds in roles1.items()
            if seconds - roles0.get(role, 0.0) > 0
        }
        cpu = CpuUse(ours, busy, total, roles)
    if not latencies:
        msg = f"every notebook failed; the first: {failures[0]}"
        raise BenchError(msg)
    return Figures(latencies, wall, cpu, failures)


def cpu_times() -> tuple[float, float, float] | None:
    """CPU seconds so far: this process's tree, the machine's busy and total.

    Linux only (`None` elsewhere).  The machine's from the first line of
    ``/proc/stat`` (user, nice, system, idle, iowait, irq, softirq, steal;
    idle and iowait are not busy).  The tree's from ``/proc/PID/stat`` of
    this process and each live descendant: utime and stime, plus cutime and
    cstime, the children it has reaped (so a papermill or a kernel that
    ended during the block still counts).
    """
    tick = os.sysconf("SC_CLK_TCK")
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    ticks = [int(value) for value in line.split()[1:9]]
    total = sum(ticks)
    busy = total - ticks[3] - ticks[4]
    children: dict[int, list[int]] = {}
    own: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # from field 3, state, on
        children.setdefault(int(fields[1]), []).append(int(name))
        own[int(name)] = sum(int(value) for value in fields[11:15])
    ours, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        ours += own.get(pid, 0)
        todo.extend(children.get(pid, []))
    return ours / tick, busy / tick, total / tick


def process_role(pid: int, cmdline: str) -> str:
    """What a process of this benchmark's tree is, from its command line."""
    if pid == os.getpid():
        return "benchmark"
    for marker, role in (
        ("noteburst.cli", "noteburst"),
        ("jupyter_server", "jupyter_server"),
        ("noteburst.forkserver.template", "kernels"),  # the template and its forks
        ("ipykernel_launcher", "kernels"),
        ("papermill", "papermill"),
    ):
        if marker in cmdline:
            return role
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process's tree, by :func:`process_role`.

    Each process counts its own time and its reaped children's (the
    template's ended kernels count as kernels), so that a profile of a
    block says where its CPU went: Noteburst's own process, its Jupyter
    server, or the kernels.  Linux only (empty elsewhere).
    """
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, list[int]] = {}
    seconds: dict[int, tuple[str, float]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(name))
        used = sum(int(value) for value in fields[11:15]) / tick
        command = cmdline.replace(b"\0", b" ").decode(errors="replace")
        role = process_role(int(name), command)
        seconds[int(name)] = (role, used)
    roles: dict[str, float] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in seconds:
            role, used = seconds[pid]
            roles[role] = roles.get(role, 0.0) + used
        todo.extend(parents.get(pid, []))
    return roles


@dataclass
class NoteburstRuns:
    """Submit-and-wait with one client; outputs checked after the timed window."""

    client: NoteburstClient
    notebook: dict[str, Any]
    executions: list[str] = field(default_factory=list)

    async def measure(self, phase: str, check: bool) -> Sample:
        watched = await submit_and_watch(self.client, self.notebook)
        _, total = watched.succeeded("noteburst")
        self.executions.append(watched.execution_id)
        return Sample(total, phase)

    async def verify(self) -> None:
        """Every execution since the last call: its executed notebook's outputs."""
        for execution_id in self.executions:
            result = await self.client.result_notebook(execution_id)
            check_outputs(result, f"noteburst execution {execution_id}")
        self.executions.clear()


async def measure_system(
    system: str,
    measure: Measure,
    args: argparse.Namespace,
    results: Results,
    verify: NoteburstRuns | None = None,
) -> None:
    """One warm-up run, then each requested mode's block after an idle pause."""
    print(f"[{system}] warm-up", flush=True)
    await measure("warm-up", True)
    for mode in args.modes:
        if system == "floor" and mode == "concurrent":
            continue
        await asyncio.sleep(IDLE_SECONDS)
        results.note_load(f"{system} {mode}")
        count, lanes = (
            (args.notebooks, args.in_flight) if mode == "concurrent" else (args.runs, 1)
        )
        print(f"[{system}] {mode}: {count} notebooks, {lanes} in flight", flush=True)
        figures = await under_load(
            measure, mode, count, lanes, tolerate=system in ("nbclient", "papermill")
        )
        if verify is not None:
            await verify.verify()
        results.figures[mode][system] = figures
        print(
            f"[{system}] {mode}: {figures.throughput:.2f} nb/s, "
            f"p50 {figures.p50:.3f} s, p95 {figures.p95:.3f} s",
            flush=True,
        )
        for failure in figures.failures:
            print(f"[{system}] {mode}: a notebook failed: {failure}", flush=True)


@contextlib.asynccontextmanager
async def running_kernel(root: Path) -> AsyncIterator[KernelConnection]:
    """A jupyter_server and one kernel on it, connected (for the floor)."""
    jupyter = LocalJupyterServer(root_dir=root, start_timeout=60)
    await jupyter.start()
    try:
        async with httpx.AsyncClient() as http:
            rest = JupyterRestClient(
                http=http, base_url=jupyter.url, token=jupyter.token, timeout=30
            )
            kernel = await rest.create_kernel("python3")
            try:
                conn = await KernelConnection.open(rest, kernel)
                try:
                    yield conn
                finally:
                    await conn.aclose()
            finally:
                await rest.delete_kernel(kernel)
    finally:
        await jupyter.stop()


async def measure_all(args: argparse.Namespace, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="nbload-") as folder:
        tmp = Path(folder)
        try:
            await _measure_in(tmp, args, results)
        finally:
            results.service_warnings.extend(service_warnings(tmp))


async def _measure_in(tmp: Path, args: argparse.Namespace, results: Results) -> None:
    hermetic_jupyter_dirs(tmp / "home")
    notebook: dict[str, Any] = json.loads(nbformat.writes(make_notebook()))
    results.note_load("start")

    # The embedded default, as a user runs it: only its data directory is
    # set (a fresh one); everything else is Noteburst's default.
    print("starting noteburst serve (embedded default)…", flush=True)
    config = Config(data_dir=tmp / "noteburst")
    async with (
        noteburst_service(
            config, run_worker=True, log_path=tmp / "noteburst.log"
        ) as url,
        NoteburstClient(url, timeout=60) as client,
    ):
        runs = NoteburstRuns(client, notebook)
        await measure_system("noteburst", runs.measure, args, results, runs)

    if "nbclient" in args.systems:
        await measure_system("nbclient", nbclient_measure(), args, results)
    if "papermill" in args.systems:
        (tmp / "papermill").mkdir()
        await measure_system(
            "papermill", papermill_measure(tmp / "papermill"), args, results
        )

    if "back-to-back" in args.modes and "floor" in args.systems:
        print("starting a jupyter_server and a kernel for the floor…", flush=True)
        async with running_kernel(tmp / "floor") as conn:
            await measure_system("floor", floor_measure(conn), args, results)
    results.note_load("end")


# -- report --------------------------------------------------------------------


def _goal(met: bool, text: str) -> str:
    return f"goal {text}: {'met' if met else 'NOT met'}"


def report(results: Results) -> dict[str, Any]:
    """Print the table, the ratios and the goals; return them for the JSON."""
    output: dict[str, Any] = {"figures": _report_table(results)}
    output["ratios"], output["goals"] = {}, {}
    for mode, part in (
        ("concurrent", _report_concurrent),
        ("back-to-back", _report_back_to_back),
    ):
        if "noteburst" in results.figures[mode]:
            output["ratios"][mode], output["goals"][mode] = part(results.figures[mode])
    print(
        "\nmachine load average (1, 5, 15 min): "
        + "; ".join(
            f"{when} {one:.2f} {five:.2f} {fifteen:.2f}"
            for when, (one, five, fifteen) in results.load
        )
    )
    warnings = results.service_warnings
    print(f"warnings noteburst serve logged: {len(warnings)}")
    for line in warnings[:20]:
        print(f"  {line}")
    output["load_average"] = {when: list(values) for when, values in results.load}
    output["service_warnings"] = warnings
    output["raw"] = {
        mode: {system: f.latencies for system, f in by_system.items()}
        for mode, by_system in results.figures.items()
    }
    return output


def _report_table(results: Results) -> dict[str, Any]:
    table: dict[str, Any] = {}
    print()
    print(
        f"{'':<8}{'system':<44} {'n':>3} {'nb/s':>7} {'p50':>8} {'p95':>8} "
        f"{'CPU/nb':>7} {'busy':>5} {'others':>6}"
    )
    for mode in MODES:
        for system, figures in results.figures[mode].items():
            table.setdefault(mode, {})[system] = figures.summary()
            cpu = figures.cpu
            usage = (
                ""
                if cpu is None
                else f" {cpu.ours / len(figures.latencies):>6.2f}s "
                f"{cpu.busy / cpu.total:>5.0%} {cpu.others_share:>6.0%}"
            )
            failed = f"  ({len(figures.failures)} failed)" if figures.failures else ""
            print(
                f"{mode[:7]:<8}{LABELS[system]:<44} {len(figures.latencies):>3} "
                f"{figures.throughput:>7.2f} {figures.p50:>7.3f}s {figures.p95:>7.3f}s"
                + usage
                + failed
            )
            if cpu is not None and cpu.roles:
                split = ", ".join(
                    f"{role} {1000 * used / len(figures.latencies):.0f} ms"
                    for role, used in sorted(cpu.roles.items(), key=lambda r: -r[1])
                )
                print(f"{'':<8}  CPU/nb by process: {split}")
    print(
        "(CPU/nb: CPU seconds of this benchmark's processes per notebook; busy:"
        "\n share of the machine's CPU time busy during the block; others: the"
        "\n share used by processes that are not this benchmark's)"
    )
    return table


def _report_concurrent(
    figures: dict[str, Figures],
) -> tuple[dict[str, float], dict[str, bool]]:
    noteburst = figures["noteburst"]
    baselines = [b for b in ("nbclient", "papermill") if b in figures]
    ratios: dict[str, float] = {}
    for b in baselines:
        ratios[f"throughput_vs_{b}"] = noteburst.throughput / figures[b].throughput
        ratios[f"p50_vs_{b}"] = noteburst.p50 / figures[b].p50
    print("\nconcurrent (goals of issue 17):")
    if baselines:
        throughput = (f"{ratios[f'throughput_vs_{b}']:.1f}x {b}" for b in baselines)
        latency = (f"{ratios[f'p50_vs_{b}']:.2f}x {b}" for b in baselines)
        print(
            f"  noteburst throughput = {', '.join(throughput)}; "
            f"latency p50 = {', '.join(latency)}"
        )
    goals: dict[str, bool] = {}
    for b, goal in (
        ("nbclient", GOAL_NBCLIENT_THROUGHPUT),
        ("papermill", GOAL_PAPERMILL_THROUGHPUT),
    ):
        if b in baselines:
            ratio = ratios[f"throughput_vs_{b}"]
            goals[f"throughput_vs_{b}"] = met = ratio >= goal
            print(f"  {ratio:.1f}x {b}'s throughput: {_goal(met, f'≥ {goal:g}x')}")
    goals["p95"] = met = noteburst.p95 < GOAL_P95_SECONDS
    print(
        f"  latency p95 {noteburst.p95:.3f} s: "
        + _goal(met, f"< {GOAL_P95_SECONDS:g} s")
    )
    return ratios, goals


def _report_back_to_back(
    figures: dict[str, Figures],
) -> tuple[dict[str, float], dict[str, bool]]:
    noteburst = figures["noteburst"]
    others = [o for o in ("floor", "nbclient", "papermill") if o in figures]
    ratios = {f"p50_vs_{o}": noteburst.p50 / figures[o].p50 for o in others}
    print("\nback-to-back (goal of issue 17):")
    if others:
        parts = (f"{ratios[f'p50_vs_{o}']:.2f}x {o}" for o in others)
        print(f"  noteburst p50 = {', '.join(parts)}")
    goals: dict[str, bool] = {}
    if "floor" in others:
        ratio = ratios["p50_vs_floor"]
        goals["p50_vs_floor"] = met = ratio <= GOAL_FLOOR_RATIO
        print(f"  p50 {ratio:.1f}x the floor: {_goal(met, f'≤ {GOAL_FLOOR_RATIO:g}x')}")
    return ratios, goals


def _commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return None


# -- main ----------------------------------------------------------------------


async def bench(args: argparse.Namespace, interrupts: Interrupts) -> dict[str, Any]:
    interrupts.install()
    # nbclient runs on the loop's default executor: one thread per lane.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=args.in_flight + 2)
    )
    results = Results()
    try:
        await measure_all(args, results)
    finally:
        interrupts.cleaning = True
    output = report(results)
    output["options"] = {
        "modes": args.modes,
        "notebooks": args.notebooks,
        "in_flight": args.in_flight,
        "runs": args.runs,
    }
    output["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    output["commit"] = _commit()
    output["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    return output


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        default="both",
        help="which load to run (default: both)",
    )
    parser.add_argument(
        "--notebooks",
        type=_positive,
        help="concurrent: notebooks in all (default 30; --quick 8)",
    )
    parser.add_argument(
        "--in-flight",
        type=_positive,
        help="concurrent: notebooks at a time (default 4)",
    )
    parser.add_argument(
        "--runs",
        type=_positive,
        help="back-to-back: notebooks one after another (default 15; --quick 4)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small numbers, for development"
    )
    parser.add_argument(
        "--without",
        action="append",
        choices=SYSTEMS[1:],
        default=[],
        help="leave out a baseline (repeat for more), e.g. to profile Noteburst "
        "alone; the goals then print only the ratios measured",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    defaults = {"notebooks": 8, "runs": 4} if args.quick else {}
    defaults = {"notebooks": 30, "in_flight": 4, "runs": 15} | defaults
    for option, default in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, default)
    args.modes = MODES if args.mode == "both" else (args.mode,)
    args.systems = tuple(s for s in SYSTEMS if s not in args.without)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level="WARNING")
    return run_main(args, bench, "figures")


if __name__ == "__main__":
    sys.exit(main())
