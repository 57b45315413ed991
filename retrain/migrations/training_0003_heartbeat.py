"""run heartbeat: the running run's process refreshes it; a run whose lease expired is dead

Revision ID: training_0003
Revises: training_0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'training_0003'
down_revision = 'training_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('retrainrun', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('retrainrun', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
