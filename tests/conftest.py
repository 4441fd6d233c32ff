"""Shared fixtures: real Postgres, Redis and jupyter_server, one place each."""

pytest_plugins = [
    "tests.support.databases",
    "tests.support.hub",
    "tests.support.jupyter",
]
