"""feedback store review queue audit idempotency

Revision ID: feedback_0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = 'feedback_0001'
down_revision = None
branch_labels = ('feedback',)
depends_on = 'service_0001'


def upgrade() -> None:
    op.create_table('auditevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('entity_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['actor_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('auditevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auditevent_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_auditevent_actor_id'), ['actor_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auditevent_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_auditevent_message_id'), ['message_id'], unique=False)

    op.create_table('deletion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('end_user', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('conversation_ids', sa.JSON(), nullable=False),
    sa.Column('requested_by', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['requested_by'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deletion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deletion_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deletion_end_user'), ['end_user'], unique=False)

    op.create_table('idempotencyrecord',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response', sa.JSON(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'key', name='uq_idempotency_user_key')
    )
    op.create_table('candidate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['user.id'], ),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('candidate', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_candidate_message_id'), ['message_id'], unique=False)

    op.create_table('comment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('comment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comment_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_comment_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comment_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('correction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('original', sa.Text(), nullable=False),
    sa.Column('diff', sa.Text(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('correction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_correction_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_correction_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_correction_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('flag',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('flag', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flag_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_flag_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_flag_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('rating',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('adjudicated', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rating', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rating_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_rating_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rating_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('reviewclaim',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('active', 'released', 'submitted', 'skipped', name='reviewclaimstatus'), nullable=False),
    sa.Column('lease_expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reviewclaim', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviewclaim_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviewclaim_reviewer_id'), ['reviewer_id'], unique=False)
        batch_op.create_index('ix_reviewclaim_reviewer_status', ['reviewer_id', 'status'], unique=False)

    op.create_table('reviewitem',
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('priority', sa.Float(), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('required_reviews', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('open', 'done', 'adjudicated', name='reviewitemstatus'), nullable=False),
    sa.Column('gold_scores', sa.JSON(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id')
    )
    with op.batch_alter_table('reviewitem', schema=None) as batch_op:
        batch_op.create_index('ix_reviewitem_queue', ['status', 'priority'], unique=False)

    op.create_table('thumbs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('thumbs', sa.Enum('up', 'down', name='thumbsvalue'), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('source', sa.Enum('end_user', 'reviewer', name='thumbssource'), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('thumbs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_thumbs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_thumbs_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_thumbs_user_id'), ['user_id'], unique=False)

    op.create_table('comparison',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('candidate_a', sa.Integer(), nullable=False),
    sa.Column('candidate_b', sa.Integer(), nullable=False),
    sa.Column('choice', sa.Enum('a', 'b', 'tie', name='comparisonchoice'), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['candidate_a'], ['candidate.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['candidate_b'], ['candidate.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparison_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparison_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparison_reviewer_id'), ['reviewer_id'], unique=False)



def downgrade() -> None:
    op.drop_table('comparison')
    op.drop_table('thumbs')
    op.drop_table('reviewitem')
    op.drop_table('reviewclaim')
    op.drop_table('rating')
    op.drop_table('flag')
    op.drop_table('correction')
    op.drop_table('comment')
    op.drop_table('candidate')
    op.drop_table('idempotencyrecord')
    op.drop_table('deletion')
    op.drop_table('auditevent')
    if op.get_bind().dialect.name == "postgresql":
        for name in ("comparisonchoice", "thumbssource", "thumbsvalue", "reviewitemstatus", "reviewclaimstatus"):
            op.execute(f"DROP TYPE IF EXISTS {name}")
