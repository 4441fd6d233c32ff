"""``bench/kernel_start.py`` runs, in its smallest form (CI keeps it working)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import kernel_start


def test_the_kernel_start_benchmark_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It points JUPYTER_PATH and friends at its own folder: keep them local.
    for name in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    figures = tmp_path / "figures.json"
    assert (
        kernel_start.main(["--runs", "1", "--skip-heavy", "--json", str(figures)]) == 0
    )
    results = json.loads(figures.read_text())
    starts = {"start/plain", "start/forked", "start/nbclient"}
    starts |= {"server/plain", "server/forked"}
    assert set(results) == starts | {"memory/plain", "memory/forked"}
    assert all(results[case]["p50_ms"] > 0 for case in starts)
    plain, forked = results["memory/plain"], results["memory/forked"]
    assert "template" not in plain
    for figures in (plain["kernel"], forked["kernel"], forked["template"]):
        assert 0 < figures["private_mib"] <= figures["rss_mib"]
    printed = capsys.readouterr().out
    assert "sooner than plain" in printed
    assert "goal: forked start p50 <= 50 ms" in printed
    assert "through Noteburst's Jupyter server: forked" in printed
    assert "memory: a forked kernel's own" in printed
