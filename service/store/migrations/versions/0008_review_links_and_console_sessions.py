"""email review links, operator console sessions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:00:00
"""
from alembic import op
import sqlalchemy as sa
import service.store.tables


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # New tables only: approvals waiting across the upgrade are untouched (no email
    # reviewers, no links) and go on as before.
    op.create_table(
        'review_links',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('approval_id', sa.String(length=36), nullable=False),
        sa.Column('reviewer', sa.String(length=320), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('created_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column('spent_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
        sa.Column('spent_reason', sa.String(length=64), nullable=True),
        sa.Column('code_sha256', sa.String(length=64), nullable=True),
        sa.Column('code_expires_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
        sa.Column('code_attempts', sa.Integer(), server_default='0', nullable=False),
        sa.ForeignKeyConstraint(['approval_id'], ['approvals.id'], name=op.f('fk_review_links_approval_id_approvals')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_review_links')),
        sa.UniqueConstraint('token_sha256', name=op.f('uq_review_links_token_sha256')),
    )
    op.create_index(op.f('ix_review_links_approval_id'), 'review_links', ['approval_id'])
    op.create_table(
        'console_sessions',
        sa.Column('id_sha256', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=36), nullable=True),
        sa.Column('actor', sa.String(length=320), nullable=False),
        sa.Column('scopes', sa.JSON(), nullable=False),
        sa.Column('created_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column('ended_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_console_sessions_key_id_api_keys')),
        sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_console_sessions')),
    )
    op.create_index(op.f('ix_console_sessions_expires_at'), 'console_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_console_sessions_expires_at'), table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_index(op.f('ix_review_links_approval_id'), table_name='review_links')
    op.drop_table('review_links')
