"""What every catalog store shares: the engine, transactional sessions and small query helpers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from search.db import make_engine, make_session_factory
from search.tables import Job, Status, Video, utcnow

# Segment and tombstone writers take this PostgreSQL transaction lock so that ids become
# visible in id order: index replicas then never skip an id below their watermark.
_SEGMENT_WRITE_LOCK = 7_270_001


def serialize_segment_writes(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEGMENT_WRITE_LOCK})


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; vidseek stores UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


def int_ids(ids: Sequence[int]) -> list[int]:
    """Ids as plain ints (numpy integers do not bind as SQL parameters)."""
    return [int(i) for i in ids]


def count_by_status(s: Session, table: type[Job] | type[Video]) -> dict[Status, int]:
    """How many rows of ``table`` are in each status (every status present, zero included): one GROUP BY."""
    rows = s.execute(select(table.status, func.count()).group_by(table.status)).all()
    counts = dict.fromkeys(Status, 0)
    counts.update({Status(r[0]): int(r[1]) for r in rows})
    return counts


class Store:
    """A catalog database (SQLite or PostgreSQL) and its sessions."""

    def __init__(self, url_or_engine: str | Engine):
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self._sessions = make_session_factory(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
