"""Postgres: a trigger on execution_events sends the event notifications.

Until now the store sent ``pg_notify`` itself after each insert of events:
one more round trip in every transaction that writes events (submit,
claim, progress, finish; two in a finish), each on the way from a
submission to its result.  A statement-level trigger sends the same
notification from inside the insert, for whatever inserts events.

The payload is ``{"id": ...}``, all that
:class:`noteburst.storage.events.PostgresEventBus` reads (a subscriber
re-reads the events after the last it has seen).  Without a sequence in it
the notifications of one transaction are identical, and Postgres delivers
identical notifications of a transaction once: asyncpg sends a batch of
events as one insert statement per row, and a finish writing thirteen
events notifies once, not thirteen times.  The channel is
``noteburst.constants.EVENTS_CHANNEL`` as of this revision, written out
here because a migration must not change when the code does
(``tests/storage/events_test.py`` checks they agree).  Nothing on SQLite,
which has no notifications (the embedded event bus is in-process).

Revision ID: 5d8f3a1c2b7e
Revises: 7e2b5d1c9f30
Create Date: 2026-11-27 05:10:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5d8f3a1c2b7e"
down_revision: str | Sequence[str] | None = "7e2b5d1c9f30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "noteburst_events"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION noteburst_notify_events() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', json_build_object('id', execution_id)::text)
            FROM inserted_events
            GROUP BY execution_id;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER execution_events_notify
        AFTER INSERT ON execution_events
        REFERENCING NEW TABLE AS inserted_events
        FOR EACH STATEMENT EXECUTE FUNCTION noteburst_notify_events()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER execution_events_notify ON execution_events")
    op.execute("DROP FUNCTION noteburst_notify_events()")
