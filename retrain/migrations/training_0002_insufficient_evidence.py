"""run status insufficient_evidence (the gates ran; a required gate lacked data: not promoted)

Revision ID: training_0002
Revises: training_0001
Create Date: 2026-11-26
"""
from alembic import op

revision = 'training_0002'
down_revision = 'training_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL keeps `runstatus` as a native enum (ADD VALUE runs inside a transaction since PostgreSQL 12,
    # the value usable once it commits); SQLite stores the name as text without a CHECK.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TYPE runstatus ADD VALUE IF NOT EXISTS 'insufficient_evidence'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; map such runs back to `succeeded` and keep the type.
    op.execute("UPDATE retrainrun SET status = 'succeeded' WHERE status = 'insufficient_evidence'")
