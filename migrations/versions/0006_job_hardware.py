"""job hardware

The hardware class a job asks for, which decides its Celery queue: "cpu" (any worker) or "gpu" (GPU workers
only). Jobs created before this revision need no GPU: they get "cpu".

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hardware", sa.String(length=20), nullable=False, server_default="cpu"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("hardware")
