"""job guardrails

A job's `stop_when` (the conditions that end it before max_steps, grpo_core.guardrails.StopWhen), what ended it
early (`stopped_early`: reason, step, values, message) and the step of its adapter when that is not its last
checkpoint (`adapter_step`: the best evaluation's). Jobs created before this revision have the defaults: no
condition, never stopped early, their last checkpoint.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 13:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stop_when", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stopped_early", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("adapter_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("adapter_step")
        batch_op.drop_column("stopped_early")
        batch_op.drop_column("stop_when")
