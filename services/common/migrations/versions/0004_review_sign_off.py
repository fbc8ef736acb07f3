"""Radiologist review: edited text, sign-off, and the edit distance from the AI draft.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("review_status", sa.String(16), nullable=False,
                                   server_default="draft"))
        batch.add_column(sa.Column("reviewed_text", sa.JSON, nullable=True))
        batch.add_column(sa.Column("signed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("edit_distance", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        for column in ("edit_distance", "signed_at", "signed_by", "reviewed_text",
                       "review_status"):
            batch.drop_column(column)
