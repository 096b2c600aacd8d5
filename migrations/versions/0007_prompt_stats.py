"""prompt stats

Per-prompt difficulty: for each dataset row a job trained on, how often it was sampled, its rewards' sum and count
(for the mean), how many of its groups were flat (every reward equal), and its group's mean reward at first and at
latest sight. prompt_stat_steps marks the steps already folded in, so a step run again after a resume adds nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_stats",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("groups", sa.Integer(), nullable=False),
        sa.Column("reward_sum", sa.Double(), nullable=False),
        sa.Column("reward_count", sa.Integer(), nullable=False),
        sa.Column("zero_variance_groups", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("first_reward", sa.Double(), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("last_reward", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "row"),
    )
    op.create_table(
        "prompt_stat_steps",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "step"),
    )


def downgrade() -> None:
    op.drop_table("prompt_stat_steps")
    op.drop_table("prompt_stats")
