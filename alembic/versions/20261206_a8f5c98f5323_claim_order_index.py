"""The claim order gets an index: a stored queue rank and a partial index.

A claim took the first queued execution by sorting the whole queue (by a
``CASE`` on ``queue``, then ``created_at`` and ``id``), so every claim cost
more the longer the queue (issue 16: 9 ms with 1,000 queued executions, 24
ms with 10,000).  ``queue_rank`` stores ``ExecutionQueue.rank`` (0 for
interactive, 1 for batch; written out here, as a migration must not change
when the code does), and ``ix_executions_claim_order`` holds the claimable
rows (queued, not a follower of a shared run) in claim order, so a claim
reads the first entries of the index and stops.

The rank is a column rather than the index an expression on ``queue``:
Alembic's comparison of models and migrations cannot read an expression
index back on SQLite, nor match PostgreSQL's rendering of a ``CASE``.

Revision ID: a8f5c98f5323
Revises: 5d8f3a1c2b7e
Create Date: 2026-12-06 23:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a8f5c98f5323"
down_revision: str | Sequence[str] | None = "5d8f3a1c2b7e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = "status = 'queued' AND shares_run_of IS NULL"


def upgrade() -> None:
    # Added nullable, filled from queue, then made NOT NULL: new rows always
    # carry their rank (no server default that could contradict queue).
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("queue_rank", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE executions"
        " SET queue_rank = CASE WHEN queue = 'interactive' THEN 0 ELSE 1 END"
    )
    with op.batch_alter_table("executions") as batch:
        batch.alter_column("queue_rank", existing_type=sa.Integer(), nullable=False)
    op.create_index(
        "ix_executions_claim_order",
        "executions",
        ["status", "queue_rank", "created_at", "id"],
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_claim_order", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("queue_rank")
