"""``bench/load.py``'s options and report, without running any load.

The benchmark itself takes minutes and its figures depend on the machine,
so it is never run by the tests; this checks that ``--quick`` and the
defaults give the numbers the README states, and that the report computes
the ratios and says met / not met against issue 17's goals from the
figures it is given (made up here, no timing involved).
"""

from __future__ import annotations

import os

import pytest

from bench.latency import Sample
from bench.load import (
    CpuUse,
    Figures,
    Results,
    cpu_by_role,
    parse_args,
    process_role,
    report,
    under_load,
)


def test_defaults_and_quick() -> None:
    args = parse_args([])
    assert (args.notebooks, args.in_flight, args.runs) == (30, 4, 15)
    assert args.modes == ("concurrent", "back-to-back")

    quick = parse_args(["--quick", "--mode", "concurrent"])
    assert (quick.notebooks, quick.in_flight, quick.runs) == (8, 4, 4)
    assert quick.modes == ("concurrent",)

    explicit = parse_args(["--quick", "--notebooks", "12", "--in-flight", "2"])
    assert (explicit.notebooks, explicit.in_flight) == (12, 2)


def test_rejects_zero() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--in-flight", "0"])


def test_report_ratios_and_goals(capsys: pytest.CaptureFixture[str]) -> None:
    results = Results()
    results.figures["concurrent"] = {
        # 30 nb/s; 0.1 CPU-s a notebook, other processes 1 of the 4 CPU-s busy
        "noteburst": Figures(
            [0.2] * 30,
            wall=1.0,
            cpu=CpuUse(3.0, 4.0, 4.0, {"kernels": 1.5, "noteburst": 0.9}),
        ),
        "nbclient": Figures([1.0] * 30, wall=10.0),  # 3 nb/s
        "papermill": Figures([4.0] * 30, wall=30.0),  # 1 nb/s
    }
    results.figures["back-to-back"] = {
        "noteburst": Figures([0.6, 0.6, 0.9], wall=2.1),
        "nbclient": Figures([1.2, 1.2, 1.2], wall=3.6),
        "floor": Figures([0.02, 0.02, 0.02], wall=0.06),
    }

    output = report(results)

    cpu = output["figures"]["concurrent"]["noteburst"]
    assert cpu["cpu_seconds_per_notebook"] == pytest.approx(0.1)
    assert cpu["others_share"] == pytest.approx(0.25)
    assert cpu["cpu_seconds_per_notebook_kernels"] == pytest.approx(0.05)
    concurrent = output["ratios"]["concurrent"]
    assert concurrent["throughput_vs_nbclient"] == pytest.approx(10.0)
    assert concurrent["throughput_vs_papermill"] == pytest.approx(30.0)
    assert output["goals"]["concurrent"] == {
        "throughput_vs_nbclient": True,
        "throughput_vs_papermill": True,
        "p95": True,
    }
    serial = output["ratios"]["back-to-back"]
    assert serial["p50_vs_floor"] == pytest.approx(30.0)
    assert serial["p50_vs_nbclient"] == pytest.approx(0.5)
    assert "p50_vs_papermill" not in serial  # not measured, not made up
    assert output["goals"]["back-to-back"] == {"p50_vs_floor": False}

    printed = capsys.readouterr().out
    assert "noteburst throughput = 10.0x nbclient, 30.0x papermill" in printed
    assert "p50 30.0x the floor: goal ≤ 3x: NOT met" in printed
    assert "latency p95 0.200 s: goal < 0.5 s: met" in printed
    assert "CPU/nb by process: kernels 50 ms, noteburst 30 ms" in printed


def test_cpu_is_split_by_what_each_process_is() -> None:
    assert process_role(os.getpid(), "python bench/load.py") == "benchmark"
    assert process_role(1, "python -m noteburst.cli serve --port 1") == "noteburst"
    assert process_role(1, "python -m jupyter_server --ServerApp.ip=x") == (
        "jupyter_server"
    )
    assert process_role(1, "python -m noteburst.forkserver.template --socket s") == (
        "kernels"
    )
    assert process_role(1, "python -m ipykernel_launcher -f k.json") == "kernels"
    assert process_role(1, "papermill in.ipynb out.ipynb") == "papermill"
    # This process is in its own tree: its CPU so far counts.
    assert cpu_by_role()["benchmark"] > 0


@pytest.mark.asyncio
async def test_a_baseline_notebook_that_fails_is_counted_not_fatal() -> None:
    calls = 0

    async def measure(mode: str, timed: bool) -> Sample:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return Sample(seconds=0.01, phase=mode)

    figures = await under_load(measure, "concurrent", 9, 2, tolerate=True)
    assert len(figures.latencies) == 6
    assert (
        figures.failures
        == ["RuntimeError: Kernel died before replying to kernel_info"] * 3
    )
    assert figures.summary()["failures"] == 3

    calls = 0
    with pytest.raises(RuntimeError, match="Kernel died"):
        await under_load(measure, "concurrent", 9, 2)  # Noteburst's own: fatal
