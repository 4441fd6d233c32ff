"""How long a worker's start may take: long enough for what it is told to wait.

A worker on JupyterHub may first wait ``identity_wait_seconds`` for a free
bot identity and then ``spawn_timeout`` for its lab; if the bound on the
whole start were shorter, a waiting worker would be cut off with a bare
"timed out" before it could take a freed identity or say that none came.
"""

from __future__ import annotations

from pathlib import Path

from noteburst.config import Config
from noteburst.worker.runtime import boot_timeout


def test_a_hub_worker_may_wait_for_an_identity_and_then_spawn(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path,
        lab_backend="jupyterhub",
        hub_url="http://hub.example/",
        hub_token="secret",
        identity_wait_seconds=500,
        spawn_timeout=300,
        jupyter_start_timeout=60,
    )
    assert boot_timeout(config) > 500 + 300


def test_a_local_worker_may_wait_for_its_jupyter_server(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, jupyter_start_timeout=200)
    assert boot_timeout(config) > 200
