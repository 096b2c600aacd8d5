"""dataset prompt size and numeric fields

What a job spec is checked against without reading the file: the longest prompt (UTF-8 bytes of its roles and
contents, and its number of messages) and which fields are not numbers in every row. Datasets uploaded before
this revision keep NULL: their prompts are not checked against a model's context (the worker still refuses a
dataset it cannot use).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_prompt_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("max_prompt_messages", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("non_numeric_fields", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("non_numeric_fields")
        batch_op.drop_column("max_prompt_messages")
        batch_op.drop_column("max_prompt_bytes")
