"""dataset snapshots

Revision ID: datasets_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'datasets_0001'
down_revision = None
branch_labels = ('datasets',)
depends_on = 'feedback_0001'


def upgrade() -> None:
    op.create_table('datasetsnapshot',
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('builder_version', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('datasetsnapshot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datasetsnapshot_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_datasetsnapshot_hash'), ['hash'], unique=True)


def downgrade() -> None:
    op.drop_table('datasetsnapshot')
