"""retrain runs

Revision ID: training_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'training_0001'
down_revision = None
branch_labels = ('training',)
depends_on = 'datasets_0001'


def upgrade() -> None:
    op.create_table('retrainrun',
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'skipped', 'rejected', 'promoted',
                                name='runstatus'), nullable=False),
    sa.Column('trigger', sa.Enum('manual', 'schedule', name='runtrigger'), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('plan', sa.JSON(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('snapshot_id', sa.Integer(), nullable=True),
    sa.Column('snapshot_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('candidate_version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('gate', sa.JSON(), nullable=True),
    sa.Column('artifacts_path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('log_path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slot', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slot')
    )
    with op.batch_alter_table('retrainrun', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retrainrun_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_retrainrun_status'), ['status'], unique=False)

    op.create_table('apscheduler_jobs',
    sa.Column('id', sa.Unicode(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('apscheduler_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_apscheduler_jobs_next_run_time'), ['next_run_time'], unique=False)


def downgrade() -> None:
    op.drop_table('apscheduler_jobs')
    with op.batch_alter_table('retrainrun', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retrainrun_status'))
        batch_op.drop_index(batch_op.f('ix_retrainrun_created_at'))
    op.drop_table('retrainrun')
    sa.Enum(name='runstatus').drop(op.get_bind(), checkfirst=True)
    sa.Enum(name='runtrigger').drop(op.get_bind(), checkfirst=True)
