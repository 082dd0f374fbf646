"""video tags, and full-text search over titles, file names and tags (hybrid search)

- ``video_tags (video_id, tag)``: the tags of each video; the ``(tag, video_id)`` index answers a tag
  filter on both databases. ``videos.tag_words`` repeats them as one text for full-text search.
- ``ix_videos_created_at``: the ``ingested_after`` / ``ingested_before`` filters.
- The full-text document of a video (its title, its file name, its tags), per database:
  PostgreSQL: ``videos.search_document``, a generated ``tsvector`` column (``english`` configuration,
  every run of non-alphanumeric characters a word break) with a GIN index;
  SQLite: the FTS5 table ``video_fts`` (rowid = video id, porter stemming like PostgreSQL's
  ``english``, diacritics kept like PostgreSQL) kept in sync by triggers on ``videos``.

A later migration that rebuilds ``videos`` on SQLite (batch mode "move and copy") drops these triggers
with the old table and must create them again (``_SQLITE_TRIGGERS``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_WORDS = "regexp_replace({}, '[^[:alnum:]]+', ' ', 'g')"  # PostgreSQL: punctuation and _ break words
_PG_DOCUMENT = "to_tsvector('english', {} || ' ' || {} || ' ' || {})".format(
    _WORDS.format("title"), _WORDS.format("regexp_replace(path, '^.*/', '')"), _WORDS.format("tag_words"))

# SQLite has no basename(): the path less everything up to its last '/'.
_SQLITE_FILE_NAME = "substr(new.path, length(rtrim(new.path, replace(new.path, '/', ''))) + 1)"
_SQLITE_TRIGGERS = {
    "video_fts_insert": f"""
        CREATE TRIGGER video_fts_insert AFTER INSERT ON videos BEGIN
            INSERT INTO video_fts (rowid, title, file_name, tags)
            VALUES (new.id, new.title, {_SQLITE_FILE_NAME}, new.tag_words);
        END""",
    "video_fts_update": f"""
        CREATE TRIGGER video_fts_update AFTER UPDATE OF title, path, tag_words ON videos BEGIN
            UPDATE video_fts SET title = new.title, file_name = {_SQLITE_FILE_NAME}, tags = new.tag_words
            WHERE rowid = new.id;
        END""",
    "video_fts_delete": """
        CREATE TRIGGER video_fts_delete AFTER DELETE ON videos BEGIN
            DELETE FROM video_fts WHERE rowid = old.id;
        END""",
}


def upgrade() -> None:
    op.create_table('video_tags',
    sa.Column('video_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['video_id'], ['videos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('video_id', 'tag'),
    )
    op.create_index('ix_video_tags_tag', 'video_tags', ['tag', 'video_id'], unique=False)
    op.add_column('videos', sa.Column('tag_words', sa.Text(), server_default='', nullable=False))
    op.create_index('ix_videos_created_at', 'videos', ['created_at'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"ALTER TABLE videos ADD COLUMN search_document tsvector GENERATED ALWAYS AS ({_PG_DOCUMENT}) STORED")
        op.execute("CREATE INDEX ix_videos_search_document ON videos USING GIN (search_document)")
        return
    op.execute("CREATE VIRTUAL TABLE video_fts USING fts5(title, file_name, tags, "
               "tokenize = 'porter unicode61 remove_diacritics 0')")
    for statement in _SQLITE_TRIGGERS.values():
        op.execute(statement)
    op.execute(f"INSERT INTO video_fts (rowid, title, file_name, tags) "
               f"SELECT id, title, {_SQLITE_FILE_NAME.replace('new.', '')}, tag_words FROM videos")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_videos_search_document', table_name='videos')
        op.drop_column('videos', 'search_document')
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
        op.execute("DROP TABLE video_fts")
    op.drop_index('ix_videos_created_at', table_name='videos')
    op.drop_column('videos', 'tag_words')  # not batch mode: rebuilding videos would cascade to its segments
    op.drop_index('ix_video_tags_tag', table_name='video_tags')
    op.drop_table('video_tags')
