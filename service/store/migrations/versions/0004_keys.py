"""scoped API keys, signature replay guard, decision actor

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:40:00
"""
from alembic import op
import sqlalchemy as sa
import service.store.tables


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('reviewer', sa.String(length=320), nullable=True),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('created_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=320), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_sha256', name=op.f('uq_api_keys_key_sha256')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )
    op.create_table('signature_uses',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('expires_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('digest', name=op.f('pk_signature_uses'))
    )
    with op.batch_alter_table('signature_uses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signature_uses_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('actor', sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_column('actor')
    with op.batch_alter_table('signature_uses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signature_uses_expires_at'))
    op.drop_table('signature_uses')
    op.drop_table('api_keys')
