"""What every catalog store shares: the engine, transactional sessions and small query helpers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, ColumnElement, Engine, Row, Select, any_, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from search.db import make_engine, make_read_engine, make_session_factory
from search.tables import Job, Segment, SegmentTombstone, Status, Video, utcnow

# Segment and tombstone writers take this PostgreSQL transaction lock so that ids become
# visible in id order: index replicas then never skip an id below their watermark.
_SEGMENT_WRITE_LOCK = 7_270_001


def serialize_segment_writes(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEGMENT_WRITE_LOCK})


def delete_segments(s: Session, *where: ColumnElement[bool]) -> list[tuple[int, str | None]]:
    """Delete the segments matching ``where``, each tombstoned so that index replicas drop it (the
    caller holds :func:`serialize_segment_writes`); returns their (id, thumbnail), by id."""
    rows = s.execute(select(Segment.id, Segment.thumbnail).where(*where).order_by(Segment.id)).all()
    s.add_all(SegmentTombstone(segment_id=r.id) for r in rows)
    s.execute(delete(Segment).where(*where))
    return [(r.id, r.thumbnail) for r in rows]


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; vidseek stores UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


def int_ids(ids: Sequence[int]) -> list[int]:
    """Ids as plain ints (numpy integers do not bind as SQL parameters)."""
    return [int(i) for i in ids]


@dataclass(frozen=True)
class IdLookup:
    """A query limited to the rows whose id column is one of the ``ids`` bound when it runs
    (:meth:`Store.rows_with_ids`), built once. On PostgreSQL the ids bind as one array
    (``column = ANY(:ids)``), planned alike whatever their number, where ``IN`` sends one parameter
    per id: 200 candidate segments took 1.7 ms against 3.4 ms with ``IN`` and 7.8 ms through an ORM
    session with ``IN`` (200 000 segments, PostgreSQL on the same 2-core machine, under load).
    Other databases use ``IN``."""

    postgresql: Select
    other: Select

    @classmethod
    def of(cls, query: Select, column: ColumnElement[int]) -> IdLookup:
        return cls(query.where(column == any_(bindparam("ids", type_=ARRAY(BigInteger)))),
                   query.where(column.in_(bindparam("ids", expanding=True))))


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
        self._reads = make_read_engine(self.engine)

    def read(self, statement: Select, params: Mapping[str, object] | None = None) -> list[Row]:
        """The rows of one read-only ``statement`` of the query path, on a connection of the read
        engine (:func:`search.db.make_read_engine`: no ORM session, no transaction to open or close).
        A connection that turns out dead (the database restarted since it was pooled) is dropped and
        the read tried once more on a new one."""
        try:
            return self._read_once(statement, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return self._read_once(statement, params)

    def _read_once(self, statement: Select, params: Mapping[str, object] | None) -> list[Row]:
        with self._reads.connect() as conn:
            return list(conn.execute(statement, params).all())

    def rows_with_ids(self, lookup: IdLookup, ids: Sequence[int]) -> list[Row]:
        """The rows of ``lookup`` for ``ids``: the query path's lookups by primary key (:meth:`read`)."""
        statement = lookup.postgresql if self.engine.dialect.name == "postgresql" else lookup.other
        return self.read(statement, {"ids": int_ids(ids)})

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
        if self._reads is not self.engine:
            self._reads.dispose()
