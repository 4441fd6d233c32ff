"""Execution owners and API tokens.

Existing executions are given the owner ``local``: the one user of
``auth_mode=none``, under which they were necessarily submitted (there was
no other mode), so an embedded installation keeps its history.

Revision ID: 7a4e2c91d0b3
Revises: 3c1d7e9a2b40
Create Date: 2026-11-26 08:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a4e2c91d0b3"
down_revision: str | Sequence[str] | None = "3c1d7e9a2b40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default fills existing rows, then goes: new rows always
    # name their owner.
    with op.batch_alter_table("executions") as batch:
        batch.add_column(
            sa.Column("owner", sa.String(255), nullable=False, server_default="local")
        )
    with op.batch_alter_table("executions") as batch:
        batch.alter_column("owner", server_default=None)
    op.create_index(
        "ix_executions_owner_created_at_id",
        "executions",
        ["owner", "created_at", "id"],
    )
    op.create_index("ix_executions_owner_status", "executions", ["owner", "status"])
    op.create_table(
        "api_tokens",
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_api_tokens")),
    )
    op.create_index(op.f("ix_api_tokens_user"), "api_tokens", ["user"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_tokens_user"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("ix_executions_owner_status", table_name="executions")
    op.drop_index("ix_executions_owner_created_at_id", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("owner")
