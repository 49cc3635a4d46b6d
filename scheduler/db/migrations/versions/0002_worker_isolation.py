"""workers.isolation: how a worker sandboxes jobs (bwrap, container, none)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 17:50:00

Workers registered before this column existed declared nothing, so they count as "none" (not sandboxed) until
they register again.
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('isolation', sa.String(length=16), nullable=False, server_default='none'))


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('isolation')
