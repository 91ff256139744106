"""every SMTP delivery attempt, with its reply

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:50:00
"""
from alembic import op
import sqlalchemy as sa
import service.store.tables


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Attempts made before this migration have no row: a delivery left `sending` by the
    # old version gets one (interrupted, number = deliveries.attempts) when it is re-sent.
    op.create_table('delivery_attempts',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('delivery_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=8), nullable=False),
    sa.Column('started_at', service.store.tables.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', service.store.tables.UtcDateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('smtp_reply', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('possible_duplicate', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_delivery_attempts_delivery_id_deliveries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts')),
    sa.UniqueConstraint('delivery_id', 'number', name=op.f('uq_delivery_attempts_delivery_id_number'))
    )


def downgrade() -> None:
    op.drop_table('delivery_attempts')
