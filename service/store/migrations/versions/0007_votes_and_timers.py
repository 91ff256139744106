"""votes of multi-reviewer policies, and approval timers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:00:00
"""
from alembic import op
import sqlalchemy as sa
import service.store.tables


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_VOTE = "slot IS NOT NULL AND kind != 'delegate'"


def upgrade() -> None:
    # Approvals waiting across the upgrade keep their stored policy (first responder,
    # no timers): the defaults below are exactly what they meant.
    with op.batch_alter_table('approvals') as batch:
        batch.add_column(sa.Column('draft_version', sa.Integer(), server_default='1', nullable=False))
        batch.add_column(sa.Column('stage', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('added_reviewers', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('remind_at', service.store.tables.UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('reminders_sent', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('escalate_at', service.store.tables.UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('escalated_at', service.store.tables.UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('expire_at', service.store.tables.UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('decisions') as batch:
        batch.add_column(sa.Column('draft_version', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('stage', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('slot', sa.String(length=320), nullable=True))
        batch.add_column(sa.Column('delegate_to', sa.String(length=320), nullable=True))
        batch.add_column(sa.Column('replaced_action', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('reviewer_upn', sa.String(length=320), nullable=True))
    op.create_index(op.f('ix_jobs_run_id_status'), 'jobs', ['run_id', 'status'])
    op.create_index('uq_decisions_vote', 'decisions', ['approval_id', 'draft_version', 'slot'], unique=True,
                    sqlite_where=sa.text(_VOTE), postgresql_where=sa.text(_VOTE))


def downgrade() -> None:
    op.drop_index('uq_decisions_vote', table_name='decisions')
    op.drop_index(op.f('ix_jobs_run_id_status'), table_name='jobs')
    with op.batch_alter_table('decisions') as batch:
        for column in ('reviewer_upn', 'replaced_action', 'delegate_to', 'slot', 'stage', 'draft_version'):
            batch.drop_column(column)
    with op.batch_alter_table('approvals') as batch:
        for column in ('expire_at', 'escalated_at', 'escalate_at', 'reminders_sent', 'remind_at', 'added_reviewers',
                       'stage', 'draft_version'):
            batch.drop_column(column)
