"""Event outputs: cell outputs carried by CELL_OUTPUTS events, for live views.

Revision ID: 0c7d2e5a9b41
Revises: f496c3cb96ca
Create Date: 2026-11-26 05:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0c7d2e5a9b41"
down_revision: str | Sequence[str] | None = "f496c3cb96ca"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "execution_events", sa.Column("output_start", sa.Integer(), nullable=True)
    )
    op.add_column("execution_events", sa.Column("outputs", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("execution_events", "outputs")
    op.drop_column("execution_events", "output_start")
