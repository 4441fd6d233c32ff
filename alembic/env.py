"""Alembic environment for Noteburst's schema (noteburst.dbschema).

Two ways in:

* The ``alembic`` command line (and ``alembic.command`` called from a thread
  without a running event loop): a throwaway engine is made with
  ``noteburst.storage.database.make_engine`` for the URL found in, by
  priority, ``config.attributes["database_url"]``, the ``sqlalchemy.url``
  option, or ``noteburst.config.Config().effective_database_url`` (which
  reads ``NOTEBURST_DATABASE_URL`` and defaults to the embedded SQLite
  file).  On Postgres the run holds the same advisory lock as the service.
* ``Database.upgrade()`` in the service: it passes its own open connection in
  ``config.attributes["connection"]`` (Alembic's connection-sharing recipe),
  because ``asyncio.run`` cannot be called inside the service's loop.  In
  that case logging is left alone: ``fileConfig`` would disable the
  service's loggers.  Callers of ``alembic.command`` that load
  ``alembic.ini`` can also set ``config.attributes["configure_logging"] =
  False`` to keep their logging (the tests do).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection, text

from noteburst.config import Config
from noteburst.dbschema import Base, UTCDateTime
from noteburst.storage.database import MIGRATION_LOCK_KEY, make_engine

config = context.config
target_metadata = Base.metadata

if (
    config.config_file_name is not None
    and "connection" not in config.attributes
    and config.attributes.get("configure_logging", True)
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option(
        "sqlalchemy.url"
    )
    return str(url) if url else Config().effective_database_url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations must not import application code that may change later:
    # spell the UTC timestamp as the plain column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
        compare_type=True,
        compare_server_default=True,
    )


def _run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations() -> None:
    engine = make_engine(_database_url())
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": MIGRATION_LOCK_KEY},
                )
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_migrations(connection)
    else:
        asyncio.run(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
