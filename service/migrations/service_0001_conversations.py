"""conversations, messages and the model registry

Revision ID: service_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'service_0001'
down_revision = None
branch_labels = ('service',)
depends_on = 'core_0001'


def upgrade() -> None:
    op.create_table('conversation',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('end_user', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversation_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_conversation_end_user'), ['end_user'], unique=False)

    op.create_table('modelversion',
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('base_path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('adapter_path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('checksum', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('parent', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('snapshot_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('candidate', 'champion', 'rejected', 'archived', name='versionstatus'), nullable=False),
    sa.Column('gate_report', sa.JSON(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('version')
    )

    op.create_table('message',
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('conversation_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('mean_logprob', sa.Float(), nullable=True),
    sa.Column('finish_reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('params', sa.JSON(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_model_version'), ['model_version'], unique=False)

    op.create_table('modelalias',
    sa.Column('alias', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['version'], ['modelversion.version'], ),
    sa.PrimaryKeyConstraint('alias')
    )


def downgrade() -> None:
    op.drop_table('modelalias')
    op.drop_table('message')
    op.drop_table('modelversion')
    op.drop_table('conversation')
