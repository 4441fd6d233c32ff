"""JupyterHub configuration for the test hub (``jupyterhub -f`` loads this file).

Everything that varies per run comes from ``NOTEBURST_TEST_HUB_*`` environment
variables set by :mod:`tests.support.hub`.  The settings follow
``jupyter-on-loopback.md`` §2.2:

* loopback ports picked by the fixture, an in-memory database, no login
  (NullAuthenticator: API only), a random cookie secret (no file in cwd);
* SimpleLocalProcessSpawner (no unix users) with ``--allow-root``, homes
  under the run's temporary directory, a 30 s ``http_timeout`` so a server
  that never answers fails the spawn in bounded time, yet a lab starting on
  a loaded 2-CPU machine is not given up on (10 s was seen to expire) (G2, G11);
* the kernel websocket settings Noteburst needs on any hub: NoDelay (G1) and
  no IOPub rate limit (G3), and the slimmed extensions (G15) plus the
  lifeline, which stops a lab whose hub is gone;
* ``slow_spawn_timeout`` 0 so a spawn request answers at once (G8), and the
  hub's readiness poll of a new server every 0.1 s instead of a jittered
  backoff up to 5 s (G10);
* a service token with the scopes Noteburst's hub backend uses;
* test-only user options: ``{"cmd": [...], "http_timeout": N}`` replace the
  spawner's command and timeout for one spawn (to make a spawn fail);
* a watchdog thread: the hub stops itself (SIGTERM, so it cleans up its
  proxy and servers) when the test process that started it is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jupyterhub.utils as hub_utils  # type: ignore[import-untyped]
from traitlets.config import get_config

c: Any = get_config()
env = os.environ

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(env["NOTEBURST_TEST_HUB_PROXY_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env["NOTEBURST_TEST_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = (
    f"http://127.0.0.1:{env['NOTEBURST_TEST_HUB_PROXY_API_PORT']}"
)
c.ConfigurableHTTPProxy.command = [env["NOTEBURST_TEST_HUB_CHP"]]
c.JupyterHub.db_url = "sqlite://"
c.JupyterHub.cookie_secret = os.urandom(32)
c.JupyterHub.authenticator_class = "null"
c.Authenticator.any_allow_config = True
c.JupyterHub.spawner_class = "simple"
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}

_bin = Path(sys.executable).parent
_parent_pid = str(os.getpid())  # the hub: labs stop themselves when it is gone
_extensions = {
    "jupyterlab": False,
    "jupyter_lsp": False,
    "notebook": False,
    "notebook_shim": False,
    "nbclassic": False,
    "jupyter_server_terminals": False,
    "noteburst.jupyter.server_settings": True,
}
c.SimpleLocalProcessSpawner.home_dir_template = (
    env["NOTEBURST_TEST_HUB_HOMES"] + "/{username}"
)
c.Spawner.cmd = [str(_bin / "jupyterhub-singleuser")]
c.Spawner.args = [
    "--allow-root",
    "--ServerApp.port_retries=0",
    "--ServerApp.kernel_websocket_connection_class="
    "noteburst.jupyter.server_settings.NoDelayConnection",
    "--ZMQChannelsWebsocketConnection.limit_rate=False",
    "--MappingKernelManager.kernel_manager_class="
    "noteburst.jupyter.server_settings.LowLatencyKernelManager",
    f"--ServerApp.jpserver_extensions={_extensions!r}",  # a Python literal (G15)
]
c.Spawner.environment = {
    "PYTHONPATH": env["NOTEBURST_TEST_HUB_PYTHONPATH"],
    "NOTEBURST_JUPYTER_PARENT_PID": _parent_pid,
    "JUPYTER_PLATFORM_DIRS": "1",
}
c.Spawner.http_timeout = 30
c.Spawner.start_timeout = 30

c.JupyterHub.services = [
    {"name": "noteburst", "api_token": env["NOTEBURST_TEST_HUB_TOKEN"]}
]
c.JupyterHub.load_roles = [
    {
        "name": "noteburst",
        "services": ["noteburst"],
        "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"],
    }
]


def _apply_test_options(spawner: Any) -> None:
    """Let a test replace the command and http_timeout of one spawn."""
    options = spawner.user_options or {}
    if "cmd" in options:
        spawner.cmd = [str(part) for part in options["cmd"]]
    if "http_timeout" in options:
        spawner.http_timeout = int(options["http_timeout"])


c.Spawner.pre_spawn_hook = _apply_test_options

# G10: poll a starting server every <= 0.1 s (test setting only).
_backoff = hub_utils.exponential_backoff


async def _fast_backoff(pass_func: Any, fail_message: str, **kwargs: Any) -> Any:
    """The hub's backoff with a 0.05 s start and a 0.1 s cap (keyword callers)."""
    kwargs.update(start_wait=0.05, scale_factor=1.5, max_wait=0.1)
    return await _backoff(pass_func, fail_message, **kwargs)


hub_utils.exponential_backoff = _fast_backoff


def _watch_parent(parent: int) -> None:
    """SIGTERM the hub once the test process that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


_test_pid = int(env["NOTEBURST_TEST_HUB_PARENT_PID"])
if os.getppid() == _test_pid:
    threading.Thread(
        target=_watch_parent, args=(_test_pid,), name="parent-watch", daemon=True
    ).start()
