"""Per-cell and no-output timeouts, cancellation requests, truncated outputs.

Revision ID: 3c1d7e9a2b40
Revises: 3c9a1f2e7b60
Create Date: 2026-11-26 05:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c1d7e9a2b40"
down_revision: str | Sequence[str] | None = "3c9a1f2e7b60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "executions", sa.Column("cell_timeout_seconds", sa.Float(), nullable=True)
    )
    op.add_column(
        "executions",
        sa.Column("no_output_timeout_seconds", sa.Float(), nullable=True),
    )
    op.add_column(
        "executions",
        sa.Column(
            "outputs_truncated",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
        ),
    )
    op.add_column(
        "executions",
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("outputs_truncated")
        batch.drop_column("no_output_timeout_seconds")
        batch.drop_column("cell_timeout_seconds")
