"""Fixtures shared by the Jupyter client tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def nbclient_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the in-process nbclient kernels' files out of the home directory."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return runtime
