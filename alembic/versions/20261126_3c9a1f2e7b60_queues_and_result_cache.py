"""Queues and the result cache: queue, backoff, cache key, cache hits, single flight.

Revision ID: 3c9a1f2e7b60
Revises: 0c7d2e5a9b41
Create Date: 2026-11-26 05:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c9a1f2e7b60"
down_revision: str | Sequence[str] | None = "0c7d2e5a9b41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(
            sa.Column(
                "queue",
                sa.String(length=16),
                server_default=sa.text("'interactive'"),
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column("not_before", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("cached_from", sa.String(length=36), nullable=True))
        batch.add_column(
            sa.Column("shares_run_of", sa.String(length=36), nullable=True)
        )
    op.create_index(
        op.f("ix_executions_cache_key"), "executions", ["cache_key"], unique=False
    )
    op.create_index(
        op.f("ix_executions_shares_run_of"),
        "executions",
        ["shares_run_of"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_executions_shares_run_of"), table_name="executions")
    op.drop_index(op.f("ix_executions_cache_key"), table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("shares_run_of")
        batch.drop_column("cached_from")
        batch.drop_column("cache_key")
        batch.drop_column("not_before")
        batch.drop_column("queue")
