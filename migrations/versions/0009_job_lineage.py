"""job lineage

A fork (a job submitted with `init_from`) records the job and checkpoint step it started from and whether it
carried that checkpoint's optimizer state. Jobs created before this revision are not forks.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 13:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_job_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("parent_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("parent_optimizer", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_foreign_key("fk_jobs_parent_job_id_jobs", "jobs", ["parent_job_id"], ["id"])
        batch_op.create_index("ix_jobs_parent_job_id", ["parent_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_parent_job_id")
        batch_op.drop_constraint("fk_jobs_parent_job_id_jobs", type_="foreignkey")
        batch_op.drop_column("parent_optimizer")
        batch_op.drop_column("parent_step")
        batch_op.drop_column("parent_job_id")
