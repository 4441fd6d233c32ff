"""Execution renderings: stored HTML of executed notebooks, per variant.

Revision ID: f496c3cb96ca
Revises: ad65e5630345
Create Date: 2026-11-26 02:24:19.221899+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f496c3cb96ca"
down_revision: str | Sequence[str] | None = "ad65e5630345"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "execution_renderings",
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_renderings_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "execution_id", "variant", name=op.f("pk_execution_renderings")
        ),
    )


def downgrade() -> None:
    op.drop_table("execution_renderings")
