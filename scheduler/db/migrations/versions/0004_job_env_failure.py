"""jobs.env/args/resubmitted_from and attempts.limit_hit/stderr_tail (issue 18: run again, failure first)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:40:00

All nullable: jobs submitted before have no variables or arguments, attempts ended before have no recorded limit
or stderr tail (their failure is then read from ``error`` alone).
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('env', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('args', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('resubmitted_from', sa.String(length=32), nullable=True))
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limit_hit', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('stderr_tail', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_column('stderr_tail')
        batch_op.drop_column('limit_hit')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('resubmitted_from')
        batch_op.drop_column('args')
        batch_op.drop_column('env')
