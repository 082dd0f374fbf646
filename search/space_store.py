"""Embedding spaces in the catalog, and the switch from one to another (``vidseek reindex``).

Design (see also README, "Re-indexing into a new embedding space"):

- The ``spaces`` table says which embedding space searches answer from (``active``, at most one),
  which one a re-index is filling (``building``, at most one) and which ones were active before
  (``retired``, their vectors kept until ``vidseek reindex --drop-old``). A catalog without rows
  never re-indexed: its space is the one the settings name (``VIDSEEK_MODEL`` / ``PRETRAINED`` /
  ``ENCODER``), registered as active by the first ``vidseek reindex``.
- Segments of every space live side by side in ``segments`` (``Segment.embedding_key``); writing a
  video's segments in one space never removes its segments in a registered other space.
- :meth:`SpaceStore.activate_if_complete` switches the active space in one transaction once every
  indexed video has segments in the building space; query processes notice the new active key on
  their next refresh tick and swap model and index together (``indexer.spaces.SpaceFollower``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, select, update

from search.store import Store, delete_segments, serialize_segment_writes
from search.tables import Job, Segment, Space, SpaceState, Status, Video, utcnow


class SpaceConflict(RuntimeError):
    """The catalog is in a state where the asked change of spaces cannot be made (says why)."""


@dataclass(frozen=True)
class SpaceInfo:
    """An embedding space and the model settings that produce its vectors."""

    key: str
    model: str
    pretrained: str
    encoder: str
    tempme_weights: str | None
    state: SpaceState

    @classmethod
    def of(cls, row: Space) -> SpaceInfo:
        return cls(row.key, row.model, row.pretrained, row.encoder, row.tempme_weights, SpaceState(row.state))


@dataclass(frozen=True)
class ReindexProgress:
    """How far the building space ``target`` is: ``done`` of ``total`` indexed videos have segments in
    it; ``failed`` of the others have a failed re-indexing job (they keep serving from the active space)."""

    target: str
    done: int
    total: int
    failed: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


def _in_space(key: str):
    """WHERE clause: the video (``Video.id``) has at least one segment in space ``key``."""
    return exists().where(Segment.video_id == Video.id, Segment.embedding_key == key)


class SpaceStore(Store):
    """The ``spaces`` table and the per-space views of videos and segments."""

    def spaces(self) -> list[SpaceInfo]:
        with self.session() as s:
            return [SpaceInfo.of(r) for r in s.scalars(select(Space).order_by(Space.created_at))]

    def space(self, key: str) -> SpaceInfo | None:
        with self.session() as s:
            row = s.get(Space, key)
            return SpaceInfo.of(row) if row is not None else None

    def space_in(self, state: SpaceState) -> SpaceInfo | None:
        """The active or the building space (at most one of each); None when there is none."""
        with self.session() as s:
            row = s.scalars(select(Space).where(Space.state == state)).first()
            return SpaceInfo.of(row) if row is not None else None

    def active_space_key(self) -> str | None:
        """The active space's key (one indexed lookup: query processes poll it every refresh tick)."""
        with self.session() as s:
            return s.scalar(select(Space.key).where(Space.state == SpaceState.active))

    def registered_keys(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Space.key)))

    def begin_reindex(self, current: SpaceInfo, target: SpaceInfo) -> SpaceInfo:
        """Register ``current`` as active if no space is yet, and ``target`` as the building one.

        Raises:
            SpaceConflict: ``target`` is already active, or another space is being built.
        """
        with self.session() as s:
            active = s.scalars(select(Space).where(Space.state == SpaceState.active)).first()
            if active is None:
                active = Space(key=current.key, model=current.model, pretrained=current.pretrained, encoder=current.encoder,
                               tempme_weights=current.tempme_weights, state=SpaceState.active, activated_at=utcnow())
                s.merge(active)
            if active.key == target.key:
                raise SpaceConflict(f"{target.key} is already the active space")
            building = s.scalars(select(Space).where(Space.state == SpaceState.building)).first()
            if building is not None and building.key != target.key:
                raise SpaceConflict(f"space {building.key} is being built: finish that re-index first "
                                    "(run `vidseek reindex` with its model again)")
            s.merge(Space(key=target.key, model=target.model, pretrained=target.pretrained, encoder=target.encoder,
                          tempme_weights=target.tempme_weights, state=SpaceState.building))
        found = self.space(target.key)
        assert found is not None
        return found

    # ----- progress and the switch ---------------------------------------------------------
    def videos_missing_from(self, key: str) -> list[tuple[int, str]]:
        """(id, path) of the indexed videos (status done) that have no segment in space ``key``, by id."""
        with self.session() as s:
            rows = s.execute(select(Video.id, Video.path).where(Video.status == Status.done, ~_in_space(key))
                             .order_by(Video.id)).all()
        return [(int(r.id), r.path) for r in rows]

    def reindex_progress(self, key: str) -> ReindexProgress:
        with self.session() as s:
            total = s.scalar(select(func.count(Video.id)).where(Video.status == Status.done)) or 0
            done = s.scalar(select(func.count(Video.id)).where(Video.status == Status.done, _in_space(key))) or 0
            failed = s.scalar(
                select(func.count(func.distinct(Job.video_id))).join(Video, Video.id == Job.video_id)
                .where(Job.space_key == key, Job.status == Status.failed, Video.status == Status.done, ~_in_space(key))
            ) or 0
        return ReindexProgress(key, int(done), int(total), int(failed))

    def activate_if_complete(self, key: str) -> bool:
        """Make the building space ``key`` the active one (the active one retired) if every indexed
        video has segments in it, in one transaction; returns whether it is active now. Videos get
        ``embedding_key`` = ``key``, so that ingesting their content again is recognised as done."""
        with self.session() as s:
            serialize_segment_writes(s)  # no segment write interleaves with the check
            row = s.get(Space, key, with_for_update=True)
            if row is None or SpaceState(row.state) is not SpaceState.building:
                return row is not None and SpaceState(row.state) is SpaceState.active
            if s.scalar(select(exists().where(Video.status == Status.done, ~_in_space(key)))):
                return False
            s.execute(update(Space).where(Space.state == SpaceState.active).values(state=SpaceState.retired))
            row.state, row.activated_at = SpaceState.active, utcnow()
            s.execute(update(Video).where(_in_space(key)).values(embedding_key=key))
            return True

    def drop_retired(self) -> tuple[list[str], int]:
        """Delete the segments of every retired space (tombstoned, so index replicas drop them) and the
        spaces themselves; returns (their keys, segments deleted)."""
        with self.session() as s:
            serialize_segment_writes(s)
            keys = list(s.scalars(select(Space.key).where(Space.state == SpaceState.retired)))
            if not keys:
                return [], 0
            deleted = delete_segments(s, Segment.embedding_key.in_(keys))
            s.execute(delete(Space).where(Space.key.in_(keys)))
            return keys, len(deleted)

    def reindex_job_of(self, video_id: int, key: str) -> Job | None:
        """The video's queued or running re-indexing job into space ``key``, if there is one."""
        with self.session() as s:
            return s.scalars(select(Job).where(and_(Job.video_id == video_id, Job.space_key == key,
                                                    Job.status.in_((Status.queued, Status.running))))
                             .order_by(Job.id)).first()
