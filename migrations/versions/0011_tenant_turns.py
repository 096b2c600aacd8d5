"""tenant turns

Fair turns between tenants: each tenant's weight (its share of the workers), its own caps on running and queued
jobs (NULL: the service's defaults, GRPO_MAX_RUNNING_JOBS_PER_TENANT and GRPO_MAX_QUEUED_JOBS_PER_TENANT), and when
one of its jobs last took a turn. Tenants created before this revision get weight 1 and the service's caps.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_turn_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("last_turn_at")
        batch_op.drop_column("max_queued_jobs")
        batch_op.drop_column("max_running_jobs")
        batch_op.drop_column("weight")
