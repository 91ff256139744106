"""keyed audit chain (rule per event), frozen From/Reply-To and content-hash rule on approvals and deliveries

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL = the rule of the rows written before this migration (plain SHA-256 chain;
    # content hash v1 without From, Reply-To or the HTML part).
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('alg', sa.String(length=16), nullable=True))
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('alg', sa.String(length=16), nullable=True))
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mail_from', sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column('mail_reply_to', sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column('content_hash_version', sa.Integer(), nullable=True))
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mail_from', sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column('mail_reply_to', sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column('content_hash_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('content_hash_version')
        batch_op.drop_column('mail_reply_to')
        batch_op.drop_column('mail_from')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('content_hash_version')
        batch_op.drop_column('mail_reply_to')
        batch_op.drop_column('mail_from')
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.drop_column('alg')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('alg')
