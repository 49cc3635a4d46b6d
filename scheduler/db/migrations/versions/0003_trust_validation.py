"""Checked hardware, spot-check replays and credit after validation (issue 13, items 3-5)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:40:00

workers: probe (what the worker's probe found), reputation, validated_attempts, trusted; api_tokens: trusted (a
platform pool); jobs: kind (user or replay), replay_of, replay_attempt; attempts: validation, device_seconds,
credit. Existing rows: donors at the neutral reputation, nothing pending, no replays.
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch: SQLite rebuilding api_tokens would cascade-delete every worker (ON DELETE CASCADE).
    op.add_column('api_tokens', sa.Column('trusted', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('workers', sa.Column('probe', sa.JSON(), nullable=True))
    op.add_column('workers', sa.Column('reputation', sa.Float(), nullable=False, server_default='0.5'))
    op.add_column('workers', sa.Column('validated_attempts', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('workers', sa.Column('trusted', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('jobs', sa.Column('kind', sa.String(length=16), nullable=False, server_default='user'))
    op.add_column('jobs', sa.Column('replay_of', sa.String(length=32), nullable=True))
    op.add_column('jobs', sa.Column('replay_attempt', sa.Integer(), nullable=True))
    op.create_index('ix_jobs_replay_of', 'jobs', ['replay_of'], unique=False)
    op.add_column('attempts', sa.Column('validation', sa.String(length=16), nullable=True))
    op.add_column('attempts', sa.Column('device_seconds', sa.Float(), nullable=False, server_default='0'))
    op.add_column('attempts', sa.Column('credit', sa.String(length=16), nullable=True))


def downgrade() -> None:
    for table, column in [
        ('attempts', 'credit'), ('attempts', 'device_seconds'), ('attempts', 'validation'),
        ('jobs', 'replay_attempt'), ('jobs', 'replay_of'), ('jobs', 'kind'),
        ('workers', 'trusted'), ('workers', 'validated_attempts'), ('workers', 'reputation'), ('workers', 'probe'),
        ('api_tokens', 'trusted'),
    ]:
        if (table, column) == ('jobs', 'replay_attempt'):
            op.drop_index('ix_jobs_replay_of', table_name='jobs')
        op.drop_column(table, column)
