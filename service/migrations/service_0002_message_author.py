"""who wrote each message: the end user of the request that logged it, and whether the client wrote it

Revision ID: service_0002
Revises: service_0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'service_0002'
down_revision = 'service_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_user', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('from_client', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f('ix_message_end_user'), ['end_user'], unique=False)
    # existing rows: the conversation's end user; every turn but the served replies came from the client
    op.execute("UPDATE message SET end_user = (SELECT end_user FROM conversation WHERE conversation.id = "
               "message.conversation_id)")
    op.execute(sa.text("UPDATE message SET from_client = :yes WHERE role <> 'assistant' OR model_version IS NULL")
               .bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_end_user'))
        batch_op.drop_column('from_client')
        batch_op.drop_column('end_user')
