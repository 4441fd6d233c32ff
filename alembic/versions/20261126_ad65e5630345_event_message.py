"""Event messages: human-readable detail on an event (a lab's spawn progress).

Revision ID: ad65e5630345
Revises: bcb3abbe9ec4
Create Date: 2026-11-26 02:00:09.251180+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ad65e5630345"
down_revision: str | Sequence[str] | None = "bcb3abbe9ec4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("execution_events", sa.Column("message", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("execution_events", "message")
