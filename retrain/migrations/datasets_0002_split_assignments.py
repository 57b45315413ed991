"""split assignments: question group -> train / validation / test, fixed once assigned

Revision ID: datasets_0002
Revises: datasets_0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'datasets_0002'
down_revision = 'datasets_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('splitassignment',
    sa.Column('question_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('group_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('split', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=False),
    sa.Column('assigned_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('question_hash')
    )
    with op.batch_alter_table('splitassignment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_splitassignment_group_key'), ['group_key'], unique=False)


def downgrade() -> None:
    op.drop_table('splitassignment')
