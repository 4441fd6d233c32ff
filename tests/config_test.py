"""Configuration: defaults, validation, every variable, and its documentation.

The settings are grouped (``config.webhooks.max_attempts``) but the
environment stays flat: VARIABLES lists, by hand, every ``NOTEBURST_*``
variable there was when the groups were introduced, with where its value
must land, so that no deployment's variable silently stops working.  A
new setting must be added to it (and docs/configuration.md regenerated).
"""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from noteburst.app import check_config
from noteburst.config import (
    Config,
    JupyterSettings,
    WebhookSettings,
    render_configuration_docs,
    variables,
)
from noteburst.exceptions import ConfigurationError

DOCS = Path(__file__).parents[1] / "docs" / "configuration.md"

# (variable, value set, attribute path, value expected there)
VARIABLES: list[tuple[str, str, str, Any]] = [
    (
        "NOTEBURST_DATABASE_URL",
        "postgresql+asyncpg://u@h/db",
        "database_url",
        "postgresql+asyncpg://u@h/db",
    ),
    ("NOTEBURST_REDIS_URL", "redis://h:6379/1", "redis_url", "redis://h:6379/1"),
    (
        "NOTEBURST_CORS_ORIGINS",
        '["https://App.example.org", "http://localhost:3000"]',
        "cors_origins",
        ["https://app.example.org", "http://localhost:3000"],
    ),
    ("NOTEBURST_DATA_DIR", "/srv/noteburst", "data_dir", Path("/srv/noteburst")),
    ("NOTEBURST_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("NOTEBURST_PORT", "9000", "port", 9000),
    ("NOTEBURST_JUPYTER_URL", "http://lab:8888/", "jupyter.url", "http://lab:8888/"),
    ("NOTEBURST_JUPYTER_TOKEN", "tok", "jupyter.token", SecretStr("tok")),
    ("NOTEBURST_JUPYTER_START_TIMEOUT", "12.5", "jupyter.start_timeout", 12.5),
    ("NOTEBURST_LAB_BACKEND", "jupyterhub", "jupyter.lab_backend", "jupyterhub"),
    ("NOTEBURST_HUB_URL", "http://hub/", "hub.url", "http://hub/"),
    ("NOTEBURST_HUB_TOKEN", "hubtok", "hub.token", SecretStr("hubtok")),
    ("NOTEBURST_HUB_IDENTITIES", '["a", "b"]', "hub.identities", ["a", "b"]),
    ("NOTEBURST_SPAWN_TIMEOUT", "33", "hub.spawn_timeout", 33.0),
    (
        "NOTEBURST_HUB_USER_OPTIONS",
        '{"profile": "small"}',
        "hub.user_options",
        {"profile": "small"},
    ),
    ("NOTEBURST_IDENTITY_WAIT_SECONDS", "7", "hub.identity_wait_seconds", 7.0),
    ("NOTEBURST_LAB_IDLE_SECONDS", "99", "hub.lab_idle_seconds", 99.0),
    (
        "NOTEBURST_KERNEL_NAMES",
        '["python3", "ir"]',
        "jupyter.kernel_names",
        ["python3", "ir"],
    ),
    ("NOTEBURST_DEFAULT_KERNEL_NAME", "ir", "jupyter.default_kernel_name", "ir"),
    (
        "NOTEBURST_WARM_KERNELS",
        '{"python3": 3}',
        "jupyter.warm_kernels",
        {"python3": 3},
    ),
    ("NOTEBURST_WARM_KERNELS_MAX", "6", "jupyter.warm_kernels_max", 6),
    (
        "NOTEBURST_WARM_UP_CODE",
        '{"python3": "import os"}',
        "jupyter.warm_up_code",
        {"python3": "import os"},
    ),
    ("NOTEBURST_FORK_KERNELS", "false", "jupyter.fork_kernels", False),
    ("NOTEBURST_KERNEL_START_TIMEOUT", "44", "jupyter.kernel_start_timeout", 44.0),
    ("NOTEBURST_HTTP_TIMEOUT", "3", "jupyter.http_timeout", 3.0),
    ("NOTEBURST_KERNEL_RETIRE_DELAY", "0", "jupyter.kernel_retire_delay", 0.0),
    ("NOTEBURST_MAX_NOTEBOOK_BYTES", "1000", "limits.max_notebook_bytes", 1000),
    ("NOTEBURST_DEFAULT_TIMEOUT_SECONDS", "61", "limits.default_timeout_seconds", 61.0),
    ("NOTEBURST_MAX_TIMEOUT_SECONDS", "62", "limits.max_timeout_seconds", 62.0),
    (
        "NOTEBURST_DEFAULT_CELL_TIMEOUT_SECONDS",
        "5",
        "limits.default_cell_timeout_seconds",
        5.0,
    ),
    (
        "NOTEBURST_DEFAULT_NO_OUTPUT_TIMEOUT_SECONDS",
        "6",
        "limits.default_no_output_timeout_seconds",
        6.0,
    ),
    ("NOTEBURST_MAX_OUTPUT_BYTES", "2048", "outputs.max_output_bytes", 2048),
    (
        "NOTEBURST_MAX_NOTEBOOK_OUTPUT_BYTES",
        "4096",
        "outputs.max_notebook_output_bytes",
        4096,
    ),
    ("NOTEBURST_GRAPHQL_MAX_DEPTH", "5", "graphql.max_depth", 5),
    ("NOTEBURST_GRAPHQL_MAX_ALIASES", "4", "graphql.max_aliases", 4),
    ("NOTEBURST_GRAPHQL_MAX_TOKENS", "500", "graphql.max_tokens", 500),
    ("NOTEBURST_WORKER_THREADS", "2", "workers.threads", 2),
    ("NOTEBURST_WORKER_LEASE_SECONDS", "8", "workers.lease_seconds", 8.0),
    ("NOTEBURST_MAX_ATTEMPTS", "9", "workers.max_attempts", 9),
    ("NOTEBURST_WORKER_OUTAGE_SECONDS", "90", "workers.outage_seconds", 90.0),
    (
        "NOTEBURST_WORKER_SHUTDOWN_GRACE_SECONDS",
        "40",
        "workers.shutdown_grace_seconds",
        40.0,
    ),
    ("NOTEBURST_WORKER_HTTP_PORT", "9100", "workers.http_port", 9100),
    ("NOTEBURST_OUTPUT_FLUSH_SECONDS", "0.5", "outputs.flush_seconds", 0.5),
    ("NOTEBURST_PROGRESS_FLUSH_SECONDS", "0.3", "outputs.progress_flush_seconds", 0.3),
    ("NOTEBURST_OUTPUT_FLUSH_BYTES", "100", "outputs.flush_bytes", 100),
    ("NOTEBURST_OUTPUT_MAX_RESENT_BYTES", "200", "outputs.max_resent_bytes", 200),
    ("NOTEBURST_REDIS_NAMESPACE", "nb2", "redis_namespace", "nb2"),
    ("NOTEBURST_CACHE_ENVIRONMENT_TAG", "w48", "limits.cache_environment_tag", "w48"),
    ("NOTEBURST_AUTH_MODE", "tokens", "auth.mode", "tokens"),
    ("NOTEBURST_ALLOW_UNAUTHENTICATED", "true", "auth.allow_unauthenticated", True),
    (
        "NOTEBURST_TRUSTED_PROXIES",
        '["10.0.0.0/8"]',
        "auth.trusted_proxies",
        [ip_network("10.0.0.0/8")],
    ),
    ("NOTEBURST_PROXY_USER_HEADER", "X-User", "auth.proxy_user_header", "X-User"),
    (
        "NOTEBURST_PROXY_SCOPES_HEADER",
        "X-Scopes",
        "auth.proxy_scopes_header",
        "X-Scopes",
    ),
    (
        "NOTEBURST_PROXY_DEFAULT_SCOPES",
        '["exec:admin"]',
        "auth.proxy_default_scopes",
        ["exec:admin"],
    ),
    ("NOTEBURST_PROXY_ADMIN_USERS", '["root"]', "auth.proxy_admin_users", ["root"]),
    ("NOTEBURST_TOKEN_CACHE_SECONDS", "0", "auth.token_cache_seconds", 0.0),
    ("NOTEBURST_MAX_QUEUED_PER_USER", "11", "limits.max_queued_per_user", 11),
    ("NOTEBURST_MAX_RUNNING_PER_USER", "12", "limits.max_running_per_user", 12),
    (
        "NOTEBURST_MAX_SUBMISSIONS_PER_MINUTE",
        "13",
        "limits.max_submissions_per_minute",
        13,
    ),
    ("NOTEBURST_PUBLIC_URL", "https://nb.example", "public_url", "https://nb.example"),
    (
        "NOTEBURST_ALLOWED_HOSTS",
        '["NB.example", "*.apps.example", "::1"]',
        "allowed_hosts",
        ["nb.example", "*.apps.example", "[::1]"],
    ),
    ("NOTEBURST_SECRET_KEY", "k1,k2", "secret_key", SecretStr("k1,k2")),
    (
        "NOTEBURST_WEBHOOK_ALLOWED_NETWORKS",
        '["10.1.0.0/16"]',
        "webhooks.allowed_networks",
        ["10.1.0.0/16"],
    ),
    ("NOTEBURST_WEBHOOK_TIMEOUT_SECONDS", "2", "webhooks.timeout_seconds", 2.0),
    (
        "NOTEBURST_WEBHOOK_RESOLVE_TIMEOUT_SECONDS",
        "1",
        "webhooks.resolve_timeout_seconds",
        1.0,
    ),
    ("NOTEBURST_WEBHOOK_MAX_ATTEMPTS", "7", "webhooks.max_attempts", 7),
    ("NOTEBURST_WEBHOOK_HORIZON_SECONDS", "100", "webhooks.horizon_seconds", 100.0),
    (
        "NOTEBURST_WEBHOOK_INITIAL_BACKOFF_SECONDS",
        "0.5",
        "webhooks.initial_backoff_seconds",
        0.5,
    ),
    (
        "NOTEBURST_WEBHOOK_MAX_BACKOFF_SECONDS",
        "60",
        "webhooks.max_backoff_seconds",
        60.0,
    ),
    ("NOTEBURST_RETENTION_DAYS", "7.5", "retention.days", 7.5),
    ("NOTEBURST_RETENTION_BATCH_SIZE", "50", "retention.batch_size", 50),
    ("NOTEBURST_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
    ("NOTEBURST_LOG_FORMAT", "json", "log_format", "json"),
]


def _clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("NOTEBURST_"):
            monkeypatch.delenv(var)


def _at(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(
    ("variable", "raw", "path", "expected"), VARIABLES, ids=[v[0] for v in VARIABLES]
)
def test_each_variable_sets_its_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, path: str, expected: Any
) -> None:
    _clear_environment(monkeypatch)
    default = _at(Config(), path)
    assert default != expected, "pick a sample value that is not the default"
    monkeypatch.setenv(variable, raw)
    assert _at(Config(), path) == expected


@pytest.mark.parametrize(
    ("variable", "raw", "path", "expected"), VARIABLES, ids=[v[0] for v in VARIABLES]
)
def test_each_flat_keyword_sets_its_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, path: str, expected: Any
) -> None:
    _clear_environment(monkeypatch)
    keyword = variable.removeprefix("NOTEBURST_").lower()
    assert _at(Config(**{keyword: expected}), path) == expected


def test_every_field_has_a_listed_variable() -> None:
    listed = {(v[0], v[2]) for v in VARIABLES}
    declared = {(v.name, v.path) for v in variables()}
    assert declared == listed, (
        "a setting was added, renamed or moved: list it in VARIABLES "
        "(an existing variable must keep its name)"
    )
    for variable in variables():
        assert variable.info.description, f"{variable.path} has no description"


def test_configuration_docs_are_current() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert render_configuration_docs(text) == text, (
        "docs/configuration.md is stale: run "
        "`python3 -m uv run python -m noteburst.config`"
    )
    for variable in variables():
        assert f"| `{variable.name}` |" in text


def test_nested_forms_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_environment(monkeypatch)
    monkeypatch.setenv("NOTEBURST_WEBHOOK_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("NOTEBURST_WEBHOOK_TIMEOUT_SECONDS", "2")
    # A nested dict is merged with the environment; keywords win.
    config = Config(webhooks={"max_attempts": 3})
    assert config.webhooks.max_attempts == 3
    assert config.webhooks.timeout_seconds == 2.0
    # A flat keyword wins over the same group given nested.
    config = Config(webhooks={"max_attempts": 3}, webhook_max_attempts=4)
    assert config.webhooks.max_attempts == 4
    # A group given whole is taken as it is.
    config = Config(jupyter=JupyterSettings(warm_kernels={}), warm_up_code={"a": "b"})
    assert config.jupyter.warm_kernels == {}
    assert config.jupyter.warm_up_code == {"a": "b"}
    assert WebhookSettings(max_attempts=2).max_attempts == 2
    with pytest.raises(ValueError, match="extra"):
        Config(webhooks={"max_atempts": 2})


def test_environment_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_environment(monkeypatch)
    given = {v[0]: v[1] for v in VARIABLES}
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    config = Config()
    env = config.environment()
    assert set(env) == set(given)
    _clear_environment(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Config()
    for _, _, path, expected in VARIABLES:
        assert _at(again, path) == expected, path
    assert isinstance(again.hub, BaseModel)


def test_groups_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.webhooks.max_attempts = 2  # type: ignore[misc]


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clear_environment(monkeypatch)
    monkeypatch.setenv("NOTEBURST_DATA_DIR", str(tmp_path))
    config = Config()
    assert config.is_embedded
    assert config.effective_database_url == (
        f"sqlite+aiosqlite:///{tmp_path / 'noteburst.sqlite3'}"
    )


def test_redis_without_postgres_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        check_config(Config(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0"))


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTEBURST_DATABASE_URL", "")
    monkeypatch.setenv("NOTEBURST_REDIS_URL", "")
    monkeypatch.setenv("NOTEBURST_JUPYTER_URL", "")
    monkeypatch.setenv("NOTEBURST_PROXY_SCOPES_HEADER", "")
    config = Config()
    assert config.is_embedded
    assert config.jupyter.url is None
    assert config.auth.proxy_scopes_header is None


def test_webhook_networks_are_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTEBURST_WEBHOOK_ALLOWED_NETWORKS", '["10.0.0.1/8"]')
    with pytest.raises(ValueError, match="host bits set"):
        Config()


@pytest.mark.parametrize("days", ["-1", "inf", "nan"])
def test_retention_days_are_finite_and_not_negative(
    monkeypatch: pytest.MonkeyPatch, days: str
) -> None:
    _clear_environment(monkeypatch)
    monkeypatch.setenv("NOTEBURST_RETENTION_DAYS", days)
    with pytest.raises(ValueError, match="retention"):
        Config()


def test_retention_zero_means_keep_forever_and_batches_are_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_environment(monkeypatch)
    assert Config().retention.days == 30
    assert Config().retention.batch_size == 500
    monkeypatch.setenv("NOTEBURST_RETENTION_DAYS", "0")
    assert Config().retention.days == 0
    monkeypatch.setenv("NOTEBURST_RETENTION_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="retention"):
        Config()


def test_unauthenticated_mode_stays_on_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_config(Config(data_dir=tmp_path, host=host))
    with pytest.raises(ConfigurationError, match="ALLOW_UNAUTHENTICATED"):
        check_config(Config(data_dir=tmp_path, host="0.0.0.0"))
    # Off loopback without authentication, the names must be stated too: a
    # page on any name rebound to the address could run code otherwise.
    with pytest.raises(ConfigurationError, match="ALLOWED_HOSTS"):
        check_config(
            Config(data_dir=tmp_path, host="0.0.0.0", allow_unauthenticated=True)
        )
    for hosts in (["nb.lan"], ["*"]):
        check_config(
            Config(
                data_dir=tmp_path,
                host="0.0.0.0",
                allow_unauthenticated=True,
                allowed_hosts=hosts,
            )
        )
    check_config(Config(data_dir=tmp_path, host="0.0.0.0", auth_mode="tokens"))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ["localhost", "127.0.0.1", "[::1]"]),
        ("localhost", ["localhost", "127.0.0.1", "[::1]"]),
        ("::1", ["localhost", "127.0.0.1", "[::1]"]),
        ("127.0.0.2", ["localhost", "127.0.0.1", "[::1]", "127.0.0.2"]),
        ("0.0.0.0", ["*"]),
        ("10.0.0.5", ["*"]),
        ("::", ["*"]),
    ],
)
def test_allowed_hosts_default_to_loopback_names_on_loopback(
    host: str, expected: list[str]
) -> None:
    """No name a DNS answer could point here is accepted on loopback.

    ``*.localhost`` is not among them (see Config.effective_allowed_hosts).
    """
    assert Config(host=host).effective_allowed_hosts == expected


def test_allowed_hosts_replace_the_default() -> None:
    config = Config(allowed_hosts=["nb.example"])
    assert config.effective_allowed_hosts == ["nb.example"]


@pytest.mark.parametrize(
    "hosts",
    [
        ["https://nb.example"],
        ["nb.example:8000"],
        ["nb.example/graphql"],
        ["*nb.example"],
        ["nb.*.example"],
        ["[::1"],
        [""],
        [],
    ],
)
def test_allowed_hosts_are_names_without_scheme_or_port(hosts: list[str]) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        Config(allowed_hosts=hosts)


def test_proxy_mode_needs_trusted_proxies(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        check_config(Config(data_dir=tmp_path, auth_mode="proxy"))


def test_auth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTEBURST_AUTH_MODE", "proxy")
    monkeypatch.setenv("NOTEBURST_TRUSTED_PROXIES", '["10.0.0.0/8", "fd00::/8"]')
    monkeypatch.setenv("NOTEBURST_MAX_QUEUED_PER_USER", "")
    monkeypatch.setenv("NOTEBURST_MAX_RUNNING_PER_USER", "3")
    config = Config()
    assert [str(n) for n in config.auth.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]
    assert config.limits.max_queued_per_user is None
    assert config.limits.max_running_per_user == 3
    assert config.limits.max_submissions_per_minute == 600
    assert config.auth.proxy_default_scopes == ["exec:notebook"]
