"""model evaluations: metrics of a model version on a dataset, what promotion gates compare

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_evals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=1024), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_evals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_evals_name"), ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_evals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_evals_name"))
    op.drop_table("model_evals")
