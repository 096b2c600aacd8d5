"""preflights

Pre-flights: a job spec's first prompts sampled on the base model and one step timed, before any training, with
the figures and verdict kept as `result`.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "preflights",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("hardware", sa.String(length=20), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("eval_dataset_id", sa.String(length=40), nullable=True),
        sa.Column("rewards", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("prompts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_host", sa.String(length=200), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"]),
        sa.ForeignKeyConstraint(["eval_dataset_id"], ["datasets.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_preflights_tenant_status", "preflights", ["tenant_id", "status"])
    op.create_index("ix_preflights_status_deadline", "preflights", ["status", "deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_preflights_status_deadline", table_name="preflights")
    op.drop_index("ix_preflights_tenant_status", table_name="preflights")
    op.drop_table("preflights")
