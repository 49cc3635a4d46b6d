"""known-answer canaries for new donors (issue 13, item 4)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:00:00

workers: canary_state (pending, passed, failed; NULL: none was required when it registered), canary_detail;
jobs: canary_for (the worker a canary checks), canary_expected (its loss curve, never sent to the worker). Existing
workers keep NULL: they registered before canaries and keep working; their next registration is checked.
Plain ADD COLUMN only (see 0005: a SQLite table rebuild would cascade through the foreign keys).
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('workers', sa.Column('canary_state', sa.String(length=16), nullable=True))
    op.add_column('workers', sa.Column('canary_detail', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('canary_for', sa.String(length=32), nullable=True))
    op.add_column('jobs', sa.Column('canary_expected', sa.JSON(), nullable=True))
    op.create_index('ix_jobs_canary_for', 'jobs', ['canary_for'], unique=False)


def downgrade() -> None:
    # plain DROP COLUMN as 0003 does (SQLite 3.35+): a batch rebuild of jobs would cascade-delete its attempts
    op.drop_index('ix_jobs_canary_for', table_name='jobs')
    for table, column in [('jobs', 'canary_expected'), ('jobs', 'canary_for'),
                          ('workers', 'canary_detail'), ('workers', 'canary_state')]:
        op.drop_column(table, column)
