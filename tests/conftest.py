"""Shared fixtures: real Postgres, Redis and jupyter_server, one place each."""

import pytest

pytest_plugins = [
    "tests.support.databases",
    "tests.support.hub",
    "tests.support.jupyter",
]


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers this suite defines beyond pyproject.toml's."""
    config.addinivalue_line(
        "markers",
        "soak: keeps work arriving over many rounds and checks that what it "
        "measures stays bounded (tests/services/retention_soak_test.py); part "
        "of the normal suite, select alone with -m soak",
    )
