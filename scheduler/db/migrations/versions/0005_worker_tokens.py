"""worker tokens: approval, revocation, pool tokens; one live worker per token (each registration a new row)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:40:00

A pool token (``pool``) is shared by a trusted pool's nodes: one live worker per name. Tokens that existed before
approval did are approved (they were trusted when they were made). Every registration is a new worker row (the
earlier rows of its token are superseded, and renamed "<name> (superseded <id>)" so the unique (token_id, name)
constraint holds). Only columns are added, never a table rebuilt: on SQLite a rebuild drops the old table, and with
foreign keys on, dropping api_tokens would delete every worker through the cascade.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE ... ADD COLUMN on every backend (no batch: see above)
    op.add_column('api_tokens', sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('api_tokens', sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('api_tokens', sa.Column('pool', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE api_tokens SET approved_at = created_at WHERE kind = 'worker'")
    op.add_column('workers', sa.Column('superseded_by', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('superseded_by')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('pool')
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('approved_at')
