"""users and API keys

Revision ID: core_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'core_0001'
down_revision = None
branch_labels = ('core',)
depends_on = None


def upgrade() -> None:
    op.create_table('user',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('role', sa.Enum('admin', 'reviewer', 'service', name='role'), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_key_hash'), ['key_hash'], unique=True)
        batch_op.create_index(batch_op.f('ix_user_name'), ['name'], unique=False)


def downgrade() -> None:
    op.drop_table('user')
