"""Configuration: defaults, validation, and the documentation of every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from noteburst.app import check_config
from noteburst.config import Config
from noteburst.exceptions import ConfigurationError

DOCS = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_every_field_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, field in Config.model_fields.items():
        assert f"`NOTEBURST_{name.upper()}`" in text, name
        assert field.description, f"{name} has no description"
        assert field.description in text, f"docs for {name} are out of date"


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in list(__import__("os").environ):
        if var.startswith("NOTEBURST_"):
            monkeypatch.delenv(var)
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
    assert Config().is_embedded


def test_unauthenticated_mode_stays_on_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_config(Config(data_dir=tmp_path, host=host))
    with pytest.raises(ConfigurationError, match="ALLOW_UNAUTHENTICATED"):
        check_config(Config(data_dir=tmp_path, host="0.0.0.0"))
    check_config(Config(data_dir=tmp_path, host="0.0.0.0", allow_unauthenticated=True))
    check_config(Config(data_dir=tmp_path, host="0.0.0.0", auth_mode="tokens"))


def test_proxy_mode_needs_trusted_proxies(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        check_config(Config(data_dir=tmp_path, auth_mode="proxy"))


def test_auth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTEBURST_AUTH_MODE", "proxy")
    monkeypatch.setenv("NOTEBURST_TRUSTED_PROXIES", '["10.0.0.0/8", "fd00::/8"]')
    monkeypatch.setenv("NOTEBURST_MAX_QUEUED_PER_USER", "")
    monkeypatch.setenv("NOTEBURST_MAX_RUNNING_PER_USER", "3")
    config = Config()
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]
    assert config.max_queued_per_user is None
    assert config.max_running_per_user == 3
    assert config.max_submissions_per_minute == 600
    assert config.proxy_default_scopes == ["exec:notebook"]
