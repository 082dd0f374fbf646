"""embedding spaces: which one searches answer from, which one `vidseek reindex` builds; a job's target space

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'spaces',
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('model', sa.String(length=255), nullable=False),
        sa.Column('pretrained', sa.Text(), nullable=False),
        sa.Column('encoder', sa.String(length=32), nullable=False),
        sa.Column('tempme_weights', sa.Text(), nullable=True),
        sa.Column('state', sa.Enum('active', 'building', 'retired', name='space_state', native_enum=False, length=16),
                  nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_spaces_state', 'spaces', ['state'])
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('space_key', sa.String(length=255), nullable=True))
        batch_op.create_index('ix_jobs_space_key', ['space_key'])


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_space_key')
        batch_op.drop_column('space_key')
    op.drop_index('ix_spaces_state', 'spaces')
    op.drop_table('spaces')
