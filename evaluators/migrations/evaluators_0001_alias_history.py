"""alias history of the model registry

Revision ID: evaluators_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'evaluators_0001'
down_revision = None
branch_labels = ('evaluators',)
depends_on = 'service_0001'


def upgrade() -> None:
    op.create_table('aliasevent',
    sa.Column('alias', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('previous_version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('action', sa.Enum('promote', 'rollback', 'set', 'clear', name='aliasaction'), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('aliasevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_aliasevent_alias'), ['alias'], unique=False)
        batch_op.create_index(batch_op.f('ix_aliasevent_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_table('aliasevent')
    sa.Enum(name='aliasaction').drop(op.get_bind(), checkfirst=True)
