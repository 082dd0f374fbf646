"""video summaries per token space: primary key (video_id, space)

A video can now have one summary per token space: ``clip`` (the CLIP ViT's hidden space, for
late-interaction reranking; every existing row) and ``llm`` (a video LLM's visual space, for the llm
reranker). Changing a primary key is not an ALTER SQLite can do, so the table is rebuilt and copied,
the same way on both databases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_COLUMNS = "video_id, method, embedding_key, token_count, data, created_at"


def _summary_table(name: str, with_space: bool) -> None:
    columns = [sa.Column('video_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False)]
    if with_space:
        columns.append(sa.Column('space', sa.String(length=16), nullable=False))
    op.create_table(name,
    *columns,
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('embedding_key', sa.String(length=255), nullable=False),
    sa.Column('token_count', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['video_id'], ['videos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('video_id', 'space') if with_space else sa.PrimaryKeyConstraint('video_id'),
    )


def upgrade() -> None:
    _summary_table('video_summaries_0003', with_space=True)
    op.execute(f"INSERT INTO video_summaries_0003 (space, {_COLUMNS}) SELECT 'clip', {_COLUMNS} FROM video_summaries")
    op.drop_table('video_summaries')
    op.rename_table('video_summaries_0003', 'video_summaries')


def downgrade() -> None:
    _summary_table('video_summaries_0002', with_space=False)
    op.execute(f"INSERT INTO video_summaries_0002 ({_COLUMNS}) SELECT {_COLUMNS} FROM video_summaries WHERE space = 'clip'")
    op.drop_table('video_summaries')
    op.rename_table('video_summaries_0002', 'video_summaries')
