"""tool calls and their results, the request's tools, and the conversations that hold a request's other choices

Revision ID: service_0003
Revises: service_0002
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'service_0003'
down_revision = 'service_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tool_calls', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tool_call_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.add_column(sa.Column('tools', sa.JSON(), nullable=True))
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forked_from', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_conversation_forked_from'), ['forked_from'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversation_forked_from'))
        batch_op.drop_column('forked_from')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('tools')
        batch_op.drop_column('tool_call_id')
        batch_op.drop_column('tool_calls')
