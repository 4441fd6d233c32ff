"""The Zero to JupyterHub example gives Noteburst enough, and no more.

deploy/helm/examples/zero-to-jupyterhub-values.yaml registers Noteburst as
a hub service with a role scoped to its bot users.  Here a real JupyterHub
(tests/support/hub.py, with its local spawner) runs with that role, those
blocked users and those extraConfig snippets, the service's token wired the
way the example wires it; Noteburst's hub backend then drives a bot's lab
through it, and is refused any other user.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import nbformat
import pytest
import yaml

import tests.support.hub as hub_support
from noteburst.jupyter.exceptions import JupyterWebError
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.hub import HubLabBackend, JupyterHubClient, LabSpawnError
from tests.support.hub import HubInfo, TestHub

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "helm" / "examples" / "zero-to-jupyterhub-values.yaml"
CHART_VALUES = REPO / "deploy" / "helm" / "noteburst" / "values.yaml"
SCOPES_PER_BOT = ("admin:users", "servers", "access:servers")
LAB_OPTIONS = (
    "--ZMQChannelsWebsocketConnection.limit_rate",
    "--ServerApp.kernel_websocket_connection_class",
    "--MappingKernelManager.kernel_manager_class",
)
"""The lab settings the example's pre_spawn_hook gives the bots' labs."""
WAIT = 60

# Loaded by `jupyterhub -f`: the test hub's configuration, then what the
# example's values make Zero to JupyterHub configure.
HUB_CONFIG = """
import json
import os

exec(compile(open(os.environ["BASE_CONFIG"]).read(), os.environ["BASE_CONFIG"], "exec"))
example = json.loads(open(os.environ["EXAMPLE_HUB_VALUES"]).read())
# The labs' Noteburst settings come from the example's hook, not from here.
c.Spawner.args = [
    arg for arg in c.Spawner.args
    if not arg.startswith(tuple(json.loads(os.environ["EXAMPLE_LAB_OPTIONS"])))
]
# Zero to JupyterHub turns hub.services into c.JupyterHub.services (the
# token comes from extraConfig), hub.loadRoles into c.JupyterHub.load_roles,
# hub.config into traitlets config, then runs each hub.extraConfig snippet.
c.JupyterHub.services = [
    {"name": name, **service} for name, service in example["services"].items()
]
c.JupyterHub.load_roles = [
    {"name": name, **role} for name, role in example["loadRoles"].items()
]
for section, settings in example["config"].items():
    for trait, value in settings.items():
        setattr(c[section], trait, value)
for name in sorted(example["extraConfig"]):
    exec(compile(example["extraConfig"][name], name, "exec"))
"""


def example_hub() -> dict[str, Any]:
    hub: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())["hub"]
    return hub


def bots_in_scopes(scopes: list[str]) -> dict[str, set[str]]:
    """Bot name -> its scopes; fails on a scope not filtered to one user."""
    bots: dict[str, set[str]] = {}
    for scope in scopes:
        name, separator, user = scope.partition("!user=")
        assert separator, f"{scope}: not limited to a bot user"
        bots.setdefault(user, set()).add(name)
    return bots


def test_the_role_covers_exactly_the_charts_bot_identities() -> None:
    hub = example_hub()
    role = hub["loadRoles"]["noteburst"]
    assert role["services"] == ["noteburst"]
    assert "users" not in role
    bots = bots_in_scopes(role["scopes"])
    identities = yaml.safe_load(CHART_VALUES.read_text())["config"]["hub"]["identities"]
    assert sorted(bots) == sorted(identities)
    for name, scopes in bots.items():
        assert scopes == set(SCOPES_PER_BOT), name
    assert sorted(hub["config"]["Authenticator"]["blocked_users"]) == sorted(bots)
    token = hub["extraEnv"]["NOTEBURST_HUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "noteburst-hub-token", "key": "token"}
    assert "apiToken" not in hub["services"]["noteburst"]


@pytest.fixture
def example_jupyterhub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubInfo]:
    """A JupyterHub configured as the example configures Zero to JupyterHub."""
    values = tmp_path / "hub-values.json"
    values.write_text(json.dumps(example_hub()))
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(HUB_CONFIG)
    hub = TestHub(tmp_path / "hub")
    monkeypatch.setenv("BASE_CONFIG", str(hub_support.CONFIG))
    monkeypatch.setenv("EXAMPLE_HUB_VALUES", str(values))
    monkeypatch.setenv("EXAMPLE_LAB_OPTIONS", json.dumps(LAB_OPTIONS))
    # What the Secret noteburst-hub-token gives the hub pod.
    monkeypatch.setenv("NOTEBURST_HUB_API_TOKEN", hub.token)
    monkeypatch.setattr(hub_support, "CONFIG", config)
    hub.start()
    try:
        yield hub.info()
    finally:
        hub.stop()


def lab_arguments(hub_pid: int, user: str) -> list[str]:
    """The command line of the user's lab, a child process of the hub."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == hub_pid and f"JUPYTERHUB_USER={user}".encode() in environ:
            return [part.decode() for part in cmdline if part]
    raise AssertionError(f"no lab process of {user} under the hub ({hub_pid})")


