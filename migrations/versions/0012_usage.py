"""usage

Usage: what each job and pre-flight used (compute seconds, tokens sampled and trained, reward calls and seconds),
one row per UTC day and hardware class, for GET /v1/usage and `grpo usage`. Nothing that ran before this revision
is counted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("source_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("hardware", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("tokens_sampled", sa.BigInteger(), nullable=False),
        sa.Column("tokens_trained", sa.BigInteger(), nullable=False),
        sa.Column("reward_calls", sa.BigInteger(), nullable=False),
        sa.Column("reward_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("source_id", "day", "hardware"),
    )
    op.create_index("ix_usage_tenant_day", "usage", ["tenant_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_usage_tenant_day", table_name="usage")
    op.drop_table("usage")
