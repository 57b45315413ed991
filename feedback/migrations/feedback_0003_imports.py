"""the import ledger: imported conversations, their source and stable key

Revision ID: feedback_0003
Revises: feedback_0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = 'feedback_0003'
down_revision = 'feedback_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('importedconversation',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('conversation_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('imported_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['imported_by'], ['user.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('importedconversation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_importedconversation_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_importedconversation_source'), ['source'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('importedconversation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_importedconversation_source'))
        batch_op.drop_index(batch_op.f('ix_importedconversation_conversation_id'))
    op.drop_table('importedconversation')