def one_cell(source: str) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source)]
    )
    return nb


@pytest.mark.asyncio
async def test_noteburst_drives_a_bot_lab_and_nothing_else(
    example_jupyterhub: HubInfo,
) -> None:
    hub = example_jupyterhub
    bot = sorted(bots_in_scopes(example_hub()["loadRoles"]["noteburst"]["scopes"]))[0]
    async with httpx.AsyncClient(trust_env=False) as http:
        client = JupyterHubClient(
            http=http, hub_url=hub.hub_url, token=hub.token, timeout=10
        )
        # No user outside the role: not created, not started, not read.
        with pytest.raises(JupyterWebError):
            await client.ensure_user("someone-else")
        with pytest.raises(LabSpawnError):
            await client.start_server("someone-else")
        assert await client.user("someone-else") is None

        backend = HubLabBackend(
            http=http,
            hub_url=hub.hub_url,
            proxy_url=hub.proxy_url,
            token=hub.token,
            username=bot,
            spawn_timeout=WAIT,
            kernel_start_timeout=WAIT,
            request_timeout=10,
        )
        try:
            async with asyncio.timeout(WAIT):
                await backend.start()  # creates the bot user, spawns its lab
                arguments = lab_arguments(hub.pid, bot)
                for option in LAB_OPTIONS:
                    given = [a for a in arguments if a.startswith(f"{option}=")]
                    assert len(given) == 1, (option, arguments)
                async with backend.kernel("python3") as kernel:
                    nb = one_cell("print(6 * 7)")
                    assert await execute_notebook(kernel, nb) is None
                    assert nb.cells[0].outputs[0].text == "42\n"
        finally:
            async with asyncio.timeout(WAIT):
                await backend.aclose()  # stops the lab
        assert await client.server_url(bot) is None


def test_the_lab_hook_adds_only_missing_options_and_only_for_bots() -> None:
    @dataclass
    class User:
        name: str

    @dataclass
    class Spawner:
        user: User
        args: list[str]

    class Section:
        pre_spawn_hook: Any = None

    config = {"Spawner": Section()}
    namespace: dict[str, Any] = {"c": SimpleNamespace(**config)}
    exec(example_hub()["extraConfig"]["noteburst-bot-labs"], namespace)
    hook = config["Spawner"].pre_spawn_hook
    given = "--ServerApp.kernel_websocket_connection_class=mine.Connection"
    bot = Spawner(User("noteburst-bot-03"), ["--debug", given])
    hook(bot)
    assert bot.args[:2] == ["--debug", given]
    for option in LAB_OPTIONS:
        assert len([a for a in bot.args if a.startswith(f"{option}=")]) == 1, option
    human = Spawner(User("alice"), ["--debug"])
    hook(human)
    assert human.args == ["--debug"]
