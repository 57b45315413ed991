"""a review item without gold scores holds SQL NULL, not JSON null (which `IS NOT NULL` counted as gold)

Revision ID: feedback_0002
Revises: feedback_0001
Create Date: 2026-12-01
"""
from alembic import op


revision = 'feedback_0002'
down_revision = 'feedback_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE reviewitem SET gold_scores = NULL WHERE CAST(gold_scores AS TEXT) = 'null'")


def downgrade() -> None:
    pass
