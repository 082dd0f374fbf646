"""Full-text search over the videos' titles, file names and tags, in the database's own engine: the
text signal of hybrid search (``search.hybrid``).

The document of a video is its title, its file name and its tags (created by migration 0006):
PostgreSQL keeps it as the generated ``tsvector`` column ``videos.search_document`` (``english``
configuration: stemmed, English stop words dropped) under a GIN index; SQLite in the FTS5 table
``video_fts`` (porter stemming) kept in sync by triggers. Both break words at every character that is
not a letter or digit (``red_ball.mp4`` is ``red ball mp4``) and keep diacritics (``café`` does not
match ``cafe``).

A query's words (:func:`query_words`) are matched with OR: a video matches when its document holds any
of them (after stemming), and more matching words rank it higher (SQLite: BM25; PostgreSQL:
``ts_rank``).
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import Select, column, func, literal_column, select, table

from search.filters import SearchFilters
from search.tables import Video

MAX_TEXT_WORDS = 32  # words of a query matched against the documents
_WORD = re.compile(r"[^\W_]+")  # letters and digits: what both engines keep as words
# Words too common to say anything about a video, left out of the query on both databases (PostgreSQL's
# ``english`` configuration drops these and more; SQLite's BM25 would still count them as matches).
STOP_WORDS = frozenset("""
a an and are as at be but by for from has have he her his i in into is it its of on or our she so than that
the their them then there these they this to was we were what when where which while who will with you your
""".split())

_VIDEO_FTS = table("video_fts", column("rowid"))
_SEARCH_DOCUMENT = literal_column("videos.search_document")


def query_words(query: str) -> list[str]:
    """The distinct words of ``query`` to look for, in order: letters and digits (NFKC, lower case),
    stop words left out, at most ``MAX_TEXT_WORDS``."""
    words = _WORD.findall(unicodedata.normalize("NFKC", query).lower())
    return list(dict.fromkeys(w for w in words if w not in STOP_WORDS))[:MAX_TEXT_WORDS]


def text_ranking_query(dialect: str, words: list[str], filters: SearchFilters | None, embedding_key: str,
                       limit: int) -> Select:
    """The ids of the best ``limit`` videos matching any of ``words`` (best first, ties by id) among those
    that match ``filters`` and have segments embedded with ``embedding_key``; ``dialect`` is the
    database's (``postgresql`` or ``sqlite``)."""
    # Videos whose segments are in the index's embedding space (a hit needs a moment to show): ingestion
    # writes the video's embedding_key with its segments.
    where = [Video.embedding_key == embedding_key, *(filters.clauses() if filters is not None else [])]
    if dialect == "postgresql":
        tsquery = func.to_tsquery("english", " | ".join(words))  # words are letters and digits only
        return (select(Video.id).where(_SEARCH_DOCUMENT.op("@@")(tsquery), *where)
                .order_by(func.ts_rank(_SEARCH_DOCUMENT, tsquery).desc(), Video.id).limit(limit))
    match = " OR ".join(f'"{w}"' for w in words)  # quoted: FTS5 strings, never operators
    rowid = _VIDEO_FTS.c.rowid
    return (select(rowid).select_from(_VIDEO_FTS).join(Video, Video.id == rowid)
            .where(literal_column("video_fts").op("MATCH")(match), *where)
            .order_by(func.bm25(literal_column("video_fts")), rowid).limit(limit))
