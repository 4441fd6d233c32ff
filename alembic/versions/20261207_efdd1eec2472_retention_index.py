"""The retention purge gets an index: finished executions by finish time.

The purge (``noteburst.storage.executions.retention``) deletes finished
executions older than the retention period in small batches, oldest first,
each batch continuing after the last ``(finished_at, id)`` of the one
before.  Without an index every batch would scan the whole table for the
oldest finished rows; with ``ix_executions_finished_at_id`` it reads the
first entries of the index and stops.  Queued and running executions have
no finish time (NULL) and are never in the purge's range.

Building the index takes PostgreSQL's SHARE lock on ``executions`` for as
long as the build lasts (writes wait; reads go on): seconds per million
executions (2 s for a million rows of these two columns on a shared
2-core machine).  The migration runs inside ``noteburst db upgrade``'s
transaction, where ``CREATE INDEX CONCURRENTLY`` cannot run.

Revision ID: efdd1eec2472
Revises: a8f5c98f5323
Create Date: 2026-12-07 09:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "efdd1eec2472"
down_revision: str | Sequence[str] | None = "a8f5c98f5323"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_executions_finished_at_id", "executions", ["finished_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_executions_finished_at_id", table_name="executions")
